//! Any text as a policy: it loads or fails with a stable code, and lint never panics. What
//! loads then decides a request without panicking.
#![no_main]

use portcullis_core::{NoRevocations, Policy};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let files = portcullis_fuzz::example_files();
    match Policy::load(text, &files) {
        Ok(policy) => {
            let req = portcullis_fuzz::request(vec![("Authorization".into(), "Bearer x.y.z".into())]);
            let _ = req.with_request(|r| policy.decide(r, &NoRevocations));
        }
        Err(e) => {
            assert!(!e.code().is_empty());
            let _ = e.to_string();
        }
    }
    let _ = portcullis_core::lint::lint(text, &files, true);
});
