//! # Portcullis host
//!
//! Everything that touches the outside world: files, the clock, the command line (and, in the
//! sidecar, sockets, wasmtime and Postgres). Decisions themselves come from
//! [`portcullis_core`]; this crate only gathers their inputs and delivers their outputs.
#![deny(unsafe_code)] // allowed only in `runtime::bindings` (generated) and `compile_cache::deserialize`

pub mod check;
pub mod cli;
pub mod compile_cache;
pub mod error;
pub mod files;
pub mod policy_files;
pub mod preinit;
pub mod rate_limits;
pub mod remote_keys;
pub mod revocation;
pub mod runtime;
pub mod serve;
pub mod signature_cache;
pub mod tls;
pub mod token;

/// The current time in Unix seconds.
pub fn unix_now() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
