//! Credentials: which one a request presents, and verifying it. This runs first, and knows
//! nothing of routes or rules: the engine (`crate::engine`) runs after it, with the verified
//! identity, and tells it only which credentials the matched route accepts ([`Accept`]).
//!
//! - [`jwt`]: JSON Web Tokens from configured issuers;
//! - [`service_token`]: Portcullis's own HMAC service tokens;
//! - [`api_key`]: API keys, stored as SHA-256 digests.

pub(crate) mod api_key;
pub(crate) mod jwt;
pub(crate) mod service_token;

use std::sync::Arc;

use crate::identity::{CredentialKind, Identity};
use crate::reason::Reason;
use crate::request::{HeaderValue, Request};
use crate::revocation::{RevocationSet, Revocations};
use api_key::ApiKeyPolicy;
use jwt::{IssuerPolicy, JwtContext};
use service_token::ServiceTokenPolicy;

/// Every credential a policy accepts, compiled.
pub(crate) struct Credentials {
    pub(crate) issuers: Vec<IssuerPolicy>,
    pub(crate) service_tokens: Option<ServiceTokenPolicy>,
    pub(crate) api_keys: Option<ApiKeyPolicy>,
    /// Revocations written in the policy itself.
    pub(crate) statics: RevocationSet,
    pub(crate) max_token_bytes: usize,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Counts only: the sections hold secrets.
        f.debug_struct("Credentials")
            .field("issuers", &self.issuers.len())
            .field("service_tokens", &self.service_tokens.is_some())
            .field("api_keys", &self.api_keys.as_ref().map(|a| a.entries().len()))
            .finish_non_exhaustive()
    }
}

/// Which credentials a route accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Accept {
    /// JWT issuer indices; `None` means every issuer.
    pub issuers: Option<Vec<usize>>,
    /// Service token audiences; `None` means every configured audience.
    pub service_audiences: Option<Vec<Arc<str>>>,
    /// API keys.
    pub api_keys: KeyAccept,
}

/// Which API keys a route accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyAccept {
    /// Every key.
    All,
    /// No key.
    Nothing,
    /// These key ids.
    Ids(Vec<Arc<str>>),
}

impl Accept {
    /// Everything the policy configures.
    pub(crate) const ANY: Accept = Accept { issuers: None, service_audiences: None, api_keys: KeyAccept::All };
}

impl Credentials {
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
                    max_token_bytes: self.max_token_bytes,
                    statics: &self.statics,
                };
                jwt::verify(token, &ctx, accept.issuers.as_deref(), req.now, revocations)
            }
            Presented::ServiceToken(token, policy) => policy
                .verify(
                    token,
                    req,
                    self.max_token_bytes,
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
                let token = bearer(value, self.max_token_bytes)?;
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

    /// The configured issuer the request's JWT names, unverified (see [`jwt::named_issuer`]).
    pub(crate) fn token_issuer(&self, req: &Request<'_>) -> Option<&IssuerPolicy> {
        match self.presented(req).ok()? {
            Presented::Jwt(token) => jwt::named_issuer(token, &self.issuers, self.max_token_bytes),
            _ => None,
        }
    }

    /// Whether a route accepts an already verified identity.
    pub(crate) fn accepts(&self, accept: &Accept, id: &Identity) -> Result<(), Reason> {
        let ok = match id.credential {
            CredentialKind::Jwt => accept.issuers.as_ref().is_none_or(|list| {
                self.issuers
                    .iter()
                    .position(|i| Some(i.issuer.as_str()) == id.issuer.as_deref())
                    .is_some_and(|ix| list.contains(&ix))
            }),
            CredentialKind::ServiceToken => accept
                .service_audiences
                .as_ref()
                .is_none_or(|list| id.audience.as_ref().is_some_and(|a| list.contains(a))),
            CredentialKind::ApiKey => match &accept.api_keys {
                KeyAccept::All => true,
                KeyAccept::Nothing => false,
                KeyAccept::Ids(ids) => id.key_id.as_ref().is_some_and(|k| ids.contains(k)),
            },
        };
        if ok { Ok(()) } else { Err(Reason::CredentialNotAccepted) }
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
}
