//! Policies: parsed once, compiled into an immutable index, then used for every decision.

mod compile;
mod compile_engine;
pub mod doc;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::api_key::ApiKeyPolicy;
use crate::engine::{Accept, Engine, KeyAccept};
use crate::identity::Identity;
use crate::jwt::{self, IssuerPolicy, JwtContext};
use crate::reason::Reason;
use crate::request::{HeaderValue, Request};
use crate::revocation::{RevocationSet, Revocations};
use crate::service_token::ServiceTokenPolicy;

pub use doc::PolicyDocument;

/// Largest policy text accepted.
pub const MAX_POLICY_BYTES: usize = 16 << 20;

/// Why a policy could not be loaded. Messages name the path into the document and never
/// contain secret values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Not parseable as YAML or JSON.
    #[error("policy is not valid YAML or JSON: {0}")]
    Syntax(String),
    /// Parseable, but a value is wrong.
    #[error("{path}: {message}")]
    Invalid {
        /// Where, e.g. `issuers[0].algorithms[1]`.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A referenced file could not be read or parsed.
    #[error("{path}: `{file}`: {message}")]
    File {
        /// Where the file is referenced.
        path: String,
        /// The file as written in the policy.
        file: String,
        /// What went wrong.
        message: String,
    },
}

impl PolicyError {
    /// A stable code: `policy_syntax`, `policy_invalid` or `policy_file`.
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::Syntax(_) => "policy_syntax",
            PolicyError::Invalid { .. } => "policy_invalid",
            PolicyError::File { .. } => "policy_file",
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid { path: path.into(), message: message.into() }
    }
}

/// Supplies the files a policy references (`jwks_file`, `secret_file`, `keys_file`). The core
/// does no IO: the host reads them, relative to the policy file, and hands them over.
pub trait FileSource {
    /// The contents of `path`, exactly as written in the policy.
    fn read(&self, path: &str) -> Result<Vec<u8>, String>;
}

impl FileSource for BTreeMap<String, Vec<u8>> {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        self.get(path).cloned().ok_or_else(|| "not provided".to_string())
    }
}

/// A source with no files, for self-contained policies.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFiles;

impl FileSource for NoFiles {
    fn read(&self, _: &str) -> Result<Vec<u8>, String> {
        Err("this runtime has no files; inline the value".into())
    }
}

/// Size limits, validated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`doc::LimitsDoc::max_token_bytes`].
    pub max_token_bytes: usize,
    /// See [`doc::LimitsDoc::max_headers`].
    pub max_headers: usize,
    /// See [`doc::LimitsDoc::max_header_bytes`].
    pub max_header_bytes: usize,
    /// See [`doc::LimitsDoc::max_path_bytes`].
    pub max_path_bytes: usize,
}

/// A compiled policy. Immutable; share it with `Arc`.
pub struct Policy {
    pub(crate) limits: Limits,
    pub(crate) issuers: Vec<IssuerPolicy>,
    pub(crate) service_tokens: Option<ServiceTokenPolicy>,
    pub(crate) api_keys: Option<ApiKeyPolicy>,
    pub(crate) statics: RevocationSet,
    pub(crate) engine: Engine,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy")
            .field("issuers", &self.issuers.len())
            .field("service_tokens", &self.service_tokens.is_some())
            .field("api_keys", &self.api_keys.as_ref().map(|a| a.entries().len()))
            .finish_non_exhaustive()
    }
}

/// Parses policy text (JSON when it starts with `{`, YAML otherwise) into a JSON value.
///
/// JSON goes through the strict token parser so duplicate keys are errors in both syntaxes.
pub fn parse_text(text: &str) -> Result<serde_json::Value, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::Syntax(format!("larger than {MAX_POLICY_BYTES} bytes")));
    }
    if text.trim_start().starts_with('{') {
        let obj = crate::json::parse_object(text.as_bytes()).map_err(|e| PolicyError::Syntax(e.to_string()))?;
        return Ok(crate::json::Json::Obj(obj).to_value());
    }
    serde_saphyr::from_str::<serde_json::Value>(text).map_err(|e| PolicyError::Syntax(yaml_error(&e)))
}

