//! Stable, machine-readable reason codes.
//!
//! Every decision carries exactly one [`Reason`]. Its [`code`](Reason::code) is what responses,
//! logs, audit events and metrics show. Codes are added, never renamed or reused: operators alert
//! on them and clients branch on them. `docs/reason-codes.md` documents each one, and a test keeps
//! that table and this enum in step.

use std::fmt;

/// Why a request was allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    /// Every check held.
    Allowed,

    // Authentication (401).
    /// No credential of a kind the policy accepts was presented.
    MissingCredential,
    /// More than one credential was presented (for example `X-API-Key` and `Authorization`).
    AmbiguousCredential,
    /// The credential or request is structurally invalid.
    Malformed,
    /// The JWT `alg` is not allowed for its issuer, or does not fit the key named by `kid`.
    AlgNotAllowed,
    /// No trusted key matches the token's `kid` (or no single key fits when `kid` is absent).
    UnknownKid,
    /// The signature does not verify.
    BadSignature,
    /// A claim the policy requires is absent.
    MissingClaim,
    /// `now >= exp + leeway`.
    Expired,
    /// `nbf > now + leeway`.
    NotYetValid,
    /// `iat > now + leeway`.
    IssuedInFuture,
    /// `exp - iat` exceeds the configured maximum lifetime.
    LifetimeTooLong,
    /// `iss` is absent or is not a configured issuer (exact match).
    WrongIssuer,
    /// `aud` is absent or names no accepted audience.
    WrongAudience,
    /// The token id, API key, or subject is revoked.
    Revoked,
    /// A service token's `worker_id` does not equal the worker header.
    WorkerMismatch,
    /// The API key is not known (no key with that prefix and hash).
    UnknownApiKey,
    /// The API key is past its expiry.
    KeyExpired,
    /// The credential is valid but the matched route does not accept its kind or issuer.
    CredentialNotAccepted,

    // Authorization (403).
    /// The client address is outside the API key's allowed ranges: a proven key refused by
    /// policy, so 403 (authenticating again cannot help).
    IpNotAllowed,
    /// The `Origin` header is absent or not in the API key's allowed origins (403, as
    /// [`Reason::IpNotAllowed`]).
    OriginNotAllowed,
    /// The identity lacks a scope the route requires.
    InsufficientScope,
    /// The identity lacks a role the route requires.
    ForbiddenRole,
    /// The identity's tenant differs from the tenant the request addresses.
    TenantMismatch,
    /// A deny rule matched (the decision names the rule).
    PolicyDenied,
    /// No route matched and the policy's default is `deny`.
    NoRoute,
    /// A CORS preflight the route's `cors` settings refuse (origin, method or a requested
    /// header not allowed). Answered at the edge, with no CORS headers.
    CorsRejected,

    // Answered at the edge.
    /// A CORS preflight the route allows: 204 with the CORS headers, never forwarded.
    CorsPreflight,
    /// A rate limit's bucket is empty: 429 with `Retry-After` (the decision's `rule` names the
    /// limit).
    RateLimited,

    // Faults (503): the decision could not be made, so it fails closed.
    /// The runtime failed (guest trap, timeout, internal error).
    InternalError,
    /// The revocation set has not been confirmed fresh within its bound.
    RevocationStale,
    /// The token's issuer has no usable key because a key source in the network has not been
    /// fetched (or a `kid` may be in one that has not): 503, so clients keep good tokens.
    KeysUnavailable,
    /// A rate limit applies but the runtime could not count it (no counter, or its store
    /// failed) and the policy says `when_uncounted: deny`.
    LimitsUnavailable,
}

