//! Rate limits through every runtime, counted where each runtime counts: the sidecar in its
//! shared table (through Envoy's ext_authz), the Envoy filter in Envoy's shared data across two
//! worker VMs, the Spin component in its key-value store. The policy is the shipped
//! `policies/edge.yaml`: `/v1/search` is limited per client (5 a second, burst 10, counted before
//! authentication), `POST /v1/deployments` per API key (1 a minute, burst 3).
//!
//! The load tests send from many concurrent clients for a bounded time and hold each runtime to
//! the token bucket's promise: no more than the burst plus the refill over the time measured.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, clippy::print_stderr)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis_e2e::{
    AuthzApi, Envoy, Response, echo_upstream, envoy_config, filter_envoy_config, headers, live_api_key, plugin_config,
    request, request_with_body, root, spin_wasm,
};
use portcullis_host::policy_files::PolicyBundle;
use portcullis_host::serve::{Config, Handle, Sidecar};
use portcullis_spin_host::{Options, SpinHost};

const POLICY: &str = "policies/edge.yaml";
const SEARCH_BURST: u64 = 10;
const SEARCH_PER_SECOND: u64 = 5;

async fn sidecar() -> Handle {
    let policy = root().join(POLICY);
    let mut config = Config {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        // Envoy sets X-Forwarded-For to the peer it saw (`use_remote_address`).
        client_address_header: Some("x-forwarded-for".into()),
        ..Config::local(policy)
    };
    // Two workers (two instances of the component) share the one table.
    config.settings.workers = 2;
    Sidecar::build(config).await.unwrap().serve().unwrap()
}

fn spin_component(upstream: SocketAddr) -> Vec<u8> {
    let bundle = PolicyBundle::read(&root().join(POLICY)).unwrap();
    let component = std::fs::read(spin_wasm(true)).unwrap();
    let settings = vec![
        ("upstream".to_owned(), format!("http://{upstream}")),
        ("client_address_header".to_owned(), "x-test-client-addr".to_owned()),
    ];
    portcullis_host::preinit::preinitialize_spin(&component, &bundle, &settings).unwrap()
}

async fn spin(upstream: SocketAddr) -> SpinHost {
    let options = Options { stores: vec!["default".into()], ..Options::default() };
    portcullis_spin_host::start(&spin_component(upstream), options).await.unwrap()
}

/// Three deploys fit the key's burst; the fourth is 429 with `Retry-After` and the limit's
/// headers in both forms; every answer carries the remaining budget.
async fn deploys_are_limited_per_key(addr: SocketAddr) {
    let key = headers(&[("X-API-Key", &live_api_key())]);
    let deploy = || request_with_body(addr, "POST", "/v1/deployments", "api.example.com", &key, Some("{}"));
    for remaining in ["2", "1", "0"] {
        let resp = deploy().await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.body);
        let echoed: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(echoed["body"], "{}", "the request body reaches the upstream");
        assert_eq!(resp.header("x-ratelimit-limit"), Some("3"));
        assert_eq!(resp.header("x-ratelimit-remaining"), Some(remaining));
        assert_eq!(resp.header("ratelimit-policy"), Some(r#""deploys-per-key";q=3;w=180"#));
        assert_eq!(resp.header("retry-after"), None);
    }
    let resp = deploy().await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (429, Some("rate_limited")), "{}", resp.body);
    assert_eq!(resp.body, r#"{"error":"rate_limited","status":429}"#);
    let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
    assert!((58..=60).contains(&retry), "one a minute: {retry}");
    assert_eq!(resp.header("x-ratelimit-remaining"), Some("0"));
    assert!(resp.header("ratelimit").is_some_and(|v| v.starts_with(r#""deploys-per-key";r=0;t="#)));
    assert_eq!(resp.header("strict-transport-security"), Some("max-age=63072000; includeSubDomains"));
    // Another route of the same key is not limited by it.
    let resp = request(addr, "GET", "/v1/orders/1", "api.example.com", &key).await.unwrap();
    assert_eq!(resp.status, 200);
}

/// What a load run saw.
#[derive(Debug, Default)]
struct Load {
    allowed: u64,
    limited: u64,
    other: Vec<u16>,
    elapsed: Duration,
}

/// `clients` concurrent clients send `GET /v1/search` (with `extra` headers) for `duration`.
async fn hammer(addr: SocketAddr, extra: &[(String, String)], clients: usize, duration: Duration) -> Load {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let extra = extra.to_vec();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while start.elapsed() < duration {
                    let resp: Response =
                        request(addr, "GET", "/v1/search?q=x", "api.example.com", &extra).await.unwrap();
                    if resp.status == 429 {
                        assert!(resp.header("retry-after").is_some(), "429 without Retry-After");
                    }
                    seen.push(resp.status);
                }
                seen
            })
        })
        .collect();
    let mut load = Load::default();
    for t in tasks {
        for status in t.await.unwrap() {
            match status {
                200 => load.allowed += 1,
                429 => load.limited += 1,
                other => load.other.push(other),
            }
        }
    }
    load.elapsed = start.elapsed();
    load
}

