//! Shared pieces of the fuzz targets: the example policy with its demo keys (compiled in, so
//! a run needs no files), and the checks every decision must pass whatever the input.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use portcullis_core::{Decision, NoRevocations, OwnedRequest, Policy, Reason};

macro_rules! demo_files {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("../../policies/", $name)).as_slice())),*]
    };
}

/// The files `policies/example.yaml` references.
pub fn example_files() -> BTreeMap<String, Vec<u8>> {
    demo_files!["keys/jwks.json", "keys/hmac-jwks.json", "keys/mixed-jwks.json", "keys/service-2026.key",
        "keys/service-2025.key", "keys/api-keys.yaml"]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_vec()))
    .collect()
}

/// `policies/example.yaml`, compiled once.
pub static EXAMPLE: LazyLock<Policy> = LazyLock::new(|| {
    Policy::load(include_str!("../../policies/example.yaml"), &example_files()).expect("the example policy loads")
});

/// The instant the corpus tokens are valid at.
pub const NOW: i64 = 1_800_000_000;

/// Decides `req` with the example policy and checks what must hold for any input: an allow
/// is a 200 with an identity, a deny carries its reason's status.
pub fn decide(req: &OwnedRequest) -> Decision {
    let d = req.with_request(|r| EXAMPLE.decide(r, &NoRevocations));
    if d.allowed() {
        assert_eq!((d.reason, d.status()), (Reason::Allowed, 200));
    } else {
        assert_ne!(d.reason, Reason::Allowed);
        assert_eq!(d.status(), d.reason.status());
    }
    d
}

/// A GET of a protected route carrying `headers`.
pub fn request(headers: Vec<(String, String)>) -> OwnedRequest {
    OwnedRequest {
        method: "GET".into(),
        scheme: "https".into(),
        host: "api.example.com".into(),
        path: "/v1/orders".into(),
        headers,
        now: NOW,
        ..OwnedRequest::default()
    }
}