impl Reason {
    /// Every reason, in documentation order.
    pub const ALL: &'static [Reason] = &[
        Reason::Allowed,
        Reason::MissingCredential,
        Reason::AmbiguousCredential,
        Reason::Malformed,
        Reason::AlgNotAllowed,
        Reason::UnknownKid,
        Reason::BadSignature,
        Reason::MissingClaim,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::IssuedInFuture,
        Reason::LifetimeTooLong,
        Reason::WrongIssuer,
        Reason::WrongAudience,
        Reason::Revoked,
        Reason::WorkerMismatch,
        Reason::UnknownApiKey,
        Reason::KeyExpired,
        Reason::CredentialNotAccepted,
        Reason::IpNotAllowed,
        Reason::OriginNotAllowed,
        Reason::InsufficientScope,
        Reason::ForbiddenRole,
        Reason::TenantMismatch,
        Reason::PolicyDenied,
        Reason::NoRoute,
        Reason::CorsRejected,
        Reason::CorsPreflight,
        Reason::RateLimited,
        Reason::InternalError,
        Reason::RevocationStale,
        Reason::KeysUnavailable,
        Reason::LimitsUnavailable,
    ];

    /// The stable wire code, e.g. `bad_signature`.
    pub const fn code(self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::MissingCredential => "missing_credential",
            Reason::AmbiguousCredential => "ambiguous_credential",
            Reason::Malformed => "malformed",
            Reason::AlgNotAllowed => "alg_not_allowed",
            Reason::UnknownKid => "unknown_kid",
            Reason::BadSignature => "bad_signature",
            Reason::MissingClaim => "missing_claim",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::IssuedInFuture => "issued_in_future",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::Revoked => "revoked",
            Reason::WorkerMismatch => "worker_mismatch",
            Reason::UnknownApiKey => "unknown_api_key",
            Reason::KeyExpired => "key_expired",
            Reason::IpNotAllowed => "ip_not_allowed",
            Reason::OriginNotAllowed => "origin_not_allowed",
            Reason::CredentialNotAccepted => "credential_not_accepted",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::ForbiddenRole => "forbidden_role",
            Reason::TenantMismatch => "tenant_mismatch",
            Reason::PolicyDenied => "policy_denied",
            Reason::NoRoute => "no_route",
            Reason::CorsRejected => "cors_rejected",
            Reason::CorsPreflight => "cors_preflight",
            Reason::RateLimited => "rate_limited",
            Reason::InternalError => "internal_error",
            Reason::RevocationStale => "revocation_stale",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::LimitsUnavailable => "limits_unavailable",
        }
    }

    /// The HTTP status a denial with this reason returns (200 for [`Reason::Allowed`]).
    pub const fn status(self) -> u16 {
        match self {
            Reason::Allowed => 200,
            Reason::MissingCredential
            | Reason::AmbiguousCredential
            | Reason::Malformed
            | Reason::AlgNotAllowed
            | Reason::UnknownKid
            | Reason::BadSignature
            | Reason::MissingClaim
            | Reason::Expired
            | Reason::NotYetValid
            | Reason::IssuedInFuture
            | Reason::LifetimeTooLong
            | Reason::WrongIssuer
            | Reason::WrongAudience
            | Reason::Revoked
            | Reason::WorkerMismatch
            | Reason::UnknownApiKey
            | Reason::KeyExpired
            | Reason::CredentialNotAccepted => 401,
            Reason::IpNotAllowed
            | Reason::OriginNotAllowed
            | Reason::InsufficientScope
            | Reason::ForbiddenRole
            | Reason::TenantMismatch
            | Reason::PolicyDenied
            | Reason::NoRoute
            | Reason::CorsRejected => 403,
            Reason::CorsPreflight => 204,
            Reason::RateLimited => 429,
            Reason::InternalError | Reason::RevocationStale | Reason::KeysUnavailable | Reason::LimitsUnavailable => {
                503
            }
        }
    }

    /// Parses a wire code. Unknown codes are `None`: a host that meets a newer guest's code treats
    /// it as a denial it cannot name, never as an allow.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            let code = r.code();
            assert!(seen.insert(code), "duplicate code {code}");
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{code}");
            assert_eq!(Reason::from_code(code), Some(*r));
        }
        assert_eq!(Reason::from_code("nope"), None);
    }

    #[test]
    fn only_allowed_has_status_200() {
        for r in Reason::ALL {
            assert_eq!(r.status() == 200, *r == Reason::Allowed, "{r}");
        }
    }
}
