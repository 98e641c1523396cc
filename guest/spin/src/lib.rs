//! # Portcullis for Spin
//!
//! The whole decision in a Spin HTTP component (WASI HTTP 0.2.0, `wasm32-wasip2`), over the same
//! core and adapter kit as the sidecar and the Envoy filter. Per request it reads the method,
//! target, authority and headers, decides, and either sends the request on to the configured
//! upstream with the identity headers set and forged ones removed, or answers with the status,
//! the JSON reason body, `x-portcullis-reason` and `WWW-Authenticate`, byte for byte as the
//! sidecar does.
//!
//! Spin makes a fresh instance per request, so the policy is compiled into the component's memory
//! at build time (`portcullis spin build`, wizer): an instance starts with it ready.
//!
//! - [`settings`]: the application variables (upstream, revocation feed, client address);
//! - [`revocations`]: the sidecar's feed kept in Spin's key-value store, read per request by
//!   key;
//! - [`keys`]: the sidecar's key sets of issuers whose keys come from the network, kept in the
//!   store;
//! - [`signatures`]: valid signatures remembered in the store, so a token seen again skips the
//!   RSA or ECDSA verification in wasm;
//! - [`rate_limits`]: the policy's rate-limit buckets, kept in the store;
//! - the WASI HTTP glue (`component.rs`, wasm only).
//!
//! See docs/spin.md and `examples/spin/`.

#[cfg(target_arch = "wasm32")]
mod component;
pub mod keys;
pub mod rate_limits;
pub mod revocations;
pub mod settings;
pub mod signatures;
