//! The Spin component's per-request latency, as Spin runs it: a fresh instance per request
//! (`tests/spin-host`: wasmtime-wasi-http, pooling allocator, the policy in the memory image),
//! next to a warm instance reused for every request of a connection, for HS256, RS256 and an
//! API key against `policies/example.yaml`, allowed requests through to an echo upstream. The
//! upstream alone is measured in the same run, to show what the hop costs.
//!
//! `cargo bench -p portcullis-benches --bench spin` (`PORTCULLIS_SPIN_BENCH_REQUESTS`, default
//! 3000 per configuration). Under `cargo test` it is a smoke test: a few requests each, every
//! one must be allowed, and a request without a credential denied.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::cast_precision_loss
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use portcullis_benches::{mint, percentile, unix_now};
use portcullis_e2e::{echo_upstream, live_api_key, root, spin_wasm};
use portcullis_host::policy_files::PolicyBundle;
use portcullis_spin_host::Options;

/// One keep-alive HTTP/1.1 connection, sequential requests.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { stream, buf: Vec::with_capacity(16 << 10) }
    }

    /// Sends `GET /v1/orders` with `header` and returns the status.
    fn get(&mut self, header: Option<(&str, &str)>) -> u16 {
        let extra = header.map(|(k, v)| format!("{k}: {v}\r\n")).unwrap_or_default();
        let request = format!("GET /v1/orders HTTP/1.1\r\nhost: api.example.com\r\n{extra}\r\n");
        self.stream.write_all(request.as_bytes()).unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "the connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
            let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if self.buf.len() >= end + 4 + length {
                return head[9..12].parse().unwrap();
            }
        }
    }
}

/// p50 and p99 of `n` requests, in microseconds, after 100 unmeasured ones.
fn measure(addr: SocketAddr, header: Option<(&str, &str)>, n: usize) -> (f64, f64) {
    let mut client = Client::connect(addr);
    for _ in 0..n.min(100) {
        assert_eq!(client.get(header), 200);
    }
    let mut samples: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(client.get(header), 200);
            t.elapsed().as_nanos() as f64 / 1000.0
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let n = if quick {
        5
    } else {
        std::env::var("PORTCULLIS_SPIN_BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000)
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let upstream = rt.block_on(echo_upstream());
    let bundle = PolicyBundle::read(&root().join("policies/example.yaml")).unwrap();
    let component = std::fs::read(spin_wasm(true)).unwrap();
    let build = |extra: &[(&str, &str)]| {
        let mut settings = vec![("upstream".to_owned(), format!("http://{upstream}"))];
        settings.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        portcullis_host::preinit::preinitialize_spin(&component, &bundle, &settings).unwrap()
    };
    let wasm = build(&[]);
    let remembering = build(&[("signature_cache_store", "default")]);

    let now = unix_now();
    let (hs, rs, key) = (
        format!("Bearer {}", mint("hs256", now, "orders:read")),
        format!("Bearer {}", mint("rs256", now, "orders:read")),
        live_api_key(),
    );
    let credentials: [(&str, (&str, &str)); 3] =
        [("HS256", ("authorization", &hs)), ("RS256", ("authorization", &rs)), ("API key", ("x-api-key", &key))];

    let (up50, up99) = measure(upstream, None, n);
    println!("| credential | fresh p50 | fresh p99 | warm p50 | warm p99 | fresh / warm (p50) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    println!("| (echo upstream alone) | {up50:.0} µs | {up99:.0} µs | | | |");
    let fresh = rt.block_on(portcullis_spin_host::start(&wasm, Options::default())).unwrap();
    let warm = rt.block_on(portcullis_spin_host::start(&wasm, Options { warm: true, ..Options::default() })).unwrap();
    assert_eq!(Client::connect(fresh.addr).get(None), 401, "no credential, no entry");
    for (name, header) in credentials {
        let (f50, f99) = measure(fresh.addr, Some(header), n);
        let (w50, w99) = measure(warm.addr, Some(header), n);
        println!("| {name} | {f50:.0} µs | {f99:.0} µs | {w50:.0} µs | {w99:.0} µs | {:.2}x |", f50 / w50);
    }
    // The same RS256 token again and again, its signature remembered in the key-value store.
    let stores = vec!["default".to_owned()];
    let fresh = rt
        .block_on(portcullis_spin_host::start(&remembering, Options { stores: stores.clone(), ..Options::default() }));
    let warm =
        rt.block_on(portcullis_spin_host::start(&remembering, Options { stores, warm: true, ..Options::default() }));
    let (fresh, warm) = (fresh.unwrap(), warm.unwrap());
    let header = ("authorization", rs.as_str());
    let (f50, f99) = measure(fresh.addr, Some(header), n);
    let (w50, w99) = measure(warm.addr, Some(header), n);
    println!(
        "| RS256, signature remembered (`signature_cache_store`) | {f50:.0} µs | {f99:.0} µs | {w50:.0} µs | {w99:.0} µs | {:.2}x |",
        f50 / w50
    );
    let remembered: usize = fresh.key_value.lock().unwrap().get("default").map_or(0, |s| s.len());
    assert_eq!(remembered, 1, "one token, one bucket");

    // RS256 with the issuer's keys from the network (`jwks_uri`), built without them: each
    // request reads the sidecar's sets from the store and compiles the policy with them (what
    // a key rotation costs until the component is built again).
    const URI: &str = "https://issuer.example/jwks";
    let text = bundle.text.replacen("jwks_file: keys/jwks.json", &format!("jwks_uri: {URI}"), 1);
    assert_ne!(text, bundle.text);
    let mut network = bundle.clone();
    network.bundle.text = text;
    let set: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("policies/keys/jwks.json")).unwrap()).unwrap();
    let answer = serde_json::json!({ "generation": 1, "sets": { URI: set } }).to_string();
    let sidecar = rt.block_on(async move {
        let app = axum::Router::new().route("/v1/keys", axum::routing::get(move || async move { answer }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    });
    let settings = [
        ("upstream".to_owned(), format!("http://{upstream}")),
        ("keys_feed".to_owned(), format!("http://{sidecar}")),
        ("keys_poll_ms".to_owned(), "3600000".to_owned()),
    ];
    let following = portcullis_host::preinit::preinitialize_spin(&component, &network, &settings).unwrap();
    let stores = vec!["default".to_owned()];
    let fresh = rt.block_on(portcullis_spin_host::start(&following, Options { stores, ..Options::default() })).unwrap();
    let (f50, f99) = measure(fresh.addr, Some(header), n);
    println!(
        "| RS256, keys from the sidecar differing from the image (policy compiled per request) | {f50:.0} µs | {f99:.0} µs | | | |"
    );
}
