//! Token tooling: mint service tokens and development JWTs, create and hash API keys, verify
//! and inspect JWTs, plan key rotations.

use anyhow::{Context, bail};
use base64::Engine as _;
use portcullis_core::Policy;
use portcullis_core::b64::URL_SAFE_STRICT;
use sha2::{Digest, Sha256};

/// What a new service token should say.
#[derive(Debug, Clone)]
pub struct ServiceTokenRequest {
    /// `worker_id`.
    pub worker_id: String,
    /// `aud`.
    pub audience: String,
    /// `scopes`.
    pub scopes: Vec<String>,
    /// Lifetime in seconds.
    pub ttl: u32,
    /// `jti`; random when absent.
    pub jti: Option<String>,
    /// `iat`.
    pub now: i64,
    /// `nbf`, if any.
    pub not_before: Option<i64>,
}

/// Signs a service token with the policy's active key, refusing what the policy would refuse.
pub fn mint_service(policy: &Policy, req: &ServiceTokenRequest) -> anyhow::Result<String> {
    let svc = policy.service_tokens().context("the policy has no service_tokens section")?;
    if f64::from(req.ttl) > svc.max_lifetime {
        bail!("--ttl {} exceeds the policy's max_lifetime_seconds ({})", req.ttl, svc.max_lifetime);
    }
    if !svc.audiences.iter().any(|a| **a == *req.audience) {
        bail!("audience `{}` is not one the policy accepts", req.audience);
    }
    let jti = match &req.jti {
        Some(j) => j.clone(),
        None => random_id(16)?,
    };
    let mut payload = serde_json::Map::new();
    payload.insert("worker_id".into(), req.worker_id.clone().into());
    payload.insert("jti".into(), jti.into());
    payload.insert("aud".into(), req.audience.clone().into());
    payload.insert("iat".into(), req.now.into());
    payload.insert("exp".into(), (req.now + i64::from(req.ttl)).into());
    if !req.scopes.is_empty() {
        payload.insert("scopes".into(), req.scopes.clone().into());
    }
    if let Some(nbf) = req.not_before {
        payload.insert("nbf".into(), nbf.into());
    }
    svc.sign(&serde_json::Value::Object(payload).to_string()).context("the policy has no service token key")
}

/// What a development JWT should say.
#[derive(Debug, Clone)]
pub struct JwtRequest {
    /// `iss`: one of the policy's issuers.
    pub issuer: String,
    /// `kid` of the signing key.
    pub kid: String,
    /// A PEM private key (RSA, EC or Ed25519); without one, the HMAC secret the policy's JWKS
    /// holds under `kid`.
    pub private_key: Option<Vec<u8>>,
    /// `alg`; by default HS256 with an HMAC secret, RS256 with a private key.
    pub alg: Option<jsonwebtoken::Algorithm>,
    /// `sub`.
    pub subject: String,
    /// `aud`.
    pub audience: String,
    /// Granted scopes, joined into `scope`.
    pub scopes: Vec<String>,
    /// `roles`.
    pub roles: Vec<String>,
    /// `tenant`, if any.
    pub tenant: Option<String>,
    /// `email`, if any.
    pub email: Option<String>,
    /// Lifetime in seconds.
    pub ttl: u32,
    /// `jti`; random when absent.
    pub jti: Option<String>,
    /// `iat`.
    pub now: i64,
}

