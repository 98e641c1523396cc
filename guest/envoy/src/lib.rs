//! # Portcullis for Envoy
//!
//! The whole decision inside Envoy: a proxy-wasm HTTP filter (ABI 0.2.1, `wasm32-wasip1`) over
//! the same core and adapter kit as the sidecar. Per request it reads the headers, the peer
//! address (`source.address`) and Envoy's clock, decides, and either continues with the
//! identity headers set and forged ones removed, or answers locally with the status, the JSON
//! reason body, `x-portcullis-reason` and `WWW-Authenticate`, byte for byte as the sidecar does.
//!
//! - [`config`]: the plugin configuration (the policy bundle inline, the revocation feed, the
//!   client address), parsed and compiled once per VM;
//! - [`signature`]: RSA and ECDSA signatures checked by Envoy's BoringSSL through its
//!   `verify_signature` foreign function;
//! - the proxy-wasm glue (`filter.rs`, wasm only): each worker's root context holds the policy
//!   and follows the sidecar's revocation feed (`FeedClient` from the adapter kit) through an
//!   Envoy cluster; denied until the first snapshot when a feed is configured.
//!
//! See the README's "Inside Envoy" section and `examples/envoy-filter.yaml`.

pub mod config;
#[cfg(target_arch = "wasm32")]
mod filter;
pub mod signature;
