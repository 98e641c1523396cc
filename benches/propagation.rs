//! Revocation propagation: from the `INSERT` (committed in Postgres) to the first check the
//! sidecar denies, over 1,000 revocations. A throwaway Postgres cluster, the sidecar in this
//! process following it (LISTEN/NOTIFY plus catch-up), and a checker deciding the revoked
//! token's request in a loop, as traffic would.
//!
//! `cargo bench -p portcullis-benches --bench propagation`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_benches::{percentile, root};
use portcullis_core::{OwnedRequest, Reason};
use portcullis_e2e::pg::{Cluster, connect};
use portcullis_host::revocation::pg::PgStore;
use portcullis_host::revocation::{FollowOptions, Freshness, LiveRevocations, StaleMode, Store};
use portcullis_host::serve::{Config, RevocationConfig, Sidecar};

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n: usize = if quick { 20 } else { 1000 };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
        let url = cluster.url("postgres");
        let store = PgStore::new(&url).unwrap();
        store.migrate().await.unwrap();
        let config = Config {
            revocation: Some(RevocationConfig {
                store: Store::Postgres(store),
                live: Arc::new(LiveRevocations::new(StaleMode::Serve)),
                freshness: Freshness { stale_after: Duration::from_secs(30), mode: StaleMode::Serve },
                // The heartbeat is slow on purpose: what is measured is the notification path.
                follow: FollowOptions { poll: Duration::from_secs(5), query_timeout: Duration::from_secs(5) },
                scopes: ("r".into(), "w".into()),
            }),
            ..Config::local(root().join("policies/example.yaml"))
        };
        let handle = Sidecar::build(config).await.unwrap().serve().unwrap();
        let authz = Arc::clone(handle.authorizer());
        let now = portcullis_host::unix_now();
        let requests: Vec<OwnedRequest> = (0..n)
            .map(|i| OwnedRequest {
                method: "GET".into(),
                scheme: "https".into(),
                host: "api.example.com".into(),
                path: "/v1/orders".into(),
                headers: vec![(
                    "authorization".into(),
                    format!("Bearer {}", portcullis_e2e::hs256(now, serde_json::json!({ "jti": format!("prop-{i}") }))),
                )],
                now,
                ..OwnedRequest::default()
            })
            .collect();
        // Wait for the first snapshot.
        while authz.check(&requests[0], "bench").reason != Reason::Allowed {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let writer = connect(&url).await;
        let insert = writer
            .prepare("INSERT INTO portcullis.revocations (kind, id, actor) VALUES ('jti', $1, 'bench')")
            .await
            .unwrap();
        let mut took = Vec::with_capacity(n);
        for (i, req) in requests.iter().enumerate() {
            assert_eq!(authz.check(req, "bench").reason, Reason::Allowed);
            let id = format!("prop-{i}");
            let started = Instant::now();
            writer.execute(&insert, &[&id]).await.unwrap();
            let authz = Arc::clone(&authz);
            let req = req.clone();
            // The checker runs on a blocking thread: decisions are synchronous.
            let elapsed = tokio::task::spawn_blocking(move || {
                loop {
                    if authz.check(&req, "bench").reason == Reason::Revoked {
                        return started.elapsed();
                    }
                    assert!(started.elapsed() < Duration::from_secs(10), "revocation {i} never arrived");
                }
            })
            .await
            .unwrap();
            took.push(elapsed.as_secs_f64() * 1e3);
        }
        took.sort_by(f64::total_cmp);
        println!("| revocations | p50 | p90 | p99 | max |");
        println!("| --- | --- | --- | --- | --- |");
        println!(
            "| {n} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            percentile(&took, 0.5),
            percentile(&took, 0.9),
            percentile(&took, 0.99),
            took[took.len() - 1]
        );
        handle.shutdown().await;
        drop(cluster);
    });
}
