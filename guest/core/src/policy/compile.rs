//! Turns a [`PolicyDocument`] into a [`Policy`]: every value validated, every file read once,
//! every index built. Nothing here runs per request.

use std::collections::HashSet;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;

use super::doc::{
    ApiKeyDoc, ApiKeysDoc, ApiKeysFileDoc, IssuerDoc, PolicyDocument, SecretDoc, ServiceTokensDoc, TimeDoc,
};
use super::{FileSource, Policy, PolicyError, RemoteKeySource, parse_text};
use crate::credential::Credentials;
use crate::credential::api_key::{ApiKeyEntry, ApiKeyPolicy, OriginPattern};
use crate::credential::jwt::{ClaimMapping, IssuerPolicy};
use crate::credential::service_token::{ServiceKey, ServiceTokenPolicy};
use crate::identity::{CredentialKind, Identity, Names};
use crate::json::ClaimPath;
use crate::keys::{Alg, AlgSet, KeySet};
use crate::request::Limits;
use crate::revocation::RevocationSet;
use crate::time::UnixTime;
use crate::types::{ApiKeyPrefix, Issuer, ScopePattern, TenantId};

type Result<T> = std::result::Result<T, PolicyError>;

fn invalid<T>(path: impl Into<String>, message: impl std::fmt::Display) -> Result<T> {
    Err(PolicyError::invalid(path, message))
}

fn parse<T: FromStr<Err: std::fmt::Display>>(path: &str, s: &str) -> Result<T> {
    s.parse().map_err(|e| PolicyError::invalid(path, e))
}

fn read(files: &dyn FileSource, path: &str, file: &str) -> Result<Vec<u8>> {
    files.read(file).map_err(|message| PolicyError::File { path: path.into(), file: file.into(), message })
}

/// Every file a document references, in document order.
pub(super) fn referenced_files(doc: &PolicyDocument) -> Vec<String> {
    let mut out = Vec::new();
    for i in &doc.issuers {
        out.extend(i.jwks_file.clone());
    }
    if let Some(s) = &doc.service_tokens {
        out.extend(s.keys.iter().filter_map(|k| k.secret_file.clone()));
    }
    if let Some(a) = &doc.api_keys {
        out.extend(a.keys_file.clone());
    }
    out
}

pub(super) fn compile(doc: &PolicyDocument, files: &dyn FileSource) -> Result<Policy> {
    if doc.version != 1 {
        return invalid("version", format!("unsupported version {}; this build reads version 1", doc.version));
    }
    let limits = limits(doc)?;
    let issuers = doc
        .issuers
        .iter()
        .enumerate()
        .map(|(i, d)| issuer(&format!("issuers[{i}]"), d, files))
        .collect::<Result<Vec<_>>>()?;
    let mut seen = HashSet::new();
    for (i, iss) in issuers.iter().enumerate() {
        if !seen.insert(iss.issuer.as_str()) {
            return invalid(format!("issuers[{i}].issuer"), format!("issuer `{}` is listed twice", iss.issuer));
        }
    }
    let service_tokens = doc.service_tokens.as_ref().map(|s| service_tokens(s, files)).transpose()?;
    let statics = revoked(doc)?;
    let mut api_keys = doc.api_keys.as_ref().map(|a| api_keys(a, files)).transpose()?;
    if let Some(a) = &mut api_keys {
        a.apply_static_revocations(&statics);
    }
    if let (Some(svc), Some(api)) = (&doc.service_tokens, &api_keys) {
        let marker = format!("{}-v1.", svc.prefix);
        if marker.starts_with(api.prefix.as_str()) || api.prefix.as_str().starts_with(&marker) {
            return invalid("api_keys.prefix", "overlaps the service token prefix; a bearer token would be ambiguous");
        }
    }
    let creds = super::compile_engine::Credentials {
        issuers: &issuers,
        service: service_tokens.as_ref(),
        api_keys: api_keys.as_ref(),
    };
    let engine = super::compile_engine::engine(doc, &creds)?;
    let needs_credentials =
        engine.default == crate::engine::Default::Authenticated || engine.routes.iter().any(|r| !r.public);
    if needs_credentials && issuers.is_empty() && service_tokens.is_none() && api_keys.is_none() {
        return invalid("$", "the policy accepts no credentials: configure issuers, service_tokens or api_keys");
    }
    let credentials =
        Credentials { issuers, service_tokens, api_keys, statics, max_token_bytes: limits.max_token_bytes };
    Ok(Policy { limits, credentials, engine })
}

