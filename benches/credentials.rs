//! Per-credential decision time. For JWTs, `jsonwebtoken::decode` on the same token (with the
//! same checks configured) runs in the same group as the baseline, so results read as ratios.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_benches::{Claims, jwt_cases, load_policy, root, unix_now};
use portcullis_core::{NoRevocations, Request, UnixTime};

fn credentials(c: &mut Criterion) {
    let policy = load_policy("policies/example.yaml");
    let now = unix_now();

    for case in jwt_cases(now) {
        let auth = format!("Bearer {}", case.token);
        let headers = [("authorization", auth.as_str()), ("user-agent", "bench/1.0"), ("accept", "*/*")];
        let req = Request { headers: &headers, ..Request::new("GET", "/v1/orders", UnixTime(now)) };
        // Both sides must accept the token, or the comparison means nothing.
        let d = policy.decide(&req, &NoRevocations);
        assert!(d.allowed(), "{}: portcullis denied: {:?}", case.name, d.reason);
        jsonwebtoken::decode::<Claims>(&case.token, &case.key, &case.validation).unwrap();

        let mut g = c.benchmark_group(format!("credential/{}", case.name));
        g.bench_function("portcullis/decide", |b| b.iter(|| policy.decide(black_box(&req), &NoRevocations)));
        g.bench_function("jsonwebtoken/decode", |b| {
            b.iter(|| jsonwebtoken::decode::<Claims>(black_box(&case.token), &case.key, &case.validation).unwrap())
        });
        g.finish();
    }

    // Service token: no peer speaks this format; the floor is one HMAC-SHA256 over the token.
    let svc = policy
        .service_tokens()
        .unwrap()
        .sign(&format!(
            r#"{{"worker_id":"worker-7","jti":"svc-1","aud":"orders-api","scopes":["orders:read"],"iat":{},"exp":{}}}"#,
            now - 10,
            now + 290
        ))
        .unwrap();
    let auth = format!("Bearer {svc}");
    let headers = [("authorization", auth.as_str()), ("x-worker-id", "worker-7")];
    let req = Request { headers: &headers, ..Request::new("GET", "/v1/orders", UnixTime(now)) };
    assert!(policy.decide(&req, &NoRevocations).allowed());
    let mut g = c.benchmark_group("credential/service_token");
    g.bench_function("portcullis/decide", |b| b.iter(|| policy.decide(black_box(&req), &NoRevocations)));
    let key = std::fs::read(root().join("policies/keys/service-2026.key")).unwrap();
    let key = &key[..key.len() - 1];
    g.bench_function("floor/hmac_sha256", |b| {
        use hmac::Mac;
        b.iter(|| {
            let mut m = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).unwrap();
            m.update(black_box(svc.as_bytes()));
            m.finalize()
        })
    });
    g.finish();

    // API key: the floor is one SHA-256 of the key.
    let keys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/api-keys.plaintext.json")).unwrap()).unwrap();
    let key = keys["live"].as_str().unwrap().to_owned();
    let headers = [("x-api-key", key.as_str()), ("user-agent", "bench/1.0")];
    let req = Request { headers: &headers, ..Request::new("GET", "/v1/orders", UnixTime(now)) };
    assert!(policy.decide(&req, &NoRevocations).allowed());
    let mut g = c.benchmark_group("credential/api_key");
    g.bench_function("portcullis/decide", |b| b.iter(|| policy.decide(black_box(&req), &NoRevocations)));
    g.bench_function("floor/sha256", |b| {
        use sha2::Digest;
        b.iter(|| sha2::Sha256::digest(black_box(key.as_bytes())))
    });
    g.finish();
}

criterion_group!(benches, credentials);
criterion_main!(benches);
