//! Soak: the release sidecar (its own process) under saturating load over gRPC and HTTP for
//! 60 s, with a policy reload and a burst of revocations in the middle. Passes only with zero
//! errors and no revoked credential allowed once the revocation has had time to arrive;
//! prints throughput, the revocation propagation seen, and the sidecar's RSS at start and end.
//!
//! `cargo bench -p portcullis-benches --bench soak` (60 s; `PORTCULLIS_SOAK_SECS` to change).
//! Under `cargo test` it runs 6 s against an in-process sidecar, asserting the same.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis_benches::{BenchSidecar, check_request, free_port, root};
use portcullis_core::RevocationKind;
use portcullis_e2e::{TempDir, hs256};
use portcullis_host::revocation::Record;
use portcullis_host::revocation::file::FileStore;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Distinct credentials in rotation; the burst revokes the first `REVOKED` of them.
const TOKENS: usize = 2000;
const REVOKED: usize = 1000;
/// Longest a revocation may take to reach every decision before an allow counts as a breach.
const PROPAGATION: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Tally {
    grpc: AtomicU64,
    http: AtomicU64,
    errors: AtomicU64,
    /// Revoked credentials allowed after the propagation bound.
    breaches: AtomicU64,
    /// Revoked credentials allowed within the bound (expected, reported).
    in_flight_allows: AtomicU64,
}

struct Shared {
    tokens: Vec<String>,
    /// When the burst was written (ns since `epoch`; 0 before it).
    revoked_at: AtomicU64,
    epoch: Instant,
    stop: AtomicBool,
    tally: Tally,
}

