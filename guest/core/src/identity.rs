//! Who the verified credential says the caller is.

use std::sync::Arc;

use serde::Serialize;

/// The kind of credential that authenticated the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A JSON Web Token from a configured issuer.
    Jwt,
    /// A Portcullis HMAC service token (`<prefix>-v1.<payload>.<signature>`).
    ServiceToken,
    /// A hashed API key.
    ApiKey,
}

impl CredentialKind {
    /// The stable name (`jwt`, `service_token`, `api_key`).
    pub const fn name(self) -> &'static str {
        match self {
            CredentialKind::Jwt => "jwt",
            CredentialKind::ServiceToken => "service_token",
            CredentialKind::ApiKey => "api_key",
        }
    }
}

/// A shared list of strings (scopes, roles, groups): cheap to clone from configuration.
pub type Names = Arc<[Arc<str>]>;

/// A verified identity. Every field comes from a credential whose signature or hash verified.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Identity {
    /// The credential kind.
    pub credential: CredentialKind,
    /// `sub` (JWT), `worker_id` (service token) or the key id (API key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Arc<str>>,
    /// The JWT issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Arc<str>>,
    /// The key that verified the credential: JWK `kid`, service key id, or API key id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<Arc<str>>,
    /// `jti` of a JWT or service token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<Arc<str>>,
    /// The audience the credential was accepted for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<Arc<str>>,
    /// Granted scopes, after any the policy forbids were dropped.
    pub scopes: Names,
    /// Roles (direct and mapped from groups), before hierarchy expansion.
    pub roles: Names,
    /// Groups or entitlements from the credential.
    #[serde(skip_serializing_if = "names_empty")]
    pub groups: Names,
    /// The tenant the identity belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Arc<str>>,
    /// An e-mail claim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<Arc<str>>,
    /// Expiry as Unix seconds, when the credential has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<f64>,
}

#[allow(clippy::ref_option)]
fn names_empty(n: &Names) -> bool {
    n.is_empty()
}

/// An empty [`Names`] without allocating.
pub fn no_names() -> Names {
    Arc::from(Vec::<Arc<str>>::new())
}

impl Identity {
    /// A blank identity of a kind, for builders.
    pub fn new(credential: CredentialKind) -> Identity {
        Identity {
            credential,
            subject: None,
            issuer: None,
            key_id: None,
            token_id: None,
            audience: None,
            scopes: no_names(),
            roles: no_names(),
            groups: no_names(),
            tenant: None,
            email: None,
            expires_at: None,
        }
    }
}