fn limits(doc: &PolicyDocument) -> Result<Limits> {
    let l = &doc.limits;
    let check = |name: &str, v: usize, lo: usize, hi: usize| {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            invalid(format!("limits.{name}"), format!("{v} is outside {lo}..={hi}"))
        }
    };
    Ok(Limits {
        max_token_bytes: check("max_token_bytes", l.max_token_bytes, 256, 65536)?,
        max_headers: check("max_headers", l.max_headers, 1, 10_000)?,
        max_header_bytes: check("max_header_bytes", l.max_header_bytes, 1024, 1 << 20)?,
        max_path_bytes: check("max_path_bytes", l.max_path_bytes, 64, 1 << 20)?,
    })
}

fn nonempty_list(path: &str, v: &[String], what: &str) -> Result<Vec<Arc<str>>> {
    if v.is_empty() {
        return invalid(path, format!("at least one {what} is required"));
    }
    let mut seen = HashSet::new();
    v.iter()
        .enumerate()
        .map(|(i, s)| {
            if s.is_empty() || s.chars().any(char::is_control) {
                return invalid(format!("{path}[{i}]"), format!("{what} must be non-empty text"));
            }
            if !seen.insert(s.as_str()) {
                return invalid(format!("{path}[{i}]"), format!("{what} `{s}` is listed twice"));
            }
            Ok(Arc::from(s.as_str()))
        })
        .collect()
}

