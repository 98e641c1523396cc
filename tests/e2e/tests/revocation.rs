//! Revocation against a real Postgres (a throwaway cluster, or `$DATABASE_URL`): migrations,
//! revoke-then-deny through the sidecar, no change lost across a Postgres restart or a killed
//! connection, staleness in both modes, the file store, and the admin API with its feed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic, clippy::print_stderr)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_core::{OwnedRequest, Reason, RevocationKind, RevocationQuery, RevocationStatus, Revocations};
use portcullis_e2e::pg::{Cluster, Database, connect};
use portcullis_e2e::{TempDir, hs256, request, request_with_body, root};
use portcullis_host::revocation::file::FileStore;
use portcullis_host::revocation::pg::{PgStore, latest_version};
use portcullis_host::revocation::{FollowOptions, Freshness, LiveRevocations, Record, StaleMode, Store, follow};
use portcullis_host::serve::{Config, Handle, RevocationConfig, Sidecar};
use tokio::sync::watch;

const FAST: FollowOptions = FollowOptions { poll: Duration::from_millis(100), query_timeout: Duration::from_secs(2) };

async fn sidecar(store: Store, mode: StaleMode, stale_after: Duration, audit: Option<std::path::PathBuf>) -> Handle {
    let live = Arc::new(LiveRevocations::new(mode));
    let config = Config {
        audit_log: audit,
        revocation: Some(RevocationConfig {
            store,
            live,
            freshness: Freshness { stale_after, mode },
            follow: FAST,
            scopes: ("portcullis:revocations:read".into(), "portcullis:revocations:write".into()),
        }),
        ..Config::local(root().join("policies/example.yaml"))
    };
    let handle = Sidecar::build(config).await.unwrap().serve().unwrap();
    wait_ready(handle.admin_addr).await;
    handle
}

async fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = request(admin, "GET", "/readyz", "localhost", &[]).await
            && r.status == 200
        {
            return;
        }
        assert!(Instant::now() < deadline, "the sidecar never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn bearer(token: &str) -> OwnedRequest {
    OwnedRequest {
        method: "GET".into(),
        scheme: "https".into(),
        host: "api.example.com".into(),
        path: "/v1/orders".into(),
        headers: vec![("authorization".into(), format!("Bearer {token}"))],
        now: portcullis_host::unix_now(),
        ..OwnedRequest::default()
    }
}

async fn decide(h: &Handle, req: &OwnedRequest) -> Reason {
    let (authz, req) = (Arc::clone(h.authorizer()), req.clone());
    tokio::task::spawn_blocking(move || authz.check(&req, "grpc").reason).await.unwrap()
}

