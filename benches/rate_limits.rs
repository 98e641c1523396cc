//! What rate limits add to a decision, in the same run: the native core deciding one API-key
//! request without limits, then with one, two and three limits counted by the sidecar's own
//! counter (`portcullis::rate_limits::Counter`: the shared table on a monotonic clock), and the
//! table's `take` alone. The goal (issue 17) is under 200 ns added per decision.
//!
//! The limits are set high enough that every request is admitted, so each iteration is the
//! common path (an allowed request that spends one token per limit).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_adapter::rate::RateTable;
use portcullis_benches::{root, unix_now};
use portcullis_core::rate::{RateBucket, RateParams};
use portcullis_core::{NoRevocations, Policy, Request, Revocations, UnixTime};
use portcullis_host::rate_limits::{Counted, Counter};

/// The edge example's API-key route, with `limits` (YAML list items) as its rate limits.
fn policy(limits: &str) -> Policy {
    policy_with(limits, "")
}

/// [`policy`] with more settings of the `rate_limits` section (indented lines).
fn policy_with(limits: &str, settings: &str) -> Policy {
    let text = std::fs::read_to_string(root().join("policies/edge.yaml")).unwrap();
    let head = text.split("rate_limits:").next().unwrap();
    let text = format!("{head}rate_limits:\n{settings}  limits:\n{limits}");
    let files = portcullis_host::policy_files::DirFiles(root().join("policies"));
    Policy::load(&text, &files).unwrap()
}

const HIGH: &str = "requests: 1000000, burst: 1000000";

fn rate_limits(c: &mut Criterion) {
    let key = std::fs::read_to_string(root().join("tests/fixtures/api-keys.plaintext.json")).unwrap();
    let key: serde_json::Value = serde_json::from_str(&key).unwrap();
    let key = key["live"].as_str().unwrap().to_owned();
    let headers = [("x-api-key", key.as_str()), ("user-agent", "bench/1.0"), ("accept", "*/*")];
    let req = Request {
        headers: &headers,
        host: "api.example.com",
        client_ip: Some("192.0.2.7".parse().unwrap()),
        ..Request::new("GET", "/v1/orders/1", UnixTime(unix_now()))
    };
    let host = Counted::new(Arc::new(NoRevocations), Arc::new(Counter::new(1 << 18)));
    let cases = [
        ("none", policy("    []\n")),
        ("1 limit (api_key)", policy(&format!("    - {{id: k, key: [api_key], {HIGH}}}\n"))),
        (
            "1 limit (api_key), no headers on allowed",
            policy_with(&format!("    - {{id: k, key: [api_key], {HIGH}}}\n"), "  on_allowed: false\n"),
        ),
        ("1 limit (client, before auth)", policy(&format!("    - {{id: c, key: [client], {HIGH}}}\n"))),
        (
            "3 limits (api_key; client; tenant+route)",
            policy(&format!(
                "    - {{id: k, key: [api_key], {HIGH}}}\n    - {{id: c, key: [client], {HIGH}}}\n    - {{id: t, key: [tenant, route], {HIGH}}}\n"
            )),
        ),
    ];
    let mut g = c.benchmark_group("rate_limits/decide");
    for (name, policy) in &cases {
        let d = policy.decide(&req, &host);
        assert!(d.allowed(), "{name}: {:?}", d.reason);
        g.bench_function(*name, |b| b.iter(|| policy.decide(black_box(&req), &host)));
    }
    g.finish();

    // Realistic numbers (20 a second, burst 40): a counter on a clock that moves one interval
    // per request, so every request fits and the headers carry small numbers, as most do.
    let realistic = policy("    - {id: k, key: [api_key], requests: 20, burst: 40}\n");
    let steady = Steady::default();
    assert!(realistic.decide(&req, &steady).allowed());
    let mut g = c.benchmark_group("rate_limits/decide_20_per_second");
    g.bench_function("none", |b| b.iter(|| cases[0].1.decide(black_box(&req), &steady)));
    g.bench_function("1 limit (api_key)", |b| b.iter(|| realistic.decide(black_box(&req), &steady)));
    g.finish();

    let counter = Counter::new(1 << 18);
    let bucket = RateBucket { key: "k\x1fci-deployer", params: RateParams { interval_ns: 1_000, burst: 1_000_000 } };
    let mut g = c.benchmark_group("rate_limits/counter");
    g.bench_function("take", |b| b.iter(|| counter.take(black_box(&bucket))));
    g.finish();
    let _: &dyn Revocations = &host;
}

/// The sidecar's table on a clock that advances one 20-a-second interval per request.
#[derive(Default)]
struct Steady {
    table: std::sync::OnceLock<RateTable>,
    now: std::sync::atomic::AtomicU64,
}

impl Revocations for Steady {
    fn status(&self, _: portcullis_core::RevocationQuery<'_>) -> portcullis_core::RevocationStatus {
        portcullis_core::RevocationStatus::Active
    }
    fn rate_limit(&self, bucket: &RateBucket<'_>) -> portcullis_core::rate::RateCount {
        let now = self.now.fetch_add(50_000_000, std::sync::atomic::Ordering::Relaxed) + 1_000_000_000;
        let table = self.table.get_or_init(|| RateTable::new(1 << 18, 7));
        portcullis_core::rate::RateCount::Counted(table.take(bucket.key, bucket.params, now))
    }
}

criterion_group!(benches, rate_limits);
criterion_main!(benches);
