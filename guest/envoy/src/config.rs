//! The filter's configuration: the policy bundle inline (the same policy format as the sidecar,
//! with the files it references carried as text or base64), and how revocations and the
//! client address are found. Parsed and compiled once per VM, in `on_configure`.

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_adapter::bundle::{Bundle, InlineFile};
use portcullis_adapter::revocation::StaleMode;
use portcullis_core::Policy;
use serde::Deserialize;

/// The plugin configuration, as JSON (Envoy's `configuration` of the wasm filter, a
/// `google.protobuf.StringValue`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The policy: its text (YAML or JSON, exactly as the sidecar reads it from its file), or
    /// the policy document itself as a JSON object.
    pub policy: PolicySource,
    /// The files the policy references, by the path written in the policy.
    #[serde(default)]
    pub files: BTreeMap<String, InlineFile>,
    /// Where the key sets of the policy's network sources (`jwks_uri`, `discovery`) come from:
    /// the sidecar, which fetches them from the identity provider. None: such issuers answer
    /// `keys_unavailable` unless the configuration carries their sets in `files` (by URL).
    #[serde(default)]
    pub keys: Option<KeysConfig>,
    /// Where revocations come from; none: only the policy's own `revoked` lists apply.
    #[serde(default)]
    pub revocations: Option<FeedConfig>,
    /// A request header holding the client address (its last entry), for an Envoy behind a
    /// proxy that appends the peer it saw. Default: Envoy's own peer (`source.address`).
    #[serde(default)]
    pub client_address_header: Option<String>,
    /// Decide as if at this Unix time instead of Envoy's clock. For tests that replay a fixed
    /// corpus; the filter logs a warning when it is set.
    #[serde(default)]
    pub fixed_now: Option<i64>,
    /// Verified signatures kept per worker VM (0: none). Default 4096, about 0.4 MiB.
    #[serde(default = "default_cache_entries")]
    pub signature_cache_entries: usize,
    /// Verified JWTs kept per worker VM (0: none); a repeated token skips decoding, signature
    /// and claims. Default 1024, about 2 MiB at 2 KiB per token and identity.
    #[serde(default = "default_token_entries")]
    pub token_cache_entries: usize,
    /// Rate-limit buckets kept in Envoy's shared data, shared by every worker VM of this
    /// `vm_id`: a fixed number of slots (a power of two, 16 bytes of value each); a key hashes
    /// to one slot and a new key takes it over. Default 65536.
    #[serde(default = "default_rate_limit_slots")]
    pub rate_limit_slots: u32,
}

fn default_token_entries() -> usize {
    1024
}

fn default_rate_limit_slots() -> u32 {
    1 << 16
}

fn default_cache_entries() -> usize {
    4096
}

/// A policy as text or as a document.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PolicySource {
    /// YAML or JSON text.
    Text(String),
    /// The document (`{"version": 1, ...}`).
    Document(serde_json::Map<String, serde_json::Value>),
}

/// Following the sidecar's revocation feed through an Envoy cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// The Envoy cluster of the sidecar's admin listener.
    pub cluster: String,
    /// The `:authority` sent to it.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// A credential the sidecar's policy grants the revocations read scope
    /// (`Authorization: Bearer ...` or, for an API key, the policy's API key header).
    pub credential: Credential,
    /// How often to ask for changes, in milliseconds (default 1000).
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Longest wait for one answer, in milliseconds (default 2000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Past this many milliseconds without a fresh answer the set is stale (default 30000).
    #[serde(default = "default_stale_ms")]
    pub stale_after_ms: u64,
    /// What stale means: `serve` (default) or `fail-closed`.
    #[serde(default = "default_mode")]
    pub stale_mode: String,
}

/// Following the sidecar's key sets (`GET /v1/keys` on its admin listener).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The Envoy cluster of the sidecar's admin listener.
    pub cluster: String,
    /// The `:authority` sent to it.
    #[serde(default = "default_authority")]
    pub authority: String,
    /// How often to ask, in milliseconds (default 5000); an unchanged answer is a 304.
    #[serde(default = "default_keys_poll_ms")]
    pub poll_ms: u64,
    /// Longest wait for one answer, in milliseconds (default 2000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_keys_poll_ms() -> u64 {
    5000
}

/// The key-set settings, checked.
#[derive(Debug)]
pub struct Keys {
    /// Cluster.
    pub cluster: String,
    /// Authority.
    pub authority: String,
    /// Poll period.
    pub poll: Duration,
    /// Call timeout.
    pub timeout: Duration,
}

/// How the filter authenticates to the feed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The header to send it in (`authorization` for a bearer token, `x-api-key`, ...).
    pub header: String,
    /// The value, sent as is (`Bearer ...` for a token).
    pub value: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("header", &self.header).finish_non_exhaustive()
    }
}

