//! Policies: parsed once, compiled into an immutable index, then used for every decision.

mod compile;
mod compile_edge;
mod compile_engine;
pub(crate) mod doc;
#[cfg(test)]
mod remote_tests;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::credential::Credentials;
use crate::credential::jwt::IssuerPolicy;
use crate::credential::service_token::ServiceTokenPolicy;
use crate::decision::Decision;
use crate::engine::audit::AuditEvent;
use crate::engine::explain::Explanation;
use crate::engine::{Decider, Engine};
use crate::identity::Identity;
use crate::request::{Limits, Request};
use crate::revocation::Revocations;

pub(crate) use doc::PolicyDocument;

/// Largest policy text accepted.
pub(crate) const MAX_POLICY_BYTES: usize = 16 << 20;

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

    pub(crate) fn invalid(path: impl Into<String>, message: impl std::fmt::Display) -> PolicyError {
        PolicyError::Invalid { path: path.into(), message: message.to_string() }
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

/// A key source an issuer reads from the network: what a runtime fetches (over HTTPS, with its
/// own trust roots) and hands back as a file named by `url`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemoteKeySource {
    /// The issuer whose keys these are (its exact `iss`).
    pub issuer: String,
    /// The JWKS URL (`jwks_uri`), or the OpenID configuration URL (`discovery`).
    pub url: String,
    /// `url` is an OpenID configuration: its `issuer` must equal [`issuer`](Self::issuer)
    /// exactly, and its `jwks_uri` (`https://`) is the key set. The file handed back is that
    /// key set.
    pub discovery: bool,
}

/// An issuer's keys as compiled (see [`Policy::key_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IssuerKeys<'p> {
    /// The issuer.
    pub issuer: &'p str,
    /// Keys trusted, from every source supplied.
    pub keys: usize,
    /// Key sources in the network.
    pub remote_sources: usize,
    /// Network sources not supplied.
    pub unfetched: usize,
}