/// Signs a JWT for development with a key the policy trusts, then decides a request carrying it
/// and refuses to hand it out if the policy denies it as a credential (401). A route may still
/// deny it with a 403. Only for development: it signs with whatever key it is given, and an HMAC
/// secret in a policy's key set is a demo arrangement.
pub fn mint_jwt(
    bundle: &crate::policy_files::PolicyBundle,
    policy: &Policy,
    req: &JwtRequest,
) -> anyhow::Result<String> {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let (alg, key) = match &req.private_key {
        Some(pem) => {
            let alg = req.alg.unwrap_or(Algorithm::RS256);
            let key = match alg {
                Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512 => EncodingKey::from_rsa_pem(pem),
                Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem),
                Algorithm::EdDSA => EncodingKey::from_ed_pem(pem),
                _ => bail!("--alg {alg:?} needs an HMAC secret, not --key"),
            }
            .map_err(|e| anyhow::anyhow!("the private key is not a usable PEM key for {alg:?}: {e}"))?;
            (alg, key)
        }
        None => {
            let alg = req.alg.unwrap_or(Algorithm::HS256);
            if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                bail!("--alg {alg:?} needs --key (a PEM private key)");
            }
            (alg, EncodingKey::from_secret(&hmac_secret(bundle, &req.kid)?))
        }
    };
    let jti = match &req.jti {
        Some(j) => j.clone(),
        None => random_id(16)?,
    };
    let mut claims = serde_json::Map::new();
    claims.insert("iss".into(), req.issuer.clone().into());
    claims.insert("sub".into(), req.subject.clone().into());
    claims.insert("aud".into(), req.audience.clone().into());
    claims.insert("iat".into(), req.now.into());
    claims.insert("exp".into(), (req.now + i64::from(req.ttl)).into());
    claims.insert("jti".into(), jti.into());
    if !req.scopes.is_empty() {
        claims.insert("scope".into(), req.scopes.join(" ").into());
    }
    if !req.roles.is_empty() {
        claims.insert("roles".into(), req.roles.clone().into());
    }
    if let Some(t) = &req.tenant {
        claims.insert("tenant".into(), t.clone().into());
    }
    if let Some(e) = &req.email {
        claims.insert("email".into(), e.clone().into());
    }
    let mut header = Header::new(alg);
    header.kid = Some(req.kid.clone());
    let token = jsonwebtoken::encode(&header, &claims, &key).context("cannot sign the token")?;
    let bearer = format!("Bearer {token}");
    let headers = [("authorization", bearer.as_str())];
    let request = portcullis_core::Request {
        method: "GET",
        scheme: "https",
        host: "localhost",
        path: "/",
        query: "",
        headers: &headers,
        client_ip: None,
        now: portcullis_core::UnixTime(req.now),
    };
    let decision = policy.decide(&request, &portcullis_core::NoRevocations);
    // 401s are the credential's own faults; a 403 (no route for `/`, a missing scope) is the
    // route's business, not the token's.
    if decision.reason.status() == 401 {
        bail!(
            "the policy would refuse this token ({}): check --issuer, --kid, --aud and the key",
            decision.reason.code()
        );
    }
    Ok(token)
}

/// The HMAC secret stored under `kid` in one of the policy's key files (an `oct` JWK).
fn hmac_secret(bundle: &crate::policy_files::PolicyBundle, kid: &str) -> anyhow::Result<Vec<u8>> {
    for bytes in bundle.files.values() {
        let Ok(set) = serde_json::from_slice::<serde_json::Value>(bytes) else { continue };
        let keys = set.get("keys").and_then(serde_json::Value::as_array).into_iter().flatten();
        for k in keys {
            if k["kid"] == kid && k["kty"] == "oct" {
                let secret = k["k"].as_str().context("the oct key has no `k`")?;
                return URL_SAFE_STRICT.decode(secret).context("the oct key's `k` is not base64url");
            }
        }
    }
    bail!(
        "no HMAC (oct) key `{kid}` in the policy's key files; pass --key with a PEM private key for asymmetric issuers"
    )
}

/// A newly created API key: the plaintext (shown once) and what the policy stores.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewApiKey {
    /// The key itself. Give it to its owner; it is not stored anywhere.
    pub key: String,
    /// The lookup prefix, for the policy's `prefix` field.
    pub prefix: String,
    /// Hex SHA-256, for the policy's `sha256` field.
    pub sha256: String,
}

