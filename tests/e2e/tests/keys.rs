//! Keys from an identity provider over HTTPS (a local server with a certificate authority the
//! test makes), through the sidecar's HTTP ext_authz listener; and TLS to Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_e2e::tls::{Idp, IdpState, TestCa, jwks, rs256 as token};
use portcullis_e2e::{TempDir, request};
use portcullis_host::remote_keys::KeyOptions;
use portcullis_host::serve::{Config, Handle, Sidecar};

const ISSUER: &str = "https://idp.test";

/// A token from `ISSUER` naming `kid`, with a signature nobody made: the sidecar looks the
/// `kid` up before it verifies anything.
fn unsigned(kid: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = portcullis_host::unix_now();
    let header = b64(serde_json::json!({ "alg": "RS256", "kid": kid }));
    let claims =
        b64(serde_json::json!({ "iss": ISSUER, "aud": "api", "sub": "mallory", "iat": now, "exp": now + 600 }));
    format!("{header}.{claims}.{}", "A".repeat(342))
}

/// Fast schedules for tests: a one-second minimum lifetime, an immediate first retry.
fn fast() -> KeyOptions {
    KeyOptions {
        min_refresh: Duration::from_secs(1),
        retry_after: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        refetch_wait: Duration::from_secs(3),
        ..KeyOptions::default()
    }
}

struct Running {
    handle: Handle,
    _dir: TempDir,
}

/// A sidecar (HTTP ext_authz on) for a one-issuer RS256 policy whose key sources are `sources`
/// (YAML lines of the issuer entry), trusting `ca`.
async fn sidecar(issuer: &str, sources: &str, ca: &TestCa, keys: KeyOptions) -> Running {
    let dir = TempDir::new("keys");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!("version: 1\nissuers:\n  - issuer: {issuer}\n    audiences: [api]\n    algorithms: [RS256]\n{sources}"),
    )
    .unwrap();
    let config = Config {
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        keys: KeyOptions { ca_file: Some(ca.pem_file.clone()), ..keys },
        ..Config::local(policy)
    };
    let handle = Sidecar::build(config).await.unwrap().serve().unwrap();
    Running { handle, _dir: dir }
}

/// Status and reason of a check of `token`.
async fn check(r: &Running, token: &str) -> (u16, String) {
    let headers = vec![("authorization".to_owned(), format!("Bearer {token}"))];
    let resp = request(r.handle.http_addr.unwrap(), "GET", "/", "api.test", &headers).await.unwrap();
    let reason = if resp.status == 200 { "allowed" } else { resp.header("x-portcullis-reason").unwrap_or("") };
    (resp.status, reason.to_owned())
}

/// The value of the metric line starting with `prefix` (name and labels), or 0.
async fn metric(r: &Running, prefix: &str) -> f64 {
    let text = request(r.handle.admin_addr, "GET", "/metrics", "localhost", &[]).await.unwrap().body;
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).map_or(0.0, |v| v.parse().unwrap())
}

