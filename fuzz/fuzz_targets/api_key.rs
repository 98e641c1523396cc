//! Any bytes as an API key header.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = String::from_utf8_lossy(data);
    let d = portcullis_fuzz::decide(&portcullis_fuzz::request(vec![("X-API-Key".into(), key.into_owned())]));
    let _ = d;
});
