//! Real Envoy in front of the Portcullis sidecar (gRPC and HTTP ext_authz), on loopback.
//!
//! Every corpus the project has goes through Envoy: allowed requests must reach the upstream
//! with exactly the identity headers the decision sets and none a client forged; denied requests
//! must come back with the decision's status and reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, clippy::print_stderr)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use portcullis_adapter::testkit::{Case, Decider, Outcome, run};
use portcullis_e2e::{
    AuthzApi, CORPUS_NOW, Envoy, TempDir, echo_upstream, envoy_config, headers, live_api_key, not_carried, observe,
    request, root, send,
};
use portcullis_host::runtime::RuntimeConfig;
use portcullis_host::serve::authz::{Clock, Isolation, Settings, system_clock};
use portcullis_host::serve::{Config, Handle, Sidecar};

async fn sidecar(policy: &Path, clock: Clock) -> Handle {
    let config = Config {
        policy: policy.to_owned(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        audit_log: None,
        reload_interval: Some(Duration::from_millis(100)),
        settings: Settings { workers: 2, isolation: Isolation::Warm, runtime: RuntimeConfig::default() },
        client_address_header: Some("x-forwarded-for".into()),
        drain_timeout: Duration::from_secs(5),
        revocations: Arc::new(portcullis_core::NoRevocations),
        revocation: None,
        clock,
        ..Config::local(policy.to_owned())
    };
    Sidecar::build(config).await.unwrap().serve().unwrap()
}

/// Envoy in front of a sidecar as a corpus runtime: a client sees the status and reason of a
/// denial, the upstream sees the identity headers of an allow; the sidecar's clock is set to
/// each case's time. The runtime (and so the sidecar's tasks) lives as long as the decider.
struct ThroughEnvoy {
    rt: tokio::runtime::Runtime,
    grpc: bool,
    upstream: std::net::SocketAddr,
    time: Arc<AtomicI64>,
    running: Option<(Handle, Envoy)>,
    /// Envoy's log for each policy, shown when a case fails.
    logs: Vec<String>,
}

impl ThroughEnvoy {
    fn new(grpc: bool) -> ThroughEnvoy {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let upstream = rt.block_on(echo_upstream());
        ThroughEnvoy { rt, grpc, upstream, time: Arc::new(AtomicI64::new(CORPUS_NOW)), running: None, logs: Vec::new() }
    }

    fn stop(&mut self) {
        if let Some((h, envoy)) = self.running.take() {
            self.logs.push(envoy.log());
            drop(envoy);
            self.rt.block_on(h.shutdown());
        }
    }
}

impl Decider for ThroughEnvoy {
    fn load(&mut self, policy: &str) -> Result<(), String> {
        self.stop();
        let t = Arc::clone(&self.time);
        let (grpc, upstream) = (self.grpc, self.upstream);
        let running = self.rt.block_on(async move {
            let h = sidecar(&root().join(policy), Arc::new(move || t.load(Ordering::SeqCst))).await;
            let api = if grpc { AuthzApi::Grpc(h.grpc_addr) } else { AuthzApi::Http(h.http_addr.unwrap()) };
            let envoy = Envoy::start(&envoy_config(api, upstream)).await;
            (h, envoy)
        });
        self.running = Some(running);
        Ok(())
    }

    fn decide(&mut self, c: &Case) -> Result<Outcome, String> {
        if let Some(why) = not_carried(c) {
            return Ok(Outcome::Skipped(why));
        }
        let (_, envoy) = self.running.as_ref().ok_or("no policy loaded")?;
        let r = &c.request;
        self.time.store(r.now, Ordering::SeqCst);
        let resp = self.rt.block_on(send(envoy.listener, c)).map_err(|e| format!("request failed: {e}"))?;
        observe(c, &resp)
    }
}

fn every_corpus_through_envoy(grpc: bool) {
    let mut envoy = ThroughEnvoy::new(grpc);
    let report = run(&mut envoy, &|p| std::fs::read_to_string(root().join(p)).map_err(|e| e.to_string()));
    envoy.stop();
    if !report.failures.is_empty() {
        eprintln!("--- envoy logs ---\n{}", envoy.logs.join("\n---\n"));
    }
    report.assert_ok(90);
    eprintln!(
        "{} of {} cases went through Envoy ({})",
        report.total - report.skipped,
        report.total,
        if grpc { "gRPC" } else { "HTTP" }
    );
}

#[test]
fn every_corpus_decides_the_same_through_envoy_grpc() {
    every_corpus_through_envoy(true);
}

#[test]
fn every_corpus_decides_the_same_through_envoy_http() {
    every_corpus_through_envoy(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_headers_never_reach_the_upstream() {
    let upstream = echo_upstream().await;
    let h = sidecar(&root().join("policies/identity-forwarding.yaml"), system_clock()).await;
    for api in [AuthzApi::Grpc(h.grpc_addr), AuthzApi::Http(h.http_addr.unwrap())] {
        let envoy = Envoy::start(&envoy_config(api, upstream)).await;
        let forged = [
            ("X-Auth-User", "root"),
            ("X-Auth-Roles", "admin"),
            ("X-Internal-User", "root"),
            ("X-Remote-User", "root"),
        ];
        // A public route: no identity at all may arrive.
        let resp = request(envoy.listener, "GET", "/login", "app.example.com", &headers(&forged)).await.unwrap();
        assert_eq!(resp.status, 200, "{api:?}: {}", resp.body);
        let echo: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        for (name, _) in forged {
            assert!(echo["headers"].get(name.to_ascii_lowercase()).is_none(), "{api:?}: {name} was forwarded: {echo}");
        }
        // An authenticated route: the real identity replaces the forgery.
        let key = live_api_key();
        let mut hs = headers(&forged);
        hs.push(("X-API-Key".into(), key));
        let resp = request(envoy.listener, "GET", "/app/home", "app.example.com", &hs).await.unwrap();
        let echo: serde_json::Value = serde_json::from_str(&resp.body).unwrap();
        assert_eq!(echo["headers"]["x-auth-user"], "ci-deployer", "{api:?}");
        assert_eq!(echo["headers"]["x-auth-roles"], "deployer", "{api:?}");
        assert!(echo["headers"].get("x-internal-user").is_none() && echo["headers"].get("x-remote-user").is_none());
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_reach_the_client_with_status_body_and_challenge() {
    let upstream = echo_upstream().await;
    let h = sidecar(&root().join("policies/api-gateway.yaml"), system_clock()).await;
    for api in [AuthzApi::Grpc(h.grpc_addr), AuthzApi::Http(h.http_addr.unwrap())] {
        let envoy = Envoy::start(&envoy_config(api, upstream)).await;
        let resp = request(envoy.listener, "GET", "/v1/orders", "api.example.com", &[]).await.unwrap();
        assert_eq!(resp.status, 401, "{api:?}");
        assert_eq!(resp.body, r#"{"error":"missing_credential","status":401}"#);
        assert_eq!(resp.header("www-authenticate"), Some(r#"Bearer realm="portcullis""#));
        let resp =
            request(envoy.listener, "GET", "/nowhere", "api.example.com", &headers(&[("X-API-Key", &live_api_key())]))
                .await
                .unwrap();
        assert_eq!((resp.status, resp.header("x-portcullis-reason")), (403, Some("no_route")), "{api:?}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_fails_closed_when_the_sidecar_is_down() {
    let upstream = echo_upstream().await;
    let h = sidecar(&root().join("policies/api-gateway.yaml"), system_clock()).await;
    let (grpc, http) = (h.grpc_addr, h.http_addr.unwrap());
    let key = live_api_key();
    let envoys = [
        Envoy::start(&envoy_config(AuthzApi::Grpc(grpc), upstream)).await,
        Envoy::start(&envoy_config(AuthzApi::Http(http), upstream)).await,
    ];
    for e in &envoys {
        let ok = request(e.listener, "POST", "/v1/deployments", "api.example.com", &headers(&[("X-API-Key", &key)]))
            .await
            .unwrap();
        assert_eq!(ok.status, 200, "sidecar up: {}", ok.body);
    }
    h.shutdown().await;
    for e in &envoys {
        let resp = request(e.listener, "POST", "/v1/deployments", "api.example.com", &headers(&[("X-API-Key", &key)]))
            .await
            .unwrap();
        assert!(resp.status == 503 || resp.status == 403, "sidecar down must deny, got {} {}", resp.status, resp.body);
        assert_ne!(resp.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_takes_effect_through_envoy() {
    let upstream = echo_upstream().await;
    let dir = TempDir::new("reload");
    std::fs::create_dir_all(dir.path().join("keys")).unwrap();
    std::fs::copy(root().join("policies/keys/api-keys.yaml"), dir.path().join("keys/api-keys.yaml")).unwrap();
    let policy = |route: &str| {
        format!(
            "version: 1\napi_keys: {{prefix: ask_, keys_file: keys/api-keys.yaml}}\nroutes:\n  - {{id: r, path: {route}}}\n"
        )
    };
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy("/old")).unwrap();
    let h = sidecar(&file, system_clock()).await;
    let envoy = Envoy::start(&envoy_config(AuthzApi::Grpc(h.grpc_addr), upstream)).await;
    let key = live_api_key();
    let get = |path: &'static str| {
        let hs = headers(&[("X-API-Key", &key)]);
        let addr = envoy.listener;
        async move { request(addr, "GET", path, "api.example.com", &hs).await.unwrap().status }
    };
    assert_eq!((get("/old").await, get("/new").await), (200, 403));
    let tmp = dir.path().join("policy.tmp");
    std::fs::write(&tmp, policy("/new")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let mut took = None;
    let started = std::time::Instant::now();
    for _ in 0..100 {
        if get("/new").await == 200 {
            took = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(took.is_some(), "the reload never took effect");
    assert_eq!(get("/old").await, 403);
    h.shutdown().await;
}