fn issuer(path: &str, d: &IssuerDoc, files: &dyn FileSource) -> Result<IssuerPolicy> {
    let issuer: Issuer = parse(&format!("{path}.issuer"), &d.issuer)?;
    let audiences = if d.insecure_skip_audience && d.audiences.is_empty() {
        Vec::new()
    } else {
        nonempty_list(&format!("{path}.audiences"), &d.audiences, "audience")?
    };
    if d.algorithms.is_empty() {
        return invalid(format!("{path}.algorithms"), "at least one algorithm is required");
    }
    let mut algorithms = AlgSet::EMPTY;
    for (i, a) in d.algorithms.iter().enumerate() {
        let alg: Alg = parse(&format!("{path}.algorithms[{i}]"), a)?;
        if algorithms.contains(alg) {
            return invalid(format!("{path}.algorithms[{i}]"), format!("{alg} is listed twice"));
        }
        algorithms.insert(alg);
    }
    let remote = remote_sources(path, d)?;
    let mut keys = KeySet::default();
    if let Some(file) = &d.jwks_file {
        let p = format!("{path}.jwks_file");
        if file.contains("://") {
            return invalid(p, "a file path, not a URL (keys from the network go in `jwks_uri`)");
        }
        let bytes = read(files, &p, file)?;
        keys = KeySet::from_jwks(&bytes, algorithms).map_err(|message| PolicyError::File {
            path: p,
            file: file.clone(),
            message: message.to_string(),
        })?;
    }
    if let Some(inline) = &d.jwks {
        let p = format!("{path}.jwks");
        let set = KeySet::from_jwks(inline.to_string().as_bytes(), algorithms)
            .map_err(|m| PolicyError::invalid(p.clone(), m))?;
        if let Some(kid) = keys.absorb(set).first() {
            return invalid(p, format!("kid `{kid}` is also in `jwks_file`"));
        }
    }
    if d.jwks_file.is_none() && d.jwks.is_none() && remote.is_empty() {
        return invalid(path, "a key source is required: `jwks_file`, `jwks`, `jwks_uri` or `discovery`");
    }
    if keys.is_empty() && remote.is_empty() {
        let why = if keys.skipped().is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                keys.skipped().iter().map(|(k, why)| format!("keys[{k}]: {why}")).collect::<Vec<_>>().join("; ")
            )
        };
        return invalid(path, format!("the key set has no key usable with the issuer's algorithms{why}"));
    }
    // Key sets from the network arrive as files named by their URL; one the runtime has not
    // fetched yet is absent, and the issuer answers `keys_unavailable` until it is.
    let mut unfetched = 0;
    for source in &remote {
        let field = if source.discovery { "discovery" } else { "jwks_uri" };
        match files.read(&source.url) {
            Ok(bytes) => {
                let set = KeySet::from_remote_jwks(&bytes, algorithms).map_err(|e| PolicyError::File {
                    path: format!("{path}.{field}"),
                    file: source.url.clone(),
                    message: e.to_string(),
                })?;
                // A `kid` the policy's own sources (or an earlier source) hold keeps that key.
                keys.absorb(set);
            }
            Err(_) => unfetched += 1,
        }
    }
    if d.leeway_seconds > 86_400 {
        return invalid(format!("{path}.leeway_seconds"), "more than a day of leeway is never right");
    }
    for (i, c) in d.required_claims.iter().enumerate() {
        if c.is_empty() {
            return invalid(format!("{path}.required_claims[{i}]"), "empty claim name");
        }
    }
    let claim = |field: &str, v: &str| parse::<ClaimPath>(&format!("{path}.claims.{field}"), v);
    let opt = |field: &str, v: &Option<String>| v.as_deref().map(|v| claim(field, v)).transpose();
    let c = &d.claims;
    let claims = ClaimMapping {
        subject: claim("subject", &c.subject)?,
        email: opt("email", &c.email)?,
        scopes: c.scopes.iter().map(|s| claim("scopes", s)).collect::<Result<_>>()?,
        roles: opt("roles", &c.roles)?,
        groups: opt("groups", &c.groups)?,
        tenant: opt("tenant", &c.tenant)?,
    };
    let mut group_roles = crate::FastMap::default();
    for (group, roles) in &d.group_roles {
        let p = format!("{path}.group_roles.{group}");
        let roles = roles.iter().map(|r| role_name(&p, r)).collect::<Result<Vec<_>>>()?;
        group_roles.insert(group.clone(), roles);
    }
    Ok(IssuerPolicy {
        remote_sources: remote.len(),
        unfetched,
        issuer,
        audiences,
        skip_audience: d.insecure_skip_audience,
        algorithms,
        keys,
        leeway: f64::from(d.leeway_seconds),
        max_lifetime: d.max_lifetime_seconds.map(f64::from),
        required_claims: d.required_claims.clone(),
        claims,
        group_roles,
    })
}

/// The key sources of an issuer that the runtime fetches, in document order.
pub(super) fn remote_sources(path: &str, d: &IssuerDoc) -> Result<Vec<RemoteKeySource>> {
    let mut out = Vec::new();
    if let Some(uri) = &d.jwks_uri {
        https_url(&format!("{path}.jwks_uri"), uri)?;
        out.push(RemoteKeySource { issuer: d.issuer.clone(), url: uri.clone(), discovery: false });
    }
    if d.discovery {
        https_url(&format!("{path}.issuer"), &d.issuer)
            .map_err(|_| PolicyError::invalid(format!("{path}.discovery"), "discovery needs an `https://` issuer"))?;
        let url = format!("{}/.well-known/openid-configuration", d.issuer.trim_end_matches('/'));
        if out.iter().any(|s| s.url == url) {
            return invalid(format!("{path}.discovery"), "`jwks_uri` already names the discovery document");
        }
        out.push(RemoteKeySource { issuer: d.issuer.clone(), url, discovery: true });
    }
    Ok(out)
}

