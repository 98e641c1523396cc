//! Policy evaluation for an authenticated principal: Portcullis, cedar-policy and regorus on
//! equivalent policies of 10, 100 and 1,000 rules. Decisions are asserted equal before timing.
//! Peers get their best case: requests, entities and inputs are built outside the timed loop,
//! and regorus is measured both through `Engine::eval_rule` and a `CompiledPolicy`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_benches::engines::{
    Scenario, cedar_decide, cedar_input, portcullis_decide, portcullis_input, rego_decide, rego_engine, rego_input,
};

fn engines(c: &mut Criterion) {
    for n in [10, 100, 1000] {
        let s = Scenario::new(n);
        let disagreements = s.agree();
        assert!(disagreements.is_empty(), "{disagreements:?}");
        let authorizer = cedar_policy::Authorizer::new();
        let mut engine = rego_engine(&s.rego);
        let compiled = rego_engine(&s.rego).compile_with_entrypoint(&"data.authz.allow".into()).unwrap();
        for probe in s.probes().into_iter().filter(|p| p.name == "allow" || p.name == "deny-scope") {
            let mut g = c.benchmark_group(format!("engine/{n}/{}", probe.name));
            let (id, path) = portcullis_input(&probe);
            g.bench_function("portcullis/decide_for", |b| {
                b.iter(|| portcullis_decide(&s.portcullis, black_box(&id), probe.method, black_box(&path)))
            });
            let (req, ents) = cedar_input(&probe);
            g.bench_function("cedar/is_authorized", |b| {
                b.iter(|| cedar_decide(&authorizer, &s.cedar, black_box(&req), black_box(&ents)))
            });
            let input = rego_input(&probe);
            g.bench_function("regorus/eval_rule", |b| b.iter(|| rego_decide(&mut engine, black_box(&input))));
            assert_eq!(compiled.eval_with_input(input.clone()).unwrap() == regorus::Value::from(true), probe.allow);
            g.bench_function("regorus/compiled", |b| {
                b.iter(|| compiled.eval_with_input(black_box(input.clone())).unwrap())
            });
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = engines
}
criterion_main!(benches);
