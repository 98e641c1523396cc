//! Any bytes as a revocations file (line by line, as the file store reads it) and as a feed
//! response (as the Envoy filter and Spin will read it).
#![no_main]

use portcullis_core::RevocationSet;
use portcullis_core::revocation_log::{Feed, FileLine, parse_file_line};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut first = true;
    let mut set = RevocationSet::default();
    for line in data.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else { continue };
        match parse_file_line(first, line) {
            Ok(FileLine::Blank) => continue,
            Ok(FileLine::Header(_)) => {}
            Ok(FileLine::Record(r)) => {
                assert!(r.validate().is_ok());
                set.insert(r.kind, &r.id, r.before());
            }
            Err(e) => assert!(!e.is_empty()),
        }
        first = false;
    }
    if let Ok(feed) = serde_json::from_slice::<Feed>(data) {
        for e in feed.snapshot.iter().flatten() {
            set.insert(e.kind, &e.id, e.issued_before.unwrap_or(0));
        }
        for c in &feed.changes {
            set.remove(c.kind, &c.id);
        }
    }
});
