//! The pieces every Portcullis runtime needs around the core, with no IO: no files, no network,
//! no clock, no async runtime. The sidecar (`host/`), the Envoy filter and the Spin component
//! each translate their own ABI into these calls and nothing more.
//!
//! - [`bundle`]: a policy's text and the files it references, assembled through a reader the
//!   runtime supplies, and compiled;
//! - [`request`]: a core request from a method, a target, a header list and a peer address;
//! - [`deny`]: what a denial looks like on the wire (status, JSON body, `WWW-Authenticate`,
//!   `x-portcullis-reason`), and which headers an allow sets and removes;
//! - [`revocation`]: a revocation set that follows a numbered change log (snapshot, changes
//!   after a cursor, no gap, never un-revoking on a bad snapshot), its freshness bound, and a
//!   client of the sidecar's feed as a state machine over a transport trait;
//! - [`rate`]: rate-limit buckets in a fixed-size shared table (the sidecar's counter);
//! - [`signatures`]: the bounded cache of verified signatures every runtime keeps;
//! - [`tokens`]: the bounded store of verified JWTs behind the core's `TokenCache`.
//!
//! ```
//! use portcullis_adapter::{bundle::Bundle, deny::Denial, request::RequestParts};
//!
//! let text = "version: 1
//! issuers:
//!   - issuer: https://issuer.example
//!     audiences: [api]
//!     algorithms: [HS256]
//!     jwks_file: keys.json
//! ";
//! let bundle = Bundle::assemble("inline", text, |name| match name {
//!     "keys.json" => Ok(br#"{"keys":[{"kty":"oct","kid":"k","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#.to_vec()),
//!     other => Err(format!("no file {other}")),
//! })?;
//! let policy = bundle.compile()?;
//! let request = RequestParts::new("GET", "/orders?page=2", "api.example.com")
//!     .headers([("authorization", b"Bearer not-a-token".as_slice())])
//!     .build(1_800_000_000);
//! let decision = request.with_request(|r| policy.decide(r, &portcullis_core::NoRevocations));
//! let denial = Denial::of(decision.reason).ok_or("a malformed token is denied")?;
//! assert_eq!((denial.status, denial.body.as_str()), (401, r#"{"error":"malformed","status":401}"#));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod bounded;
pub mod bundle;
pub mod deny;
pub mod rate;
pub mod request;
pub mod revocation;
pub mod signatures;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tokens;
