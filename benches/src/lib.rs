//! Shared fixtures for the benchmarks: the example policy, tokens minted for "now", and the
//! equivalent `jsonwebtoken` configuration for each one.
#![forbid(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss
)]

pub mod engines;

use std::collections::BTreeMap;
use std::path::PathBuf;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use portcullis_core::Policy;
use serde::{Deserialize, Serialize};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Loads a policy file and the files it references.
pub fn load_policy(rel: &str) -> Policy {
    let path = root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    let dir = path.parent().unwrap();
    let files: BTreeMap<String, Vec<u8>> = Policy::referenced_files(&text)
        .unwrap()
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            (f, bytes)
        })
        .collect();
    Policy::load(&text, &files).unwrap()
}

/// The claims a typical access token carries; the peer deserialises into this.
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub scope: String,
    pub roles: Vec<String>,
    pub tenant: String,
    pub email: String,
}

/// One algorithm's inputs for both sides.
#[allow(missing_debug_implementations)]
pub struct JwtCase {
    pub name: &'static str,
    pub token: String,
    pub key: DecodingKey,
    pub validation: Validation,
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/keys").join(rel)).unwrap()
}

fn jwk(kid: &str) -> serde_json::Value {
    let set: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("policies/keys/jwks.json")).unwrap()).unwrap();
    set["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap().clone()
}

type SigningSpec = (&'static str, Algorithm, &'static str, &'static str, EncodingKey, DecodingKey);

/// The demo signing keys: (name, algorithm, kid, issuer, private key, public key).
fn signing_specs() -> Vec<SigningSpec> {
    let hmac_secret = hex(&String::from_utf8(fixture("hmac-2026.secret")).unwrap());
    vec![
        (
            "hs256",
            Algorithm::HS256,
            "hmac-2026",
            "https://hmac.example",
            EncodingKey::from_secret(&hmac_secret),
            DecodingKey::from_secret(&hmac_secret),
        ),
        (
            "rs256",
            Algorithm::RS256,
            "rsa-2026",
            "https://issuer.example",
            EncodingKey::from_rsa_pem(&fixture("rsa-2026.pem")).unwrap(),
            {
                let k = jwk("rsa-2026");
                DecodingKey::from_rsa_components(k["n"].as_str().unwrap(), k["e"].as_str().unwrap()).unwrap()
            },
        ),
        (
            "es256",
            Algorithm::ES256,
            "ec-p256",
            "https://issuer.example",
            EncodingKey::from_ec_pem(&fixture("ec-p256.pem")).unwrap(),
            {
                let k = jwk("ec-p256");
                DecodingKey::from_ec_components(k["x"].as_str().unwrap(), k["y"].as_str().unwrap()).unwrap()
            },
        ),
        (
            "eddsa",
            Algorithm::EdDSA,
            "ed25519",
            "https://issuer.example",
            EncodingKey::from_ed_pem(&fixture("ed25519.pem")).unwrap(),
            DecodingKey::from_ed_components(jwk("ed25519")["x"].as_str().unwrap()).unwrap(),
        ),
    ]
}

fn claims(iss: &str, now: i64, scope: &str) -> Claims {
    Claims {
        iss: iss.into(),
        sub: "alice".into(),
        aud: "edge-api".into(),
        iat: now - 60,
        exp: now + 3000,
        jti: "0b3f6c2e-7d1a-4d1e-9a55-1c0e8a3f9b21".into(),
        scope: scope.into(),
        roles: vec!["admin".into()],
        tenant: "acme".into(),
        email: "alice@example.com".into(),
    }
}

/// A token signed with the demo key `name` (`hs256`, `rs256`, `es256` or `eddsa`), valid at
/// `now` for 50 minutes, granting `scope`.
pub fn mint(name: &str, now: i64, scope: &str) -> String {
    let (_, alg, kid, iss, enc, _) = signing_specs().into_iter().find(|s| s.0 == name).unwrap();
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims(iss, now, scope), &enc).unwrap()
}