/// An `https://` URL with a host and no user information (a credential in a URL ends up in
/// logs), in visible ASCII.
fn https_url(path: &str, url: &str) -> Result<()> {
    let rest = url.strip_prefix("https://").ok_or_else(|| PolicyError::invalid(path, "must be an `https://` URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if url.len() > 2048 || !url.bytes().all(|b| b.is_ascii_graphic()) || url.contains('#') {
        return invalid(path, "must be a URL of at most 2048 visible ASCII characters, without a fragment");
    }
    if authority.is_empty() || authority.contains('@') {
        return invalid(path, "must name a host, without user information");
    }
    Ok(())
}

pub(super) fn role_name(path: &str, r: &str) -> Result<Arc<str>> {
    if r.is_empty() || r.len() > 128 || !r.bytes().all(|b| b.is_ascii_graphic()) {
        return invalid(path, format!("role `{r}` must be 1 to 128 visible ASCII characters"));
    }
    Ok(Arc::from(r))
}

pub(super) fn header_name(path: &str, h: &str) -> Result<String> {
    // RFC 9110 token characters.
    let ok = !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok { Ok(h.to_owned()) } else { invalid(path, format!("`{h}` is not a valid header name")) }
}

fn secret(path: &str, d: &SecretDoc, files: &dyn FileSource) -> Result<Vec<u8>> {
    match (&d.secret, &d.secret_file) {
        (Some(s), None) => Ok(s.as_bytes().to_vec()),
        (None, Some(file)) => {
            let mut bytes = read(files, &format!("{path}.secret_file"), file)?;
            if bytes.ends_with(b"\r\n") {
                bytes.truncate(bytes.len() - 2);
            } else if bytes.ends_with(b"\n") {
                bytes.truncate(bytes.len() - 1);
            }
            Ok(bytes)
        }
        _ => invalid(path, "exactly one of `secret` and `secret_file` is required"),
    }
}

fn service_tokens(d: &ServiceTokensDoc, files: &dyn FileSource) -> Result<ServiceTokenPolicy> {
    let path = "service_tokens";
    let p = &d.prefix;
    if p.is_empty() || p.len() > 16 || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return invalid(format!("{path}.prefix"), "1 to 16 characters of [A-Za-z0-9_]");
    }
    if d.keys.is_empty() {
        return invalid(format!("{path}.keys"), "at least one key is required");
    }
    let mut ids = HashSet::new();
    let mut keys = Vec::with_capacity(d.keys.len());
    for (i, k) in d.keys.iter().enumerate() {
        let kp = format!("{path}.keys[{i}]");
        if k.id.is_empty() || !ids.insert(k.id.as_str()) {
            return invalid(format!("{kp}.id"), "key ids must be non-empty and unique");
        }
        let bytes = secret(&kp, k, files)?;
        keys.push(ServiceKey::new(Arc::from(k.id.as_str()), &bytes).map_err(|m| PolicyError::invalid(&kp, m))?);
    }
    let audiences = nonempty_list(&format!("{path}.audiences"), &d.audiences, "audience")?;
    let worker_header = header_name(&format!("{path}.worker_header"), &d.worker_header)?;
    if d.leeway_seconds > 3600 {
        return invalid(format!("{path}.leeway_seconds"), "more than an hour of leeway is never right");
    }
    if d.max_lifetime_seconds == 0 {
        return invalid(format!("{path}.max_lifetime_seconds"), "must be positive");
    }
    let denied_scopes = d
        .denied_scopes
        .iter()
        .enumerate()
        .map(|(i, s)| parse::<ScopePattern>(&format!("{path}.denied_scopes[{i}]"), s))
        .collect::<Result<_>>()?;
    Ok(ServiceTokenPolicy::new(
        p,
        keys,
        audiences,
        worker_header,
        f64::from(d.leeway_seconds),
        f64::from(d.max_lifetime_seconds),
        denied_scopes,
    ))
}

