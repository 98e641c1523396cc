//! Envoy side by side: the same requests through five Envoys in the same run.
//!
//! - `no auth`: Envoy answering the route itself (the floor);
//! - `jwt_authn + rbac`: Envoy's own JWT filter and RBAC configured for the same policy;
//! - `portcullis filter`: the Portcullis proxy-wasm filter inside Envoy (V8; RSA and ECDSA
//!   checked by Envoy's BoringSSL through `verify_signature`), no sidecar;
//! - `ext_authz gRPC/HTTP -> portcullis`: Envoy's `ext_authz` calling `portcullis serve`.
//!
//! Envoy's resident memory per configuration is printed at the end of each cache setting.
//!
//! The policy: `GET /v1/orders` needs a JWT from one of two issuers (RS256 and ES256 keys from
//! `policies/keys/jwks.json`, HS256 keys from `policies/keys/hmac-jwks.json`), audience
//! `edge-api`, 30 s leeway, and the scope `orders:read`; subject, email, tenant and scopes go
//! upstream as headers. Both sides are configured for exactly that (see `envoy_yaml` and
//! `POLICY`). Every process shares the machine's cores: Envoy runs one worker
//! (`--concurrency 1`), the sidecar two, wrk one thread with 16 connections.
//!
//! For each cache setting (Envoy's `jwt_cache_config`, the sidecar's verified-signature cache and
//! the filter's caches of verified signatures and tokens: all off, then all on) and each algorithm, rounds alternate the three configurations (the
//! order rotates every round) so drift affects all of them alike. Printed per configuration:
//! median req/s, p50 and p99 latency over the rounds, CPU time per request spent in Envoy and in
//! the sidecar (from `/proc`), and the per-round throughput ratio to `jwt_authn + rbac`.
//!
//! `cargo bench -p portcullis-benches --bench envoy` (Envoy from `scripts/install-envoy.sh` or
//! `ENVOY_BIN`; Debian's `wrk`). `PORTCULLIS_ENVOY_BENCH_SECS` (default 5) and
//! `PORTCULLIS_ENVOY_BENCH_ROUNDS` (default 3) size a run; `PORTCULLIS_ENVOY_BENCH_TOKENS`
//! (`hs256,rs256,es256`) and `PORTCULLIS_ENVOY_BENCH_CACHES` (`off,on`) choose a subset.
//!
//! Under `cargo test` it is a smoke test: every configuration must answer 200 to the good token
//! and 401 or 403 to bad ones for every algorithm and cache setting, and a one-second wrk run
//! per configuration must see only 200s. Nothing is timed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stderr,
    clippy::cast_precision_loss,
    clippy::too_many_lines
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_benches::{BenchSidecar, free_port, mint, root, unix_now};
use portcullis_e2e::{
    EXT_AUTHZ_FILTER, Envoy, HTTP2, TempDir, bootstrap, cluster, envoy_bin, plugin_config, request, wasm_filter,
};

const ALGORITHMS: [&str; 3] = ["hs256", "rs256", "es256"];
const CACHE_ENTRIES: usize = 16_384;

/// The Portcullis side of the policy.
const POLICY: &str = "\
version: 1
issuers:
  - issuer: https://issuer.example
    audiences: [edge-api]
    algorithms: [RS256, ES256]
    jwks_file: jwks.json
    leeway_seconds: 30
    required_claims: [exp, sub]
  - issuer: https://hmac.example
    audiences: [edge-api]
    algorithms: [HS256]
    jwks_file: hmac-jwks.json
    leeway_seconds: 30
    required_claims: [exp, sub]
routes:
  - id: orders-read
    path: /v1/orders
    methods: [GET]
    scopes: [orders:read]
identity_headers:
  subject: X-User-Id
  email: X-User-Email
  tenant: X-Tenant-Id
  scopes: X-Auth-Scopes
  roles: null
  groups: null
";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    NoAuth,
    JwtAuthn,
    Filter,
    ExtAuthz,
    ExtAuthzHttp,
}

impl Setup {
    const ALL: [Setup; 5] = [Setup::NoAuth, Setup::JwtAuthn, Setup::Filter, Setup::ExtAuthz, Setup::ExtAuthzHttp];

    fn name(self) -> &'static str {
        match self {
            Setup::NoAuth => "no auth",
            Setup::JwtAuthn => "jwt_authn + rbac",
            Setup::Filter => "portcullis filter (in Envoy)",
            Setup::ExtAuthz => "ext_authz gRPC -> portcullis",
            Setup::ExtAuthzHttp => "ext_authz HTTP -> portcullis",
        }
    }
}

