//! A policy bundle: the policy text and every file it references, as bytes. This is what a
//! runtime without file access is handed (the component through the WIT, the Envoy filter in
//! its plugin configuration, the Spin component in its image); the sidecar builds one from
//! disk. Assembling asks the runtime's reader for exactly the files the text names, once each.

use std::collections::BTreeMap;

use base64::Engine as _;

use portcullis_core::{Policy, PolicyError, RemoteKeySource};

/// A policy's text and the files it references, keyed as written in the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// Where the policy came from, for messages (a path, `inline`, a URL).
    pub name: String,
    /// The policy text (YAML or JSON).
    pub text: String,
    /// Referenced files.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Why a bundle could not be assembled or compiled. Messages never carry file contents.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The policy is invalid: [`PolicyError::code`] names how.
    #[error("in {name}: {error}")]
    Policy {
        /// The bundle's name.
        name: String,
        /// What the core found.
        error: PolicyError,
    },
    /// A referenced file could not be read.
    #[error("{file} (referenced by {name}): {message}")]
    File {
        /// The bundle's name.
        name: String,
        /// The file, as the policy names it.
        file: String,
        /// What the reader said.
        message: String,
    },
}

impl BundleError {
    /// The stable code: `policy_syntax`, `policy_invalid` or `policy_file`.
    pub fn code(&self) -> &'static str {
        match self {
            BundleError::Policy { error, .. } => error.code(),
            BundleError::File { .. } => "policy_file",
        }
    }
}

impl Bundle {
    /// The bundle of `text`, reading each file it references through `read` (relative names,
    /// as written in the policy).
    pub fn assemble(
        name: &str,
        text: &str,
        mut read: impl FnMut(&str) -> Result<Vec<u8>, String>,
    ) -> Result<Bundle, BundleError> {
        let names =
            Policy::referenced_files(text).map_err(|error| BundleError::Policy { name: name.to_owned(), error })?;
        let mut files = BTreeMap::new();
        for file in names {
            let bytes = read(&file).map_err(|message| BundleError::File {
                name: name.to_owned(),
                file: file.clone(),
                message,
            })?;
            files.insert(file, bytes);
        }
        Ok(Bundle { name: name.to_owned(), text: text.to_owned(), files })
    }

    /// Compiles the bundle.
    pub fn compile(&self) -> Result<Policy, BundleError> {
        Policy::load(&self.text, &self.files).map_err(|error| BundleError::Policy { name: self.name.clone(), error })
    }

    /// The bundle from a configuration that carries it inline (the Envoy filter's plugin
    /// configuration): the policy text and its files by the name written in the policy, and
    /// the key sets of network sources it carries (by URL; one it lacks is unfetched).
    pub fn from_inline(name: &str, text: &str, files: &BTreeMap<String, InlineFile>) -> Result<Bundle, BundleError> {
        let mut bundle = Bundle::assemble(name, text, |file| match files.get(file) {
            Some(f) => f.bytes(),
            None => Err(format!("not among the {} files carried with the policy", files.len())),
        })?;
        for source in bundle.remote_key_sources()? {
            if let Some(f) = files.get(&source.url) {
                let bytes = f.bytes().map_err(|message| BundleError::File {
                    name: name.to_owned(),
                    file: source.url.clone(),
                    message,
                })?;
                bundle.files.insert(source.url, bytes);
            }
        }
        Ok(bundle)
    }

    /// The key sources in the network the policy names (`jwks_uri`, `discovery`).
    pub fn remote_key_sources(&self) -> Result<Vec<RemoteKeySource>, BundleError> {
        Policy::remote_key_sources(&self.text).map_err(|error| BundleError::Policy { name: self.name.clone(), error })
    }

    /// The key sets from the network this bundle carries, by source URL.
    pub fn remote_keys(&self) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
        Ok(self
            .remote_key_sources()?
            .into_iter()
            .filter_map(|s| Some((s.url.clone(), self.files.get(&s.url)?.clone())))
            .collect())
    }

    /// This bundle with `fetched` as its key sets from the network: each of the policy's
    /// sources takes its set from `fetched` (by URL), or has none (unfetched); URLs the policy
    /// does not name are left out.
    pub fn with_remote_keys(&self, fetched: &BTreeMap<String, Vec<u8>>) -> Result<Bundle, BundleError> {
        let mut bundle = self.clone();
        for source in self.remote_key_sources()? {
            match fetched.get(&source.url) {
                Some(bytes) => bundle.files.insert(source.url, bytes.clone()),
                None => bundle.files.remove(&source.url),
            };
        }
        Ok(bundle)
    }

    /// The files in the inline form: text when UTF-8, base64 otherwise.
    pub fn inline_files(&self) -> BTreeMap<String, InlineFile> {
        self.files.iter().map(|(k, v)| (k.clone(), InlineFile::of(v))).collect()
    }
}