fn api_keys(d: &ApiKeysDoc, files: &dyn FileSource) -> Result<ApiKeyPolicy> {
    let path = "api_keys";
    let prefix: ApiKeyPrefix = parse(&format!("{path}.prefix"), &d.prefix)?;
    if "eyJ".starts_with(prefix.as_str()) || prefix.as_str().starts_with("eyJ") {
        return invalid(format!("{path}.prefix"), "would capture JWTs (which start with `eyJ`)");
    }
    if d.prefix_length <= prefix.as_str().len() || d.prefix_length > 64 {
        return invalid(
            format!("{path}.prefix_length"),
            format!("must exceed the prefix length ({}) and be at most 64", prefix.as_str().len()),
        );
    }
    let header = header_name(&format!("{path}.header"), &d.header)?;
    if header.eq_ignore_ascii_case("authorization") {
        return invalid(format!("{path}.header"), "`Authorization` already carries bearer keys; name another header");
    }

    let mut docs: Vec<(String, &ApiKeyDoc)> =
        d.keys.iter().enumerate().map(|(i, k)| (format!("{path}.keys[{i}]"), k)).collect();
    let file_doc;
    if let Some(file) = &d.keys_file {
        let fp = format!("{path}.keys_file");
        let bytes = read(files, &fp, file)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| PolicyError::File {
            path: fp.clone(),
            file: file.clone(),
            message: "not UTF-8".into(),
        })?;
        let parsed: ApiKeysFileDoc = parse_text(text)
            .and_then(document_from_value_as)
            .map_err(|e| PolicyError::File { path: fp.clone(), file: file.clone(), message: e.to_string() })?;
        file_doc = parsed;
        docs.extend(file_doc.keys.iter().enumerate().map(|(i, k)| (format!("{fp}({file}).keys[{i}]"), k)));
    }

    let mut ids = HashSet::new();
    let mut entries = Vec::with_capacity(docs.len());
    for (kp, k) in docs {
        if !ids.insert(k.id.as_str()) {
            return invalid(format!("{kp}.id"), format!("API key id `{}` is used twice", k.id));
        }
        entries.push(api_key(&kp, k, &prefix, d.prefix_length)?);
    }
    Ok(ApiKeyPolicy::new(prefix, d.prefix_length, header, entries))
}

fn document_from_value_as<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| super::typed_error(&e))
}

fn time(path: &str, t: &TimeDoc) -> Result<i64> {
    match t {
        TimeDoc::Seconds(s) => Ok(*s),
        TimeDoc::Text(s) => UnixTime::parse(s).map(|t| t.0).map_err(|m| PolicyError::invalid(path, m)),
    }
}

