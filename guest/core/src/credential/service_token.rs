//! Portcullis service tokens: `<prefix>-v1.<payload>.<signature>`.
//!
//! `payload` is unpadded base64url of a JSON object with exactly these members:
//! `worker_id`, `jti`, `aud`, `iat`, `exp` (required) and `nbf`, `scopes` (optional).
//! `signature` is unpadded base64url of HMAC-SHA256 over `<prefix>-v1.<payload>`, keyed with the
//! active key or any rotation key. Unknown members are `malformed`: the format is ours, and a
//! field this version does not understand must not be silently ignored.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::credential::jwt::refuse_if_revoked;
use crate::identity::{CredentialKind, Identity, Names};
use crate::json::{Json, parse_object};
use crate::reason::Reason;
use crate::request::{HeaderValue, Request};
use crate::revocation::{RevocationQuery, RevocationSet, Revocations};
use crate::types::ScopePattern;
use crate::{b64, claims};

/// One HMAC key, by id. The secret itself is only held inside the keyed MAC state.
pub struct ServiceKey {
    /// Key id, reported as the identity's `key_id` (never the secret).
    pub id: Arc<str>,
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl ServiceKey {
    /// Builds a key; secrets shorter than 32 bytes are refused.
    pub fn new(id: Arc<str>, secret: &[u8]) -> Result<ServiceKey, crate::keys::KeyError> {
        Ok(ServiceKey { id, mac: crate::keys::hmac_sha256(secret)? })
    }
}

/// The compiled `service_tokens` section.
#[derive(Debug)]
pub struct ServiceTokenPolicy {
    /// `<prefix>-v1.`
    marker: String,
    /// Active key first, then rotation keys.
    pub keys: Vec<ServiceKey>,
    /// Accepted audiences.
    pub audiences: Vec<Arc<str>>,
    /// The request header `worker_id` must equal.
    pub worker_header: String,
    /// Clock leeway, seconds.
    pub leeway: f64,
    /// Maximum `exp - iat`, seconds.
    pub max_lifetime: f64,
    /// Scopes a service token may never grant.
    pub denied_scopes: Vec<ScopePattern>,
}

impl ServiceTokenPolicy {
    /// Builds the policy; `prefix` is validated by the loader.
    pub fn new(
        prefix: &str,
        keys: Vec<ServiceKey>,
        audiences: Vec<Arc<str>>,
        worker_header: String,
        leeway: f64,
        max_lifetime: f64,
        denied_scopes: Vec<ScopePattern>,
    ) -> ServiceTokenPolicy {
        ServiceTokenPolicy {
            marker: format!("{prefix}-v1."),
            keys,
            audiences,
            worker_header,
            leeway,
            max_lifetime,
            denied_scopes,
        }
    }

    /// True when `token` is in this format (by its prefix; nothing is verified).
    pub fn claims_token(&self, token: &str) -> bool {
        token.starts_with(&self.marker)
    }

    /// Signs `payload` (a JSON object's text) with the active key. For tooling and tests; the
    /// payload is not validated here.
    pub fn sign(&self, payload_json: &str) -> Option<String> {
        use base64::Engine as _;
        let key = self.keys.first()?;
        let mut token = format!("{}{}", self.marker, b64::URL_SAFE_STRICT.encode(payload_json));
        let mut mac = key.mac.clone();
        mac.update(token.as_bytes());
        let sig = mac.finalize().into_bytes();
        token.push('.');
        token.push_str(&b64::URL_SAFE_STRICT.encode(sig));
        Some(token)
    }