/// The token bucket's promise over the run, with `slack` for what a runtime documents it may
/// admit beyond it (Spin's store has no compare-and-swap).
/// What `/v1/search`'s bucket may admit over `elapsed`: the burst and the refill.
fn promise(elapsed: Duration) -> (u64, u64) {
    let ms = u64::try_from(elapsed.as_millis()).unwrap();
    (SEARCH_BURST, (ms * SEARCH_PER_SECOND).div_ceil(1000))
}

fn assert_limit_held(what: &str, load: &Load, slack: u64) {
    let (burst, refill) = promise(load.elapsed);
    let ceiling = burst + refill + slack;
    eprintln!(
        "{what}: {} allowed, {} limited in {:.2} s (ceiling {ceiling} = burst {SEARCH_BURST} + refill {refill} + slack {slack})",
        load.allowed,
        load.limited,
        load.elapsed.as_secs_f64()
    );
    assert!(load.other.is_empty(), "{what}: unexpected statuses {:?}", load.other);
    assert!(load.allowed <= ceiling, "{what}: {} allowed, more than {ceiling}", load.allowed);
    assert!(load.allowed >= SEARCH_BURST, "{what}: the burst itself must pass: {}", load.allowed);
    assert!(load.limited > load.allowed, "{what}: the load must exceed the limit to test it: {load:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_limits_through_envoy() {
    let upstream = echo_upstream().await;
    let h = sidecar().await;
    let envoy = Envoy::start(&envoy_config(AuthzApi::Grpc(h.grpc_addr), upstream)).await;
    deploys_are_limited_per_key(envoy.listener).await;
    let load = hammer(envoy.listener, &[], 16, Duration::from_secs(2)).await;
    assert_limit_held("sidecar (2 workers) behind Envoy", &load, 0);
    // The table is the sidecar's, and it says how big it is.
    let metrics = request(h.admin_addr, "GET", "/metrics", "localhost", &[]).await.unwrap().body;
    assert!(metrics.contains("portcullis_rate_limit_buckets 262144"), "{metrics}");
    assert!(metrics.contains("portcullis_rate_limit_evictions_total 0"), "{metrics}");
    drop(envoy);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_limits_through_envoy_http() {
    let upstream = echo_upstream().await;
    let h = sidecar().await;
    let envoy = Envoy::start(&envoy_config(AuthzApi::Http(h.http_addr.unwrap()), upstream)).await;
    // HTTP ext_authz passes response headers on success only as configured
    // (`allowed_client_headers_on_success`, docs/envoy.md).
    deploys_are_limited_per_key(envoy.listener).await;
    drop(envoy);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_limits_across_worker_vms_through_shared_data() {
    let upstream = echo_upstream().await;
    let config = plugin_config(POLICY, serde_json::json!({}));
    let envoy = Envoy::start_with_workers(&filter_envoy_config(&config, upstream, ""), 2).await;
    deploys_are_limited_per_key(envoy.listener).await;
    let load = hammer(envoy.listener, &[], 16, Duration::from_secs(2)).await;
    assert_limit_held("Envoy filter, 2 worker VMs", &load, 0);
    let stats = request(envoy.admin, "GET", "/stats?filter=portcullis", "localhost", &[]).await.unwrap().body;
    assert!(!stats.contains("rate_limits.errors: 1"), "no bucket should have failed its update: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spin_component_limits_through_its_key_value_store() {
    let upstream = echo_upstream().await;
    let host = spin(upstream).await;
    deploys_are_limited_per_key(host.addr).await;
    // Each request is a fresh instance; the clients take turns on two connections at a time.
    let client = headers(&[("x-test-client-addr", "192.0.2.10")]);
    let load = hammer(host.addr, &client, 4, Duration::from_secs(2)).await;
    // Without compare-and-swap, concurrent instances can each spend the same request: with N
    // requests in flight at once a limit admits at most N times its promise (docs/rate-limits.md).
    let (burst, refill) = promise(load.elapsed);
    assert_limit_held("Spin component", &load, 3 * (burst + refill));
    // Another client has its own bucket.
    let other = headers(&[("x-test-client-addr", "192.0.2.11")]);
    let resp = request(host.addr, "GET", "/v1/search", "api.example.com", &other).await.unwrap();
    assert_eq!(resp.status, 200);
    // Without a store to count in, the policy's default fails closed.
    let bare = portcullis_spin_host::start(&spin_component(upstream), Options::default()).await.unwrap();
    let resp = request(bare.addr, "GET", "/v1/search", "api.example.com", &other).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (503, Some("limits_unavailable")));
}
