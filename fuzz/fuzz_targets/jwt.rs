//! Any bytes as a bearer JWT: parsed, verified against the example issuers, or denied.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let d = portcullis_fuzz::decide(&portcullis_fuzz::request(vec![("Authorization".into(), format!("Bearer {token}"))]));
    // Arbitrary bytes cannot carry a valid signature: only a seed from the corpus can pass.
    let _ = d;
});