/// Tokens for HS256, RS256, ES256 and EdDSA against `policies/example.yaml`, valid at `now`.
pub fn jwt_cases(now: i64) -> Vec<JwtCase> {
    signing_specs()
        .into_iter()
        .map(|(name, alg, _, iss, _, dec)| {
            let token = mint(name, now, "orders:read orders:write");
            // The peer configured to check what Portcullis checks: algorithm, issuer, audience,
            // exp and nbf with the same leeway, and the same required claims.
            let mut validation = Validation::new(alg);
            validation.set_issuer(&[iss]);
            validation.set_audience(&["edge-api"]);
            validation.leeway = 30;
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
            JwtCase { name, token, key: dec, validation }
        })
        .collect()
}

fn hex(s: &str) -> Vec<u8> {
    let s = s.trim();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// The current time in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The result of a paired comparison.
#[derive(Debug, Clone, Copy)]
pub struct Paired {
    /// Median time per call of the subject, in nanoseconds.
    pub subject_ns: f64,
    /// Median time per call of the peer, in nanoseconds.
    pub peer_ns: f64,
    /// Median of per-round ratios subject / peer.
    pub ratio: f64,
    /// Interquartile range of the per-round ratios.
    pub ratio_iqr: (f64, f64),
}

/// Times `subject` and `peer` in alternating batches and reports the median per-round ratio.
///
/// On a shared or noisy machine a criterion run of A followed by a run of B can land in different
/// noise regimes; interleaving batches puts both sides in the same one, so the ratio is stable even
/// when absolute times drift.
pub fn paired(mut subject: impl FnMut(), mut peer: impl FnMut(), rounds: usize, batch: usize) -> Paired {
    use std::time::Instant;
    let time = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        for _ in 0..batch {
            f();
        }
        t.elapsed().as_nanos() as f64 / batch as f64
    };
    // Warm caches and branch predictors on both sides.
    for _ in 0..3 {
        time(&mut subject);
        time(&mut peer);
    }
    let (mut s, mut p, mut r) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            let a = time(&mut subject);
            (a, time(&mut peer))
        } else {
            let b = time(&mut peer);
            (time(&mut subject), b)
        };
        s.push(a);
        p.push(b);
        r.push(a / b);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let q = |v: &Vec<f64>, f: f64| v[((v.len() - 1) as f64 * f) as usize];
    let subject_ns = med(&mut s);
    let peer_ns = med(&mut p);
    let ratio = med(&mut r);
    Paired { subject_ns, peer_ns, ratio, ratio_iqr: (q(&r, 0.25), q(&r, 0.75)) }
}

/// An HS256 request against `policies/example.yaml`, valid at `now`, as an owned request.
pub fn hs256_request(now: i64) -> portcullis_core::OwnedRequest {
    let case = jwt_cases(now).into_iter().find(|c| c.name == "hs256").unwrap();
    portcullis_core::OwnedRequest {
        method: "GET".into(),
        scheme: "https".into(),
        host: "api.example.com".into(),
        path: "/v1/orders".into(),
        headers: vec![
            ("authorization".into(), format!("Bearer {}", case.token)),
            ("user-agent".into(), "bench/1.0".into()),
            ("accept".into(), "*/*".into()),
        ],
        now,
        ..portcullis_core::OwnedRequest::default()
    }
}

/// The component the component benches run: the embedded one, or the file named by
/// `PORTCULLIS_BENCH_COMPONENT` (to compare guest builds without rebuilding the host).
pub fn component_wasm() -> Vec<u8> {
    match std::env::var_os("PORTCULLIS_BENCH_COMPONENT") {
        Some(path) => std::fs::read(&path).unwrap(),
        None => portcullis_host::runtime::COMPONENT.to_vec(),
    }
}

/// Runtimes for the component benches: one for warm workers, one running the component
/// pre-initialised with `bundle`'s policy.
pub fn component_runtimes(
    bundle: &portcullis_host::policy_files::PolicyBundle,
) -> (portcullis_host::runtime::Runtime, portcullis_host::runtime::Runtime) {
    use portcullis_host::runtime::{Runtime, RuntimeConfig};
    let wasm = component_wasm();
    let preinit = portcullis_host::preinit::preinitialize_component(&wasm, bundle).unwrap();
    (Runtime::new(&wasm, RuntimeConfig::default()).unwrap(), Runtime::new(&preinit, RuntimeConfig::default()).unwrap())
}

