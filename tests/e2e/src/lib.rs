//! Harness for end-to-end tests: a real Envoy in front of an echoing upstream, talking to a
//! Portcullis sidecar. Everything binds to loopback port 0.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

pub mod pg;
pub mod tls;

/// An HS256 JWT from `https://hmac.example` (key `hmac-2026` of `policies/keys/hmac-jwks.json`),
/// audience `edge-api`, issued at `now`, valid for an hour, with `claims` merged in.
pub fn hs256(now: i64, claims: serde_json::Value) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use hmac::Mac as _;
    let jwks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("policies/keys/hmac-jwks.json")).unwrap()).unwrap();
    let k = jwks["keys"].as_array().unwrap().iter().find(|k| k["kid"] == "hmac-2026").unwrap();
    let secret = B64.decode(k["k"].as_str().unwrap()).unwrap();
    let mut payload = serde_json::json!({
        "iss": "https://hmac.example", "aud": "edge-api", "sub": "test-user", "iat": now, "exp": now + 3600,
    });
    for (k, v) in claims.as_object().unwrap() {
        payload[k] = v.clone();
    }
    let header = serde_json::json!({ "alg": "HS256", "typ": "JWT", "kid": "hmac-2026" });
    let signing = format!("{}.{}", B64.encode(header.to_string()), B64.encode(payload.to_string()));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
    mac.update(signing.as_bytes());
    format!("{signing}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Envoy binary: `$ENVOY_BIN`, or the one `scripts/install-envoy.sh` installs.
pub fn envoy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(p);
    }
    let lib = root().join(".tools/venv/lib");
    if let Ok(entries) = std::fs::read_dir(&lib) {
        for e in entries.flatten() {
            let bin = e.path().join("site-packages/envoy/_bin/envoy");
            if bin.exists() {
                return bin;
            }
        }
    }
    panic!("Envoy is not installed: run scripts/install-envoy.sh (scripts/test.sh does) or set ENVOY_BIN");
}

/// An upstream that answers every request with the request it received, as JSON:
/// `{"method", "path", "headers": {name: value}, "body"}` (names lower case, repeats joined by
/// `, `; the body read whole, as text).
pub async fn echo_upstream() -> SocketAddr {
    async fn echo(req: axum::extract::Request) -> String {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in req.headers() {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            headers.entry(k.as_str().to_owned()).and_modify(|e| *e = format!("{e}, {v}")).or_insert(v);
        }
        let (method, path) = (req.method().as_str().to_owned(), req.uri().to_string());
        let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap_or_default();
        let body = String::from_utf8_lossy(&body);
        serde_json::json!({"method": method, "path": path, "headers": headers, "body": body}).to_string()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, Router::new().fallback(echo)).await;
    });
    addr
}

