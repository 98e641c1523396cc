//! The wasmtime embedding: the Portcullis component, compiled once, instantiated per worker.
//!
//! - One `Engine` and one `AuthzPre` (component compiled, imports linked) per runtime.
//! - The pooling allocator with copy-on-write memory images makes an instance cheap; each store
//!   has a memory limit; an epoch ticker bounds every call, so a runaway guest traps instead of
//!   stalling a request.
//! - WASI is linked because Rust's std on `wasm32-wasip2` imports it, but the context grants
//!   nothing: no files, no environment, no sockets, no output.
//! - A trap, a deadline or an inconsistent answer is a [`Fault`]; callers turn it into a 503
//!   `internal_error` and discard the instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use portcullis_core::decision::Shadow;
use portcullis_core::identity::{CredentialKind, Identity, Names};
use portcullis_core::{Decision, OwnedRequest, Reason, RevocationQuery, RevocationStatus, Revocations};
use wasmtime::component::{Component, Linker, ResourceAny, ResourceTable};
use wasmtime::error::Context as _;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::policy_files::PolicyBundle;

#[allow(unsafe_code, missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
mod bindings {
    wasmtime::component::bindgen!({
        world: "authz",
        path: "../wit",
    });
}

use bindings::Authz;
use bindings::portcullis::authz::revocations as rv;
pub use bindings::portcullis::authz::types as wit;

/// The component every host binary carries (built by `build.rs` from `guest/component`).
pub static COMPONENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/portcullis.wasm"));

/// A revocation source the host can share across threads.
pub type SharedRevocations = Arc<dyn Revocations + Send + Sync>;

/// Limits and sizes of a runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Longest a single guest call may run before it traps.
    pub call_timeout: Duration,
    /// Linear memory limit per instance, in bytes.
    pub memory_limit: usize,
    /// Instances that may exist at once (pool slots).
    pub max_instances: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { call_timeout: Duration::from_millis(250), memory_limit: 128 << 20, max_instances: 64 }
    }
}

/// Why a guest call produced no decision.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The guest trapped, ran past its deadline or exceeded a limit.
    #[error("guest trapped: {0:#}")]
    Trap(anyhow::Error),
    /// The guest answered something no correct guest would (unknown reason, allow without
    /// `allowed`, status not matching the reason).
    #[error("inconsistent decision from the guest: {0}")]
    Inconsistent(String),
}

/// Why a worker could not be created.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The guest refused the policy.
    #[error("{message}")]
    Policy {
        /// Stable code from the guest (`policy_invalid`, ...).
        code: String,
        /// Message with the path into the policy.
        message: String,
    },
    /// Instantiation or a call failed.
    #[error(transparent)]
    Fault(#[from] Fault),
}

/// Store data: WASI (granting nothing), limits, and the revocation source.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    revocations: SharedRevocations,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState").finish_non_exhaustive()
    }
}

impl HostState {
    /// Store data from its parts.
    pub fn new(wasi: WasiCtx, table: ResourceTable, limits: StoreLimits, revocations: SharedRevocations) -> HostState {
        HostState { wasi, table, limits, revocations }
    }
}

/// Links the `revocations` import to [`HostState`].
pub(crate) fn link_revocations(linker: &mut Linker<HostState>) -> anyhow::Result<()> {
    Ok(Authz::add_to_linker::<_, wasmtime::component::HasSelf<_>>(linker, |s| s)
        .context("cannot link the revocations import")?)
}

