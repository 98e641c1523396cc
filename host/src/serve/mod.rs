//! `portcullis serve`: the sidecar Envoy calls.
//!
//! Shape: [`Config`] → [`Sidecar::build`] (load the policy, compile the component, warm the
//! instances, bind the sockets) → [`Sidecar::serve`] → [`Handle`], whose
//! [`shutdown`](Handle::shutdown) drains in-flight checks. The routers are functions
//! ([`http::ext_authz_app`], [`http::admin_app`]) so tests drive them without a socket.

pub mod admin;
pub mod audit;
pub mod authz;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::policy_files::PolicyBundle;
use crate::runtime::SharedRevocations;
use authz::{Authorizer, Settings};

/// Verified signatures the sidecar keeps by default (about 100 bytes each with the index).
pub const DEFAULT_SIGNATURE_CACHE_ENTRIES: usize = 16_384;

/// Everything the sidecar needs to start.
#[derive(Clone)]
pub struct Config {
    /// The policy file.
    pub policy: PathBuf,
    /// gRPC ext_authz listener.
    pub grpc_listen: SocketAddr,
    /// HTTP ext_authz listener (`None`: off).
    pub http_listen: Option<SocketAddr>,
    /// `/healthz`, `/readyz`, `/metrics`.
    pub admin_listen: SocketAddr,
    /// Audit events as JSON lines (`-` for stdout); `None`: off.
    pub audit_log: Option<PathBuf>,
    /// How often the policy is re-read; `None`: only on SIGHUP.
    pub reload_interval: Option<Duration>,
    /// Decision service settings.
    pub settings: Settings,
    /// HTTP mode: the header whose last entry is the client address.
    pub client_address_header: Option<String>,
    /// Longest wait for in-flight checks at shutdown.
    pub drain_timeout: Duration,
    /// Revocations consulted by every decision (ignored when `revocation` is set: its live
    /// set is used).
    pub revocations: SharedRevocations,
    /// The revocation subsystem: store, live set, follower, admin API and feed.
    pub revocation: Option<RevocationConfig>,
    /// The time of each decision ([`authz::system_clock`] outside tests).
    pub clock: authz::Clock,
    /// Connection limits of the gRPC and HTTP check listeners (each).
    pub check_limits: listen::ConnectionLimits,
    /// Connection limits of the admin listener.
    pub admin_limits: listen::ConnectionLimits,
    /// Verified signatures kept (0: none), shared by every instance; emptied on reload.
    pub signature_cache_entries: usize,
    /// How key sets from identity providers (`jwks_uri`, `discovery`) are fetched and kept.
    pub keys: crate::remote_keys::KeyOptions,
    /// Rate-limit buckets kept at once (fixed memory, 16 bytes each), shared by every worker.
    pub rate_limit_buckets: usize,
}

/// The sidecar's revocation subsystem.
#[derive(Clone, Debug)]
pub struct RevocationConfig {
    /// The store followed, and written through the admin API.
    pub store: crate::revocation::Store,
    /// The live set (its metrics are registered with the sidecar's).
    pub live: Arc<crate::revocation::LiveRevocations>,
    /// Staleness bound and mode.
    pub freshness: crate::revocation::Freshness,
    /// Follower pacing.
    pub follow: crate::revocation::FollowOptions,
    /// Admin API scopes: (read, write).
    pub scopes: (String, String),
}

impl Config {
    /// A sidecar for `policy` on loopback port 0 (the OS picks; see [`Handle`] for the bound
    /// addresses), HTTP ext_authz off, no audit log, no reload, one warm worker, no revocation
    /// store, the system clock. Tests, benches and embedders start here and override fields.
    pub fn local(policy: PathBuf) -> Config {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            policy,
            grpc_listen: any,
            http_listen: None,
            admin_listen: any,
            audit_log: None,
            reload_interval: None,
            settings: Settings {
                workers: 1,
                isolation: authz::Isolation::Warm,
                runtime: crate::runtime::RuntimeConfig::default(),
            },
            client_address_header: None,
            drain_timeout: Duration::from_secs(5),
            revocations: Arc::new(portcullis_core::NoRevocations),
            revocation: None,
            clock: authz::system_clock(),
            check_limits: listen::ConnectionLimits::CHECKS,
            admin_limits: listen::ConnectionLimits::ADMIN,
            signature_cache_entries: DEFAULT_SIGNATURE_CACHE_ENTRIES,
            keys: crate::remote_keys::KeyOptions::default(),
            rate_limit_buckets: crate::rate_limits::DEFAULT_BUCKETS,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("policy", &self.policy)
            .field("grpc_listen", &self.grpc_listen)
            .field("http_listen", &self.http_listen)
            .field("admin_listen", &self.admin_listen)
            .finish_non_exhaustive()
    }
}