/// The wasmtime CLI: `$WASMTIME_BIN`, or the one `scripts/install-wasmtime.sh` installs (run
/// here when missing).
pub fn wasmtime_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WASMTIME_BIN") {
        return PathBuf::from(p);
    }
    let out = std::process::Command::new(root().join("scripts/install-wasmtime.sh"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("cannot run scripts/install-wasmtime.sh");
    assert!(out.status.success(), "installing the wasmtime CLI failed");
    root().join(String::from_utf8(out.stdout).unwrap().trim())
}

/// The time most corpus cases are decided at (runtimes with a fixed clock skip the others).
pub const CORPUS_NOW: i64 = 1_800_000_000;

/// The live API key of `policies/keys/api-keys.yaml` (`ci-deployer`), in plain text.
pub fn live_api_key() -> String {
    let text = std::fs::read_to_string(root().join("tests/fixtures/api-keys.plaintext.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["live"].as_str().unwrap().to_owned()
}

/// `case` with one character of its bearer token's signature changed: a well-formed token whose
/// signature fails.
pub fn with_forged_signature(case: &portcullis_adapter::testkit::Case) -> portcullis_adapter::testkit::Case {
    let mut forged = case.clone();
    for (k, v) in &mut forged.request.headers {
        if k.eq_ignore_ascii_case("authorization") {
            let i = v.len() - 10;
            let c = if &v[i..=i] == "A" { "B" } else { "A" };
            v.replace_range(i..=i, c);
        }
    }
    forged
}

/// The corpus case `id` of `tests/fixtures/corpus.jsonl`.
pub fn corpus_case(id: &str) -> portcullis_adapter::testkit::Case {
    let text = std::fs::read_to_string(root().join("tests/fixtures/corpus.jsonl")).unwrap();
    let cases = portcullis_adapter::testkit::parse_corpus(&text).unwrap();
    cases.into_iter().find(|c| c.id == id).unwrap()
}

/// Owned header pairs from borrowed ones.
pub fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Asserts, through a runtime listening on `addr` with `policies/identity-forwarding.yaml` in
/// front of the echo upstream, that forged identity headers never reach the upstream and the
/// real identity does; returns the authenticated request's answer (`target` is its target).
pub async fn assert_identity_forwarding(addr: SocketAddr, target: &str) -> Response {
    let forged =
        [("X-Auth-User", "root"), ("X-Auth-Roles", "admin"), ("X-Internal-User", "root"), ("X-Remote-User", "root")];
    let pairs = |extra: Option<(&str, String)>| -> Vec<(String, String)> {
        let mut hs = headers(&forged);
        hs.extend(extra.map(|(k, v)| (k.to_owned(), v)));
        hs
    };
    // A public route: no identity at all may arrive.
    let resp = request(addr, "GET", "/login", "app.example.com", &pairs(None)).await.unwrap();
    let seen = echoed_headers(&resp);
    for (name, _) in forged {
        assert!(seen.get(name.to_ascii_lowercase()).is_none(), "{name} was forwarded: {seen}");
    }
    // An authenticated route: the real identity replaces the forgery.
    let hs = pairs(Some(("X-API-Key", live_api_key())));
    let resp = request(addr, "GET", target, "app.example.com", &hs).await.unwrap();
    let seen = echoed_headers(&resp);
    assert_eq!(seen["x-auth-user"], "ci-deployer", "{seen}");
    assert_eq!(seen["x-auth-roles"], "deployer");
    assert!(seen.get("x-internal-user").is_none() && seen.get("x-remote-user").is_none(), "{seen}");
    assert!(seen.get("x-api-key").is_some(), "other headers pass unchanged");
    resp
}

/// The headers the echo upstream received, from its answer (which must be a 200).
pub fn echoed_headers(resp: &Response) -> serde_json::Value {
    assert_eq!(resp.status, 200, "{}", resp.body);
    serde_json::from_str::<serde_json::Value>(&resp.body).unwrap()["headers"].clone()
}

/// How Envoy reaches the authorization service.
#[derive(Debug, Clone, Copy)]
pub enum AuthzApi {
    /// `envoy.service.auth.v3.Authorization/Check` over HTTP/2.
    Grpc(SocketAddr),
    /// Envoy's HTTP ext_authz protocol.
    Http(SocketAddr),
}

/// Identity headers the HTTP mode lets through to the upstream (every name the example
/// policies use).
const IDENTITY_HEADERS: &[&str] = &[
    "x-user-id",
    "x-user-email",
    "x-user-role",
    "x-user-groups",
    "x-tenant-id",
    "x-auth-scopes",
    "x-auth-user",
    "x-auth-email",
    "x-auth-roles",
    "x-auth-groups",
    "x-auth-org",
    "x-auth-method",
    "x-user-top-role",
    "x-api-key-id",
    "x-worker-id",
];

fn filter_config(api: AuthzApi) -> String {
    match api {
        AuthzApi::Grpc(_) => "
              grpc_service:
                envoy_grpc: { cluster_name: portcullis }
                timeout: 2s"
            .to_string(),
        AuthzApi::Http(addr) => {
            let upstream: String =
                IDENTITY_HEADERS.iter().map(|h| format!("\n                    - exact: {h}")).collect();
            // The decision's response headers (docs/envoy.md): CORS, rate limits and the
            // security headers of the example policies.
            let client: String = RESPONSE_HEADER_PATTERNS
                .iter()
                .map(|(kind, p)| format!("\n                    - {kind}: {p}"))
                .collect();
            format!(
                "
              http_service:
                server_uri: {{ uri: \"http://{addr}\", cluster: portcullis, timeout: 2s }}
                authorization_request:
                  allowed_headers:
                    patterns:
                    - safe_regex: {{ regex: \".*\" }}
                authorization_response:
                  allowed_upstream_headers:
                    patterns:{upstream}
                  allowed_client_headers:
                    patterns:
                    - exact: content-type
                    - exact: www-authenticate
                    - exact: x-portcullis-reason{client}
                  allowed_client_headers_on_success:
                    patterns:{client}"
            )
        }
    }
}

/// The response-header names an HTTP ext_authz configuration passes to clients: what a decision
/// sets itself, and the security headers the example policies add.
pub const RESPONSE_HEADER_PATTERNS: &[(&str, &str)] = &[
    ("prefix", "access-control-"),
    ("prefix", "x-ratelimit-"),
    ("prefix", "ratelimit"),
    ("exact", "retry-after"),
    ("exact", "vary"),
    ("exact", "strict-transport-security"),
    ("exact", "x-content-type-options"),
    ("exact", "content-security-policy"),
];

/// The head of an ext_authz filter, fail closed (503 when the service cannot answer),
/// forwarding header values byte for byte; the service (`grpc_service` or `http_service`)
/// follows, indented to match.
pub const EXT_AUTHZ_FILTER: &str = "
          - name: envoy.filters.http.ext_authz
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              encode_raw_headers: true
              status_on_error: { code: 503 }";

/// HTTP/2 for a cluster (gRPC services).
pub const HTTP2: &str = "\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: { http2_protocol_options: {} }";

/// A static cluster of one endpoint; `extra` is inserted after `connect_timeout` (for example
/// [`HTTP2`]).
pub fn cluster(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!(
        "  - name: {name}
    type: STATIC
    connect_timeout: 0.5s{extra}
    load_assignment:
      cluster_name: {name}
      endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }} }}] }}]
",
        addr.ip(),
        addr.port()
    )
}