fn default_authority() -> String {
    "portcullis-admin".into()
}
fn default_poll_ms() -> u64 {
    1000
}
fn default_timeout_ms() -> u64 {
    2000
}
fn default_stale_ms() -> u64 {
    30_000
}
fn default_mode() -> String {
    "serve".into()
}

/// The feed settings, checked.
pub struct Feed {
    /// Cluster.
    pub cluster: String,
    /// Authority.
    pub authority: String,
    /// Credential header name.
    pub header: String,
    /// Credential value.
    pub value: String,
    /// Poll period.
    pub poll: Duration,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Staleness bound.
    pub stale_after: Duration,
    /// Stale mode.
    pub mode: StaleMode,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Everything but the credential's value.
        f.debug_struct("Feed")
            .field("cluster", &self.cluster)
            .field("authority", &self.authority)
            .field("header", &self.header)
            .field("poll", &self.poll)
            .field("timeout", &self.timeout)
            .field("stale_after", &self.stale_after)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// A configuration that cannot start the filter, with a stable code.
#[derive(Debug)]
pub struct ConfigError {
    /// `config_invalid`, or the bundle's code (`policy_syntax`, `policy_invalid`, `policy_file`).
    pub code: &'static str,
    /// What is wrong (never a secret).
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}", self.code, self.message)
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError { code: "config_invalid", message: message.into() }
}

/// Everything the filter needs, compiled.
#[derive(Debug)]
pub struct Compiled {
    /// The policy.
    pub policy: Policy,
    /// What it was compiled from (compiled again when new key sets arrive).
    pub bundle: Bundle,
    /// Following the sidecar's key sets, when configured.
    pub keys: Option<Keys>,
    /// The feed, when configured.
    pub feed: Option<Feed>,
    /// See [`FilterConfig::client_address_header`].
    pub client_address_header: Option<String>,
    /// See [`FilterConfig::fixed_now`].
    pub fixed_now: Option<i64>,
    /// See [`FilterConfig::signature_cache_entries`].
    pub signature_cache_entries: usize,
    /// See [`FilterConfig::token_cache_entries`].
    pub token_cache_entries: usize,
    /// See [`FilterConfig::rate_limit_slots`].
    pub rate_limit_slots: u32,
}

/// Parses and compiles a plugin configuration.
pub fn compile(bytes: &[u8]) -> Result<Compiled, ConfigError> {
    // serde_json's messages name the field and position, never a value.
    let config: FilterConfig =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("the plugin configuration: {e}")))?;
    let text = match &config.policy {
        PolicySource::Text(t) => std::borrow::Cow::Borrowed(t.as_str()),
        // JSON text is policy text (the loader reads JSON when it starts with `{`).
        PolicySource::Document(d) => std::borrow::Cow::Owned(serde_json::Value::Object(d.clone()).to_string()),
    };
    let bundle = Bundle::from_inline("the plugin configuration", &text, &config.files)
        .map_err(|e| ConfigError { code: e.code(), message: e.to_string() })?;
    let policy = bundle.compile().map_err(|e| ConfigError { code: e.code(), message: e.to_string() })?;
    let feed = config.revocations.map(feed).transpose()?;
    let keys = config.keys.map(keys).transpose()?;
    if let Some(h) = &config.client_address_header
        && (h.is_empty() || h.starts_with(':'))
    {
        return Err(invalid("`client_address_header` names a request header"));
    }
    if config.signature_cache_entries > 1 << 20 || config.token_cache_entries > 1 << 20 {
        return Err(invalid("`signature_cache_entries` and `token_cache_entries` are at most 1048576"));
    }
    if !config.rate_limit_slots.is_power_of_two() || config.rate_limit_slots > 1 << 24 {
        return Err(invalid("`rate_limit_slots` is a power of two, at most 16777216"));
    }
    Ok(Compiled {
        policy,
        bundle,
        keys,
        feed,
        client_address_header: config.client_address_header,
        fixed_now: config.fixed_now,
        signature_cache_entries: config.signature_cache_entries,
        token_cache_entries: config.token_cache_entries,
        rate_limit_slots: config.rate_limit_slots,
    })
}

fn keys(k: KeysConfig) -> Result<Keys, ConfigError> {
    if k.cluster.is_empty() {
        return Err(invalid("keys.cluster names the Envoy cluster of the sidecar's admin listener"));
    }
    if !(50..=3_600_000).contains(&k.poll_ms) {
        return Err(invalid("keys.poll_ms is outside 50..=3600000"));
    }
    if !(10..=60_000).contains(&k.timeout_ms) {
        return Err(invalid("keys.timeout_ms is outside 10..=60000"));
    }
    Ok(Keys {
        cluster: k.cluster,
        authority: k.authority,
        poll: Duration::from_millis(k.poll_ms),
        timeout: Duration::from_millis(k.timeout_ms),
    })
}

