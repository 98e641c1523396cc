//! Compares guest builds on the HS256 request of `policies/example.yaml`, interleaved in one
//! process so machine noise hits every build alike (separate runs of the ratios bench drift by
//! a few percent, more than most single changes are worth).
//!
//! ```text
//! cargo run --release -p portcullis-benches --example guest_ab -- warm  a.wasm b.wasm ...
//! cargo run --release -p portcullis-benches --example guest_ab -- fresh a.wasm b.wasm ...
//! ```
//!
//! `warm` decides on one warm instance per build (and prints the native core alongside);
//! `fresh` pre-initialises each build with the policy and decides on a fresh instance per
//! request. Each build runs a batch in turn, 200 (warm) or 100 (fresh) times; the table gives
//! the quartiles of the per-request time over batches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr, clippy::cast_precision_loss)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use portcullis_benches::{example_bundle, hs256_request, percentile, unix_now};
use portcullis_core::NoRevocations;
use portcullis_host::runtime::{Runtime, RuntimeConfig};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(paths)) = (args.first(), args.get(1..).filter(|p| !p.is_empty())) else {
        eprintln!("usage: guest_ab warm|fresh A.wasm [B.wasm ...]");
        std::process::exit(2);
    };
    let bundle = example_bundle();
    let req = hs256_request(unix_now());
    let wasm: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).unwrap()).collect();
    let mut rows: Vec<(String, Vec<f64>)> = paths.iter().map(|p| (p.clone(), Vec::new())).collect();
    match mode.as_str() {
        "warm" => {
            let native = bundle.compile().unwrap();
            let mut workers: Vec<_> = wasm
                .iter()
                .map(|w| {
                    Runtime::new(w, RuntimeConfig::default()).unwrap().worker(&bundle, Arc::new(NoRevocations)).unwrap()
                })
                .collect();
            let mut native_row = Vec::new();
            for _ in 0..200 {
                for (w, (_, samples)) in workers.iter_mut().zip(rows.iter_mut()) {
                    samples.push(per_request(200, || {
                        black_box(w.decide(black_box(&req), false).unwrap());
                    }));
                }
                native_row.push(per_request(200, || {
                    black_box(req.with_request(|r| native.decide(black_box(r), &NoRevocations)));
                }));
            }
            rows.push(("native core".into(), native_row));
        }
        "fresh" => {
            let runtimes: Vec<_> = wasm
                .iter()
                .map(|w| {
                    let snapshot = portcullis_host::preinit::preinitialize_component(w, &bundle).unwrap();
                    Runtime::new(&snapshot, RuntimeConfig::default()).unwrap()
                })
                .collect();
            for _ in 0..100 {
                for (rt, (_, samples)) in runtimes.iter().zip(rows.iter_mut()) {
                    samples.push(per_request(50, || {
                        black_box(rt.decide_fresh(black_box(&req), Arc::new(NoRevocations), false).unwrap());
                    }));
                }
            }
        }
        other => {
            eprintln!("unknown mode {other:?}: warm or fresh");
            std::process::exit(2);
        }
    }
    println!("| build ({mode}) | p25 | p50 | p75 |");
    println!("| --- | --- | --- | --- |");
    for (name, mut s) in rows {
        s.sort_by(f64::total_cmp);
        let q = |p| percentile(&s, p) / 1e3;
        println!("| {name} | {:.2} µs | {:.2} µs | {:.2} µs |", q(0.25), q(0.5), q(0.75));
    }
}

/// Mean nanoseconds per call over a batch of `n`.
fn per_request(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}