    /// Verifies a service token presented with `req`.
    pub(crate) fn verify(
        &self,
        token: &str,
        req: &Request<'_>,
        max_token_bytes: usize,
        accept_audience: Option<&[Arc<str>]>,
        statics: &RevocationSet,
        revocations: &dyn Revocations,
    ) -> Result<Identity, Reason> {
        if token.len() > max_token_bytes {
            return Err(Reason::Malformed);
        }
        let rest = token.strip_prefix(&self.marker).ok_or(Reason::Malformed)?;
        let (payload_b64, sig_b64) = rest.split_once('.').ok_or(Reason::Malformed)?;
        if sig_b64.contains('.') {
            return Err(Reason::Malformed);
        }
        let payload = b64::decode(payload_b64).ok_or(Reason::Malformed)?;
        let mut sig_buf = [0u8; 64];
        let sig = b64::decode_into(sig_b64, &mut sig_buf).ok_or(Reason::Malformed)?;
        let claims = parse_object(&payload).map_err(|_| Reason::Malformed)?;

        let signing_input = token.get(..token.len() - sig_b64.len() - 1).ok_or(Reason::Malformed)?.as_bytes();
        let key = self
            .keys
            .iter()
            .find(|k| {
                let mut mac = k.mac.clone();
                mac.update(signing_input);
                mac.verify_slice(sig).is_ok()
            })
            .ok_or(Reason::BadSignature)?;

        let c = ServiceClaims::read(&claims)?;
        claims::check_times(req.now, self.leeway, Some(c.exp), c.nbf, Some(c.iat), Some(self.max_lifetime))?;
        let audience = self
            .audiences
            .iter()
            .find(|a| &***a == c.aud)
            .filter(|a| accept_audience.is_none_or(|list| list.contains(a)))
            .ok_or(Reason::WrongAudience)?;
        match req.header(&self.worker_header) {
            HeaderValue::One(w) if w == c.worker_id => {}
            _ => return Err(Reason::WorkerMismatch),
        }
        refuse_if_revoked(statics, revocations, RevocationQuery::ServiceTokenId(c.jti))?;
        refuse_if_revoked(
            statics,
            revocations,
            RevocationQuery::Subject { subject: c.worker_id, issued_at: Some(c.iat) },
        )?;

        let mut scopes = Vec::with_capacity(c.scopes.len());
        for s in c.scopes {
            let grant = claims::scope_grant(s)?;
            // A grant that could cover a denied scope is dropped whole: `*` and `admin:*`
            // are never honoured when `admin:*` is denied.
            let dropped = s.parse::<ScopePattern>().is_ok_and(|p| self.denied_scopes.iter().any(|d| d.overlaps(&p)));
            if !dropped {
                scopes.push(grant);
            }
        }

        let mut id = Identity::new(CredentialKind::ServiceToken);
        id.subject = Some(claims::header_safe(c.worker_id)?);
        id.key_id = Some(Arc::clone(&key.id));
        id.token_id = Some(claims::header_safe(c.jti)?);
        id.audience = Some(Arc::clone(audience));
        id.scopes = Names::from(scopes);
        id.expires_at = Some(c.exp);
        Ok(id)
    }
}

struct ServiceClaims<'a> {
    worker_id: &'a str,
    jti: &'a str,
    aud: &'a str,
    scopes: Vec<&'a str>,
    iat: f64,
    nbf: Option<f64>,
    exp: f64,
}

impl<'a> ServiceClaims<'a> {
    fn read(o: &'a crate::json::Object<'a>) -> Result<Self, Reason> {
        let (mut worker_id, mut jti, mut aud, mut iat, mut exp) = (None, None, None, None, None);
        let mut nbf = None;
        let mut scopes = Vec::new();
        for (name, v) in o.iter() {
            match name {
                "worker_id" => worker_id = Some(v.as_str().ok_or(Reason::Malformed)?),
                "jti" => jti = Some(v.as_str().ok_or(Reason::Malformed)?),
                "aud" => aud = Some(v.as_str().ok_or(Reason::Malformed)?),
                "iat" => iat = Some(v.as_f64().ok_or(Reason::Malformed)?),
                "nbf" => nbf = Some(v.as_f64().ok_or(Reason::Malformed)?),
                "exp" => exp = Some(v.as_f64().ok_or(Reason::Malformed)?),
                "scopes" => match v {
                    Json::Arr(items) => {
                        for i in items {
                            scopes.push(i.as_str().ok_or(Reason::Malformed)?);
                        }
                    }
                    _ => return Err(Reason::Malformed),
                },
                _ => return Err(Reason::Malformed),
            }
        }
        let (Some(worker_id), Some(jti), Some(aud), Some(iat), Some(exp)) = (worker_id, jti, aud, iat, exp) else {
            return Err(Reason::MissingClaim);
        };
        if worker_id.is_empty() || jti.is_empty() {
            return Err(Reason::Malformed);
        }
        Ok(ServiceClaims { worker_id, jti, aud, scopes, iat, nbf, exp })
    }
}
