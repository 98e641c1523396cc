//! Revocation lookups on the request path: the sidecar's live set at 1 thousand, 100 thousand
//! and 1 million entries, hits and misses. Also prints the memory each entry costs (growth of
//! the process's resident set while one million entries are loaded).
//!
//! `cargo bench -p portcullis-benches --bench revocation`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::print_stderr)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_core::{RevocationKind, RevocationQuery, RevocationSet, RevocationStatus, Revocations};
use portcullis_host::revocation::{LiveRevocations, StaleMode};

/// A UUID-shaped `jti`, as most issuers mint them.
fn jti(i: u64) -> String {
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}", h >> 32, (h >> 16) & 0xffff, h & 0xfff, (h >> 12) & 0xfff, i)
}

fn live_with(n: u64) -> LiveRevocations {
    let mut set = RevocationSet::default();
    set.reserve(RevocationKind::TokenId, usize::try_from(n).unwrap());
    for i in 0..n {
        set.insert(RevocationKind::TokenId, &jti(i), 0);
    }
    let live = LiveRevocations::new(StaleMode::Serve);
    live.replace(set, "bench", 0).unwrap();
    live
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn lookups(c: &mut Criterion) {
    let quick = !std::env::args().any(|a| a == "--bench");
    let sizes: &[u64] = if quick { &[1_000] } else { &[1_000, 100_000, 1_000_000] };
    for &n in sizes {
        let before = resident_bytes();
        let live = live_with(n);
        let grown = resident_bytes().saturating_sub(before);
        if n >= 1_000_000 {
            eprintln!(
                "{n} entries: resident set grew {:.1} MiB, {:.0} bytes per entry",
                grown as f64 / 1048576.0,
                grown as f64 / n as f64
            );
        }
        // 4096 different identifiers spread over the set, so a large set pays its cache misses
        // (one identifier looked up again and again would always be in L1).
        let hits: Vec<String> = (0..4096u64).map(|i| jti(i.wrapping_mul(7919) % n)).collect();
        let misses: Vec<String> = (0..4096u64).map(|i| jti(n + i * 7919)).collect();
        for (h, m) in hits.iter().zip(&misses) {
            assert_eq!(live.status(RevocationQuery::TokenId(h)), RevocationStatus::Revoked);
            assert_eq!(live.status(RevocationQuery::TokenId(m)), RevocationStatus::Active);
        }
        let mut g = c.benchmark_group(format!("revocation_lookup/{n}"));
        for (name, ids) in [("hit", &hits), ("miss", &misses)] {
            g.bench_function(name, |b| {
                let mut i = 0usize;
                b.iter(|| {
                    i = (i + 1) & 4095;
                    live.status(black_box(RevocationQuery::TokenId(&ids[i])))
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, lookups);
criterion_main!(benches);