impl Shared {
    /// Records one answer for credential `i`.
    fn record(&self, i: usize, allowed: bool, ok: bool) {
        if !ok {
            self.tally.errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let at = self.revoked_at.load(Ordering::Acquire);
        if allowed && i < REVOKED && at > 0 {
            let since = self.epoch.elapsed().saturating_sub(Duration::from_nanos(at));
            let counter = if since > PROPAGATION { &self.tally.breaches } else { &self.tally.in_flight_allows };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn grpc_loop(addr: SocketAddr, s: Arc<Shared>, offset: usize) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut client = AuthorizationClient::new(channel);
    let mut i = offset;
    while !s.stop.load(Ordering::Relaxed) {
        i = (i + 7) % TOKENS;
        match client.check(check_request(&[("authorization".to_owned(), format!("Bearer {}", s.tokens[i]))])).await {
            Ok(r) => {
                let code = r.into_inner().status.map_or(-1, |st| st.code);
                // 0 allowed; 16 (unauthenticated: revoked) is an expected deny; anything else is not.
                s.record(i, code == 0, code == 0 || code == 16);
            }
            Err(_) => s.record(i, false, false),
        }
        s.tally.grpc.fetch_add(1, Ordering::Relaxed);
    }
}

/// One keep-alive HTTP/1.1 connection, reconnecting when the server closes it.
async fn http_loop(addr: SocketAddr, s: Arc<Shared>, offset: usize) {
    let mut i = offset;
    let mut conn: Option<tokio::net::TcpStream> = None;
    let mut buf = vec![0u8; 4096];
    while !s.stop.load(Ordering::Relaxed) {
        i = (i + 13) % TOKENS;
        if conn.is_none() {
            conn = tokio::net::TcpStream::connect(addr).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            s.record(i, false, false);
            continue;
        };
        let req = format!(
            "GET /v1/orders HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer {}\r\n\r\n",
            s.tokens[i]
        );
        let status = async {
            c.write_all(req.as_bytes()).await.ok()?;
            let mut got = 0;
            loop {
                let n = c.read(&mut buf[got..]).await.ok()?;
                if n == 0 {
                    return None;
                }
                got += n;
                let text = std::str::from_utf8(&buf[..got]).ok()?;
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    if got >= end + 4 + len {
                        return text.get(9..12)?.parse::<u16>().ok();
                    }
                }
            }
        }
        .await;
        match status {
            Some(code) => s.record(i, code == 200, code == 200 || code == 401),
            None => {
                // A closed keep-alive connection is not an error of the sidecar's: retry once.
                conn = None;
                continue;
            }
        }
        s.tally.http.fetch_add(1, Ordering::Relaxed);
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn start(dir: &Path, ports: (u16, u16, u16), release: bool) -> BenchSidecar {
    let (grpc, http, admin) = ports;
    if !release {
        let mode = portcullis_host::revocation::StaleMode::Serve;
        let config = portcullis_host::serve::Config {
            grpc_listen: ([127, 0, 0, 1], grpc).into(),
            http_listen: Some(([127, 0, 0, 1], http).into()),
            admin_listen: ([127, 0, 0, 1], admin).into(),
            reload_interval: Some(Duration::from_millis(200)),
            revocation: Some(portcullis_host::serve::RevocationConfig {
                store: portcullis_host::revocation::Store::File(FileStore::new(dir.join("revocations.jsonl"))),
                live: Arc::new(portcullis_host::revocation::LiveRevocations::new(mode)),
                freshness: portcullis_host::revocation::Freshness { stale_after: Duration::from_secs(30), mode },
                follow: portcullis_host::revocation::FollowOptions {
                    poll: Duration::from_millis(100),
                    ..Default::default()
                },
                scopes: ("r".into(), "w".into()),
            }),
            ..portcullis_host::serve::Config::local(dir.join("policy.yaml"))
        };
        return BenchSidecar::in_process(config);
    }
    BenchSidecar::serve(dir, "policy.yaml", grpc, Some(http), admin, &["--revocation-poll-ms", "100"])
}

fn copy_policy(dir: &Path) -> PathBuf {
    let src = root().join("policies");
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    for entry in std::fs::read_dir(src.join("keys")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join("keys").join(entry.file_name())).unwrap();
    }
    let policy = dir.join("policy.yaml");
    std::fs::copy(src.join("example.yaml"), &policy).unwrap();
    policy
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let secs: u64 =
        if full { std::env::var("PORTCULLIS_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60) } else { 6 };
    let dir = TempDir::new("soak");
    let policy = copy_policy(dir.path());
    let ports = (free_port(), free_port(), free_port());
    let server = start(dir.path(), ports, full);
    let now = portcullis_host::unix_now();
    let tokens: Vec<String> =
        (0..TOKENS).map(|i| hs256(now, serde_json::json!({ "jti": format!("soak-{i}"), "exp": now + 7200 }))).collect();
    let shared = Arc::new(Shared {
        tokens,
        revoked_at: AtomicU64::new(0),
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        tally: Tally::default(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (grpc, http, admin): (SocketAddr, SocketAddr, SocketAddr) =
        (([127, 0, 0, 1], ports.0).into(), ([127, 0, 0, 1], ports.1).into(), ([127, 0, 0, 1], ports.2).into());
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = portcullis_e2e::request(admin, "GET", "/readyz", "x", &[]).await.map(|r| r.status);
            if ready.is_ok_and(|s| s == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "the sidecar never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut tasks = Vec::new();
    for k in 0..8 {
        tasks.push(rt.spawn(grpc_loop(grpc, Arc::clone(&shared), k * 101)));
        tasks.push(rt.spawn(http_loop(http, Arc::clone(&shared), k * 211)));
    }
    let started = Instant::now();
    // RSS once warm under load, then again at the end.
    std::thread::sleep(Duration::from_secs(secs) / 6);
    let rss_start = rss_kib(server.pid());
    std::thread::sleep((Duration::from_secs(secs) / 2).saturating_sub(started.elapsed()));
    // The middle: a policy change (reloaded) and a burst of revocations through the file store.
    let text = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, format!("{text}\n# soak: reloaded at {}\n", portcullis_host::unix_now())).unwrap();
    let store = FileStore::new(dir.path().join("revocations.jsonl"));
    let burst = Instant::now();
    rt.block_on(async {
        for i in 0..REVOKED {
            store.revoke(&Record::new(RevocationKind::TokenId, format!("soak-{i}"), "soak", now)).await.unwrap();
        }
    });
    let burst_took = burst.elapsed();
    shared.revoked_at.store(u64::try_from(shared.epoch.elapsed().as_nanos()).unwrap(), Ordering::Release);
    std::thread::sleep(Duration::from_secs(secs).saturating_sub(started.elapsed()));
    shared.stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            t.await.unwrap();
        }
    });
    let rss_end = rss_kib(server.pid());
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = rt.block_on(portcullis_e2e::request(admin, "GET", "/metrics", "x", &[])).unwrap().body;
    let generation = metrics.lines().find(|l| l.starts_with("portcullis_policy_generation ")).unwrap_or("").to_owned();
    let t = &shared.tally;
    let (g, h) = (t.grpc.load(Ordering::Relaxed), t.http.load(Ordering::Relaxed));
    println!("| soak | value |");
    println!("| --- | --- |");
    println!(
        "| duration | {elapsed:.1} s ({}) |",
        if full { "release sidecar, own process" } else { "test mode, in process" }
    );
    println!("| gRPC checks | {g} ({:.0}/s) |", g as f64 / elapsed);
    println!("| HTTP checks | {h} ({:.0}/s) |", h as f64 / elapsed);
    println!("| errors | {} |", t.errors.load(Ordering::Relaxed));
    println!("| revocation burst | {REVOKED} revocations appended in {:.0} ms |", burst_took.as_secs_f64() * 1e3);
    println!(
        "| revoked allowed within {PROPAGATION:?} of the burst | {} |",
        t.in_flight_allows.load(Ordering::Relaxed)
    );
    println!("| revoked allowed after that | {} |", t.breaches.load(Ordering::Relaxed));
    println!("| policy after the reload | `{generation}` |");
    println!("| sidecar RSS start / end | {} / {} KiB |", rss_start.unwrap_or(0), rss_end.unwrap_or(0));
    assert_eq!(t.errors.load(Ordering::Relaxed), 0, "errors under load");
    assert_eq!(t.breaches.load(Ordering::Relaxed), 0, "a revoked credential was allowed after the bound");
    assert!(generation.ends_with(" 2"), "the policy was not reloaded: {generation}");
    assert!(g > 0 && h > 0);
    drop(server);
}