/// Creates an API key: `prefix` + `length` random base62 characters.
pub fn new_api_key(prefix: &str, prefix_length: usize, length: usize) -> anyhow::Result<NewApiKey> {
    if prefix.len() + length < prefix_length + 16 {
        bail!("the key would have fewer than 16 random characters after its lookup prefix");
    }
    let key = format!("{prefix}{}", random_base62(length)?);
    let (prefix, sha256) = hash_api_key(&key, prefix_length)?;
    Ok(NewApiKey { key, prefix, sha256 })
}

/// The lookup prefix and hex SHA-256 of a key.
pub fn hash_api_key(key: &str, prefix_length: usize) -> anyhow::Result<(String, String)> {
    let prefix = key
        .get(..prefix_length)
        .with_context(|| format!("the key is shorter than the prefix length {prefix_length}"))?;
    let digest = Sha256::digest(key.as_bytes());
    Ok((prefix.to_owned(), digest.iter().map(|b| format!("{b:02x}")).collect()))
}

/// Verifies `token` against `policy` as the credential of a `GET path` at `now`, and reports
/// each of the core's JWT checks ([`portcullis_core::JWT_CHECKS`], in the core's order):
/// `passed`, `failed` (with the reason) or `not reached`. Revocations are the policy's static
/// lists only (a running sidecar's store is not consulted).
/// Returns whether the credential was accepted, and the report.
pub fn verify(policy: &Policy, token: &str, path: &str, now: i64) -> (bool, serde_json::Value) {
    let bearer = format!("Bearer {}", token.trim());
    let headers = [("authorization", bearer.as_str())];
    let request = portcullis_core::Request {
        headers: &headers,
        ..portcullis_core::Request::new("GET", path, portcullis_core::UnixTime(now))
    };
    let (decision, x) = policy.explain(&request, &portcullis_core::NoRevocations);
    let outcome = x.authentication.as_deref().and_then(portcullis_core::Reason::from_code);
    let failed_at = outcome.and_then(|r| portcullis_core::JWT_CHECKS.iter().position(|(_, rs)| rs.contains(&r)));
    let checks: Vec<serde_json::Value> = portcullis_core::JWT_CHECKS
        .iter()
        .enumerate()
        .map(|(i, (check, _))| {
            let result = match (outcome, failed_at) {
                (Some(portcullis_core::Reason::Allowed), _) => "passed",
                (_, Some(f)) if i < f => "passed",
                (Some(r), Some(f)) if i == f => {
                    return serde_json::json!({ "check": check, "result": "failed", "reason": r.code() });
                }
                _ => "not reached",
            };
            serde_json::json!({ "check": check, "result": result })
        })
        .collect();
    let accepted = outcome == Some(portcullis_core::Reason::Allowed);
    let mut report = serde_json::Map::new();
    report.insert("accepted".into(), accepted.into());
    report.insert("credential".into(), x.authentication.into());
    report.insert("checks".into(), checks.into());
    report.insert("decoded".into(), inspect(token).unwrap_or(serde_json::Value::Null));
    if outcome.is_none() {
        let note = format!("the credential was not examined: {} for {path}", decision.reason.code());
        report.insert("note".into(), note.into());
    } else if failed_at.is_none() && !accepted {
        report.insert("note".into(), "the token is not a JWT this policy verifies (another credential kind)".into());
    }
    if accepted {
        report.insert("decision_for_path".into(), serde_json::to_value(&decision).unwrap_or(serde_json::Value::Null));
    }
    (accepted, serde_json::Value::Object(report))
}