/// A sidecar ready to serve: policy loaded, instances warm, sockets bound.
pub struct Sidecar {
    config: Config,
    hangups: reload::Hangups,
    authz: Arc<Authorizer>,
    grpc: TcpListener,
    http: Option<TcpListener>,
    admin: TcpListener,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Sidecar {
    /// Loads the policy, compiles the component, warms instances and binds the listeners.
    pub async fn build(config: Config) -> anyhow::Result<Sidecar> {
        // First, so a SIGHUP during a slow start reloads rather than terminates.
        let hangups = reload::hangups();
        let bundle = PolicyBundle::read(&config.policy).map_err(|e| anyhow::anyhow!("[{}] {e}", e.code()))?;
        let mut metrics = metrics::Metrics::new();
        if let Some(r) = &config.revocation {
            r.live.metrics.register(metrics.registry_mut());
        }
        let cache = Arc::new(crate::signature_cache::SignatureCache::new(config.signature_cache_entries));
        cache.metrics.register(metrics.registry_mut());
        let keys = Arc::new(
            crate::remote_keys::RemoteKeys::new(config.keys.clone()).context("cannot set up fetching key sets")?,
        );
        keys.metrics.register(metrics.registry_mut());
        crate::remote_keys::fetch_at_start(&keys, &bundle).await;
        let bundle = PolicyBundle { bundle: bundle.bundle.with_remote_keys(&keys.documents())?, path: bundle.path };
        let counter = Arc::new(crate::rate_limits::Counter::new(config.rate_limit_buckets));
        counter.register(metrics.registry_mut());
        let metrics = Arc::new(metrics);
        let audit = match &config.audit_log {
            Some(p) => Some(
                audit::AuditSink::open(p, metrics.audit_dropped.clone())
                    .with_context(|| format!("cannot open the audit log {}", p.display()))?,
            ),
            None => None,
        };
        let revocations: SharedRevocations = match &config.revocation {
            Some(r) => Arc::clone(&r.live) as SharedRevocations,
            None => Arc::clone(&config.revocations),
        };
        let revocations: SharedRevocations = Arc::new(crate::rate_limits::Counted::new(revocations, counter));
        let (mut settings, clock) = (config.settings.clone(), Arc::clone(&config.clock));
        if let Some(inner) = settings.runtime.signatures.take() {
            settings.runtime.signatures = Some(crate::signature_cache::cached(inner, Arc::clone(&cache)));
        }
        let m = Arc::clone(&metrics);
        let gate = config.revocation.as_ref().map(|r| Arc::clone(&r.live));
        let k = Arc::clone(&keys);
        let authz = tokio::task::spawn_blocking(move || {
            let authz = Authorizer::new(bundle, settings, revocations, m, audit, clock)?
                .with_signature_cache(cache)
                .with_remote_keys(k);
            anyhow::Ok(match gate {
                Some(live) => authz.gated_on(live),
                None => authz,
            })
        })
        .await
        .context("the loader panicked")??;
        let bind = |addr: SocketAddr, what: &'static str| async move {
            TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} ({what})"))
        };
        let grpc = bind(config.grpc_listen, "gRPC").await?;
        let http = match config.http_listen {
            Some(a) => Some(bind(a, "HTTP ext_authz").await?),
            None => None,
        };
        let admin = bind(config.admin_listen, "admin").await?;
        Ok(Sidecar { config, hangups, authz: Arc::new(authz), grpc, http, admin })
    }

    /// The decision service (for tests and the revocation subsystem).
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authz
    }

    /// Starts serving; returns immediately.
    pub fn serve(self) -> anyhow::Result<Handle> {
        let (tx, rx) = watch::channel(false);
        let grpc_addr = self.grpc.local_addr()?;
        let http_addr = self.http.as_ref().map(TcpListener::local_addr).transpose()?;
        let admin_addr = self.admin.local_addr()?;
        let mut tasks: Vec<JoinHandle<()>> = Vec::new();

        let service = AuthorizationServer::new(grpc::GrpcService::new(Arc::clone(&self.authz)));
        // Envoy keeps one HTTP/2 connection open between bursts: no idle cut-off here (a close
        // racing a check would fail that check); dead peers are found by keepalive pings.
        let grpc_limits = listen::ConnectionLimits { idle_timeout: None, ..self.config.check_limits };
        let incoming = listen::incoming(self.grpc, grpc_limits);
        let stop = stopped(rx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .http2_keepalive_timeout(Some(Duration::from_secs(10)))
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop)
                .await
            {
                tracing::error!(error = %e, "gRPC server failed");
            }
        }));

        if let Some(listener) = self.http {
            let header = self
                .config
                .client_address_header
                .as_deref()
                .map(axum::http::HeaderName::try_from)
                .transpose()
                .context("invalid client address header name")?;
            let app = http::ext_authz_app(Arc::new(http::HttpState {
                authz: Arc::clone(&self.authz),
                client_address_header: header,
            }));
            let authz = Arc::clone(&self.authz);
            // Headers past the policy's limit get the policy's own answer (`malformed`); the
            // server's cap is only a backstop above it (Host and transport headers come on top).
            let max_headers = Arc::new(move || authz.generation().limits.max_headers.saturating_add(32));
            tasks.push(listen::spawn_http(
                listener,
                app,
                self.config.check_limits,
                max_headers,
                rx.clone(),
                "HTTP ext_authz",
            ));
        }
        let revocation_admin = self.config.revocation.as_ref().map(|r| admin::RevocationAdmin {
            store: r.store.clone(),
            live: Arc::clone(&r.live),
            read_scope: r.scopes.0.clone(),
            write_scope: r.scopes.1.clone(),
        });
        let authz = Arc::clone(&self.authz);
        tasks.push(listen::spawn_http(
            self.admin,
            admin::admin_app(Arc::clone(&self.authz), revocation_admin),
            self.config.admin_limits,
            Arc::new(move || authz.generation().limits.max_headers.saturating_add(32)),
            rx.clone(),
            "admin",
        ));
        if let Some(r) = &self.config.revocation {
            tracing::info!(store = %r.store.describe(), stale_after = ?r.freshness.stale_after, mode = ?r.freshness.mode, "following revocations");
            tasks.push(tokio::spawn(crate::revocation::follow(
                r.store.clone(),
                Arc::clone(&r.live),
                r.follow,
                rx.clone(),
            )));
            tasks.push(tokio::spawn(crate::revocation::monitor(
                Arc::clone(&r.live),
                r.freshness.stale_after,
                r.freshness.mode,
                rx.clone(),
            )));
        }

        if let Some(keys) = self.authz.remote_keys() {
            tasks.push(tokio::spawn(crate::remote_keys::maintain(
                Arc::clone(&self.authz),
                Arc::clone(keys),
                rx.clone(),
            )));
        }

        // Always: with no interval the policy still reloads on SIGHUP, and a SIGHUP must
        // never stop the service.
        tasks.push(tokio::spawn(reload::watch_policy(
            Arc::clone(&self.authz),
            self.config.policy.clone(),
            self.config.reload_interval,
            self.hangups,
            rx,
        )));
        tracing::info!(%grpc_addr, http = ?http_addr, %admin_addr, generation = self.authz.generation().id, "serving");
        Ok(Handle {
            grpc_addr,
            http_addr,
            admin_addr,
            authz: self.authz,
            shutdown: tx,
            tasks,
            drain: self.config.drain_timeout,
        })
    }
}

pub(crate) async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A running sidecar.
pub struct Handle {
    /// Bound gRPC address (useful with port 0).
    pub grpc_addr: SocketAddr,
    /// Bound HTTP ext_authz address.
    pub http_addr: Option<SocketAddr>,
    /// Bound admin address.
    pub admin_addr: SocketAddr,
    authz: Arc<Authorizer>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    drain: Duration,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Handle {
    /// The decision service.
    pub fn authorizer(&self) -> &Arc<Authorizer> {
        &self.authz
    }

    /// Stops accepting, marks `/readyz` unready, and waits (up to the drain timeout) for
    /// in-flight checks to finish.
    pub async fn shutdown(self) {
        self.authz.start_draining();
        let _ = self.shutdown.send(true);
        let all = futures_join_all(self.tasks);
        if tokio::time::timeout(self.drain, all).await.is_err() {
            tracing::warn!(timeout = ?self.drain, "drain timeout: in-flight checks were cut off");
        }
        tracing::info!("stopped");
    }
}

async fn futures_join_all(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}