/// Typed access to an instance's exports.
pub(crate) fn bindings_for(
    store: &mut Store<HostState>,
    instance: &wasmtime::component::Instance,
) -> anyhow::Result<Authz> {
    Ok(Authz::new(store, instance).context("the component does not export portcullis:authz/authorizer")?)
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// The `types` interface has no functions; its host side is empty.
impl wit::Host for HostState {}

impl rv::Host for HostState {
    fn check(&mut self, kind: rv::Kind, id: String, issued_at: Option<f64>) -> rv::Status {
        let q = match kind {
            rv::Kind::TokenId => RevocationQuery::TokenId(&id),
            rv::Kind::ServiceTokenId => RevocationQuery::ServiceTokenId(&id),
            rv::Kind::ApiKey => RevocationQuery::ApiKey(&id),
            rv::Kind::Subject => RevocationQuery::Subject { subject: &id, issued_at },
        };
        match self.revocations.status(q) {
            RevocationStatus::Active => rv::Status::Active,
            RevocationStatus::Revoked => rv::Status::Revoked,
            RevocationStatus::Unavailable => rv::Status::Unavailable,
        }
    }
}

/// Advances the engine's epoch every millisecond so deadlines can fire.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    const TICK: Duration = Duration::from_millis(1);

    fn start(engine: &Engine) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let (engine, flag) = (engine.clone(), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("portcullis-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Self::TICK);
                    engine.increment_epoch();
                }
            })
            .ok();
        EpochTicker { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A compiled component with its imports linked, ready to instantiate.
pub struct Runtime {
    engine: Engine,
    pre: bindings::AuthzPre<HostState>,
    config: RuntimeConfig,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Runtime {
    /// Compiles the embedded component.
    pub fn embedded(config: RuntimeConfig) -> anyhow::Result<Runtime> {
        Runtime::new(COMPONENT, config)
    }

    /// Compiles `wasm` (a Portcullis component) and links its imports.
    pub fn new(wasm: &[u8], config: RuntimeConfig) -> anyhow::Result<Runtime> {
        let engine = Engine::new(&engine_config(&config)?).context("cannot configure wasmtime")?;
        let component = Component::new(&engine, wasm).context("cannot compile the Portcullis component")?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).context("cannot link WASI")?;
        link_revocations(&mut linker)?;
        let pre = bindings::AuthzPre::new(
            linker.instantiate_pre(&component).context("the component's imports do not match")?,
        )
        .context("the component does not export portcullis:authz/authorizer")?;
        let ticker = EpochTicker::start(&engine);
        Ok(Runtime { engine, pre, config, _ticker: ticker })
    }

    /// The wasmtime engine (for pre-initialisation).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn store(&self, revocations: SharedRevocations) -> Store<HostState> {
        let limits =
            StoreLimitsBuilder::new().memory_size(self.config.memory_limit).instances(8).tables(16).memories(2).build();
        let state = HostState { wasi: WasiCtx::builder().build(), table: ResourceTable::new(), limits, revocations };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store
    }

    fn deadline_ticks(&self) -> u64 {
        let ms = self.config.call_timeout.as_millis().max(1);
        u64::try_from(ms).unwrap_or(u64::MAX)
    }

    /// A fresh instance with `bundle`'s policy loaded: a worker to decide with.
    pub fn worker(&self, bundle: &PolicyBundle, revocations: SharedRevocations) -> Result<Worker, WorkerError> {
        let mut store = self.store(revocations);
        store.set_epoch_deadline(self.deadline_ticks().saturating_mul(20));
        let authz = self.pre.instantiate(&mut store).map_err(|e| Fault::Trap(e.into()))?;
        let files = files(bundle);
        let loaded = authz
            .portcullis_authz_authorizer()
            .call_load(&mut store, &bundle.text, &files)
            .map_err(|e| Fault::Trap(e.into()))?;
        let policy = loaded.map_err(|e| WorkerError::Policy { code: e.code, message: e.message })?;
        Ok(Worker { store, authz, policy, ticks: self.deadline_ticks() })
    }

    /// A fresh instance of a pre-initialised component (see [`crate::preinit`]), deciding one
    /// request with its installed policy.
    pub fn decide_fresh(
        &self,
        request: &OwnedRequest,
        revocations: SharedRevocations,
        with_audit: bool,
    ) -> Result<(Decision, Option<String>), Fault> {
        let mut store = self.store(revocations);
        store.set_epoch_deadline(self.deadline_ticks());
        let authz = self.pre.instantiate(&mut store).map_err(|e| Fault::Trap(e.into()))?;
        let d = authz
            .portcullis_authz_authorizer()
            .call_decide_installed(&mut store, &to_wit(request), with_audit)
            .map_err(|e| Fault::Trap(e.into()))?;
        from_wit(d)
    }
}

fn engine_config(c: &RuntimeConfig) -> anyhow::Result<Config> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.parallel_compilation(true);
    // `perf record` can name guest functions when this writes /tmp/perf-<pid>.map.
    if std::env::var_os("PORTCULLIS_PERF_MAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(c.max_instances);
    pool.total_core_instances(c.max_instances.saturating_mul(8));
    pool.total_memories(c.max_instances.saturating_mul(2));
    pool.total_tables(c.max_instances.saturating_mul(8));
    pool.max_memories_per_component(2);
    pool.max_tables_per_component(8);
    pool.max_core_instances_per_component(16);
    pool.max_memory_size(c.memory_limit);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(config)
}