/// The policy bundle of `policies/example.yaml`.
pub fn example_bundle() -> portcullis_host::policy_files::PolicyBundle {
    portcullis_host::policy_files::PolicyBundle::read(&root().join("policies/example.yaml")).unwrap()
}

/// Percentile of sorted nanoseconds.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// A free loopback port (the OS picks; the listener is closed at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The sidecar a load bench drives: the release binary as its own process, or, when `cargo
/// test` only checks that the bench works, the same sidecar in this process on a runtime of its
/// own (building the binary from a test would rebuild wasmtime with other features). Stopped
/// when dropped.
#[allow(clippy::large_enum_variant)] // one value per run
#[derive(Debug)]
pub enum BenchSidecar {
    /// `target/release/portcullis serve ...`.
    Process(std::process::Child),
    /// In this process.
    InProcess(tokio::runtime::Runtime, Option<portcullis_host::serve::Handle>),
}

impl BenchSidecar {
    /// Builds `target/release/portcullis` and runs `portcullis <args>` in `cwd`.
    pub fn release(cwd: &std::path::Path, args: &[&str]) -> BenchSidecar {
        let mut build = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        // The variables cargo sets for this bench (CARGO_MANIFEST_DIR among them) would make
        // build scripts that watch them (ring's) rebuild on every switch between shell and bench.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_") && name != "CARGO_HOME" && name != "CARGO_TARGET_DIR" {
                build.env_remove(&*name);
            }
        }
        let status = build
            .current_dir(root())
            .args(["build", "--release", "-p", "portcullis", "--bin", "portcullis"])
            .status()
            .unwrap();
        assert!(status.success());
        let child =
            std::process::Command::new(root().join("target/release/portcullis")).current_dir(cwd).args(args).spawn();
        BenchSidecar::Process(child.unwrap())
    }

    /// `portcullis serve --policy <policy>` (release) in `cwd` with two warm workers, warnings
    /// only, gRPC and admin on the given loopback ports, HTTP on `http` (or none), then `extra`.
    pub fn serve(
        cwd: &std::path::Path,
        policy: &str,
        grpc: u16,
        http: Option<u16>,
        admin: u16,
        extra: &[&str],
    ) -> BenchSidecar {
        let listen = |port: u16| format!("127.0.0.1:{port}");
        let (g, a) = (listen(grpc), listen(admin));
        let h = http.map(listen);
        let mut args = vec!["serve", "--policy", policy, "--workers", "2", "--log-level", "warn"];
        args.extend(["--grpc-listen", &g, "--admin-listen", &a]);
        match &h {
            Some(h) => args.extend(["--http-listen", h.as_str()]),
            None => args.push("--no-http"),
        }
        args.extend_from_slice(extra);
        BenchSidecar::release(cwd, &args)
    }

    /// Serves `config` in this process (two runtime threads).
    pub fn in_process(config: portcullis_host::serve::Config) -> BenchSidecar {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let h = rt.block_on(async { portcullis_host::serve::Sidecar::build(config).await.unwrap().serve().unwrap() });
        BenchSidecar::InProcess(rt, Some(h))
    }

    /// The process serving (this one when in process).
    pub fn pid(&self) -> u32 {
        match self {
            BenchSidecar::Process(c) => c.id(),
            BenchSidecar::InProcess(..) => std::process::id(),
        }
    }
}

impl Drop for BenchSidecar {
    fn drop(&mut self) {
        match self {
            BenchSidecar::Process(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            BenchSidecar::InProcess(rt, handle) => {
                if let Some(h) = handle.take() {
                    rt.block_on(h.shutdown());
                }
            }
        }
    }
}

/// Envoy's `CheckRequest` for `GET api.example.com/v1/orders` with `headers`.
pub fn check_request(headers: &[(String, String)]) -> envoy_types::pb::envoy::service::auth::v3::CheckRequest {
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, attribute_context};
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/v1/orders".into(),
                    host: "api.example.com".into(),
                    headers: headers.iter().cloned().collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
