//! Any bytes as the whole Authorization header (scheme, spacing, case, repeats).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let value = String::from_utf8_lossy(data);
    let mut headers: Vec<(String, String)> = Vec::new();
    // A NUL splits the input into repeated headers.
    for part in value.split('\0') {
        headers.push(("Authorization".into(), part.to_owned()));
    }
    portcullis_fuzz::decide(&portcullis_fuzz::request(headers));
});
