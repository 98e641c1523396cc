//! The Spin component (`guest/spin`) end to end: built for `wasm32-wasip2` as users build it,
//! the policy compiled in with `portcullis spin build`'s code path, and served a fresh instance
//! per request by the project's Spin-like host (`tests/spin-host`: wasmtime-wasi-http plus
//! Spin's variables and key-value store), in front of an echo upstream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use portcullis_adapter::testkit::{Case, Decider, Outcome, run};
use portcullis_e2e::{
    CORPUS_NOW, echo_upstream, echoed_headers, headers, live_api_key, not_carried, observe, request, root, send,
    spin_wasm,
};
use portcullis_host::policy_files::PolicyBundle;
use portcullis_spin_host::{Options, SpinHost};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// The Spin component with `policy` (a path from the repository root) compiled in and
/// `settings` as its build-time defaults.
fn built(policy: &str, settings: &[(&str, String)]) -> Vec<u8> {
    let bundle = PolicyBundle::read(&root().join(policy)).unwrap();
    let component = std::fs::read(spin_wasm(true)).unwrap();
    let settings: Vec<_> = settings.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    portcullis_host::preinit::preinitialize_spin(&component, &bundle, &settings).unwrap()
}

/// Where the corpus puts a case's client address: the component reads it from this header
/// (Spin itself writes `spin-client-addr`).
const CLIENT_HEADER: &str = "x-test-client-addr";

/// The Spin component as a corpus runtime, one host per policy.
struct ThroughSpin {
    rt: tokio::runtime::Runtime,
    upstream: SocketAddr,
    host: Option<SpinHost>,
}

impl Decider for ThroughSpin {
    fn load(&mut self, policy: &str) -> Result<(), String> {
        self.host = None;
        let wasm = built(
            policy,
            &[
                ("upstream", format!("http://{}", self.upstream)),
                ("fixed_now", CORPUS_NOW.to_string()),
                ("client_address_header", CLIENT_HEADER.into()),
            ],
        );
        self.host =
            Some(self.rt.block_on(portcullis_spin_host::start(&wasm, Options::default())).map_err(|e| e.to_string())?);
        Ok(())
    }

    fn decide(&mut self, c: &Case) -> Result<Outcome, String> {
        let mut c = c.clone();
        if let Some(ip) = c.request.client_ip.take() {
            c.request.headers.push((CLIENT_HEADER.into(), ip.to_string()));
        }
        if let Some(why) = not_carried(&c) {
            return Ok(Outcome::Skipped(why));
        }
        if c.request.now != CORPUS_NOW {
            return Ok(Outcome::Skipped("the component's clock is fixed for the whole corpus"));
        }
        let host = self.host.as_ref().ok_or("no policy loaded")?;
        let resp = self.rt.block_on(send(host.addr, &c)).map_err(|e| format!("request failed: {e}"))?;
        observe(&c, &resp)
    }
}