/// Polls until the check of `token` answers `want`.
async fn until(r: &Running, token: &str, want: (u16, &str), limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let got = check(r, token).await;
        if (got.0, got.1.as_str()) == want {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "still {got:?} after {limit:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn jwks_uri(idp: &Idp) -> String {
    format!("    jwks_uri: {}/jwks\n", idp.base())
}

#[tokio::test]
async fn keys_are_fetched_at_start_and_a_rotated_key_is_accepted_at_its_first_request() {
    let ca = TestCa::new("rotation");
    let idp = Idp::start(&ca, IdpState::serving(jwks(&["rsa-2025"]), 3600)).await;
    let r = sidecar(ISSUER, &jwks_uri(&idp), &ca, fast()).await;
    assert_eq!(check(&r, &token(ISSUER, "rsa-2025", "rsa-2025")).await, (200, "allowed".into()));
    assert_eq!(idp.jwks_fetches(), 1, "fetched once, at start");
    assert_eq!(metric(&r, "portcullis_jwks_keys{issuer=\"https://idp.test\"}").await, 1.0);
    assert_eq!(metric(&r, "portcullis_jwks_fetches_total{issuer=\"https://idp.test\",result=\"ok\"}").await, 1.0);
    assert!(metric(&r, "portcullis_jwks_last_success_timestamp_seconds{issuer=\"https://idp.test\"}").await > 0.0);

    // The provider publishes its next key; a token signed with it arrives before any refresh.
    idp.set(|s| s.jwks = jwks(&["rsa-2025", "rsa-2026"]));
    assert_eq!(check(&r, &token(ISSUER, "rsa-2026", "rsa-2026")).await, (200, "allowed".into()), "first request");
    assert_eq!(idp.jwks_fetches(), 2, "one refetch");
    assert_eq!(metric(&r, "portcullis_jwks_refetches_total{issuer=\"https://idp.test\"}").await, 1.0);
    assert_eq!(metric(&r, "portcullis_jwks_keys{issuer=\"https://idp.test\"}").await, 2.0);
    // Both keys serve; a token signed by a key the provider never published is refused.
    assert_eq!(check(&r, &token(ISSUER, "rsa-2025", "rsa-2025")).await, (200, "allowed".into()));
    assert_eq!(check(&r, &token(ISSUER, "attacker-rsa", "rsa-2026")).await, (401, "bad_signature".into()));
    r.handle.shutdown().await;
}

#[tokio::test]
async fn a_removed_key_is_refused_after_the_cache_lifetime_and_the_last_good_keys_outlive_the_provider() {
    let ca = TestCa::new("removal");
    let idp = Idp::start(&ca, IdpState::serving(jwks(&["rsa-2025", "rsa-2026"]), 1)).await;
    let r = sidecar(ISSUER, &jwks_uri(&idp), &ca, fast()).await;
    let old = token(ISSUER, "rsa-2025", "rsa-2025");
    let new = token(ISSUER, "rsa-2026", "rsa-2026");
    assert_eq!(check(&r, &old).await, (200, "allowed".into()));

    idp.set(|s| s.jwks = jwks(&["rsa-2026"]));
    let took = until(&r, &old, (401, "unknown_kid"), Duration::from_secs(10)).await;
    eprintln!("old key refused {took:?} after the provider dropped it (max-age=1)");
    assert_eq!(check(&r, &new).await, (200, "allowed".into()));

    // The provider fails: its last good keys keep serving, the failure is counted.
    idp.set(|s| s.status = 500);
    let failing = "portcullis_jwks_failing{issuer=\"https://idp.test\"}";
    let t = Instant::now();
    while metric(&r, failing).await != 1.0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the failure was never seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(&r, "portcullis_jwks_fetches_total{issuer=\"https://idp.test\",result=\"status\"}").await >= 1.0);
    assert_eq!(check(&r, &new).await, (200, "allowed".into()));
    // Gone altogether (connections refused): still the last good keys.
    drop(idp);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(metric(&r, "portcullis_jwks_fetches_total{issuer=\"https://idp.test\",result=\"network\"}").await >= 1.0);
    assert_eq!(check(&r, &new).await, (200, "allowed".into()));
    r.handle.shutdown().await;
}

#[tokio::test]
async fn a_provider_never_reached_is_keys_unavailable_not_unauthenticated() {
    let ca = TestCa::new("unreachable");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let sources = format!("    jwks_uri: https://127.0.0.1:{}/jwks\n", closed.port());
    let r = sidecar(ISSUER, &sources, &ca, fast()).await;
    let t = token(ISSUER, "rsa-2025", "rsa-2025");
    assert_eq!(check(&r, &t).await, (503, "keys_unavailable".into()));
    // A token of an issuer the policy does not trust is still a 401.
    assert_eq!(check(&r, &token("https://else.test", "rsa-2025", "rsa-2025")).await, (401, "wrong_issuer".into()));
    r.handle.shutdown().await;
}

