//! # Portcullis core
//!
//! The whole authorization decision, as a pure function of a compiled [`Policy`], a
//! [`Request`] and the host's [`Revocations`]. No IO, no clock, no randomness: the time arrives
//! in the request, files arrive through a [`FileSource`], revocations through a trait. The same
//! code runs natively, in the WASI component, in the Envoy filter and in Spin.
//!
//! A decision is a value ([`Decision`]), never an error: every outcome has a stable
//! [`Reason`] code. Errors ([`PolicyError`]) are faults in configuration, found at load time.
//!
//! ```
//! use portcullis_core::{NoRevocations, Policy, Reason, Request, UnixTime};
//! use std::collections::BTreeMap;
//!
//! let policy = r#"
//! version: 1
//! api_keys:
//!   prefix: ask_
//!   keys:
//!     - id: ci
//!       prefix: ask_demo1234
//!       sha256: be6ffa46de3b6440abff8266f87ce603ce15dd581e16b8b73e9325fb4a6af9b2   # sha256("ask_demo1234secret")
//!       scopes: [deploy:write]
//! "#;
//! let policy = Policy::load(policy, &BTreeMap::new()).unwrap();
//! let now = UnixTime(1_800_000_000);
//!
//! let headers = [("X-API-Key", "ask_demo1234secret")];
//! let decision = policy.decide(&Request { headers: &headers, ..Request::new("GET", "/", now) }, &NoRevocations);
//! assert!(decision.allowed());
//! assert_eq!(decision.identity.unwrap().subject.as_deref(), Some("ci"));
//!
//! let headers = [("X-API-Key", "ask_demo1234wrong")];
//! let decision = policy.decide(&Request { headers: &headers, ..Request::new("GET", "/", now) }, &NoRevocations);
//! assert_eq!((decision.reason, decision.status()), (Reason::UnknownApiKey, 401));
//! ```
#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

// The modules are private: everything a runtime, a tool or a test needs is re-exported
// below, so this file is the whole public face. Three namespaces stay public because they are
// formats of their own: `lint` (policy findings), `revocation_log` (the revocation store's
// records, file lines and feed) and `b64` (the strict base64url every token is decoded with);
// `rate` is the token bucket every runtime counts rate limits with.
mod ascii;
pub mod b64;
mod claims;
mod credential;
mod decision;
mod engine;
mod identity;
mod json;
mod keys;
pub mod lint;
mod policy;
pub mod rate;
mod reason;
mod request;
mod revocation;
pub mod revocation_log;
#[cfg(test)]
mod testutil;
mod time;
mod types;

/// Hash maps and sets keyed by configuration (key ids, API key prefixes, revoked ids). The
/// seed is fixed: entries come from the operator, never from requests, so there is nothing for
/// an attacker to flood, and no target needs OS randomness.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
/// See [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;

// Deciding.
pub use credential::jwt::VerifiedToken;
pub use decision::{Decision, Labeled, Shadow};
pub use identity::{CredentialKind, Identity, Names};
pub use policy::{FileSource, IssuerKeys, NoFiles, Policy, PolicyError, RemoteKeySource};
pub use reason::Reason;
pub use request::{Limits, OwnedRequest, Request, split_path_and_query};
pub use revocation::{
    NoRevocations, RevocationKind, RevocationQuery, RevocationSet, RevocationStatus, Revocations, TokenCache,
    subject_revoked,
};
pub use time::UnixTime;
pub use types::ValueError;

// Signatures a host verifies for the guest (the WIT `signatures` import).
#[cfg(not(target_arch = "wasm32"))]
pub use keys::verify_natively;
pub use keys::{Alg, KeyError, PublicKeyRef, SignatureCheck, SignatureVerdict, check_remote_jwks};

// Tooling: explanations, the order of a JWT's checks, the policy format itself.
pub use credential::jwt::CHECKS as JWT_CHECKS;
pub use engine::explain::Explanation;
#[cfg(feature = "schema")]
pub use policy::json_schema;
pub use policy::{document_from_value, parse_text};
