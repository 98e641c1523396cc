//! Paired ratios (interleaved batches) for the goals stated as ratios. Prints a Markdown table.
//!
//! `cargo bench -p portcullis-benches --bench ratios`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::print_stderr)]

use std::hint::black_box;

use std::sync::Arc;

use portcullis_benches::{Claims, example_bundle, hs256_request, jwt_cases, load_policy, paired, percentile, unix_now};
use portcullis_core::{NoRevocations, Request, UnixTime};

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: do one quick round as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, batch) = if quick { (3, 10) } else { (201, 200) };
    let policy = load_policy("policies/example.yaml");
    let now = unix_now();
    println!("| credential | Portcullis decide | jsonwebtoken::decode | ratio (median) | ratio IQR |");
    println!("| --- | --- | --- | --- | --- |");
    for case in jwt_cases(now) {
        let auth = format!("Bearer {}", case.token);
        let headers = [("authorization", auth.as_str()), ("user-agent", "bench/1.0"), ("accept", "*/*")];
        let req = Request { headers: &headers, ..Request::new("GET", "/v1/orders", UnixTime(now)) };
        assert!(policy.decide(&req, &NoRevocations).allowed());
        let (rounds, batch) = if case.name == "hs256" { (rounds, batch) } else { (rounds.min(61), batch / 20 + 1) };
        let p = paired(
            || {
                black_box(policy.decide(black_box(&req), &NoRevocations));
            },
            || {
                black_box(jsonwebtoken::decode::<Claims>(black_box(&case.token), &case.key, &case.validation).unwrap());
            },
            rounds,
            batch,
        );
        println!(
            "| {} | {:.2} µs | {:.2} µs | {:.2}x | {:.2}–{:.2} |",
            case.name,
            p.subject_ns / 1e3,
            p.peer_ns / 1e3,
            p.ratio,
            p.ratio_iqr.0,
            p.ratio_iqr.1
        );
    }

    // The component on a warm instance against the native core, same request, paired.
    let bundle = example_bundle();
    let native = bundle.compile().unwrap();
    let (runtime, fresh) = portcullis_benches::component_runtimes(&bundle);
    let mut worker = runtime.worker(&bundle, Arc::new(NoRevocations)).unwrap();
    let req = hs256_request(now);
    assert_eq!(worker.decide(&req, false).unwrap().0, req.with_request(|r| native.decide(r, &NoRevocations)));
    let p = paired(
        || {
            black_box(req.with_request(|r| native.decide(black_box(r), &NoRevocations)));
        },
        || {
            black_box(worker.decide(black_box(&req), false).unwrap());
        },
        rounds,
        batch,
    );
    println!();
    println!("| HS256 decision | native core | component, warm instance | component ÷ native (median) | IQR |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| example.yaml | {:.2} µs | {:.2} µs | {:.2}x | {:.2}–{:.2} |",
        p.subject_ns / 1e3,
        p.peer_ns / 1e3,
        1.0 / p.ratio,
        1.0 / p.ratio_iqr.1,
        1.0 / p.ratio_iqr.0
    );

    // RS256 (asymmetric, what most identity providers sign with): the warm component with the
    // host verifying the signature natively (the `signatures` import), and without it (the
    // guest's own RustCrypto in wasm), each paired with the native core.
    let rs = jwt_cases(now).into_iter().find(|c| c.name == "rs256").unwrap();
    let mut rs_req = req.clone();
    rs_req.headers[0].1 = format!("Bearer {}", rs.token);
    let no_host = portcullis_host::runtime::Runtime::embedded(portcullis_host::runtime::RuntimeConfig {
        signatures: None,
        ..portcullis_host::runtime::RuntimeConfig::default()
    })
    .unwrap();
    let mut guest_only = no_host.worker(&bundle, Arc::new(NoRevocations)).unwrap();
    // And with the sidecar's verified-signature cache in front of the host's check.
    let cache = Arc::new(portcullis_host::signature_cache::SignatureCache::new(1024));
    let cached_runtime = portcullis_host::runtime::Runtime::embedded(portcullis_host::runtime::RuntimeConfig {
        signatures: Some(portcullis_host::signature_cache::cached(
            portcullis_host::runtime::native_signatures(),
            cache,
        )),
        ..portcullis_host::runtime::RuntimeConfig::default()
    })
    .unwrap();
    let mut with_cache = cached_runtime.worker(&bundle, Arc::new(NoRevocations)).unwrap();
    let expected = rs_req.with_request(|r| native.decide(r, &NoRevocations));
    assert!(expected.allowed());
    assert_eq!(worker.decide(&rs_req, false).unwrap().0, expected);
    assert_eq!(guest_only.decide(&rs_req, false).unwrap().0, expected);
    assert_eq!(with_cache.decide(&rs_req, false).unwrap().0, expected);
    println!();
    println!("| RS256 decision | native core | component, warm instance | component ÷ native (median) | IQR |");
    println!("| --- | --- | --- | --- | --- |");
    let (rs_rounds, rs_batch) = (rounds.min(101), batch / 10 + 1);
    for (label, w) in [
        ("host verifies (signatures import)", &mut worker),
        ("host verifies, signature cache on", &mut with_cache),
        ("guest verifies (wasm)", &mut guest_only),
    ] {
        let p = paired(
            || {
                black_box(rs_req.with_request(|r| native.decide(black_box(r), &NoRevocations)));
            },
            || {
                black_box(w.decide(black_box(&rs_req), false).unwrap());
            },
            rs_rounds,
            rs_batch,
        );
        println!(
            "| {label} | {:.2} µs | {:.2} µs | {:.2}x | {:.2}–{:.2} |",
            p.subject_ns / 1e3,
            p.peer_ns / 1e3,
            1.0 / p.ratio,
            1.0 / p.ratio_iqr.1,
            1.0 / p.ratio_iqr.0
        );
    }

    // A fresh instance per request from the pre-initialised component: latency distribution.
    let mut api = req.clone();
    let keys: serde_json::Value = serde_json::from_slice(
        &std::fs::read(portcullis_benches::root().join("tests/fixtures/api-keys.plaintext.json")).unwrap(),
    )
    .unwrap();
    api.headers = vec![("x-api-key".into(), keys["live"].as_str().unwrap().into())];
    println!();
    println!(
        "| fresh instance per request | instance ready p50 | total p50 | total p99 | warm decision p50 | isolation cost p50 (total − warm) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, r) in [("API key", &api), ("HS256 JWT", &req)] {
        let n = if quick { 20 } else { 20_000 };
        for _ in 0..100.min(n) {
            fresh.decide_fresh(r, Arc::new(NoRevocations), false).unwrap();
        }
        let (mut ready, mut total, mut warm) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let t = std::time::Instant::now();
            let instance = fresh.fresh(Arc::new(NoRevocations)).unwrap();
            ready.push(t.elapsed().as_nanos() as f64);
            black_box(instance.decide(black_box(r), false).unwrap());
            total.push(t.elapsed().as_nanos() as f64);
        }
        // The warm worker in its own loop: interleaving it with instantiations would evict its
        // caches and make the isolation cost look smaller than it is.
        for _ in 0..n {
            let t = std::time::Instant::now();
            black_box(worker.decide(black_box(r), false).unwrap());
            warm.push(t.elapsed().as_nanos() as f64);
        }
        for v in [&mut ready, &mut total, &mut warm] {
            v.sort_by(f64::total_cmp);
        }
        let p50 = |v: &[f64]| percentile(v, 0.5) / 1e3;
        println!(
            "| {name} | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs | {:.1} µs |",
            p50(&ready),
            p50(&total),
            percentile(&total, 0.99) / 1e3,
            p50(&warm),
            p50(&total) - p50(&warm)
        );
    }
}