fn api_key(path: &str, k: &ApiKeyDoc, prefix: &ApiKeyPrefix, prefix_length: usize) -> Result<(String, ApiKeyEntry)> {
    if k.id.is_empty() || k.id.len() > 128 || k.id.chars().any(char::is_control) {
        return invalid(format!("{path}.id"), "1 to 128 characters, no control characters");
    }
    if !k.prefix.starts_with(prefix.as_str())
        || k.prefix.len() != prefix_length
        || !k.prefix.bytes().all(|b| b.is_ascii_graphic())
    {
        return invalid(
            format!("{path}.prefix"),
            format!("must be the key's first {prefix_length} characters, starting with `{prefix}`"),
        );
    }
    let sha256 = hex32(&k.sha256).ok_or_else(|| PolicyError::invalid(format!("{path}.sha256"), "64 hex digits"))?;
    let expires_at = k.expires_at.as_ref().map(|t| time(&format!("{path}.expires_at"), t)).transpose()?;
    let created_at = k.created_at.as_ref().map(|t| time(&format!("{path}.created_at"), t)).transpose()?;
    let allowed_cidrs = k
        .allowed_cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| cidr(&format!("{path}.allowed_cidrs[{i}]"), c))
        .collect::<Result<Vec<_>>>()?;
    let allowed_origins = k
        .allowed_origins
        .iter()
        .enumerate()
        .map(|(i, o)| parse::<OriginPattern>(&format!("{path}.allowed_origins[{i}]"), o))
        .collect::<Result<Vec<_>>>()?;
    let scopes: Vec<Arc<str>> = k
        .scopes
        .iter()
        .enumerate()
        .map(|(i, s)| parse::<ScopePattern>(&format!("{path}.scopes[{i}]"), s).map(|_| Arc::from(s.as_str())))
        .collect::<Result<_>>()?;
    let roles: Vec<Arc<str>> =
        k.roles.iter().enumerate().map(|(i, r)| role_name(&format!("{path}.roles[{i}]"), r)).collect::<Result<_>>()?;
    let tenant = k.tenant.as_deref().map(|t| parse::<TenantId>(&format!("{path}.tenant"), t)).transpose()?;
    let subject = k.subject.as_deref().unwrap_or(&k.id);
    if subject.is_empty() || subject.chars().any(char::is_control) {
        return invalid(format!("{path}.subject"), "must be non-empty text");
    }

    let id: Arc<str> = Arc::from(k.id.as_str());
    let mut identity = Identity::new(CredentialKind::ApiKey);
    identity.subject = Some(Arc::from(subject));
    identity.key_id = Some(Arc::clone(&id));
    identity.scopes = Names::from(scopes);
    identity.roles = Names::from(roles);
    identity.tenant = tenant.map(|t| t.shared());
    #[allow(clippy::cast_precision_loss)]
    {
        identity.expires_at = expires_at.map(|t| t as f64);
    }
    let identity = Arc::new(identity);
    let entry = ApiKeyEntry {
        id,
        sha256,
        expires_at,
        created_at,
        allowed_cidrs,
        allowed_origins,
        revoked_by_policy: false,
        identity,
    };
    Ok((k.prefix.clone(), entry))
}

pub(super) fn cidr(path: &str, s: &str) -> Result<IpNet> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n.trunc());
    }
    s.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| PolicyError::invalid(path, format!("`{s}` is not a CIDR range or address")))
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    // `from_str_radix` alone would accept a `+` sign.
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = s.get(2 * i..2 * i + 2)?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

fn revoked(doc: &PolicyDocument) -> Result<RevocationSet> {
    let r = &doc.revoked;
    let mut set = RevocationSet::default();
    for j in &r.jti {
        set.revoke_token_id(j.clone());
    }
    for j in &r.service_token_jti {
        set.revoke_service_token_id(j.clone());
    }
    for k in &r.api_keys {
        set.revoke_api_key(k.clone());
    }
    for (i, s) in r.subjects.iter().enumerate() {
        let before = time(&format!("revoked.subjects[{i}].before"), &s.before)?;
        set.revoke_subject(s.subject.clone(), before);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn hex_digests_parse_exactly() {
        assert_eq!(hex32(&"ab".repeat(32)), Some([0xab; 32]));
        assert_eq!(hex32(&"ab".repeat(31)), None);
        assert_eq!(hex32(&"zz".repeat(32)), None);
        assert_eq!(hex32(&format!("+{}", "a".repeat(63))), None);
    }

    #[test]
    fn bare_addresses_are_single_host_ranges() {
        assert_eq!(cidr("x", "10.0.0.1").unwrap().to_string(), "10.0.0.1/32");
        assert_eq!(cidr("x", "10.0.0.1/8").unwrap().to_string(), "10.0.0.0/8");
        assert!(cidr("x", "10.0.0.0/33").is_err());
    }
}
