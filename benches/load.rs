//! The sidecar under load: `portcullis serve` (release build) as its own process, and this
//! process as the gRPC load generator beside it, on the same 2-core machine. Prints checks per
//! second and latency percentiles as seen by the client (network stack and gRPC included).
//!
//! `cargo bench -p portcullis-benches --bench load`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::print_stderr)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use portcullis_benches::{BenchSidecar, check_request, free_port, hs256_request, percentile, root, unix_now};

/// When `cargo test` only checks that the bench works: the same sidecar, in this process.
fn start_in_process(grpc: u16, admin: u16) -> BenchSidecar {
    let config = portcullis_host::serve::Config {
        grpc_listen: ([127, 0, 0, 1], grpc).into(),
        admin_listen: ([127, 0, 0, 1], admin).into(),
        settings: portcullis_host::serve::authz::Settings {
            workers: 2,
            isolation: portcullis_host::serve::authz::Isolation::Warm,
            runtime: portcullis_host::runtime::RuntimeConfig::default(),
        },
        ..portcullis_host::serve::Config::local(root().join("policies/example.yaml"))
    };
    BenchSidecar::in_process(config)
}

/// Builds and starts the release sidecar as its own process.
fn start_server(grpc: u16, admin: u16, release: bool) -> BenchSidecar {
    if !release {
        return start_in_process(grpc, admin);
    }
    let server =
        BenchSidecar::serve(&root(), "policies/example.yaml", grpc, None, admin, &["--reload-interval-ms", "0"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", grpc)).is_err() {
        assert!(Instant::now() < deadline, "the sidecar did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

/// Runs `concurrency` request loops on one HTTP/2 connection for `duration`; returns
/// (checks per second, sorted latencies in ns).
async fn drive(
    addr: SocketAddr,
    req: envoy_types::pb::envoy::service::auth::v3::CheckRequest,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> (f64, Vec<f64>) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let recording = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let mut client = AuthorizationClient::new(channel.clone());
        let (req, recording, stop) = (req.clone(), Arc::clone(&recording), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let resp = client.check(req.clone()).await.unwrap().into_inner();
                assert_eq!(resp.status.unwrap().code, 0, "the check must be allowed");
                if recording.load(Ordering::Relaxed) {
                    lat.push(t.elapsed().as_nanos() as f64);
                }
            }
            lat
        }));
    }
    tokio::time::sleep(warmup).await;
    recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    recording.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_by(f64::total_cmp);
    (all.len() as f64 / elapsed.as_secs_f64(), all)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (warmup, duration) = if quick {
        (Duration::from_millis(200), Duration::from_millis(500))
    } else {
        (Duration::from_secs(2), Duration::from_secs(10))
    };
    let (grpc, admin) = (free_port(), free_port());
    let _server = start_server(grpc, admin, !quick);
    let addr: SocketAddr = ([127, 0, 0, 1], grpc).into();
    let keys: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/fixtures/api-keys.plaintext.json")).unwrap()).unwrap();
    let api = vec![("x-api-key".to_string(), keys["live"].as_str().unwrap().to_string())];
    let jwt = hs256_request(unix_now()).headers;
    // The load generator gets one thread; the sidecar has two workers: all on two cores.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    println!("| credential | concurrent streams | checks/s | p50 | p99 | p99.9 |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, headers) in [("API key", &api), ("HS256 JWT", &jwt)] {
        for concurrency in if quick { vec![4] } else { vec![1, 16, 64] } {
            let (rate, lat) = rt.block_on(drive(addr, check_request(headers), concurrency, warmup, duration));
            println!(
                "| {name} | {concurrency} | {rate:.0} | {:.0} µs | {:.0} µs | {:.0} µs |",
                percentile(&lat, 0.5) / 1e3,
                percentile(&lat, 0.99) / 1e3,
                percentile(&lat, 0.999) / 1e3
            );
        }
    }
}