/// The key sets of a `GET /v1/keys` answer, by source URL.
pub fn key_sets(body: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    #[derive(Deserialize)]
    struct Answer {
        sets: BTreeMap<String, serde_json::Value>,
    }
    let a: Answer = serde_json::from_slice(body).map_err(|e| format!("not a key set answer: {e}"))?;
    Ok(a.sets.into_iter().map(|(url, set)| (url, set.to_string().into_bytes())).collect())
}

fn feed(f: FeedConfig) -> Result<Feed, ConfigError> {
    let mode = f.stale_mode.parse::<StaleMode>().map_err(|e| invalid(format!("revocations.stale_mode: {e}")))?;
    if f.cluster.is_empty() {
        return Err(invalid("revocations.cluster names the Envoy cluster of the sidecar's admin listener"));
    }
    if !(50..=3_600_000).contains(&f.poll_ms) {
        return Err(invalid("revocations.poll_ms is outside 50..=3600000"));
    }
    if !(10..=60_000).contains(&f.timeout_ms) {
        return Err(invalid("revocations.timeout_ms is outside 10..=60000"));
    }
    if f.stale_after_ms < f.poll_ms {
        return Err(invalid("revocations.stale_after_ms is shorter than poll_ms: the set would always be stale"));
    }
    if f.credential.header.is_empty() || f.credential.value.is_empty() {
        return Err(invalid("revocations.credential needs a header and a value"));
    }
    Ok(Feed {
        cluster: f.cluster,
        authority: f.authority,
        header: f.credential.header.to_ascii_lowercase(),
        value: f.credential.value,
        poll: Duration::from_millis(f.poll_ms),
        timeout: Duration::from_millis(f.timeout_ms),
        stale_after: Duration::from_millis(f.stale_after_ms),
        mode,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const POLICY: &str = "version: 1\nissuers:\n  - issuer: https://issuer.example\n    audiences: [api]\n    algorithms: [HS256]\n    jwks_file: keys.json\n";
    const JWKS: &str = r#"{"keys":[{"kty":"oct","kid":"k","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;

    fn config(extra: serde_json::Value) -> Vec<u8> {
        let mut v = serde_json::json!({"policy": POLICY, "files": {"keys.json": JWKS}});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn the_policy_may_be_a_document_instead_of_text() {
        let doc: serde_json::Value =
            serde_json::from_str(&portcullis_core::parse_text(POLICY).unwrap().to_string()).unwrap();
        assert!(compile(&config(serde_json::json!({ "policy": doc }))).is_ok());
        let e = compile(&config(serde_json::json!({ "policy": 7 }))).unwrap_err();
        assert_eq!(e.code, "config_invalid");
    }

    #[test]
    fn a_bundle_with_text_or_base64_files_compiles() {
        let c = compile(&config(serde_json::json!({}))).unwrap();
        assert!(c.feed.is_none() && c.fixed_now.is_none());
        let b64 = InlineFile::of(JWKS.as_bytes())
            .bytes()
            .map(|b| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(b)
            })
            .unwrap();
        let c = compile(&config(serde_json::json!({"files": {"keys.json": {"base64": b64}}})));
        assert!(c.is_ok());
    }

    #[test]
    fn bad_configurations_are_refused_with_a_code_and_no_secret() {
        let e = compile(b"{").unwrap_err();
        assert_eq!(e.code, "config_invalid");
        let e = compile(&config(serde_json::json!({"files": {}}))).unwrap_err();
        assert_eq!(e.code, "policy_file", "{e}");
        let e = compile(&config(serde_json::json!({"policy": "version: 2"}))).unwrap_err();
        assert_eq!(e.code, "policy_invalid", "{e}");
        let e = compile(&config(serde_json::json!({"polcy": "x"}))).unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
        let feed = |extra: serde_json::Value| {
            let mut f = serde_json::json!({"cluster": "admin", "credential": {"header": "authorization", "value": "Bearer s3cret-token"}});
            if let (Some(o), Some(e)) = (f.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            compile(&config(serde_json::json!({ "revocations": f })))
        };
        let ok = feed(serde_json::json!({})).unwrap().feed.unwrap();
        assert_eq!((ok.poll, ok.mode, ok.header.as_str()), (Duration::from_secs(1), StaleMode::Serve, "authorization"));
        assert!(!format!("{ok:?}").contains("s3cret"), "the credential is never printed");
        for bad in [
            serde_json::json!({"stale_mode": "closed"}),
            serde_json::json!({"poll_ms": 1}),
            serde_json::json!({"stale_after_ms": 10, "poll_ms": 100}),
            serde_json::json!({"cluster": ""}),
        ] {
            let e = feed(bad.clone()).unwrap_err();
            assert_eq!(e.code, "config_invalid", "{bad}");
            assert!(!e.message.contains("s3cret"));
        }
    }
}