/// An Envoy bootstrap: admin and one listener on loopback port 0, every request taking `action`
/// (`route: {...}` or `direct_response: {...}`) after `http_filters` (YAML list items indented
/// for the connection manager, each starting with a newline) and the router; then `clusters`.
pub fn bootstrap(action: &str, http_filters: &str, clusters: &str) -> String {
    format!(
        "admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: ingress
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          use_remote_address: true
          route_config:
            virtual_hosts:
            - name: all
              domains: [\"*\"]
              routes:
              - match: {{ prefix: \"/\" }}
                {action}
          http_filters:{http_filters}
          - name: envoy.filters.http.router
            typed_config: {{ \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
{clusters}"
    )
}

/// The Envoy bootstrap: one listener in front of `upstream`, the ext_authz filter, fail closed.
pub fn envoy_config(api: AuthzApi, upstream: SocketAddr) -> String {
    let (authz, http2) = match api {
        AuthzApi::Grpc(a) => (a, HTTP2),
        AuthzApi::Http(a) => (a, ""),
    };
    let filter = format!("{EXT_AUTHZ_FILTER}{}", filter_config(api));
    let clusters = cluster("portcullis", authz, http2) + &cluster("upstream", upstream, "");
    bootstrap("route: { cluster: upstream }", &filter, &clusters)
}

/// A running Envoy; killed on drop.
#[derive(Debug)]
pub struct Envoy {
    child: Child,
    /// The listener clients send requests to.
    pub listener: SocketAddr,
    /// The admin interface.
    pub admin: SocketAddr,
    _dir: TempDir,
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// A fresh directory.
    pub fn new(name: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("portcullis-e2e-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Envoy {
    /// Starts Envoy with `config` and waits until its listener accepts connections.
    pub async fn start(config: &str) -> Envoy {
        Envoy::try_start(config).await.unwrap_or_else(|log| panic!("Envoy did not start: {log}"))
    }

    /// [`Envoy::start`] with `workers` worker threads (each runs its own filter VM).
    pub async fn start_with_workers(config: &str, workers: u32) -> Envoy {
        Envoy::try_start_with(config, workers).await.unwrap_or_else(|log| panic!("Envoy did not start: {log}"))
    }

    /// [`Envoy::start`], or Envoy's log when it exits or its listener never comes up.
    pub async fn try_start(config: &str) -> Result<Envoy, String> {
        Envoy::try_start_with(config, 1).await
    }

    /// [`Envoy::try_start`] with `workers` worker threads.
    pub async fn try_start_with(config: &str, workers: u32) -> Result<Envoy, String> {
        let dir = TempDir::new("envoy");
        let config_path = dir.path().join("envoy.yaml");
        let admin_path = dir.path().join("admin.txt");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let mut child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--use-dynamic-base-id", "--concurrency", &workers.to_string(), "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start Envoy");
        let deadline = Instant::now() + Duration::from_secs(30);
        let failed = |child: &mut Child, what: &str| -> Option<String> {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            (exited || Instant::now() >= deadline)
                .then(|| format!("{what} (exited: {exited}): {}", read_log(dir.path())))
        };
        let admin: SocketAddr = loop {
            if let Ok(s) = std::fs::read_to_string(&admin_path)
                && let Ok(a) = s.trim().parse()
            {
                break a;
            }
            if let Some(e) = failed(&mut child, "no admin address") {
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let listener = loop {
            if let Ok(r) = request(admin, "GET", "/listeners?format=json", "admin", &[]).await
                && let Some(port) = listener_port(&r.body)
            {
                break SocketAddr::from(([127, 0, 0, 1], port));
            }
            if let Some(e) = failed(&mut child, "the listener never came up") {
                return Err(e);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Ok(Envoy { child, listener, admin, _dir: dir })
    }

    /// Envoy's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Envoy's log so far (for assertion messages).
    pub fn log(&self) -> String {
        read_log(self._dir.path())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn read_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
}

fn listener_port(json: &str) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let port = v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// A response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (names lower case).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: String,
}

impl Response {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request exactly as given (no normalisation) and reads the response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    host: &str,
    headers: &[(String, String)],
) -> std::io::Result<Response> {
    request_with_body(addr, method, target, host, headers, None).await
}

/// [`request`] with a body (sent with its `Content-Length`).
pub async fn request_with_body(
    addr: SocketAddr,
    method: &str,
    target: &str,
    host: &str,
    headers: &[(String, String)],
    body: Option<&str>,
) -> std::io::Result<Response> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
    } else {
        req.push_str("\r\n");
    }
    s.write_all(req.as_bytes()).await?;
    let raw = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s, method == "HEAD")).await??;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.get(9..12)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Ok(Response { status, headers, body })
}

/// Reads one response: its head only (a `HEAD` request), up to its `content-length`, the end of its chunks, or the end of the
/// connection. Not to the end of the connection when the length is known: after a local reply
/// Envoy sends the whole response at once but closes the socket only after its
/// `delayed_close_timeout` (1 s), which a client that knows the length never waits for.
async fn read_response(s: &mut tokio::net::TcpStream, head_only: bool) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
        let body = raw.len() - end - 4;
        let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse().ok());
        let complete = match length {
            _ if head_only => true,
            Some(len) => body >= len,
            None if head.contains("transfer-encoding: chunked") => {
                raw.ends_with(b"\r\n0\r\n\r\n") || raw.ends_with(b"0\r\n\r\n") && body == 5
            }
            None => false,
        };
        if complete {
            return Ok(raw);
        }
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// The Envoy filter's wasm module, built once per test process for `wasm32-wasip1` with the
/// `guest` profile (what users deploy); `$PORTCULLIS_ENVOY_WASM` names a prebuilt one.
pub fn filter_wasm() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            built_guest(
                "PORTCULLIS_ENVOY_WASM",
                &["-p", "portcullis-envoy", "--target", "wasm32-wasip1"],
                "wasm32-wasip1/guest/portcullis_envoy.wasm",
                "portcullis_envoy.wasm",
            )
        })
        .clone()
}

/// The Spin component (`guest/spin`, `wasm32-wasip2`, `guest` profile), built once per test
/// process: with Spin's imports (`spin`), or the build that imports only WASI HTTP.
/// `$PORTCULLIS_SPIN_WASM` and `$PORTCULLIS_SPIN_WASI_WASM` name prebuilt ones.
pub fn spin_wasm(spin: bool) -> PathBuf {
    // One build at a time: both flavours are the same crate in the same target directory.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    static BUILT: [std::sync::OnceLock<PathBuf>; 2] = [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    BUILT[usize::from(spin)]
        .get_or_init(|| {
            let _one = LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let base = ["-p", "portcullis-spin", "--target", "wasm32-wasip2"];
            let artifact = "wasm32-wasip2/guest/portcullis_spin.wasm";
            if spin {
                built_guest("PORTCULLIS_SPIN_WASM", &base, artifact, "portcullis_spin.wasm")
            } else {
                let args = [&base[..], &["--no-default-features"]].concat();
                built_guest("PORTCULLIS_SPIN_WASI_WASM", &args, artifact, "portcullis_spin_wasi.wasm")
            }
        })
        .clone()
}

/// `$env` if set; else `cargo build --profile guest <args>`, with the artifact copied to
/// `target/<name>` (two builds of one crate share an artifact path).
fn built_guest(env: &str, args: &[&str], artifact: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let target = root().join("target");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--quiet", "--profile", "guest"])
        .args(args)
        .arg("--target-dir")
        .arg(&target)
        .current_dir(root())
        .status()
        .expect("cannot run cargo to build a guest");
    assert!(status.success(), "building {args:?} failed (is the wasm target installed?)");
    let copy = target.join(name);
    std::fs::copy(target.join(artifact), &copy).expect("cannot copy the built guest");
    copy
}

/// The filter's plugin configuration for `policy` (a path from the repository root): the
/// bundle inline, as `portcullis policy bundle` prints it, with `extra` members merged in.
pub fn plugin_config(policy: &str, extra: serde_json::Value) -> serde_json::Value {
    let bundle = portcullis_host::policy_files::PolicyBundle::read(&root().join(policy)).unwrap();
    let mut config = portcullis_host::policy_files::inline_json(&bundle);
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

/// The head of the Portcullis wasm filter, fail closed, with `config` (the plugin
/// configuration) and the module built by [`filter_wasm`].
pub fn wasm_filter(config: &serde_json::Value) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    let value = serde_json::to_string(&config.to_string()).unwrap();
    format!(
        "
          - name: envoy.filters.http.wasm
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: portcullis
                failure_policy: FAIL_CLOSED
                configuration:
                  \"@type\": type.googleapis.com/google.protobuf.StringValue
                  value: {value}
                vm_config:
                  vm_id: portcullis
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {} }} }}",
        filter_wasm().display()
    )
}

