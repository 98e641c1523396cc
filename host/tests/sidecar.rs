//! The sidecar over real loopback sockets (port 0), and its routers without sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, attribute_context};
use http_body_util::BodyExt;
use portcullis_host::runtime::RuntimeConfig;
use portcullis_host::serve::authz::{Isolation, Settings};
use portcullis_host::serve::{Config, Handle, Sidecar};
use tower::ServiceExt;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The plaintext of the `ci-deployer` demo key (tests/fixtures/api-keys.plaintext.json).
fn live_key() -> String {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/api-keys.plaintext.json")).unwrap())
            .unwrap();
    v["live"].as_str().unwrap().to_owned()
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("portcullis-sidecar-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("keys")).unwrap();
    for f in ["api-keys.yaml", "jwks.json"] {
        std::fs::copy(root().join("policies/keys").join(f), d.join("keys").join(f)).unwrap();
    }
    d
}

/// A small policy: API keys only; `/open/**` needs any key, `/deploy` needs `deploy:write`.
fn policy(extra_route: &str) -> String {
    format!(
        "version: 1\napi_keys:\n  prefix: ask_\n  keys_file: keys/api-keys.yaml\nroutes:\n  - {{id: open, path: /open/**}}\n  \
         - {{id: deploy, path: /deploy, scopes: [deploy:write]}}\n{extra_route}audit: {{headers: [User-Agent]}}\n"
    )
}

fn config(policy: &Path, isolation: Isolation) -> Config {
    Config {
        policy: policy.to_owned(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        audit_log: None,
        reload_interval: Some(Duration::from_millis(100)),
        settings: Settings { workers: 2, isolation, runtime: RuntimeConfig::default() },
        client_address_header: Some("x-forwarded-for".into()),
        drain_timeout: Duration::from_secs(5),
        revocations: Arc::new(portcullis_core::NoRevocations),
        revocation: None,
        clock: portcullis_host::serve::authz::system_clock(),
        ..Config::local(policy.to_owned())
    }
}

async fn start(dir: &Path, isolation: Isolation) -> Handle {
    std::fs::write(dir.join("policy.yaml"), policy("")).unwrap();
    Sidecar::build(config(&dir.join("policy.yaml"), isolation)).await.unwrap().serve().unwrap()
}

fn check_request(path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: "api.example.com".into(),
                    headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn grpc_status(h: &Handle, path: &str, headers: &[(&str, &str)]) -> (i32, Option<String>) {
    let mut client = AuthorizationClient::connect(format!("http://{}", h.grpc_addr)).await.unwrap();
    let resp = client.check(check_request(path, headers)).await.unwrap().into_inner();
    let code = resp.status.unwrap().code;
    let reason = resp.dynamic_metadata.and_then(|m| m.fields.get("reason").cloned()).and_then(|v| match v.kind {
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => Some(s),
        _ => None,
    });
    (code, reason)
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_checks_allow_and_deny_with_reasons() {
    let dir = temp_dir("grpc");
    let h = start(&dir, Isolation::Warm).await;
    let key = live_key();
    assert_eq!(grpc_status(&h, "/open/x", &[("x-api-key", &key)]).await, (0, Some("allowed".into())));
    assert_eq!(grpc_status(&h, "/open/x", &[]).await, (16, Some("missing_credential".into())));
    assert_eq!(grpc_status(&h, "/nowhere", &[("x-api-key", &key)]).await, (7, Some("no_route".into())));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_isolation_decides_the_same() {
    let dir = temp_dir("fresh");
    let h = start(&dir, Isolation::Fresh).await;
    let key = live_key();
    assert_eq!(grpc_status(&h, "/deploy", &[("x-api-key", &key)]).await.1.as_deref(), Some("allowed"));
    assert_eq!(grpc_status(&h, "/deploy", &[]).await.1.as_deref(), Some("missing_credential"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_policy_takes_effect_and_a_broken_one_is_rejected() {
    let dir = temp_dir("reload");
    let h = start(&dir, Isolation::Warm).await;
    let key = live_key();
    let policy_file = dir.join("policy.yaml");
    assert_eq!(grpc_status(&h, "/new", &[("x-api-key", &key)]).await.1.as_deref(), Some("no_route"));

    // Rename into place, as editors and ConfigMaps do.
    let tmp = dir.join("policy.yaml.tmp");
    std::fs::write(&tmp, policy("  - {id: new, path: /new}\n")).unwrap();
    std::fs::rename(&tmp, &policy_file).unwrap();
    let mut reloaded = false;
    for _ in 0..100 {
        if grpc_status(&h, "/new", &[("x-api-key", &key)]).await.1.as_deref() == Some("allowed") {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the new route never took effect");
    let generation = h.authorizer().generation().id;
    assert_eq!(generation, 2);

    std::fs::write(&policy_file, "version: 1\nroutes: [{id: broken, path: no-slash}]\n").unwrap();
    for _ in 0..100 {
        if h.authorizer().metrics().render().contains("portcullis_policy_reload_failures_total 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.authorizer().metrics().render().contains("portcullis_policy_reload_failures_total 1"));
    assert_eq!(h.authorizer().generation().id, generation, "the broken policy must not replace the good one");
    assert_eq!(grpc_status(&h, "/new", &[("x-api-key", &key)]).await.1.as_deref(), Some("allowed"));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let dir = temp_dir("admin");
    let h = start(&dir, Isolation::Warm).await;
    assert_eq!(get(h.admin_addr, "/healthz").await.0, 200);
    let (status, body) = get(h.admin_addr, "/readyz").await;
    assert_eq!(status, 200);
    assert!(body.contains("generation=1"));
    grpc_status(&h, "/open/x", &[]).await;
    let (_, metrics) = get(h.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"portcullis_decisions_total{reason="missing_credential",api="grpc"} 1"#), "{metrics}");
    assert!(metrics.contains("portcullis_decision_duration_seconds_count 1"), "{metrics}");
    assert!(metrics.contains("portcullis_policy_generation 1"));
    let admin = h.admin_addr;
    h.shutdown().await;
    assert!(tokio::net::TcpStream::connect(admin).await.is_err(), "the admin listener is closed after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_protocol_sets_identity_strips_forgeries_and_denies_with_a_body() {
    let dir = temp_dir("http");
    let h = start(&dir, Isolation::Warm).await;
    let app = portcullis_host::serve::http::ext_authz_app(Arc::new(portcullis_host::serve::http::HttpState {
        authz: Arc::clone(h.authorizer()),
        client_address_header: Some("x-forwarded-for".parse().unwrap()),
    }));
    let req = axum::http::Request::builder()
        .uri("/deploy")
        .header("x-api-key", live_key())
        .header("x-user-id", "forged-admin")
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-user-id"], "ci-deployer");
    let remove = resp.headers()["x-envoy-auth-headers-to-remove"].to_str().unwrap().to_owned();
    // What is set is never also removed (Envoy removes after it adds); what this identity
    // does not set is removed, so a forged copy cannot pass.
    assert!(!remove.split(", ").any(|h| h.eq_ignore_ascii_case("x-user-id")), "{remove}");
    assert!(remove.split(", ").any(|h| h.eq_ignore_ascii_case("x-user-email")), "{remove}");

    let resp = app.oneshot(axum::http::Request::builder().uri("/deploy").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], r#"Bearer realm="portcullis""#);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"error":"missing_credential","status":401}"#);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_that_does_not_load_stops_startup_with_its_error() {
    let dir = temp_dir("bad");
    std::fs::write(
        dir.join("policy.yaml"),
        "version: 1\nroutes: [{id: a, path: /a, roles: [ghost]}]\napi_keys: {prefix: ask_}\n",
    )
    .unwrap();
    let err = Sidecar::build(config(&dir.join("policy.yaml"), Isolation::Warm)).await.unwrap_err();
    assert!(format!("{err:#}").contains("routes[0].roles[0]"), "{err:#}");
}

/// Revocations a test flips at will.
#[derive(Debug, Default)]
struct Switch(std::sync::atomic::AtomicBool);

impl portcullis_core::Revocations for Switch {
    fn status(&self, _: portcullis_core::RevocationQuery<'_>) -> portcullis_core::RevocationStatus {
        if self.0.load(std::sync::atomic::Ordering::Relaxed) {
            portcullis_core::RevocationStatus::Revoked
        } else {
            portcullis_core::RevocationStatus::Active
        }
    }
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_signature_never_spares_the_claim_checks() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    let corpus = std::fs::read_to_string(root().join("tests/fixtures/corpus.jsonl")).unwrap();
    let case = portcullis_adapter::testkit::parse_corpus(&corpus)
        .unwrap()
        .into_iter()
        .find(|c| c.id == "jwt-rs256-valid")
        .unwrap();
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    let clock_now = Arc::clone(&now);
    let revoked = Arc::new(Switch(AtomicBool::new(false)));
    for isolation in [Isolation::Warm, Isolation::Fresh] {
        revoked.0.store(false, Ordering::Relaxed);
        now.store(1_800_000_000, Ordering::Relaxed);
        let clock = Arc::clone(&clock_now);
        let config = Config {
            settings: Settings { workers: 1, isolation, runtime: RuntimeConfig::default() },
            revocations: Arc::clone(&revoked) as portcullis_host::runtime::SharedRevocations,
            clock: Arc::new(move || clock.load(Ordering::Relaxed)),
            ..Config::local(root().join("policies/example.yaml"))
        };
        let h = Sidecar::build(config).await.unwrap().serve().unwrap();
        let decide = |h: &Handle| {
            let authz = Arc::clone(h.authorizer());
            let mut req = case.request.clone();
            req.now = authz.now();
            async move { tokio::task::spawn_blocking(move || authz.check(&req, "grpc").reason).await.unwrap() }
        };
        assert_eq!(decide(&h).await, portcullis_core::Reason::Allowed, "{isolation:?}");
        assert_eq!(decide(&h).await, portcullis_core::Reason::Allowed, "{isolation:?}");
        let (_, m) = get(h.admin_addr, "/metrics").await;
        assert!(metric(&m, "portcullis_signature_cache_hits_total") >= 1.0, "{isolation:?}: the second check hit: {m}");
        // The same token, its signature cached: expired is expired, revoked is revoked.
        now.store(1_800_003_600 + 3600, Ordering::Relaxed);
        assert_eq!(decide(&h).await, portcullis_core::Reason::Expired, "{isolation:?}");
        now.store(1_800_000_000, Ordering::Relaxed);
        revoked.0.store(true, Ordering::Relaxed);
        assert_eq!(decide(&h).await, portcullis_core::Reason::Revoked, "{isolation:?}");
        let (_, m) = get(h.admin_addr, "/metrics").await;
        assert!(metric(&m, "portcullis_signature_cache_hits_total") >= 3.0, "{isolation:?}: {m}");
        assert!(metric(&m, "portcullis_signature_cache_entries") >= 1.0, "{isolation:?}: {m}");
        // A new generation (keys may have changed) starts with an empty cache.
        let authz = Arc::clone(h.authorizer());
        let bundle = portcullis_host::policy_files::PolicyBundle::read(&root().join("policies/example.yaml")).unwrap();
        tokio::task::spawn_blocking(move || authz.reload(bundle).unwrap()).await.unwrap();
        let (_, m) = get(h.admin_addr, "/metrics").await;
        assert_eq!(metric(&m, "portcullis_signature_cache_entries"), 0.0, "{isolation:?}: {m}");
        h.shutdown().await;
    }
}