/// The first line of a YAML error: its message and location, without the quoted source line
/// (which could hold a secret).
fn yaml_error(e: &serde_saphyr::Error) -> String {
    use serde_saphyr::budget::BudgetBreach;
    if let serde_saphyr::Error::Budget { breach, .. } = e.without_snippet() {
        let limits = serde_saphyr::Budget::default();
        return match breach {
            BudgetBreach::Nodes { .. } => format!(
                "the policy has more than {} YAML nodes (mappings, lists and values), the most a policy may have",
                limits.max_nodes
            ),
            BudgetBreach::Depth { .. } => format!("the policy nests deeper than {} levels", limits.max_depth),
            other => format!("the policy exceeds a YAML parser limit ({other:?})"),
        };
    }
    let full = e.to_string();
    let first = full.lines().next().unwrap_or("invalid YAML");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    // The parser's hint names an option of its own API, which a policy author cannot set.
    first.replace(", set DuplicateKeyPolicy in Options if acceptable", "")
}

/// Reads the typed document from a parsed value, with the path of any error.
pub fn document_from_value(value: serde_json::Value) -> Result<PolicyDocument, PolicyError> {
    if !value.is_object() {
        return Err(PolicyError::invalid("$", "a policy is a mapping with at least `version: 1`"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| typed_error(&e))
}

/// A typed-document error with its path, and without the offending value: serde's messages
/// quote it (``invalid type: integer `1234`, expected a string``), and the field may be a
/// secret written as a number. The path says where to look.
pub(crate) fn typed_error(e: &serde_path_to_error::Error<serde_json::Error>) -> PolicyError {
    let path = e.path().to_string();
    let path = if path == "." { "$".to_string() } else { path };
    PolicyError::invalid(path, without_values(&e.inner().to_string()))
}

fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (unexpected, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            // `integer `5``, `string "x"`, `floating point `1.5``: keep the kind only.
            let kind = unexpected.split(['`', '"']).next().unwrap_or("").trim_end();
            return if expected.is_empty() {
                format!("{prefix}{kind}")
            } else {
                format!("{prefix}{kind}, expected {expected}")
            };
        }
    }
    message.to_owned()
}

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn a_secret_written_as_a_number_is_not_echoed() {
        let text =
            "version: 1\nservice_tokens:\n  audiences: [a]\n  keys:\n    - id: k\n      secret: 1234567890123456789\n";
        let e = Policy::load(text, &crate::NoFiles).unwrap_err().to_string();
        assert!(!e.contains("1234567890123456789"), "{e}");
        assert!(e.contains("invalid type: integer, expected a string"), "{e}");
        assert!(e.contains("service_tokens.keys[0].secret"), "{e}");
    }

    #[test]
    fn yaml_limits_and_duplicate_keys_are_said_in_the_policy_authors_terms() {
        let dup = Policy::load("version: 1\nversion: 1\n", &crate::NoFiles).unwrap_err().to_string();
        assert!(dup.contains("duplicate") && !dup.contains("DuplicateKeyPolicy"), "{dup}");
        let mut big = String::from("version: 1\nx:\n");
        for i in 0..130_000 {
            big.push_str(&format!("  k{i}: v\n"));
        }
        let e = Policy::load(&big, &crate::NoFiles).unwrap_err().to_string();
        assert!(e.contains("more than 250000 YAML nodes"), "{e}");
    }

    #[test]
    fn values_are_cut_from_type_errors_but_the_rest_stays() {
        assert_eq!(without_values("invalid type: string \"abc\", expected u32"), "invalid type: string, expected u32");
        assert_eq!(
            without_values("invalid value: floating point `1.5`, expected x"),
            "invalid value: floating point, expected x"
        );
        assert_eq!(without_values("invalid type: map, expected a string"), "invalid type: map, expected a string");
        assert_eq!(without_values("unknown field `x`, expected `y`"), "unknown field `x`, expected `y`");
    }
}

