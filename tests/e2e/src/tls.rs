//! A test certificate authority made by the tests (rcgen), and a local HTTPS identity provider
//! serving a JWKS and an OpenID configuration with it, on 127.0.0.1.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::TempDir;

/// A certificate authority with its certificate in a PEM file.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    /// The CA certificate (PEM).
    pub pem_file: PathBuf,
    dir: TempDir,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("pem_file", &self.pem_file).finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("Portcullis test CA {name}"));
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let issuer = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
        let dir = TempDir::new(&format!("ca-{name}"));
        let pem_file = dir.path().join("ca.pem");
        std::fs::write(&pem_file, issuer.pem()).unwrap();
        TestCa { issuer, pem_file, dir }
    }

    /// A server certificate for `127.0.0.1` and `localhost`: (certificate PEM, key PEM).
    pub fn server_cert(&self) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(rcgen::DnType::CommonName, "127.0.0.1");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A directory that lives as long as the CA.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// What the identity provider answers.
#[derive(Clone, Debug)]
pub struct IdpState {
    /// The JWKS body at `/jwks`.
    pub jwks: Vec<u8>,
    /// Its `Cache-Control`.
    pub cache_control: Option<String>,
    /// Its status.
    pub status: u16,
    /// The `issuer` the OpenID configuration claims (`None`: the provider's own base URL).
    pub claimed_issuer: Option<String>,
}

impl IdpState {
    /// 200 with `jwks` and `Cache-Control: max-age=<max_age>`.
    pub fn serving(jwks: Vec<u8>, max_age: u64) -> IdpState {
        IdpState { jwks, cache_control: Some(format!("public, max-age={max_age}")), status: 200, claimed_issuer: None }
    }
}

/// A local HTTPS identity provider: `/jwks` and `/.well-known/openid-configuration`.
#[derive(Debug)]
pub struct Idp {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
    jwks_hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    /// Serves `state` with a certificate from `ca`.
    pub async fn start(ca: &TestCa, state: IdpState) -> Idp {
        let (cert, key) = ca.server_cert();
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        let jwks_hits = Arc::new(AtomicUsize::new(0));
        let (s, hits) = (Arc::clone(&state), Arc::clone(&jwks_hits));
        let task = tokio::spawn(async move {
            // Connections end with the provider: the set aborts them when the task is aborted.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (acceptor, s, hits) = (acceptor.clone(), Arc::clone(&s), Arc::clone(&hits));
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let service = hyper::service::service_fn(move |req| {
                        let answer = respond(&s, &hits, addr, req.uri().path());
                        async move { Ok::<_, std::convert::Infallible>(answer) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Idp { addr, state, jwks_hits, task }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Changes what it answers.
    pub fn set(&self, change: impl FnOnce(&mut IdpState)) {
        change(&mut self.state.lock().unwrap());
    }

    /// Requests for `/jwks` so far.
    pub fn jwks_fetches(&self) -> usize {
        self.jwks_hits.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn respond(state: &Mutex<IdpState>, hits: &AtomicUsize, addr: SocketAddr, path: &str) -> hyper::Response<Full<Bytes>> {
    let s = state.lock().unwrap().clone();
    let base = format!("https://127.0.0.1:{}", addr.port());
    let mut r = hyper::Response::builder().header("content-type", "application/json");
    let body = match path {
        "/jwks" => {
            hits.fetch_add(1, Ordering::SeqCst);
            if let Some(c) = &s.cache_control {
                r = r.header("cache-control", c);
            }
            r = r.status(s.status);
            s.jwks
        }
        "/.well-known/openid-configuration" => serde_json::json!({
            "issuer": s.claimed_issuer.unwrap_or_else(|| base.clone()),
            "jwks_uri": format!("{base}/jwks"),
            "id_token_signing_alg_values_supported": ["RS256"],
        })
        .to_string()
        .into_bytes(),
        _ => {
            r = r.status(404);
            Vec::new()
        }
    };
    r.body(Full::new(Bytes::from(body))).unwrap()
}

/// The public JWK `kid` of `policies/keys/jwks.json` (`rsa-2025`, `rsa-2026`).
pub fn jwk(kid: &str) -> serde_json::Value {
    let set: serde_json::Value =
        serde_json::from_slice(&std::fs::read(crate::root().join("policies/keys/jwks.json")).unwrap()).unwrap();
    set["keys"].as_array().unwrap().iter().find(|k| k["kid"] == kid).unwrap().clone()
}

/// A JWKS of the public keys `kids` (see [`jwk`]).
pub fn jwks(kids: &[&str]) -> Vec<u8> {
    serde_json::json!({ "keys": kids.iter().map(|k| jwk(k)).collect::<Vec<_>>() }).to_string().into_bytes()
}

/// An RS256 token from `iss`, signed with the private half of `key` (`rsa-2025`, `rsa-2026`),
/// naming `kid`.
pub fn rs256(iss: &str, key: &str, kid: &str) -> String {
    let pem = std::fs::read(crate::root().join(format!("tests/fixtures/keys/{key}.pem"))).unwrap();
    let now = portcullis_host::unix_now();
    let header =
        jsonwebtoken::Header { kid: Some(kid.to_owned()), ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256) };
    let claims = serde_json::json!({ "iss": iss, "aud": "api", "sub": "alice", "iat": now, "exp": now + 600 });
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

/// A provider ([`Idp`]) serving `rsa-2025` with `max-age=1`, and a sidecar trusting its CA,
/// refreshing keys every second, for a one-issuer RS256 policy (`https://idp.test`, audience
/// `api`) whose keys come from the provider's `jwks_uri`.
#[derive(Debug)]
pub struct ProviderAndSidecar {
    /// The provider.
    pub idp: Idp,
    /// The policy's text.
    pub policy_text: String,
    /// The policy file the sidecar reads.
    pub policy: PathBuf,
    /// The sidecar.
    pub sidecar: portcullis_host::serve::Handle,
    /// The CA (its directory holds the policy: keep it while the sidecar runs).
    pub ca: TestCa,
}

impl ProviderAndSidecar {
    /// Starts both (`name` names the CA and the directory).
    pub async fn start(name: &str) -> ProviderAndSidecar {
        let ca = TestCa::new(name);
        let idp = Idp::start(&ca, IdpState::serving(jwks(&["rsa-2025"]), 1)).await;
        let policy_text = format!(
            "version: 1\nissuers:\n  - issuer: https://idp.test\n    audiences: [api]\n    algorithms: [RS256]\n    jwks_uri: {}/jwks\n",
            idp.base()
        );
        let policy = ca.dir().join("policy.yaml");
        std::fs::write(&policy, &policy_text).unwrap();
        let keys = portcullis_host::remote_keys::KeyOptions {
            ca_file: Some(ca.pem_file.clone()),
            min_refresh: std::time::Duration::from_secs(1),
            ..Default::default()
        };
        let config = portcullis_host::serve::Config { keys, ..portcullis_host::serve::Config::local(policy.clone()) };
        let sidecar = portcullis_host::serve::Sidecar::build(config).await.unwrap().serve().unwrap();
        ProviderAndSidecar { idp, policy_text, policy, sidecar, ca }
    }
}