#[test]
fn every_corpus_decides_the_same_through_the_spin_component() {
    let rt = runtime();
    let upstream = rt.block_on(echo_upstream());
    let mut spin = ThroughSpin { rt, upstream, host: None };
    let report = run(&mut spin, &|p| std::fs::read_to_string(root().join(p)).map_err(|e| e.to_string()));
    report.assert_ok(95);
    eprintln!("{} of {} cases went through the Spin component", report.total - report.skipped, report.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_reaches_the_upstream_and_forgeries_do_not() {
    let upstream = echo_upstream().await;
    let wasm = built("policies/identity-forwarding.yaml", &[("upstream", format!("http://{upstream}/base"))]);
    let host = portcullis_spin_host::start(&wasm, Options::default()).await.unwrap();
    let resp = portcullis_e2e::assert_identity_forwarding(host.addr, "/app/home?tab=2").await;
    let body: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
    assert_eq!(body["path"], "/base/app/home?tab=2", "the upstream URL's path is a prefix: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_carry_the_sidecars_status_body_and_challenge() {
    let upstream = echo_upstream().await;
    let wasm = built("policies/api-gateway.yaml", &[("upstream", format!("http://{upstream}"))]);
    let host = portcullis_spin_host::start(&wasm, Options::default()).await.unwrap();
    let resp = request(host.addr, "GET", "/v1/orders", "api.example.com", &[]).await.unwrap();
    assert_eq!(resp.status, 401);
    assert_eq!(resp.body, r#"{"error":"missing_credential","status":401}"#);
    assert_eq!(resp.header("www-authenticate"), Some(r#"Bearer realm="portcullis""#));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let key = headers(&[("X-API-Key", &live_api_key())]);
    let resp = request(host.addr, "GET", "/nowhere", "api.example.com", &key).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (403, Some("no_route")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_come_from_application_variables_over_the_build_defaults() {
    let upstream = echo_upstream().await;
    // Built pointing nowhere; the variable points at the upstream.
    let wasm = built("policies/api-gateway.yaml", &[("upstream", "http://127.0.0.1:9".into())]);
    let variables = BTreeMap::from([("upstream".to_owned(), format!("http://{upstream}"))]);
    let host = portcullis_spin_host::start(&wasm, Options { variables, ..Options::default() }).await.unwrap();
    let key = headers(&[("X-API-Key", &live_api_key())]);
    let resp = request(host.addr, "GET", "/v1/orders", "api.example.com", &key).await.unwrap();
    assert_eq!(echoed_headers(&resp)["x-user-id"], "ci-deployer");
    // A bad setting denies everything (503), naming the setting in the log, never passing.
    let variables = BTreeMap::from([("upstream".to_owned(), "ftp://nowhere".to_owned())]);
    let host = portcullis_spin_host::start(&wasm, Options { variables, ..Options::default() }).await.unwrap();
    let resp = request(host.addr, "GET", "/v1/orders", "api.example.com", &key).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (503, Some("internal_error")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_a_502_and_a_policy_that_does_not_load_is_refused_at_build() {
    let wasm = built("policies/api-gateway.yaml", &[("upstream", "http://127.0.0.1:9".into())]);
    let host = portcullis_spin_host::start(&wasm, Options::default()).await.unwrap();
    let key = headers(&[("X-API-Key", &live_api_key())]);
    let resp = request(host.addr, "GET", "/v1/orders", "api.example.com", &key).await.unwrap();
    assert_eq!(resp.status, 502, "{}", resp.body);

    let component = std::fs::read(spin_wasm(true)).unwrap();
    let mut bundle = PolicyBundle::read(&root().join("policies/api-gateway.yaml")).unwrap();
    bundle.bundle.files.clear();
    let e = portcullis_host::preinit::preinitialize_spin(&component, &bundle, &[]).unwrap_err();
    assert!(format!("{e:#}").contains("policy_file"), "{e:#}");
    let bundle = PolicyBundle::read(&root().join("policies/api-gateway.yaml")).unwrap();
    let e = portcullis_host::preinit::preinitialize_spin(&component, &bundle, &[("upstrem".into(), "x".into())])
        .unwrap_err();
    let refused = e.downcast_ref::<portcullis_host::preinit::Refused>().expect("the component's refusal");
    assert_eq!(refused.code, "config_invalid");
    assert!(refused.message.starts_with("unknown setting `upstrem` (known: upstream,"), "{refused:?}");
}

/// `wasmtime serve` on a free loopback port, killed when dropped.
struct WasmtimeServe {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wasmtime_serve(wasm: &std::path::Path) -> WasmtimeServe {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = std::process::Command::new(portcullis_e2e::wasmtime_bin())
        .args(["serve", "-S", "cli", "--addr"])
        .arg(addr.to_string())
        .arg(wasm)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("cannot start wasmtime serve");
    let serve = WasmtimeServe { child, addr };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "wasmtime serve did not listen within 30 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    serve
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasi_only_build_runs_under_wasmtime_serve() {
    let upstream = echo_upstream().await;
    let bundle = PolicyBundle::read(&root().join("policies/api-gateway.yaml")).unwrap();
    let component = std::fs::read(spin_wasm(false)).unwrap();
    let settings = [("upstream".to_owned(), format!("http://{upstream}"))];
    let wasm = portcullis_host::preinit::preinitialize_spin(&component, &bundle, &settings).unwrap();
    let dir = portcullis_e2e::TempDir::new("spin-wasi");
    let path = dir.0.join("gate.wasm");
    std::fs::write(&path, wasm).unwrap();
    let serve = wasmtime_serve(&path).await;

    let resp = request(serve.addr, "GET", "/v1/orders", "api.example.com", &[]).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (401, Some("missing_credential")));
    let hs = headers(&[("X-API-Key", &live_api_key()), ("X-User-Id", "root")]);
    let seen = echoed_headers(&request(serve.addr, "GET", "/v1/orders", "api.example.com", &hs).await.unwrap());
    assert_eq!(seen["x-user-id"], "ci-deployer", "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_follow_the_sidecars_feed_through_the_key_value_store() {
    use portcullis_host::revocation::Record;
    use portcullis_host::revocation::file::FileStore;
    use std::time::{Duration, Instant};
    let dir = portcullis_e2e::TempDir::new("spin-feed");
    let path = dir.0.join("revocations.jsonl");
    let file = FileStore::new(&path);
    let sidecar = portcullis_e2e::feed_sidecar(&file).await;
    let now = portcullis_host::unix_now();
    let reader =
        portcullis_e2e::hs256(now, serde_json::json!({ "sub": "spin", "scope": "portcullis:revocations:read" }));
    let upstream = echo_upstream().await;
    let poll_ms = 200;
    let wasm = built(
        "policies/example.yaml",
        &[
            ("upstream", format!("http://{upstream}")),
            ("revocations_feed", format!("http://{}", sidecar.admin_addr)),
            ("revocations_credential", format!("Bearer {reader}")),
            ("revocations_poll_ms", poll_ms.to_string()),
            ("revocations_stale_after_ms", "5000".into()),
        ],
    );
    let options = Options { stores: vec!["default".into()], ..Options::default() };
    let host = portcullis_spin_host::start(&wasm, options).await.unwrap();
    let token = format!("Bearer {}", portcullis_e2e::hs256(now, serde_json::json!({ "jti": "spin-1" })));
    let auth = headers(&[("Authorization", &token)]);
    // The first request syncs (a snapshot) before it is decided.
    let resp = request(host.addr, "GET", "/v1/orders", "api.example.com", &auth).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
    let stored = host.key_value.lock().unwrap()["default"].keys().cloned().collect::<Vec<_>>();
    assert!(stored.iter().any(|k| k == "portcullis.revocations.record"), "{stored:?}");
    assert!(!stored.iter().any(|k| k.contains("spin-1")), "identifiers never appear in keys: {stored:?}");

    let record = Record::new(portcullis_core::RevocationKind::TokenId, "spin-1", "test", now);
    assert!(file.revoke(&record).await.unwrap());
    let revoked_at = Instant::now();
    loop {
        let resp = request(host.addr, "GET", "/v1/orders", "api.example.com", &auth).await.unwrap();
        if resp.header("x-portcullis-reason") == Some("revoked") {
            break;
        }
        assert!(revoked_at.elapsed() < Duration::from_secs(3), "never denied: {} {}", resp.status, resp.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("a revocation in the sidecar's file was denied by the Spin component {:?} later", revoked_at.elapsed());

    // The sidecar goes away: the stored set stays in force.
    sidecar.shutdown().await;
    tokio::time::sleep(Duration::from_millis(2 * poll_ms)).await;
    let resp = request(host.addr, "GET", "/v1/orders", "api.example.com", &auth).await.unwrap();
    assert_eq!(resp.header("x-portcullis-reason"), Some("revoked"), "{}", resp.body);
    let other = format!("Bearer {}", portcullis_e2e::hs256(now, serde_json::json!({ "jti": "spin-2" })));
    let resp = request(host.addr, "GET", "/v1/orders", "api.example.com", &headers(&[("Authorization", &other)]))
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_feed_nothing_passes_until_a_snapshot_is_stored() {
    let upstream = echo_upstream().await;
    let wasm = built(
        "policies/example.yaml",
        &[
            ("upstream", format!("http://{upstream}")),
            ("revocations_feed", "http://127.0.0.1:9".into()),
            ("revocations_credential", "Bearer x".into()),
        ],
    );
    let options = Options { stores: vec!["default".into()], ..Options::default() };
    let host = portcullis_spin_host::start(&wasm, options).await.unwrap();
    let now = portcullis_host::unix_now();
    let token = format!("Bearer {}", portcullis_e2e::hs256(now, serde_json::json!({})));
    let resp = request(host.addr, "GET", "/v1/orders", "api.example.com", &headers(&[("Authorization", &token)]))
        .await
        .unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (503, Some("revocation_stale")), "{}", resp.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_signatures_are_remembered_in_the_store_and_forged_ones_are_not() {
    let upstream = echo_upstream().await;
    let wasm = built(
        "policies/example.yaml",
        &[
            ("upstream", format!("http://{upstream}")),
            ("fixed_now", CORPUS_NOW.to_string()),
            ("signature_cache_store", "signatures".into()),
        ],
    );
    let options = Options { stores: vec!["signatures".into()], ..Options::default() };
    let host = portcullis_spin_host::start(&wasm, options).await.unwrap();
    let case = portcullis_e2e::corpus_case;
    let entries = || -> usize {
        let stores = host.key_value.lock().unwrap();
        stores.get("signatures").map_or(0, |s| s.values().map(|v| v.len() / 32).sum())
    };
    for _ in 0..3 {
        assert_eq!(send(host.addr, &case("jwt-rs256-valid")).await.unwrap().status, 200);
    }
    assert_eq!(entries(), 1, "one valid signature, remembered once");
    assert_eq!(send(host.addr, &case("jwt-es256-valid")).await.unwrap().status, 200);
    assert_eq!(entries(), 2);
    let forged = portcullis_e2e::with_forged_signature(&case("jwt-rs256-valid"));
    assert_eq!(send(host.addr, &forged).await.unwrap().status, 401);
    assert_eq!(entries(), 2, "an invalid signature is never remembered");
    let stored: Vec<String> = host.key_value.lock().unwrap()["signatures"].keys().cloned().collect();
    assert!(stored.iter().all(|k| k.starts_with("portcullis.signatures.")), "{stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_front_of_another_component_through_service_chaining() {
    // `examples/spin/middleware.toml`: the upstream is the application's own component, reached
    // as `http://app.spin.internal`. The test host stands the echo server in for that component.
    let app = echo_upstream().await;
    let wasm = built("policies/identity-forwarding.yaml", &[("upstream", "http://app.spin.internal".into())]);
    let chained = BTreeMap::from([("app.spin.internal".to_owned(), app)]);
    let host = portcullis_spin_host::start(&wasm, Options { chained, ..Options::default() }).await.unwrap();
    let hs = headers(&[("X-API-Key", &live_api_key()), ("X-Auth-User", "root")]);
    let resp = request(host.addr, "GET", "/app/home", "app.example.com", &hs).await.unwrap();
    assert_eq!(echoed_headers(&resp)["x-auth-user"], "ci-deployer");
    let resp = request(host.addr, "GET", "/app/home", "app.example.com", &[]).await.unwrap();
    assert_eq!(resp.status, 401, "nothing reaches the component without a credential");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_the_network_follow_the_sidecar_through_the_key_value_store() {
    use portcullis_e2e::tls::{ProviderAndSidecar, jwks, rs256};
    use std::time::{Duration, Instant};
    let ProviderAndSidecar { idp, policy, sidecar, ca: _ca, .. } = ProviderAndSidecar::start("spin-keys").await;
    let upstream = echo_upstream().await;
    // Built without the keys: the component gets them from the sidecar through the store.
    let bundle = PolicyBundle::read(&policy).unwrap();
    let settings = [
        ("upstream".to_owned(), format!("http://{upstream}")),
        ("keys_feed".to_owned(), format!("http://{}", sidecar.admin_addr)),
        ("keys_poll_ms".to_owned(), "200".to_owned()),
    ];
    let wasm =
        portcullis_host::preinit::preinitialize_spin(&std::fs::read(spin_wasm(true)).unwrap(), &bundle, &settings)
            .unwrap();
    let host = portcullis_spin_host::start(&wasm, Options { stores: vec!["default".into()], ..Options::default() })
        .await
        .unwrap();
    let bearer = |key: &str| headers(&[("Authorization", &format!("Bearer {}", rs256("https://idp.test", key, key)))]);
    let resp = request(host.addr, "GET", "/", "api.test", &bearer("rsa-2025")).await.unwrap();
    assert_eq!(resp.status, 200, "the first request asks the sidecar: {}", resp.body);

    idp.set(|s| s.jwks = jwks(&["rsa-2026"]));
    let rotated = Instant::now();
    loop {
        let resp = request(host.addr, "GET", "/", "api.test", &bearer("rsa-2026")).await.unwrap();
        if resp.status == 200 {
            break;
        }
        assert!(rotated.elapsed() < Duration::from_secs(10), "never accepted: {} {}", resp.status, resp.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "a rotated key was accepted by the Spin component {:?} after the provider published it",
        rotated.elapsed()
    );
    let resp = request(host.addr, "GET", "/", "api.test", &bearer("rsa-2025")).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (401, Some("unknown_kid")), "{}", resp.body);

    // The sidecar goes away: the stored sets stay.
    sidecar.shutdown().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resp = request(host.addr, "GET", "/", "api.test", &bearer("rsa-2026")).await.unwrap();
    assert_eq!(resp.status, 200, "{}", resp.body);

    // Without the feed, and built without the keys: keys_unavailable.
    let wasm = portcullis_host::preinit::preinitialize_spin(
        &std::fs::read(spin_wasm(true)).unwrap(),
        &bundle,
        &[("upstream".to_owned(), format!("http://{upstream}"))],
    )
    .unwrap();
    let bare = portcullis_spin_host::start(&wasm, Options::default()).await.unwrap();
    let resp = request(bare.addr, "GET", "/", "api.test", &bearer("rsa-2026")).await.unwrap();
    assert_eq!((resp.status, resp.header("x-portcullis-reason")), (503, Some("keys_unavailable")), "{}", resp.body);
}
