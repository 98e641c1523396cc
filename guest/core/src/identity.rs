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
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// The credential kind.
    pub credential: CredentialKind,
    /// `sub` (JWT), `worker_id` (service token) or the key id (API key).
    pub subject: Option<Arc<str>>,
    /// The JWT issuer.
    pub issuer: Option<Arc<str>>,
    /// The key that verified the credential: JWK `kid`, service key id, or API key id.
    pub key_id: Option<Arc<str>>,
    /// `jti` of a JWT or service token.
    pub token_id: Option<Arc<str>>,
    /// The audience the credential was accepted for.
    pub audience: Option<Arc<str>>,
    /// Granted scopes, after any the policy forbids were dropped.
    pub scopes: Names,
    /// Roles (direct and mapped from groups), before hierarchy expansion.
    pub roles: Names,
    /// Groups or entitlements from the credential.
    pub groups: Names,
    /// The tenant the identity belongs to.
    pub tenant: Option<Arc<str>>,
    /// An e-mail claim.
    pub email: Option<Arc<str>>,
    /// Expiry as Unix seconds, when the credential has one.
    pub expires_at: Option<f64>,
}

impl Identity {
    /// Writes the identity's fields into a JSON map, in a fixed order; absent and empty optional
    /// fields are omitted. Used by [`crate::Decision`]'s flat rendering.
    pub fn serialize_fields<M: serde::ser::SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        m.serialize_entry("credential", &self.credential)?;
        let opt = [
            ("subject", &self.subject),
            ("issuer", &self.issuer),
            ("key_id", &self.key_id),
            ("token_id", &self.token_id),
            ("audience", &self.audience),
            ("tenant", &self.tenant),
            ("email", &self.email),
        ];
        for (k, v) in opt {
            if let Some(v) = v {
                m.serialize_entry(k, v)?;
            }
        }
        m.serialize_entry("scopes", &self.scopes)?;
        m.serialize_entry("roles", &self.roles)?;
        if !self.groups.is_empty() {
            m.serialize_entry("groups", &self.groups)?;
        }
        if let Some(exp) = self.expires_at {
            // Whole seconds print as integers, as they were written.
            #[allow(clippy::cast_possible_truncation)]
            if exp.fract() == 0.0 && exp.abs() < 9.0e15 {
                m.serialize_entry("expires_at", &(exp as i64))?;
            } else {
                m.serialize_entry("expires_at", &exp)?;
            }
        }
        Ok(())
    }
}

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        self.serialize_fields(&mut m)?;
        m.end()
    }
}

static EMPTY: std::sync::LazyLock<Names> = std::sync::LazyLock::new(|| Arc::from(Vec::<Arc<str>>::new()));

/// An empty [`Names`], shared (no allocation per call).
pub(crate) fn no_names() -> Names {
    Arc::clone(&EMPTY)
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