/// An Envoy with the Portcullis filter in front of `upstream`; `clusters` adds clusters (the
/// sidecar's admin listener for the revocation feed).
pub fn filter_envoy_config(config: &serde_json::Value, upstream: SocketAddr, clusters: &str) -> String {
    bootstrap("route: { cluster: upstream }", &wasm_filter(config), &(cluster("upstream", upstream, "") + clusters))
}

/// Why Envoy cannot carry a corpus case unchanged, if it cannot.
pub fn not_carried(c: &portcullis_adapter::testkit::Case) -> Option<&'static str> {
    if c.request.client_ip.is_some() {
        return Some("Envoy reports its own peer (127.0.0.1) as the client address");
    }
    if c.request.headers.iter().any(|(k, v)| v.chars().any(char::is_control) || k.is_empty()) {
        return Some("Envoy itself rejects control characters in header values");
    }
    if c.request.headers.len() > 90 {
        return Some("Envoy's own header-count limit (100) answers first");
    }
    None
}

/// Sends a corpus case's request through the Envoy listening on `listener`.
pub async fn send(listener: SocketAddr, c: &portcullis_adapter::testkit::Case) -> std::io::Result<Response> {
    let r = &c.request;
    let target = if r.query.is_empty() { r.path.clone() } else { format!("{}?{}", r.path, r.query) };
    let host = if r.host.is_empty() { "api.example.com" } else { &r.host };
    request(listener, &r.method, &target, host, &r.headers).await
}