#[tokio::test]
async fn a_thousand_made_up_kids_cost_the_provider_at_most_one_request() {
    let ca = TestCa::new("flood");
    let idp = Idp::start(&ca, IdpState::serving(jwks(&["rsa-2025"]), 3600)).await;
    let r = Arc::new(sidecar(ISSUER, &jwks_uri(&idp), &ca, fast()).await);
    let before = idp.jwks_fetches();
    eprintln!("before the flood: {before} fetch(es)");
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..25 {
        let r = Arc::clone(&r);
        tasks.spawn(async move {
            let mut answers = Vec::new();
            for i in 0..40 {
                answers.push(check(&r, &unsigned(&format!("made-up-{worker}-{i}"))).await);
            }
            answers
        });
    }
    let mut n = 0;
    while let Some(answers) = tasks.join_next().await {
        for a in answers.unwrap() {
            assert_eq!(a, (401, "unknown_kid".into()));
            n += 1;
        }
    }
    assert_eq!(n, 1000);
    let fetched = idp.jwks_fetches() - before;
    eprintln!("1000 made-up kids: {fetched} request(s) to the provider");
    assert!(fetched <= 1, "{fetched} refetches");
    assert_eq!(metric(&r, "portcullis_jwks_refetches_total{issuer=\"https://idp.test\"}").await, fetched as f64);
    assert!(metric(&r, "portcullis_jwks_refetches_rate_limited_total{issuer=\"https://idp.test\"}").await >= 990.0);
    assert_eq!(check(&r, &token(ISSUER, "rsa-2025", "rsa-2025")).await, (200, "allowed".into()));
}