/// A key rotation plan for one issuer (or the service token keys, with `issuer: None`): which
/// key signs, which verify, and the earliest time each other key may be removed.
///
/// A token signed by an outgoing key before `since` (when `signing` took over) stays valid
/// until at most `since + max_lifetime + leeway`; removing the key earlier turns valid tokens
/// into `bad_signature` / `unknown_kid` denials. Without a maximum lifetime no safe time
/// exists (a token may carry any `exp`), and the plan says so instead of guessing.
pub fn rotation_plan(
    policy: &Policy,
    issuer: Option<&str>,
    signing: &str,
    since: i64,
) -> anyhow::Result<serde_json::Value> {
    let (name, kids, lifetime, leeway): (String, Vec<String>, Option<f64>, f64) = match issuer {
        Some(iss) => {
            let i = policy
                .issuers()
                .iter()
                .find(|i| i.issuer.as_str() == iss)
                .with_context(|| format!("the policy has no issuer `{iss}`"))?;
            let kids = i.keys.keys().iter().filter_map(|k| k.kid().map(|k| k.as_str().to_owned())).collect();
            (iss.to_owned(), kids, i.max_lifetime, i.leeway)
        }
        None => {
            let svc = policy.service_tokens().context("the policy has no service_tokens section")?;
            let kids = svc.keys.iter().map(|k| k.id.to_string()).collect();
            ("service_tokens".to_owned(), kids, Some(svc.max_lifetime), svc.leeway)
        }
    };
    if !kids.iter().any(|k| k == signing) {
        bail!("`{signing}` is not one of {name}'s keys ({})", kids.join(", "));
    }
    let remove: Vec<serde_json::Value> = kids
        .iter()
        .filter(|k| *k != signing)
        .map(|kid| match lifetime {
            Some(l) => {
                #[allow(clippy::cast_possible_truncation)] // lifetimes and leeway are bounded by the policy loader
                let earliest = since.saturating_add((l + leeway).ceil() as i64);
                serde_json::json!({ "kid": kid, "earliest_removal": earliest })
            }
            None => serde_json::json!({
                "kid": kid,
                "earliest_removal": null,
                "why": "the issuer sets no max_lifetime_seconds, so tokens signed with this key may stay valid until any exp; set one, or remove the key only when its tokens are known to be gone",
            }),
        })
        .collect();
    Ok(serde_json::json!({
        "issuer": name,
        "signing": signing,
        "signing_since": since,
        "verifying": kids,
        "max_lifetime_seconds": lifetime,
        "leeway_seconds": leeway,
        "remove": remove,
    }))
}

/// Decodes a JWT's header and payload WITHOUT verifying anything.
pub fn inspect(token: &str) -> anyhow::Result<serde_json::Value> {
    let mut parts = token.trim().split('.');
    let (Some(h), Some(p)) = (parts.next(), parts.next()) else {
        bail!("not a JWT: expected header.payload.signature");
    };
    let decode = |seg: &str, what: &str| -> anyhow::Result<serde_json::Value> {
        let bytes =
            URL_SAFE_STRICT.decode(seg).with_context(|| format!("the {what} is not canonical unpadded base64url"))?;
        serde_json::from_slice(&bytes).with_context(|| format!("the {what} is not JSON"))
    };
    Ok(serde_json::json!({
        "verified": false,
        "header": decode(h, "header")?,
        "payload": decode(p, "payload")?,
    }))
}

fn random_base62(n: usize) -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        // Rejection sampling keeps the distribution uniform (248 = 4 * 62).
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == n {
                break;
            }
            if let Some(c) = ALPHABET.get(usize::from(*b % 62)) {
                out.push(char::from(*c));
            }
        }
    }
    Ok(out)
}

fn random_id(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(URL_SAFE_STRICT.encode(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_api_keys_hash_to_what_the_policy_stores() {
        let k = new_api_key("ask_", 12, 40).unwrap();
        assert!(k.key.starts_with("ask_"));
        assert_eq!(k.key.len(), 44);
        assert_eq!(k.prefix, &k.key[..12]);
        assert_eq!(hash_api_key(&k.key, 12).unwrap().1, k.sha256);
        assert_ne!(new_api_key("ask_", 12, 40).unwrap().key, k.key);
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(new_api_key("ask_", 12, 20).is_err());
        assert!(hash_api_key("ask_", 12).is_err());
    }

    #[test]
    fn inspect_shows_claims_and_says_unverified() {
        let t = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.sig";
        let v = inspect(t).unwrap();
        assert_eq!(v["verified"], false);
        assert_eq!(v["payload"]["sub"], "a");
        assert!(inspect("nope").is_err());
    }
}