/// What a client and the echo upstream saw of a corpus case's decision: the status and reason of
/// a denial; for an allow, what the upstream received under each name the decision sets, and
/// an error when a header the decision removes reached it anyway. When the case names response
/// headers, what the client got under those names and under every name only a decision sets
/// (CORS, rate limits), so a header that should be absent is caught too.
pub fn observe(
    c: &portcullis_adapter::testkit::Case,
    resp: &Response,
) -> Result<portcullis_adapter::testkit::Outcome, String> {
    use portcullis_adapter::testkit::Outcome;
    let response_headers = c.expect.get("response_headers").and_then(|v| v.as_object()).map(|want| {
        let ours = |k: &str| {
            k.starts_with("access-control-")
                || k.starts_with("x-ratelimit-")
                || k.starts_with("ratelimit")
                || k == "retry-after"
                || k == "vary"
        };
        let mut got = serde_json::Map::new();
        for name in
            want.keys().map(String::as_str).chain(resp.headers.iter().map(|(k, _)| k.as_str()).filter(|k| ours(k)))
        {
            let values: Vec<&str> =
                resp.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
            let value = if values.is_empty() { serde_json::Value::Null } else { values.join(", ").into() };
            got.insert(name.to_ascii_lowercase(), value);
        }
        serde_json::Value::Object(got)
    });
    let with_headers = |mut got: serde_json::Value, fields: &'static [&'static str], all: &'static [&'static str]| {
        match &response_headers {
            Some(h) => {
                got["response_headers"] = h.clone();
                Outcome::Observed { got, fields: all }
            }
            None => Outcome::Observed { got, fields },
        }
    };
    if resp.status != 200 {
        let got = serde_json::json!({
            "allow": false,
            "status": resp.status,
            "reason": resp.header("x-portcullis-reason"),
            "body": resp.body,
        });
        return Ok(with_headers(
            got,
            &["allow", "status", "reason"],
            &["allow", "status", "reason", "response_headers"],
        ));
    }
    if c.request.method == "HEAD" {
        // No body to read the upstream's view from.
        return Ok(Outcome::Observed { got: serde_json::json!({"allow": true}), fields: &["allow"] });
    }
    let echo: serde_json::Value = serde_json::from_str(&resp.body).map_err(|e| format!("upstream echo: {e}"))?;
    let upstream = &echo["headers"];
    let set = c.expect.get("headers_to_set").and_then(|v| v.as_object()).cloned().unwrap_or_default();
    let received: serde_json::Map<String, serde_json::Value> =
        set.keys().map(|name| (name.clone(), upstream[name.to_ascii_lowercase()].clone())).collect();
    for name in c.expect.get("headers_to_remove").and_then(|v| v.as_array()).into_iter().flatten() {
        let name = name.as_str().unwrap_or_default();
        if !set.contains_key(name)
            && let Some(v) = upstream.get(name.to_ascii_lowercase())
        {
            return Err(format!("{name} reached the upstream: {v}"));
        }
    }
    Ok(with_headers(
        serde_json::json!({"allow": true, "headers_to_set": received}),
        &["allow", "headers_to_set"],
        &["allow", "headers_to_set", "response_headers"],
    ))
}