fn files(bundle: &PolicyBundle) -> Vec<wit::PolicyFile> {
    bundle
        .files
        .iter()
        .map(|(path, contents)| wit::PolicyFile { path: path.clone(), contents: contents.clone() })
        .collect()
}

/// An instance holding a loaded policy. Not `Sync`: one per worker thread.
pub struct Worker {
    store: Store<HostState>,
    authz: Authz,
    policy: ResourceAny,
    ticks: u64,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").finish_non_exhaustive()
    }
}

impl Worker {
    /// Decides one request; with `with_audit`, also returns the audit event (JSON).
    pub fn decide(&mut self, request: &OwnedRequest, with_audit: bool) -> Result<(Decision, Option<String>), Fault> {
        self.store.set_epoch_deadline(self.ticks);
        let d = self
            .authz
            .portcullis_authz_authorizer()
            .policy()
            .call_decide(&mut self.store, self.policy, &to_wit(request), with_audit)
            .map_err(|e| Fault::Trap(e.into()))?;
        from_wit(d)
    }
}

/// The request in WIT terms.
pub fn to_wit(r: &OwnedRequest) -> wit::Request {
    wit::Request {
        method: r.method.clone(),
        scheme: r.scheme.clone(),
        host: r.host.clone(),
        path: r.path.clone(),
        query: r.query.clone(),
        headers: r.headers.clone(),
        client_address: r.client_ip.map(|ip| ip.to_string()),
        now: r.now,
    }
}

fn names(v: Vec<String>) -> Names {
    Names::from(v.into_iter().map(Arc::from).collect::<Vec<_>>())
}

/// The guest's decision as a core [`Decision`], checked for consistency (fail closed).
pub fn from_wit(d: wit::Decision) -> Result<(Decision, Option<String>), Fault> {
    let reason =
        Reason::from_code(&d.reason).ok_or_else(|| Fault::Inconsistent(format!("unknown reason `{}`", d.reason)))?;
    if d.allow != (reason == Reason::Allowed) || d.status != reason.status() {
        return Err(Fault::Inconsistent(format!("allow={} status={} reason={}", d.allow, d.status, d.reason)));
    }
    let identity = d.identity.map(|i| {
        let mut id = Identity::new(match i.credential {
            wit::CredentialKind::Jwt => CredentialKind::Jwt,
            wit::CredentialKind::ServiceToken => CredentialKind::ServiceToken,
            wit::CredentialKind::ApiKey => CredentialKind::ApiKey,
        });
        id.subject = i.subject.map(Arc::from);
        id.issuer = i.issuer.map(Arc::from);
        id.key_id = i.key_id.map(Arc::from);
        id.token_id = i.token_id.map(Arc::from);
        id.audience = i.audience.map(Arc::from);
        id.tenant = i.tenant.map(Arc::from);
        id.email = i.email.map(Arc::from);
        id.scopes = names(i.scopes);
        id.roles = names(i.roles);
        id.groups = names(i.groups);
        id.expires_at = i.expires_at;
        Arc::new(id)
    });
    let shadow = match d.shadow {
        None => None,
        Some(s) => Some(Box::new(Shadow {
            reason: Reason::from_code(&s.reason)
                .ok_or_else(|| Fault::Inconsistent(format!("unknown shadow reason `{}`", s.reason)))?,
            route: s.route.map(Arc::from),
            rule: s.rule.map(Arc::from),
        })),
    };
    let mut out = Decision::deny(reason);
    out.identity = identity;
    out.route = d.route.map(Arc::from);
    out.rule = d.rule.map(Arc::from);
    out.headers_to_set = d.headers_to_set.into_iter().map(|(k, v)| (Arc::from(k), v)).collect();
    out.headers_to_remove = (!d.headers_to_remove.is_empty()).then(|| names(d.headers_to_remove));
    out.shadow = shadow;
    Ok((out, d.audit))
}

/// A worker's `check` through the component, for the CLI and tests.
impl crate::check::Decider for Worker {
    fn decide(&mut self, request: &OwnedRequest) -> Decision {
        match Worker::decide(self, request, false) {
            Ok((d, _)) => d,
            Err(_) => Decision::deny(Reason::InternalError),
        }
    }
}