/// Polls until the decision is `want`; returns how long it took.
async fn until(h: &Handle, req: &OwnedRequest, want: Reason, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let got = decide(h, req).await;
        if got == want {
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "still {got:?} after {limit:?}, wanted {want:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn migrated(url: &str) -> PgStore {
    let store = PgStore::new(url).unwrap();
    store.migrate().await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_to_run_concurrently() {
    let db = Database::new().await;
    let store = PgStore::new(&db.url).unwrap();
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move { s.migrate().await.map(|a| a.len()) })
        })
        .collect();
    let mut applied = Vec::new();
    for r in runs {
        applied.push(r.await.unwrap().unwrap());
    }
    assert_eq!(applied.iter().sum::<usize>(), usize::try_from(latest_version()).unwrap(), "{applied:?}");
    assert!(store.migrate().await.unwrap().is_empty(), "a second run applies nothing");
    let client = connect(&db.url).await;
    assert_eq!(PgStore::version(&client).await.unwrap(), latest_version());
    let e = client.batch_execute("TRUNCATE portcullis.revocations").await.unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("cannot be truncated"), "{e}");
    // Unmigrated databases are refused with a hint, not half-used.
    let fresh = Database::new().await;
    let e = PgStore::new(&fresh.url).unwrap().list(&Default::default()).await.unwrap_err();
    assert!(e.to_string().contains("portcullis db migrate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_then_deny_within_the_bound_and_unrevoke_restores() {
    let db = Database::new().await;
    let store = migrated(&db.url).await;
    let h = sidecar(Store::Postgres(store.clone()), StaleMode::Serve, Duration::from_secs(30), None).await;
    let now = portcullis_host::unix_now();

    let jti = bearer(&hs256(now, serde_json::json!({ "jti": "e2e-jti-1" })));
    assert_eq!(decide(&h, &jti).await, Reason::Allowed);
    assert!(store.revoke(&Record::new(RevocationKind::TokenId, "e2e-jti-1", "test", now)).await.unwrap());
    let took = until(&h, &jti, Reason::Revoked, Duration::from_secs(2)).await;
    eprintln!("jti revocation reached the sidecar in {took:?}");

    // A subject: everything issued up to the cut-off; a token issued later still works.
    let old = bearer(&hs256(now - 10, serde_json::json!({ "sub": "bob" })));
    let new = bearer(&hs256(now + 5, serde_json::json!({ "sub": "bob" })));
    let mut s = Record::new(RevocationKind::Subject, "bob", "test", now);
    s.issued_before = Some(now);
    assert!(store.revoke(&s).await.unwrap());
    until(&h, &old, Reason::Revoked, Duration::from_secs(2)).await;
    assert_eq!(decide(&h, &new).await, Reason::Allowed);

    // API keys by id.
    let keys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/api-keys.plaintext.json")).unwrap()).unwrap();
    let mut api = bearer("unused");
    api.headers = vec![("x-api-key".into(), keys["live"].as_str().unwrap().into())];
    assert_eq!(decide(&h, &api).await, Reason::Allowed);
    assert!(store.revoke(&Record::new(RevocationKind::ApiKey, "ci-deployer", "test", now)).await.unwrap());
    until(&h, &api, Reason::Revoked, Duration::from_secs(2)).await;

    assert!(store.unrevoke(RevocationKind::TokenId, "e2e-jti-1").await.unwrap());
    until(&h, &jti, Reason::Allowed, Duration::from_secs(2)).await;
    h.shutdown().await;
}

async fn insert_range(client: &tokio_postgres::Client, from: i64, to: i64) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO portcullis.revocations (kind, id, actor)
             SELECT 'jti', 'r-' || g, 'load' FROM generate_series($1::bigint, $2::bigint) g
             ON CONFLICT DO NOTHING",
            &[&from, &to],
        )
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_in_the_middle_of_10k_revocations_loses_none() {
    const TOTAL: i64 = 10_000;
    const BATCH: i64 = 50;
    let cluster = Arc::new(tokio::task::spawn_blocking(Cluster::start).await.unwrap());
    let url = cluster.url("postgres");
    let store = migrated(&url).await;
    let live = Arc::new(LiveRevocations::new(StaleMode::Serve));
    let (stop_tx, stop) = watch::channel(false);
    let follower = tokio::spawn(follow(Store::Postgres(store), Arc::clone(&live), FAST, stop));

    // The writer retries each batch until it commits; batches are idempotent.
    let writer = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut from = 1;
            let mut client: Option<tokio_postgres::Client> = None;
            while from <= TOTAL {
                let to = (from + BATCH - 1).min(TOTAL);
                if client.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
                    client = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.ok().map(|(c, conn)| {
                        tokio::spawn(conn);
                        c
                    });
                }
                match &client {
                    Some(c) if insert_range(c, from, to).await.is_ok() => from = to + 1,
                    _ => {
                        client = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    };
    // Restart once a third of the stream is in.
    let deadline = Instant::now() + Duration::from_secs(60);
    while live.len() < 3_000 {
        assert!(Instant::now() < deadline, "the follower stalled at {}", live.len());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let c = Arc::clone(&cluster);
    tokio::task::spawn_blocking(move || {
        c.stop();
        std::thread::sleep(Duration::from_millis(300));
        c.start_again();
    })
    .await
    .unwrap();
    writer.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    while live.len() < usize::try_from(TOTAL).unwrap() {
        assert!(Instant::now() < deadline, "only {} of {TOTAL} arrived", live.len());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 1..=TOTAL {
        let id = format!("r-{i}");
        assert_eq!(live.status(RevocationQuery::TokenId(&id)), RevocationStatus::Revoked, "{id} was lost");
    }
    let client = connect(&url).await;
    let last: i64 = client.query_one("SELECT last_seq FROM portcullis.revocation_log_state", &[]).await.unwrap().get(0);
    assert_eq!(live.cursor(), Some(last));
    assert!(live.metrics.reconnects.get() >= 1, "the restart was noticed");
    eprintln!("10,000 revocations, restart in the middle: all applied, {} reconnect(s)", live.metrics.reconnects.get());
    stop_tx.send(true).unwrap();
    follower.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_by_the_server_is_recovered() {
    let db = Database::new().await;
    let store = migrated(&db.url).await;
    let live = Arc::new(LiveRevocations::new(StaleMode::Serve));
    let (stop_tx, stop) = watch::channel(false);
    let follower = tokio::spawn(follow(Store::Postgres(store.clone()), Arc::clone(&live), FAST, stop));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !live.synced() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let admin = connect(&db.url).await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE application_name = 'portcullis' AND datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the follower's backend was not found");
    // Written while the follower is reconnecting: it must still arrive.
    assert!(store.revoke(&Record::new(RevocationKind::TokenId, "after-kill", "test", 0)).await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while live.status(RevocationQuery::TokenId("after-kill")) != RevocationStatus::Revoked {
        assert!(Instant::now() < deadline, "the revocation after the kill never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(live.metrics.reconnects.get() >= 1);
    stop_tx.send(true).unwrap();
    follower.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_set_serves_or_fails_closed_as_configured() {
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let store = migrated(&cluster.url("postgres")).await;
    let bound = Duration::from_millis(400);
    let serving = sidecar(Store::Postgres(store.clone()), StaleMode::Serve, bound, None).await;
    let closed = sidecar(Store::Postgres(store.clone()), StaleMode::FailClosed, bound, None).await;
    let now = portcullis_host::unix_now();
    let token = bearer(&hs256(now, serde_json::json!({ "jti": "stale-1" })));
    assert_eq!(decide(&serving, &token).await, Reason::Allowed);
    assert_eq!(decide(&closed, &token).await, Reason::Allowed);

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop();
        cluster
    })
    .await
    .unwrap();
    until(&closed, &token, Reason::RevocationStale, Duration::from_secs(5)).await;
    assert_eq!(decide(&serving, &token).await, Reason::Allowed, "serve mode keeps answering");
    let metrics = request(serving.admin_addr, "GET", "/metrics", "localhost", &[]).await.unwrap().body;
    assert!(metrics.contains("portcullis_revocations_stale 1"), "{metrics}");

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.start_again();
        cluster
    })
    .await
    .unwrap();
    until(&closed, &token, Reason::Allowed, Duration::from_secs(10)).await;
    serving.shutdown().await;
    closed.shutdown().await;
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_file_store_is_watched() {
    let dir = TempDir::new("revocations-file");
    let file = FileStore::new(dir.path().join("revocations.jsonl"));
    let h = sidecar(Store::File(file.clone()), StaleMode::Serve, Duration::from_secs(30), None).await;
    let now = portcullis_host::unix_now();
    let token = bearer(&hs256(now, serde_json::json!({ "jti": "file-1" })));
    assert_eq!(decide(&h, &token).await, Reason::Allowed);
    let store = Store::File(file);
    assert!(store.revoke(&Record::new(RevocationKind::TokenId, "file-1", "test", now)).await.unwrap());
    until(&h, &token, Reason::Revoked, Duration::from_secs(3)).await;
    assert!(store.unrevoke(RevocationKind::TokenId, "file-1").await.unwrap());
    until(&h, &token, Reason::Allowed, Duration::from_secs(3)).await;
    // A broken file keeps the last good set in force.
    assert!(store.revoke(&Record::new(RevocationKind::TokenId, "file-1", "test", now)).await.unwrap());
    until(&h, &token, Reason::Revoked, Duration::from_secs(3)).await;
    std::fs::write(dir.path().join("revocations.jsonl"), "{not json\n").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(decide(&h, &token).await, Reason::Revoked);
    h.shutdown().await;
}

/// Findings: a snapshot that suddenly returns nothing, a change log cut short or rewound, must
/// not un-revoke; the set stays, unconfirmed, and the sidecar goes stale until the store is
/// sound again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_loses_rows_or_history_never_unrevokes() {
    let db = Database::new().await;
    let store = migrated(&db.url).await;
    let client = connect(&db.url).await;
    let bound = Duration::from_millis(800);
    let h = sidecar(Store::Postgres(store.clone()), StaleMode::FailClosed, bound, None).await;
    let now = portcullis_host::unix_now();
    let revoked = bearer(&hs256(now, serde_json::json!({ "jti": "pg-gone" })));
    let other = bearer(&hs256(now, serde_json::json!({ "jti": "pg-fine" })));
    assert!(store.revoke(&Record::new(RevocationKind::TokenId, "pg-gone", "test", now)).await.unwrap());
    until(&h, &revoked, Reason::Revoked, Duration::from_secs(5)).await;
    assert_eq!(decide(&h, &other).await, Reason::Allowed);

    let e = client.batch_execute("TRUNCATE portcullis.revocation_changes").await.unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("cannot be truncated"), "{e}");

    // Rows vanish behind the log's back (the trigger off), and the log moves on.
    let damage = [
        "ALTER TABLE portcullis.revocations DISABLE TRIGGER revocations_record_change;
         DELETE FROM portcullis.revocations;
         ALTER TABLE portcullis.revocations ENABLE TRIGGER revocations_record_change;
         UPDATE portcullis.revocation_log_state SET last_seq = last_seq + 1;",
        // The log rewound (a restore from an older backup).
        "UPDATE portcullis.revocation_log_state SET last_seq = 0;",
        // A new log that holds nothing.
        "DELETE FROM portcullis.revocation_changes;
         UPDATE portcullis.revocation_log_state SET log_id = 'another-log';",
    ];
    for sql in damage {
        client.batch_execute(sql).await.unwrap();
        tokio::time::sleep(bound + Duration::from_millis(700)).await;
        assert_eq!(decide(&h, &revoked).await, Reason::Revoked, "{sql}");
        assert_eq!(decide(&h, &other).await, Reason::RevocationStale, "{sql}: not fresh");
    }
    // The store made sound again (the revocation written back): fresh, nothing lost.
    assert!(store.revoke(&Record::new(RevocationKind::TokenId, "pg-gone", "test", now)).await.unwrap());
    until(&h, &other, Reason::Allowed, Duration::from_secs(10)).await;
    assert_eq!(decide(&h, &revoked).await, Reason::Revoked);
    h.shutdown().await;
}

/// A check through the HTTP ext_authz listener, as Envoy (or an attacker polling) sends it:
/// the status and the reason header.
async fn http_check(h: &Handle, token: &str) -> (u16, String) {
    let headers = vec![("authorization".to_owned(), format!("Bearer {token}"))];
    let r = request(h.http_addr.unwrap(), "GET", "/v1/orders", "api.example.com", &headers).await.unwrap();
    (r.status, r.header("x-portcullis-reason").unwrap_or("").to_owned())
}

fn with_http(mut config: Config) -> Config {
    config.http_listen = Some("127.0.0.1:0".parse().unwrap());
    config
}

fn file_config(file: FileStore, mode: StaleMode, stale_after: Duration) -> Config {
    with_http(Config {
        revocation: Some(RevocationConfig {
            store: Store::File(file),
            live: Arc::new(LiveRevocations::new(mode)),
            freshness: Freshness { stale_after, mode },
            follow: FAST,
            scopes: ("r".into(), "w".into()),
        }),
        ..Config::local(root().join("policies/example.yaml"))
    })
}

/// Finding: before the set had loaded, checks were answered as if nothing were revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_check_passes_before_the_first_revocation_load_in_either_mode() {
    // A store that never answers: the set never loads.
    let store = Store::Postgres(PgStore::new("postgres://nobody@127.0.0.1:1/none").unwrap());
    let now = portcullis_host::unix_now();
    let token = hs256(now, serde_json::json!({ "jti": "early-1" }));
    for mode in [StaleMode::Serve, StaleMode::FailClosed] {
        let live = Arc::new(LiveRevocations::new(mode));
        let config = with_http(Config {
            revocation: Some(RevocationConfig {
                store: store.clone(),
                live,
                freshness: Freshness { stale_after: Duration::from_secs(30), mode },
                follow: FAST,
                scopes: ("r".into(), "w".into()),
            }),
            ..Config::local(root().join("policies/example.yaml"))
        });
        let h = Sidecar::build(config).await.unwrap().serve().unwrap();
        for _ in 0..5 {
            assert_eq!(http_check(&h, &token).await, (503, "revocation_stale".into()), "{mode:?}");
            assert_eq!(decide(&h, &bearer(&token)).await, Reason::RevocationStale, "{mode:?} (gRPC path)");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let ready = request(h.admin_addr, "GET", "/readyz", "localhost", &[]).await.unwrap();
        assert_eq!(ready.status, 503, "{mode:?}: {}", ready.body);
        h.shutdown().await;
    }
}

/// Findings: an empty or missing revocations file un-revoked everything; a corrupt one was
/// confirmed fresh forever, and nobody could revoke while it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_revocations_file_never_unrevokes_and_never_counts_as_fresh() {
    let dir = TempDir::new("revocations-damaged");
    let path = dir.path().join("revocations.jsonl");
    let file = FileStore::new(&path);
    let store = Store::File(file.clone());
    let now = portcullis_host::unix_now();
    let revoked = hs256(now, serde_json::json!({ "jti": "gone-1" }));
    let other = hs256(now, serde_json::json!({ "jti": "fine-1" }));
    assert!(store.revoke(&Record::new(RevocationKind::TokenId, "gone-1", "test", now)).await.unwrap());
    let good = std::fs::read(&path).unwrap();
    let bound = Duration::from_millis(800);
    let h = Sidecar::build(file_config(file.clone(), StaleMode::FailClosed, bound)).await.unwrap().serve().unwrap();
    wait_ready(h.admin_addr).await;
    assert_eq!(http_check(&h, &revoked).await, (401, "revoked".into()));
    assert_eq!(http_check(&h, &other).await.0, 200);
    let metric = |name: &'static str| {
        let addr = h.admin_addr;
        async move {
            let m = request(addr, "GET", "/metrics", "localhost", &[]).await.unwrap().body;
            let line = m.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
            line.rsplit(' ').next().unwrap_or_default().parse::<f64>().unwrap_or(-1.0)
        }
    };

    // Emptied, then missing, then truncated and appended to (a new lineage): each time the
    // revoked token stays revoked, and the set goes stale (fail-closed: 503 for the others).
    type Damage<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let damage: [Damage<'_>; 3] = [
        ("emptied", Box::new(|| std::fs::write(&path, b"").unwrap())),
        ("moved away", Box::new(|| std::fs::rename(&path, dir.path().join("elsewhere")).unwrap())),
        (
            "truncated and appended to",
            Box::new(|| {
                std::fs::write(&path, b"").unwrap();
                let r = Record::new(RevocationKind::TokenId, "x-1", "test", now);
                std::fs::write(
                    &path,
                    format!(
                        "{{\"portcullis_revocations\":1,\"log\":\"new\"}}\n{}\n",
                        serde_json::to_string(&r).unwrap()
                    ),
                )
                .unwrap();
            }),
        ),
    ];
    for (what, act) in damage {
        let errors = metric("portcullis_revocations_sync_errors_total").await;
        act();
        tokio::time::sleep(bound + Duration::from_millis(700)).await;
        assert_eq!(http_check(&h, &revoked).await, (401, "revoked".into()), "{what}");
        assert_eq!(http_check(&h, &other).await, (503, "revocation_stale".into()), "{what}: not fresh");
        assert_eq!(metric("portcullis_revocations_stale").await, 1.0, "{what}");
        assert!(metric("portcullis_revocations_sync_errors_total").await > errors, "{what}: counted");
        // Restoring the file restores freshness.
        std::fs::write(&path, &good).unwrap();
        until(&h, &bearer(&other), Reason::Allowed, Duration::from_secs(5)).await;
    }

    // Corrupt: stale after the bound, yet revoking still works, and `repair` brings it back.
    std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"NOT JSON\n").unwrap();
    tokio::time::sleep(bound + Duration::from_millis(700)).await;
    assert_eq!(http_check(&h, &other).await, (503, "revocation_stale".into()), "a corrupt file is not fresh");
    assert!(metric("portcullis_revocations_last_sync_age_seconds").await > bound.as_secs_f64());
    // As `portcullis revoke` does it: a new process, nothing read yet.
    let writer = FileStore::new(&path);
    assert!(writer.revoke(&Record::new(RevocationKind::TokenId, "fine-1", "test", now)).await.unwrap());
    assert_eq!(writer.repair().await.unwrap(), (2, 1), "both revocations kept, the bad line set aside");
    until(&h, &bearer(&other), Reason::Revoked, Duration::from_secs(5)).await;
    assert_eq!(metric("portcullis_revocations_stale").await, 0.0);
    h.shutdown().await;
}