impl Policy {
    /// Parses and compiles policy text, reading referenced files from `files`.
    pub fn load(text: &str, files: &dyn FileSource) -> Result<Policy, PolicyError> {
        let doc = document_from_value(parse_text(text)?)?;
        compile::compile(&doc, files)
    }

    /// Compiles an already-parsed document.
    pub fn compile(doc: &PolicyDocument, files: &dyn FileSource) -> Result<Policy, PolicyError> {
        compile::compile(doc, files)
    }

    /// The files a policy references, in the order they appear, so a host can read them
    /// before calling [`Policy::load`].
    pub fn referenced_files(text: &str) -> Result<Vec<String>, PolicyError> {
        let doc = document_from_value(parse_text(text)?)?;
        Ok(compile::referenced_files(&doc))
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The trusted JWT issuers, for tooling (key rotation plans).
    pub fn issuers(&self) -> &[crate::jwt::IssuerPolicy] {
        &self.issuers
    }

    /// The service token section, for tooling that mints tokens.
    pub fn service_tokens(&self) -> Option<&ServiceTokenPolicy> {
        self.service_tokens.as_ref()
    }

    /// The compiled routes, roles and rules.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn check_limits(&self, req: &Request<'_>) -> Result<(), Reason> {
        let l = &self.limits;
        if req.headers.len() > l.max_headers || req.path.len() + req.query.len() > l.max_path_bytes {
            return Err(Reason::Malformed);
        }
        let header_bytes: usize = req.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if header_bytes > l.max_header_bytes {
            return Err(Reason::Malformed);
        }
        Ok(())
    }

    /// Finds the request's credential and verifies it.
    pub(crate) fn authenticate(
        &self,
        req: &Request<'_>,
        accept: &Accept,
        revocations: &dyn Revocations,
    ) -> Result<Arc<Identity>, Reason> {
        match self.presented(req)? {
            Presented::Jwt(_) if accept.issuers.as_ref().is_some_and(Vec::is_empty) => {
                Err(Reason::CredentialNotAccepted)
            }
            Presented::ServiceToken(..) if accept.service_audiences.as_ref().is_some_and(Vec::is_empty) => {
                Err(Reason::CredentialNotAccepted)
            }
            Presented::ApiKey(..) if accept.api_keys == KeyAccept::Nothing => Err(Reason::CredentialNotAccepted),
            Presented::Jwt(token) => {
                let ctx = JwtContext {
                    issuers: &self.issuers,
                    max_token_bytes: self.limits.max_token_bytes,
                    statics: &self.statics,
                };
                jwt::verify(token, &ctx, accept.issuers.as_deref(), req.now, revocations).map(Arc::new)
            }
            Presented::ServiceToken(token, policy) => policy
                .verify(
                    token,
                    req,
                    self.limits.max_token_bytes,
                    accept.service_audiences.as_deref(),
                    &self.statics,
                    revocations,
                )
                .map(Arc::new),
            Presented::ApiKey(key, policy) => policy.verify(key, req, &accept.api_keys, revocations),
        }
    }