/// `text` as a YAML double-quoted string (JSON strings are valid YAML).
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// The Envoy bootstrap for `setup`: a listener whose only route answers 200 itself, behind the
/// setup's filters.
fn envoy_yaml(setup: Setup, cache: bool, sidecar: Sidecar, plugin: &serde_json::Value) -> String {
    let jwks = std::fs::read_to_string(root().join("policies/keys/jwks.json")).unwrap();
    let hmac_jwks = std::fs::read_to_string(root().join("policies/keys/hmac-jwks.json")).unwrap();
    let cache_config = if cache {
        format!("\n                  jwt_cache_config: {{ jwt_cache_size: {CACHE_ENTRIES} }}")
    } else {
        String::new()
    };
    let provider = |name: &str, issuer: &str, jwks: &str| {
        format!(
            "
                {name}:
                  issuer: {issuer}
                  audiences: [edge-api]
                  local_jwks: {{ inline_string: {} }}
                  clock_skew_seconds: 30
                  require_expiration: true
                  forward: true
                  payload_in_metadata: jwt_payload
                  claim_to_headers:
                  - {{ header_name: x-user-id, claim_name: sub }}
                  - {{ header_name: x-user-email, claim_name: email }}
                  - {{ header_name: x-tenant-id, claim_name: tenant }}
                  - {{ header_name: x-auth-scopes, claim_name: scope }}{cache_config}",
            quoted(jwks)
        )
    };
    let filters = match setup {
        Setup::NoAuth => String::new(),
        Setup::Filter => wasm_filter(plugin),
        Setup::JwtAuthn => format!(
            "
          - name: envoy.filters.http.jwt_authn
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:{}{}
              rules:
              - match: {{ prefix: / }}
                requires:
                  requires_any:
                    requirements: [{{ provider_name: issuer }}, {{ provider_name: hmac }}]
          - name: envoy.filters.http.rbac
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
              rules:
                action: ALLOW
                policies:
                  orders-read:
                    permissions:
                    - and_rules:
                        rules:
                        - header: {{ name: \":method\", string_match: {{ exact: GET }} }}
                        - url_path: {{ path: {{ exact: /v1/orders }} }}
                    principals:
                    - metadata:
                        filter: envoy.filters.http.jwt_authn
                        path: [{{ key: jwt_payload }}, {{ key: scope }}]
                        value: {{ string_match: {{ safe_regex: {{ regex: \"(.* )?orders:read( .*)?\" }} }} }}",
            provider("issuer", "https://issuer.example", &jwks),
            provider("hmac", "https://hmac.example", &hmac_jwks),
        ),
        Setup::ExtAuthz => format!(
            "{EXT_AUTHZ_FILTER}
              grpc_service:
                envoy_grpc: {{ cluster_name: portcullis }}
                timeout: 2s"
        ),
        Setup::ExtAuthzHttp => format!(
            "
          - name: envoy.filters.http.ext_authz
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              status_on_error: {{ code: 503 }}
              http_service:
                server_uri: {{ uri: \"http://{}\", cluster: portcullis_http, timeout: 2s }}
                authorization_request:
                  allowed_headers:
                    patterns: [{{ exact: authorization }}]
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{{ prefix: x-user- }}, {{ exact: x-tenant-id }}, {{ exact: x-auth-scopes }}]
                  allowed_client_headers:
                    patterns: [{{ exact: content-type }}, {{ exact: www-authenticate }}, {{ exact: x-portcullis-reason }}]",
            sidecar.http
        ),
    };
    let clusters = cluster("portcullis", sidecar.grpc, HTTP2) + &cluster("portcullis_http", sidecar.http, "");
    bootstrap("direct_response: { status: 200, body: { inline_string: ok } }", &filters, &clusters)
}

/// Writes the policy and its key files into `dir`; returns the policy's path.
fn write_policy(dir: &Path) -> std::path::PathBuf {
    for f in ["jwks.json", "hmac-jwks.json"] {
        std::fs::copy(root().join("policies/keys").join(f), dir.join(f)).unwrap();
    }
    let path = dir.join("policy.yaml");
    std::fs::write(&path, POLICY).unwrap();
    path
}

/// The sidecar's listeners.
#[derive(Clone, Copy, Debug)]
struct Sidecar {
    grpc: SocketAddr,
    http: SocketAddr,
}

/// The sidecar: the release binary as its own process, or in this process under `cargo test`.
fn start_sidecar(policy: &Path, cache: bool, release: bool) -> (BenchSidecar, Sidecar) {
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let entries = if cache { CACHE_ENTRIES } else { 0 };
    let process = if release {
        let e = entries.to_string();
        let extra = ["--reload-interval-ms", "0", "--signature-cache-entries", &e];
        BenchSidecar::serve(&root(), policy.to_str().unwrap(), grpc, Some(http), admin, &extra)
    } else {
        let config = portcullis_host::serve::Config {
            grpc_listen: ([127, 0, 0, 1], grpc).into(),
            http_listen: Some(([127, 0, 0, 1], http).into()),
            admin_listen: ([127, 0, 0, 1], admin).into(),
            signature_cache_entries: entries,
            settings: portcullis_host::serve::authz::Settings {
                workers: 2,
                isolation: portcullis_host::serve::authz::Isolation::Warm,
                runtime: portcullis_host::runtime::RuntimeConfig::default(),
            },
            ..portcullis_host::serve::Config::local(policy.to_owned())
        };
        BenchSidecar::in_process(config)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    for port in [grpc, http] {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the sidecar did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    (process, Sidecar { grpc: ([127, 0, 0, 1], grpc).into(), http: ([127, 0, 0, 1], http).into() })
}

/// User plus system CPU time of a process so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

/// One wrk run's results.
#[derive(Clone, Copy, Debug)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU per request in Envoy, in µs.
    envoy_us: f64,
    /// CPU per request in the sidecar, in µs (0 when it runs in this process).
    sidecar_us: f64,
}

fn parse_duration_ms(s: &str) -> f64 {
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap());
    let n: f64 = num.parse().unwrap();
    match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        other => panic!("wrk printed an unknown unit {other:?}"),
    }
}

/// Runs wrk against `target` for `secs` with `token`; panics unless every response was 2xx.
fn wrk(target: SocketAddr, token: &str, secs: u64, envoy_pid: u32, sidecar_pid: Option<u32>) -> Sample {
    let cpu = |pid: Option<u32>| pid.map_or(0.0, cpu_seconds);
    let (e0, s0) = (cpu(Some(envoy_pid)), cpu(sidecar_pid));
    let out = Command::new("wrk")
        .args(["-t1", "-c16", &format!("-d{secs}s"), "--latency", "-H"])
        .arg(format!("authorization: Bearer {token}"))
        .arg(format!("http://{target}/v1/orders"))
        .output()
        .expect("wrk is not installed: `apt-get install wrk` (scripts/test.sh does)");
    let (e1, s1) = (cpu(Some(envoy_pid)), cpu(sidecar_pid));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("Non-2xx"), "some responses were not 200:\n{text}");
    assert!(!text.contains("Socket errors"), "wrk saw socket errors:\n{text}");
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.split_whitespace().next().unwrap().to_owned())
            .unwrap_or_else(|| panic!("wrk printed no {prefix:?}:\n{text}"))
    };
    let requests: f64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .map(|(n, _)| n.trim().parse().unwrap())
        .unwrap_or_else(|| panic!("wrk printed no request count:\n{text}"));
    let per_request = |seconds: f64| if requests > 0.0 { seconds / requests * 1e6 } else { 0.0 };
    Sample {
        rps: field("Requests/sec:").parse().unwrap(),
        p50_ms: parse_duration_ms(&field("50%")),
        p99_ms: parse_duration_ms(&field("99%")),
        envoy_us: per_request(e1 - e0),
        sidecar_us: if sidecar_pid.is_some() { per_request(s1 - s0) } else { 0.0 },
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Asserts what every configuration answers: 200 to the good token, 401 to a missing or forged
/// one, 403 to a genuine token without the scope (`no auth` answers 200 to everything).
async fn smoke(envoy: &Envoy, setup: Setup, alg: &str, now: i64) {
    let good = mint(alg, now, "orders:read orders:write");
    let no_scope = mint(alg, now, "orders:write");
    let forged = {
        // The signature of another token over the same header: a valid shape, a wrong signature.
        let other = mint(alg, now, "orders:read admin");
        let (signing, _) = good.rsplit_once('.').unwrap();
        format!("{signing}.{}", other.rsplit_once('.').unwrap().1)
    };
    let bearer = |t: &str| vec![("authorization".to_owned(), format!("Bearer {t}"))];
    type Case = (&'static str, Vec<(String, String)>, u16);
    let cases: [Case; 4] = [
        ("good", bearer(&good), 200),
        ("forged", bearer(&forged), 401),
        ("no scope", bearer(&no_scope), 403),
        ("none", vec![], 401),
    ];
    for (what, headers, want) in cases {
        let want = if setup == Setup::NoAuth { 200 } else { want };
        let resp = request(envoy.listener, "GET", "/v1/orders", "api.example.com", &headers).await.unwrap();
        assert_eq!(resp.status, want, "{} {alg} {what}: {} {}\n{}", setup.name(), resp.status, resp.body, envoy.log());
    }
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let env = |name: &str, default: u64| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let (secs, rounds) =
        if quick { (1, 1) } else { (env("PORTCULLIS_ENVOY_BENCH_SECS", 5), env("PORTCULLIS_ENVOY_BENCH_ROUNDS", 3)) };
    let dir = TempDir::new("envoy-bench");
    let policy = write_policy(dir.path());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    eprintln!("Envoy: {}", envoy_bin().display());
    let now = unix_now();
    // Subsets for profiling: PORTCULLIS_ENVOY_BENCH_TOKENS=rs256,es256 PORTCULLIS_ENVOY_BENCH_CACHES=off
    let listed = |name: &str, item: &str| std::env::var(name).map_or(true, |v| v.split(',').any(|x| x == item));
    let tokens: Vec<(&str, String)> = ALGORITHMS
        .iter()
        .filter(|a| listed("PORTCULLIS_ENVOY_BENCH_TOKENS", a))
        .map(|a| (*a, mint(a, now, "orders:read orders:write")))
        .collect();

    println!("| caches | token | configuration | req/s | p50 | p99 | Envoy CPU/req | sidecar CPU/req | vs jwt_authn |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for cache in [false, true] {
        if !listed("PORTCULLIS_ENVOY_BENCH_CACHES", if cache { "on" } else { "off" }) {
            continue;
        }
        let (sidecar, listeners) = start_sidecar(&policy, cache, !quick);
        // The filter's own cache of verified signatures follows the setting too.
        let entries = if cache { CACHE_ENTRIES } else { 0 };
        let plugin = plugin_config(
            policy.to_str().unwrap(),
            serde_json::json!({ "signature_cache_entries": entries, "token_cache_entries": entries }),
        );
        let sidecar_pid = matches!(sidecar, BenchSidecar::Process(_)).then(|| sidecar.pid());
        let envoys: Vec<(Setup, Envoy)> = rt.block_on(async {
            let mut v = Vec::new();
            for setup in Setup::ALL {
                v.push((setup, Envoy::start(&envoy_yaml(setup, cache, listeners, &plugin)).await));
            }
            v
        });
        rt.block_on(async {
            for (setup, envoy) in &envoys {
                for alg in ALGORITHMS {
                    smoke(envoy, *setup, alg, now).await;
                }
            }
        });
        let caches = if cache { "on" } else { "off" };
        for (alg, token) in &tokens {
            // Warm every configuration: connections, caches, instances.
            for (_, envoy) in envoys.iter().filter(|_| !quick) {
                wrk(envoy.listener, token, 1, envoy.pid().unwrap(), sidecar_pid);
            }
            let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); Setup::ALL.len()];
            for round in 0..usize::try_from(rounds).unwrap() {
                for i in 0..envoys.len() {
                    let k = (i + round) % envoys.len();
                    let (_, envoy) = &envoys[k];
                    samples[k].push(wrk(envoy.listener, token, secs, envoy.pid().unwrap(), sidecar_pid));
                }
            }
            let jwt = Setup::ALL.iter().position(|s| *s == Setup::JwtAuthn).unwrap();
            for (k, setup) in Setup::ALL.iter().enumerate() {
                let s = &samples[k];
                let pick = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
                let ratio = median(s.iter().zip(&samples[jwt]).map(|(a, b)| a.rps / b.rps).collect());
                let sidecar_cpu = if matches!(setup, Setup::ExtAuthz | Setup::ExtAuthzHttp) && sidecar_pid.is_some() {
                    format!("{:.1} µs", pick(|x| x.sidecar_us))
                } else {
                    "-".into()
                };
                println!(
                    "| {caches} | {alg} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.1} µs | {sidecar_cpu} | {ratio:.2}x |",
                    setup.name(),
                    pick(|x| x.rps),
                    pick(|x| x.p50_ms),
                    pick(|x| x.p99_ms),
                    pick(|x| x.envoy_us),
                );
            }
        }
        // Memory: each Envoy's resident set after its load, against the Envoy without auth. The
        // filter's Envoy holds one VM on the main thread and one per worker (one here).
        let rss: Vec<f64> = envoys.iter().map(|(_, e)| rss_mib(e.pid().unwrap())).collect();
        let base = rss[Setup::ALL.iter().position(|s| *s == Setup::NoAuth).unwrap()];
        for ((setup, _), r) in envoys.iter().zip(&rss) {
            eprintln!(
                "caches {}: {} Envoy RSS {r:.1} MiB ({:+.1} MiB vs no auth)",
                if cache { "on" } else { "off" },
                setup.name(),
                r - base
            );
        }
        drop(envoys);
        drop(sidecar);
    }
}

/// A process's resident set, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}
