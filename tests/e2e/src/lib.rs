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
/// `{"method", "path", "headers": {name: value}}` (names lower case, repeats joined by `, `).
pub async fn echo_upstream() -> SocketAddr {
    async fn echo(req: axum::extract::Request) -> String {
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in req.headers() {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            headers.entry(k.as_str().to_owned()).and_modify(|e| *e = format!("{e}, {v}")).or_insert(v);
        }
        serde_json::json!({"method": req.method().as_str(), "path": req.uri().to_string(), "headers": headers})
            .to_string()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, Router::new().fallback(echo)).await;
    });
    addr
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
                    - exact: x-portcullis-reason"
            )
        }
    }
}

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
        let dir = TempDir::new("envoy");
        let config_path = dir.path().join("envoy.yaml");
        let admin_path = dir.path().join("admin.txt");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let child = Command::new(envoy_bin())
            .arg("-c")
            .arg(&config_path)
            .arg("--admin-address-path")
            .arg(&admin_path)
            .args(["--use-dynamic-base-id", "--concurrency", "1", "--log-level", "warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start Envoy");
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin: SocketAddr = loop {
            if let Ok(s) = std::fs::read_to_string(&admin_path)
                && let Ok(a) = s.trim().parse()
            {
                break a;
            }
            assert!(Instant::now() < deadline, "Envoy did not start: {}", read_log(dir.path()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let listener = loop {
            if let Ok(r) = request(admin, "GET", "/listeners?format=json", "admin", &[]).await
                && let Some(port) = listener_port(&r.body)
            {
                break SocketAddr::from(([127, 0, 0, 1], port));
            }
            assert!(Instant::now() < deadline, "Envoy's listener never came up: {}", read_log(dir.path()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Envoy { child, listener, admin, _dir: dir }
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
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw)).await??;
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