    fn presented<'r>(&'r self, req: &Request<'r>) -> Result<Presented<'r>, Reason> {
        // Without API keys, the second name never matches a real header.
        let api_name = self.api_keys.as_ref().map_or("", |a| a.header.as_str());
        let (authorization, api_header) = match req.header_pair("authorization", api_name) {
            (HeaderValue::Repeated, _) | (_, HeaderValue::Repeated) => {
                return Err(Reason::Malformed);
            }
            (a, k) => (a.value(), k.value().zip(self.api_keys.as_ref())),
        };
        match (authorization, api_header) {
            (Some(_), Some(_)) => Err(Reason::AmbiguousCredential),
            (None, Some((key, policy))) => Ok(Presented::ApiKey(key, policy)),
            (None, None) => Err(Reason::MissingCredential),
            (Some(value), None) => {
                let token = bearer(value, self.limits.max_token_bytes)?;
                if let Some(a) = self.api_keys.as_ref().filter(|a| a.claims_token(token)) {
                    return Ok(Presented::ApiKey(token, a));
                }
                if let Some(s) = self.service_tokens.as_ref().filter(|s| s.claims_token(token)) {
                    return Ok(Presented::ServiceToken(token, s));
                }
                if self.issuers.is_empty() {
                    return Err(Reason::Malformed);
                }
                Ok(Presented::Jwt(token))
            }
        }
    }
}

enum Presented<'r> {
    Jwt(&'r str),
    ServiceToken(&'r str, &'r ServiceTokenPolicy),
    ApiKey(&'r str, &'r ApiKeyPolicy),
}

/// `Bearer <token>` (RFC 6750 §2.1): scheme case-insensitive, then one or more spaces, then a
/// token with no whitespace.
fn bearer(value: &str, max_token_bytes: usize) -> Result<&str, Reason> {
    if value.len() > max_token_bytes + 64 {
        return Err(Reason::Malformed);
    }
    let (scheme, rest) = value.split_once(' ').ok_or(Reason::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(Reason::Malformed);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || !crate::ascii::all_graphic(token.as_bytes()) {
        return Err(Reason::Malformed);
    }
    Ok(token)
}

/// The policy format's JSON Schema (draft 2020-12), generated from the same types the loader
/// uses, so it cannot drift from what `Policy::load` accepts structurally.
#[cfg(feature = "schema")]
pub fn json_schema() -> serde_json::Value {
    let mut v = schemars::schema_for!(PolicyDocument).to_value();
    if let Some(o) = v.as_object_mut() {
        o.insert("$id".into(), "https://portcullis.dev/schema/policy-v1.json".into());
        o.insert("title".into(), "Portcullis policy, version 1".into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn bearer_parsing_is_strict_about_shape() {
        assert_eq!(bearer("Bearer abc", 100), Ok("abc"));
        assert_eq!(bearer("bearer  abc", 100), Ok("abc"));
        for bad in ["Bearer", "Bearer ", "Basic abc", "Bearer a b", "Bearer\tabc", "Bearerabc", "Bearer a\u{e9}"] {
            assert_eq!(bearer(bad, 100), Err(Reason::Malformed), "{bad:?}");
        }
        assert_eq!(bearer(&format!("Bearer {}", "a".repeat(200)), 100), Err(Reason::Malformed));
    }

    #[test]
    fn yaml_and_json_policies_parse_to_the_same_value() {
        let y = parse_text("version: 1\nissuers: []\n").unwrap();
        let j = parse_text(r#"{"version": 1, "issuers": []}"#).unwrap();
        assert_eq!(y, j);
    }

    #[test]
    fn duplicate_keys_are_errors_in_yaml_and_json() {
        assert_eq!(parse_text("version: 1\nversion: 1\n").unwrap_err().code(), "policy_syntax");
        assert_eq!(parse_text(r#"{"version":1,"version":1}"#).unwrap_err().code(), "policy_syntax");
    }

    #[test]
    fn unknown_fields_are_errors_with_a_path() {
        let e = document_from_value(parse_text("version: 1\nissuers:\n  - issuer: x\n    audiences: [a]\n    algorithms: [HS256]\n    leway_seconds: 3\n").unwrap()).unwrap_err();
        assert_eq!(e.code(), "policy_invalid");
        let msg = e.to_string();
        assert!(msg.starts_with("issuers[0]"), "{msg}");
        assert!(msg.contains("leway_seconds"), "{msg}");
    }

    #[test]
    fn yaml_errors_do_not_quote_the_source() {
        let e = parse_text("version: 1\nsecret: \"hunter2-very-secret\n  : [").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
