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

pub mod api_key;
mod ascii;

/// Hash maps and sets keyed by configuration (key ids, API key prefixes, revoked ids). The
/// seed is fixed: entries come from the operator, never from requests, so there is nothing for
/// an attacker to flood, and no target needs OS randomness.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
/// See [`FastMap`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::FixedState>;
pub mod b64;
mod claims;
pub mod decision;
pub mod engine;
pub mod identity;
pub mod json;
pub mod jwt;
pub mod keys;
pub mod lint;
pub mod policy;
pub mod reason;
pub mod request;
pub mod revocation;
pub mod revocation_log;
pub mod service_token;
#[cfg(feature = "testkit")]
pub mod testkit;
#[cfg(test)]
mod testutil;
pub mod time;
pub mod types;

pub use decision::Decision;
pub use identity::{CredentialKind, Identity};
pub use policy::{FileSource, NoFiles, Policy, PolicyError};
pub use reason::Reason;
pub use request::{OwnedRequest, Request, RequestSpec};
pub use revocation::{NoRevocations, RevocationKind, RevocationQuery, RevocationSet, RevocationStatus, Revocations};
pub use time::UnixTime;