fn auth(token: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Bearer {token}")), ("content-type".into(), "application/json".into())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_is_guarded_audited_and_feeds_changes() {
    let db = Database::new().await;
    let store = migrated(&db.url).await;
    let dir = TempDir::new("admin-audit");
    let audit = dir.path().join("audit.jsonl");
    let h = sidecar(Store::Postgres(store), StaleMode::Serve, Duration::from_secs(30), Some(audit.clone())).await;
    let a = h.admin_addr;
    let now = portcullis_host::unix_now();
    let writer = hs256(
        now,
        serde_json::json!({ "sub": "ops-bot", "scope": "portcullis:revocations:write portcullis:revocations:read" }),
    );
    let reader = hs256(now, serde_json::json!({ "sub": "dash", "scope": "portcullis:revocations:read" }));
    let tenant_admin =
        hs256(now, serde_json::json!({ "sub": "acme-admin", "tenant": "acme", "scope": "portcullis:*" }));
    let body = r#"{"kind":"jti","id":"api-1","reason":"test"}"#;

    let r = request_with_body(a, "POST", "/v1/revocations", "x", &[], Some(body)).await.unwrap();
    assert_eq!((r.status, r.body.contains("missing_credential")), (401, true), "{r:?}");
    let r = request_with_body(a, "POST", "/v1/revocations", "x", &auth(&reader), Some(body)).await.unwrap();
    assert_eq!((r.status, r.body.contains("insufficient_scope")), (403, true), "{r:?}");
    let forged = hs256(now + 100_000, serde_json::json!({ "scope": "portcullis:*" }));
    let r = request_with_body(a, "POST", "/v1/revocations", "x", &auth(&forged), Some(body)).await.unwrap();
    assert_eq!(r.status, 401, "a token the policy rejects gets nothing: {r:?}");

    // A scope granted through a role counts, as it does on routes: the core answers.
    let operator = hs256(now, serde_json::json!({ "sub": "on-call", "roles": ["revocation-operator"] }));
    let r = request(a, "GET", "/v1/revocations", "x", &auth(&operator)).await.unwrap();
    assert_eq!(r.status, 200, "a role's grant is a grant: {r:?}");

    let r = request_with_body(a, "POST", "/v1/revocations", "x", &auth(&writer), Some(body)).await.unwrap();
    assert_eq!(r.status, 201, "{r:?}");
    let r = request_with_body(a, "POST", "/v1/revocations", "x", &auth(&writer), Some(body)).await.unwrap();
    assert_eq!((r.status, r.body.contains(r#""changed":false"#)), (200, true), "idempotent: {r:?}");
    let token = bearer(&hs256(now, serde_json::json!({ "jti": "api-1" })));
    until(&h, &token, Reason::Revoked, Duration::from_secs(2)).await;

    let r = request_with_body(a, "POST", "/v1/revocations", "x", &auth(&writer), Some(r#"{"kind":"nope","id":"x"}"#))
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{r:?}");
    let r = request_with_body(
        a,
        "POST",
        "/v1/revocations",
        "x",
        &auth(&tenant_admin),
        Some(r#"{"kind":"jti","id":"api-2","tenant":"globex"}"#),
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.body.contains("tenant_mismatch")), (403, true), "{r:?}");
    let r = request_with_body(
        a,
        "POST",
        "/v1/revocations",
        "x",
        &auth(&tenant_admin),
        Some(r#"{"kind":"jti","id":"api-2"}"#),
    )
    .await
    .unwrap();
    assert_eq!((r.status, r.body.contains(r#""tenant":"acme""#)), (201, true), "the caller's tenant is stamped: {r:?}");

    let r = request(a, "GET", "/v1/revocations?kind=jti", "x", &auth(&reader)).await.unwrap();
    let list: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(list["revocations"].as_array().unwrap().len(), 2, "{list}");
    let r = request(a, "GET", "/v1/revocations", "x", &auth(&tenant_admin)).await.unwrap();
    let list: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(list["revocations"].as_array().unwrap().len(), 1, "a tenant admin sees only its tenant: {list}");

    // The feed: a snapshot first, then only what changed since the cursor.
    let r = request(a, "GET", "/v1/revocations/feed", "x", &auth(&reader)).await.unwrap();
    let feed: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(feed["snapshot"].as_array().unwrap().len(), 2, "{feed}");
    let (source, cursor) = (feed["source"].as_str().unwrap().to_owned(), feed["cursor"].as_i64().unwrap());
    let r = request_with_body(a, "DELETE", "/v1/revocations/jti/api-1", "x", &auth(&writer), None).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    until(&h, &token, Reason::Allowed, Duration::from_secs(2)).await;
    let r = request(a, "GET", &format!("/v1/revocations/feed?since={cursor}&source={source}"), "x", &auth(&reader))
        .await
        .unwrap();
    let delta: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert!(delta.get("snapshot").is_none(), "{delta}");
    assert_eq!(delta["changes"].as_array().unwrap().len(), 1, "{delta}");
    assert_eq!(delta["changes"][0]["op"], "unrevoke");
    let r = request(a, "GET", "/v1/revocations/feed", "x", &auth(&tenant_admin)).await.unwrap();
    assert_eq!(r.status, 403, "the feed spans tenants: {r:?}");
    let r = request_with_body(a, "DELETE", "/v1/revocations/jti/api-1", "x", &auth(&writer), None).await.unwrap();
    assert_eq!(r.status, 404, "{r:?}");

    h.shutdown().await;
    let events = std::fs::read_to_string(&audit).unwrap();
    let changes: Vec<serde_json::Value> = events
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "revocation")
        .collect();
    assert_eq!(changes.len(), 5, "one audit event per change request: {changes:?}");
    assert!(changes.iter().any(|e| e["op"] == "unrevoke" && e["actor"] == "ops-bot" && e["changed"] == true));
}