/// A referenced file carried inline in a configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum InlineFile {
    /// UTF-8 text (JWKS documents, API key lists, text secrets).
    Text(String),
    /// Any bytes.
    Base64 {
        /// Standard base64 with padding.
        base64: String,
    },
}

impl InlineFile {
    /// `bytes` as text when they are UTF-8, as base64 otherwise.
    pub fn of(bytes: &[u8]) -> InlineFile {
        match std::str::from_utf8(bytes) {
            Ok(t) => InlineFile::Text(t.to_owned()),
            Err(_) => InlineFile::Base64 { base64: base64::engine::general_purpose::STANDARD.encode(bytes) },
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        match self {
            InlineFile::Text(t) => Ok(t.as_bytes().to_vec()),
            InlineFile::Base64 { base64 } => {
                base64::engine::general_purpose::STANDARD.decode(base64).map_err(|_| "not valid base64".to_owned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    const POLICY: &str = "version: 1\nissuers:\n  - issuer: https://i.example\n    audiences: [api]\n    algorithms: [HS256]\n    jwks_file: keys/set.json\n";
    const JWKS: &[u8] = br#"{"keys":[{"kty":"oct","kid":"k","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;

    #[test]
    fn key_sets_from_the_network_ride_in_the_inline_form_by_url() {
        const URL: &str = "https://idp.example/jwks";
        let text = format!(
            "version: 1\nissuers:\n  - issuer: https://i.example\n    audiences: [api]\n    algorithms: [RS256]\n    jwks_uri: {URL}\n"
        );
        let set = br#"{"keys":[]}"#.to_vec();
        let plain = Bundle::assemble("p", &text, |_| Err("no files".into())).unwrap();
        assert_eq!(plain.remote_key_sources().unwrap()[0].url, URL);
        let fetched = plain
            .with_remote_keys(&[(URL.to_owned(), set.clone()), ("https://other".to_owned(), set.clone())].into())
            .unwrap();
        assert_eq!(fetched.files.keys().collect::<Vec<_>>(), [URL], "only the policy's sources are kept");
        let inline = Bundle::from_inline("inline", &text, &fetched.inline_files()).unwrap();
        assert_eq!(inline, Bundle { name: "inline".into(), ..fetched.clone() });
        // Fetched again with nothing: the set is gone (the issuer is unfetched), not kept.
        assert!(fetched.with_remote_keys(&BTreeMap::new()).unwrap().files.is_empty());
        inline.compile().unwrap();
        assert_eq!(inline.remote_keys().unwrap(), [(URL.to_owned(), set)].into());
    }

    #[test]
    fn assembling_reads_each_referenced_file_once_and_compiles() {
        let mut asked = Vec::new();
        let b = Bundle::assemble("inline", POLICY, |f| {
            asked.push(f.to_owned());
            Ok(JWKS.to_vec())
        })
        .unwrap();
        assert_eq!(asked, ["keys/set.json"]);
        assert_eq!(b.files["keys/set.json"], JWKS);
        b.compile().unwrap();
    }

    #[test]
    fn failures_carry_their_stable_code_and_no_contents() {
        let e = Bundle::assemble("p.yaml", POLICY, |_| Err("gone".into())).unwrap_err();
        assert_eq!((e.code(), e.to_string().as_str()), ("policy_file", "keys/set.json (referenced by p.yaml): gone"));
        let e = Bundle::assemble("p.yaml", "version: [", |_| Ok(Vec::new())).unwrap_err();
        assert_eq!(e.code(), "policy_syntax");
        let b = Bundle::assemble("p.yaml", POLICY, |_| {
            Ok(b"{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0LXRvby1zaG9ydA\"}]}".to_vec())
        })
        .unwrap();
        let e = b.compile().unwrap_err();
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
        assert!(e.to_string().starts_with("in p.yaml: "), "{e}");
    }

    #[test]
    fn the_inline_form_carries_text_and_binary_files_unchanged() {
        let b = Bundle::assemble("p.yaml", POLICY, |_| Ok(JWKS.to_vec())).unwrap();
        let files = b.inline_files();
        assert_eq!(files["keys/set.json"], InlineFile::Text(String::from_utf8(JWKS.to_vec()).unwrap()));
        let again = Bundle::from_inline("inline", &b.text, &files).unwrap();
        assert_eq!(again.files, b.files);
        let binary = InlineFile::of(&[0xff, 0, 1]);
        assert_eq!(binary, InlineFile::Base64 { base64: "/wAB".into() });
        assert_eq!(binary.bytes().unwrap(), [0xff, 0, 1]);
        let e = Bundle::from_inline("inline", POLICY, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.code(), "policy_file");
    }
}