/// The sidecar with a revocations file and its admin listener (the feed), on the real clock.
pub async fn feed_sidecar(file: &portcullis_host::revocation::file::FileStore) -> portcullis_host::serve::Handle {
    use portcullis_host::revocation::{FollowOptions, Freshness, LiveRevocations, StaleMode, Store};
    use portcullis_host::serve::{Config, RevocationConfig, Sidecar};
    let mode = StaleMode::Serve;
    let config = Config {
        revocation: Some(RevocationConfig {
            store: Store::File(file.clone()),
            live: std::sync::Arc::new(LiveRevocations::new(mode)),
            freshness: Freshness { stale_after: std::time::Duration::from_secs(30), mode },
            follow: FollowOptions {
                poll: std::time::Duration::from_millis(50),
                query_timeout: std::time::Duration::from_secs(2),
            },
            scopes: ("portcullis:revocations:read".into(), "portcullis:revocations:write".into()),
        }),
        ..Config::local(root().join("policies/example.yaml"))
    };
    Sidecar::build(config).await.unwrap().serve().unwrap()
}

/// The `portcullis` binary (debug), built if needed.
pub fn portcullis_bin() -> std::path::PathBuf {
    let bin = root().join("target/debug/portcullis");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // The test run's package selection and features: `-p portcullis` alone resolves
        // features differently (the benches' and tests' dependencies unify more into
        // serde_json, hashbrown, ...) and rebuilt wasmtime and Cranelift for this one binary.
        .args(["build", "--quiet", "--workspace", "--exclude", "portcullis-component", "--exclude"])
        .args(["portcullis-faulty-guest", "--all-features", "--bin", "portcullis"])
        .current_dir(root())
        .status()
        .unwrap();
    assert!(status.success());
    bin
}