/// A compiled policy. Immutable; share it with `Arc`.
///
/// Two parts, run in this order for every request: the [`Credentials`] find and verify the
/// credential; the [`Engine`] picks the route, checks its requirements and the rules, and
/// renders the decision.
pub struct Policy {
    pub(crate) limits: Limits,
    pub(crate) credentials: Credentials,
    pub(crate) engine: Engine,
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Policy").field("credentials", &self.credentials).finish_non_exhaustive()
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
    fn the_policy_says_whether_decisions_can_depend_on_the_client_address() {
        let keys = |cidrs: &str| {
            let file = format!(
                "keys:\n  - id: k\n    prefix: ask_live0001\n    sha256: {}\n{cidrs}",
                "8dada70aedd83fca2789408648347f3e775ede597228e359306436aa72d79d0f"
            );
            BTreeMap::from([("keys.yaml".to_string(), file.into_bytes())])
        };
        let text = "version: 1\napi_keys: {prefix: ask_, keys_file: keys.yaml}\n";
        assert!(!Policy::load(text, &keys("")).unwrap().reads_client_address());
        assert!(Policy::load(text, &keys("    allowed_cidrs: [203.0.113.0/24]\n")).unwrap().reads_client_address());
        let rule = |when: &str| {
            let text = format!("{text}rules:\n  - {{id: r, effect: deny, when: {{{when}}}}}\n");
            Policy::load(&text, &keys("")).unwrap().reads_client_address()
        };
        assert!(rule("client_cidrs: [10.0.0.0/8]"));
        assert!(!rule("methods: [DELETE]"));
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

    /// The key sources in the network every issuer names (`jwks_uri`, `discovery`), in
    /// document order, so a runtime can fetch them and pass each back as a file named by its
    /// [`url`](RemoteKeySource::url) (absent until fetched: the issuer then answers
    /// `keys_unavailable`).
    pub fn remote_key_sources(text: &str) -> Result<Vec<RemoteKeySource>, PolicyError> {
        let doc = document_from_value(parse_text(text)?)?;
        let mut out = Vec::new();
        for (i, d) in doc.issuers.iter().enumerate() {
            out.extend(compile::remote_sources(&format!("issuers[{i}]"), d)?);
        }
        Ok(out)
    }

    /// The trusted issuer a request's bearer token names in `iss`, read without verifying
    /// anything, for a runtime deciding whose keys to refetch after `unknown_kid` or
    /// `keys_unavailable`. Never an input to a decision.
    pub fn token_issuer(&self, req: &Request<'_>) -> Option<&str> {
        self.credentials.token_issuer(req).map(|i| i.issuer.as_str())
    }

    /// Per issuer: keys trusted, network sources, and how many of those were not supplied.
    pub fn key_status(&self) -> Vec<IssuerKeys<'_>> {
        self.credentials
            .issuers
            .iter()
            .map(|i| IssuerKeys {
                issuer: i.issuer.as_str(),
                keys: i.keys.len(),
                remote_sources: i.remote_sources,
                unfetched: i.unfetched,
            })
            .collect()
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The trusted JWT issuers, for tooling (key rotation plans).
    pub fn issuers(&self) -> &[IssuerPolicy] {
        &self.credentials.issuers
    }

    /// The service token section, for tooling that mints tokens.
    pub fn service_tokens(&self) -> Option<&ServiceTokenPolicy> {
        self.credentials.service_tokens.as_ref()
    }

    /// Whether any decision can depend on the client address: a rule with `client_cidrs` or
    /// `not_client_cidrs`, a rate limit keyed by `client`, or an API key with `allowed_cidrs`. A runtime for which reading the peer address costs
    /// something (a call across the proxy-wasm ABI) may leave it unknown when this is false;
    /// decisions are the same either way.
    pub fn reads_client_address(&self) -> bool {
        self.engine.rules.iter().any(|r| !r.client_cidrs.is_empty() || !r.not_client_cidrs.is_empty())
            || self.engine.rate.limits.iter().any(|l| l.key.contains(&crate::engine::edge::KeyPart::Client))
            || self
                .credentials
                .api_keys
                .as_ref()
                .is_some_and(|k| k.entries().iter().any(|e| !e.allowed_cidrs.is_empty()))
    }

    /// The compiled routes, roles and rules.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Decides one request: the credential first, then the engine (see `crate::engine` for
    /// the order of stages).
    pub fn decide(&self, req: &Request<'_>, revocations: &dyn Revocations) -> Decision {
        self.decider().decide(req, revocations)
    }

    /// Authorizes a request for an identity the caller has already verified (for example behind
    /// another authenticator): routes, the route's accepted credentials, requirements and rules
    /// apply exactly as in [`Policy::decide`]; no credential in the request is looked at, and
    /// rate limits are not counted (there is no host to count with).
    pub fn decide_for(&self, req: &Request<'_>, identity: &Arc<Identity>) -> Decision {
        self.decider().decide_for(req, identity)
    }

    /// Decides and records every stage: which route matched, what each requirement needed and
    /// found, which rules applied. For `portcullis explain`; slower than [`Policy::decide`].
    pub fn explain(&self, req: &Request<'_>, revocations: &dyn Revocations) -> (Decision, Explanation) {
        self.decider().explain(req, revocations)
    }

    /// The audit event for a decision, per the policy's audit settings.
    pub fn audit_event<'a>(&'a self, req: &Request<'a>, d: &'a Decision) -> AuditEvent<'a> {
        self.engine.audit_event(req, d)
    }

    /// Whether `identity` holds `scope`: its own scopes, or through one of its roles (the same
    /// rule routes use).
    pub fn grants(&self, identity: &Identity, scope: &str) -> bool {
        self.engine.grants(identity, scope)
    }

    pub(crate) fn decider(&self) -> Decider<'_> {
        Decider { limits: &self.limits, credentials: &self.credentials, engine: &self.engine }
    }
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
