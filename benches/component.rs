//! The decision through the WebAssembly component, beside the native core on the same request:
//! a warm instance (the sidecar's default) and a fresh pre-initialised instance per request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_benches::{example_bundle, hs256_request, unix_now};
use portcullis_core::NoRevocations;

fn component(c: &mut Criterion) {
    let now = unix_now();
    let bundle = example_bundle();
    let native = bundle.compile().unwrap();
    let (runtime, fresh) = portcullis_benches::component_runtimes(&bundle);
    let mut worker = runtime.worker(&bundle, Arc::new(NoRevocations)).unwrap();
    let keys: serde_json::Value = serde_json::from_slice(
        &std::fs::read(portcullis_benches::root().join("tests/fixtures/api-keys.plaintext.json")).unwrap(),
    )
    .unwrap();
    let mut api = hs256_request(now);
    api.headers = vec![("x-api-key".into(), keys["live"].as_str().unwrap().into())];

    for (name, req) in [("hs256", hs256_request(now)), ("api_key", api)] {
        let n = req.with_request(|r| native.decide(r, &NoRevocations));
        assert!(n.allowed());
        assert_eq!(worker.decide(&req, false).unwrap().0, n, "the component must decide as the core does");
        assert_eq!(fresh.decide_fresh(&req, Arc::new(NoRevocations), false).unwrap().0, n);
        let mut g = c.benchmark_group(format!("component/{name}"));
        g.bench_function("portcullis/native", |b| {
            b.iter(|| req.with_request(|r| native.decide(black_box(r), &NoRevocations)))
        });
        g.bench_function("component/warm", |b| b.iter(|| worker.decide(black_box(&req), false).unwrap()));
        g.bench_function("component/fresh_instance", |b| {
            b.iter(|| fresh.decide_fresh(black_box(&req), Arc::new(NoRevocations), false).unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, component);
criterion_main!(benches);