#[tokio::test]
async fn a_malformed_or_oversized_key_set_is_refused_and_the_old_keys_kept() {
    let ca = TestCa::new("refused");
    let idp = Idp::start(&ca, IdpState::serving(jwks(&["rsa-2025"]), 3600)).await;
    let keys = KeyOptions { refetch_interval: Duration::ZERO, max_bytes: 8192, ..fast() };
    let r = sidecar(ISSUER, &jwks_uri(&idp), &ca, keys).await;
    let good = token(ISSUER, "rsa-2025", "rsa-2025");
    let unknown = token(ISSUER, "rsa-2026", "rsa-2026");
    let label =
        |result: &str| format!("portcullis_jwks_fetches_total{{issuer=\"https://idp.test\",result=\"{result}\"}}");
    for (what, body, result) in [
        ("not JSON", b"<html>maintenance</html>".to_vec(), "invalid"),
        ("no keys array", br#"{"keys":"none"}"#.to_vec(), "invalid"),
        ("over the size limit", format!(r#"{{"keys":[],"pad":"{}"}}"#, "x".repeat(10_000)).into_bytes(), "too_large"),
    ] {
        idp.set(|s| s.jwks = body);
        let before = metric(&r, &label(result)).await;
        // The unknown kid makes the sidecar refetch; the response is refused.
        assert_eq!(check(&r, &unknown).await, (401, "unknown_kid".into()), "{what}");
        assert_eq!(metric(&r, &label(result)).await, before + 1.0, "{what}");
        assert_eq!(check(&r, &good).await, (200, "allowed".into()), "{what}: the old key still serves");
    }
    r.handle.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_authority_is_refused() {
    let (trusted, other) = (TestCa::new("trusted"), TestCa::new("other"));
    let idp = Idp::start(&other, IdpState::serving(jwks(&["rsa-2025"]), 3600)).await;
    let r = sidecar(ISSUER, &jwks_uri(&idp), &trusted, fast()).await;
    assert_eq!(check(&r, &token(ISSUER, "rsa-2025", "rsa-2025")).await, (503, "keys_unavailable".into()));
    assert_eq!(idp.jwks_fetches(), 0, "no request got through the handshake");
    assert!(metric(&r, "portcullis_jwks_fetches_total{issuer=\"https://idp.test\",result=\"network\"}").await >= 1.0);
    r.handle.shutdown().await;
}

#[tokio::test]
async fn discovery_finds_the_key_set_and_checks_the_issuer() {
    let ca = TestCa::new("discovery");
    let idp = Idp::start(&ca, IdpState::serving(jwks(&["rsa-2025"]), 3600)).await;
    let issuer = idp.base();
    let r = sidecar(&issuer, "    discovery: true\n", &ca, fast()).await;
    assert_eq!(check(&r, &token(&issuer, "rsa-2025", "rsa-2025")).await, (200, "allowed".into()));
    r.handle.shutdown().await;

    // A configuration naming another issuer is not this issuer's: nothing is trusted from it.
    idp.set(|s| s.claimed_issuer = Some("https://impostor.test".into()));
    let r = sidecar(&issuer, "    discovery: true\n", &ca, fast()).await;
    assert_eq!(check(&r, &token(&issuer, "rsa-2025", "rsa-2025")).await, (503, "keys_unavailable".into()));
    let invalid = format!("portcullis_jwks_fetches_total{{issuer=\"{issuer}\",result=\"invalid\"}}");
    assert!(metric(&r, &invalid).await >= 1.0);
    r.handle.shutdown().await;
}

mod postgres_tls {
    use portcullis_core::{RevocationKind, RevocationQuery, RevocationStatus, Revocations as _};
    use portcullis_e2e::pg::Cluster;
    use portcullis_e2e::tls::TestCa;
    use portcullis_host::revocation::pg::PgStore;
    use portcullis_host::revocation::{FollowOptions, LiveRevocations, Record, StaleMode, Store, follow};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn revocations_flow_over_verified_tls_and_a_wrong_authority_is_refused() {
        let ca = TestCa::new("pg");
        let cluster = Cluster::start_tls(&ca);
        let ca_file = ca.pem_file.display().to_string();
        let url = format!("{}?sslmode=verify-full&sslrootcert={ca_file}", cluster.url("postgres"));
        let store = PgStore::new(&url).unwrap();
        store.migrate().await.unwrap();
        let client = store.client().await.unwrap();
        let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.unwrap();
        assert!(row.get::<_, bool>(0), "the session is encrypted");

        // The follower, over TLS, sees a revocation.
        let live = Arc::new(LiveRevocations::new(StaleMode::Serve));
        let (stop, rx) = tokio::sync::watch::channel(false);
        let poll = FollowOptions { poll: Duration::from_millis(100), query_timeout: Duration::from_secs(2) };
        let follower = tokio::spawn(follow(Store::Postgres(store.clone()), Arc::clone(&live), poll, rx));
        store
            .revoke(&Record::new(RevocationKind::TokenId, "over-tls", "test", portcullis_host::unix_now()))
            .await
            .unwrap();
        let t = Instant::now();
        while live.status(RevocationQuery::TokenId("over-tls")) != RevocationStatus::Revoked {
            assert!(t.elapsed() < Duration::from_secs(10), "the revocation never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = stop.send(true);
        let _ = follower.await;

        // `require` verifies the chain too; another authority's certificate is refused.
        let other = TestCa::new("pg-other");
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("{}?sslmode={mode}&sslrootcert={}", cluster.url("postgres"), other.pem_file.display());
            let e = PgStore::new(&url).unwrap().client().await.map(|_| ()).unwrap_err().to_string();
            assert!(e.contains("certificate"), "{mode}: {e}");
        }
        // The certificate names 127.0.0.1 and localhost; the server also listens on 127.0.0.2.
        // verify-ca checks the chain only; verify-full also the name connected to.
        let elsewhere = cluster.url("postgres").replace("127.0.0.1", "127.0.0.2");
        for (mode, ok) in [("verify-ca", true), ("verify-full", false), ("require", true)] {
            let url = format!("{elsewhere}?sslmode={mode}&sslrootcert={ca_file}");
            let got = PgStore::new(&url).unwrap().client().await.map(|_| ());
            assert_eq!(got.is_ok(), ok, "{mode} to 127.0.0.2: {got:?}");
        }
    }
}

#[tokio::test]
async fn the_cli_fetches_key_sets_into_a_bundle_and_refuses_when_it_cannot() {
    let ca = TestCa::new("cli");
    let idp = Idp::start(&ca, IdpState::serving(jwks(&["rsa-2025"]), 3600)).await;
    let dir = TempDir::new("cli-keys");
    let policy = dir.path().join("policy.yaml");
    let url = format!("{}/jwks", idp.base());
    std::fs::write(
        &policy,
        format!("version: 1\nissuers:\n  - issuer: {ISSUER}\n    audiences: [api]\n    algorithms: [RS256]\n    jwks_uri: {url}\n"),
    )
    .unwrap();
    let bin = portcullis_e2e::portcullis_bin();
    let run = async |ca_file: &std::path::Path| {
        let mut c = tokio::process::Command::new(&bin);
        c.args(["policy", "bundle", "--fetch-keys", "--jwks-ca-file"]).arg(ca_file).arg(&policy);
        c.output().await.unwrap()
    };
    let out = run(&ca.pem_file).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bundle: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let carried: serde_json::Value = serde_json::from_str(bundle["files"][&url].as_str().unwrap()).unwrap();
    assert_eq!(carried["keys"][0]["kid"], "rsa-2025");

    let other = TestCa::new("cli-other");
    let out = run(&other.pem_file).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("error[network]") && stderr.contains(&url), "{stderr}");
}
