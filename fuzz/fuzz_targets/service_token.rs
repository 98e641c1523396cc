//! Any bytes as a service token, with a worker header.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (worker, token) = text.split_once('\0').unwrap_or(("worker-1", &text));
    portcullis_fuzz::decide(&portcullis_fuzz::request(vec![
        ("Authorization".into(), format!("Bearer {token}")),
        ("X-Worker-ID".into(), worker.to_owned()),
    ]));
});
