//! The wasmtime embedding: the Portcullis component, compiled once, instantiated per worker.
//!
//! - One `Engine` and one `AuthzPre` (component compiled, imports linked) per runtime.
//! - The pooling allocator with copy-on-write memory images makes an instance cheap; each store
//!   has a memory limit; an epoch ticker bounds every call, so a runaway guest traps instead of
//!   stalling a request.
//! - WASI is not linked. Rust's std on `wasm32-wasip2` imports parts of it (stdio, environment,
//!   exit) that a correct guest never calls; each is defined as a function that traps, so the
//!   guest has no files, no environment, no sockets and no output. The one exception is
//!   `wasi:random/insecure-seed`, which std reads once to key its `HashMap`s: the host answers
//!   with a seed drawn when the runtime starts.
//! - A trap, a deadline or an inconsistent answer is a [`Fault`]; callers turn it into a 503
//!   `internal_error` and discard the instance.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use portcullis_core::Shadow;
use portcullis_core::SignatureVerdict;
use portcullis_core::{CredentialKind, Identity, Names};
use portcullis_core::{Decision, OwnedRequest, Reason, RevocationQuery, RevocationStatus, Revocations};
use wasmtime::component::{Component, ComponentExportIndex, ComponentType, Lift, Linker, ResourceAny, TypedFunc};
use wasmtime::error::Context as _;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder,
};

use crate::policy_files::PolicyBundle;

#[allow(unsafe_code, missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
mod bindings {
    wasmtime::component::bindgen!({
        world: "authz",
        path: "../wit",
        // A host signature check that fails traps the guest's call (a 503, never an allow).
        imports: { "portcullis:authz/signatures.verify": trappable },
    });
}

use bindings::Authz;
use bindings::portcullis::authz::rate_limits as rl;
use bindings::portcullis::authz::revocations as rv;
use bindings::portcullis::authz::signatures as sg;
use bindings::portcullis::authz::types as wit_types;
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
    /// Bytes of each pool slot's linear memory kept mapped when its instance is dropped: the
    /// pages a request wrote are restored from the image in place (found with Linux's
    /// `PAGEMAP_SCAN` where the kernel has it) instead of being unmapped, so the next instance
    /// in that slot takes no page faults. Costs up to this much resident memory per used slot.
    pub keep_resident: usize,
    /// Where compiled components are kept between runs (`None`: compile every time). Default:
    /// [`compile_cache::default_dir`](crate::compile_cache::default_dir).
    pub compile_cache: Option<std::path::PathBuf>,
    /// The `signatures` import: verify natively for the guest (default [`native_signatures`]),
    /// or `None` to answer `unsupported` so the guest verifies in wasm.
    pub signatures: Option<HostSignatures>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            call_timeout: Duration::from_millis(250),
            memory_limit: 128 << 20,
            max_instances: 64,
            keep_resident: 4 << 20,
            compile_cache: crate::compile_cache::default_dir(),
            signatures: Some(native_signatures()),
        }
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
    /// The guest refused the policy (its code crosses the WIT as an enum).
    #[error(transparent)]
    Policy(crate::error::Error),
    /// Instantiation or a call failed.
    #[error(transparent)]
    Fault(#[from] Fault),
}

/// A guest's load error as the host's error: the WIT enum names the code.
pub(crate) fn load_error(e: &wit_types::LoadError) -> crate::error::Error {
    let code = match e.code {
        wit_types::LoadErrorCode::PolicySyntax => "policy_syntax",
        wit_types::LoadErrorCode::PolicyInvalid => "policy_invalid",
        wit_types::LoadErrorCode::PolicyFile => "policy_file",
    };
    crate::error::Error::msg(code, &e.message)
}

/// How a host answers its guest's signature checks: [`native_signatures`] in the sidecar, or
/// a test double. An `Err` traps the guest's call (a 503 `internal_error`, never an allow).
#[derive(Clone)]
pub struct HostSignatures(pub Arc<SignatureFn>);

/// See [`HostSignatures`].
pub type SignatureFn = dyn Fn(&portcullis_core::SignatureCheck<'_>) -> Result<SignatureVerdict, String> + Send + Sync;

impl std::fmt::Debug for HostSignatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostSignatures")
    }
}

/// Native verification (ring, through the core's own native backend).
pub fn native_signatures() -> HostSignatures {
    HostSignatures(Arc::new(|check| Ok(portcullis_core::verify_natively(check))))
}

/// Store data: limits, the revocation source and the signature capability.
pub struct HostState {
    limits: StoreLimits,
    revocations: SharedRevocations,
    signatures: Option<HostSignatures>,
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState").finish_non_exhaustive()
    }
}

impl HostState {
    /// Store data from its parts; `signatures: None` answers every signature check
    /// `unsupported` (the guest then verifies itself).
    pub fn new(limits: StoreLimits, revocations: SharedRevocations, signatures: Option<HostSignatures>) -> HostState {
        HostState { limits, revocations, signatures }
    }
}

/// Links everything a Portcullis component imports: `revocations` to [`HostState`], std's
/// `insecure-seed` to a seed drawn now, and every other import (the WASI std never calls in
/// a correct guest) to a trap.
pub(crate) fn linker(engine: &Engine, component: &Component) -> anyhow::Result<Linker<HostState>> {
    let mut linker: Linker<HostState> = Linker::new(engine);
    Authz::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)
        .context("cannot link the revocations import")?;
    let mut seed = [0u8; 16];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("cannot draw a HashMap seed: {e}"))?;
    let (lo, hi) = seed.split_at(8);
    let seed = (u64::from_le_bytes(lo.try_into()?), u64::from_le_bytes(hi.try_into()?));
    let engine_types = component.component_type();
    for (name, _) in engine_types.imports(engine) {
        if name.starts_with("wasi:random/insecure-seed@") {
            linker.instance(name)?.func_wrap("insecure-seed", move |_, (): ()| Ok((seed,)))?;
        }
    }
    linker.define_unknown_imports_as_traps(component).context("cannot stub the component's other imports")?;
    Ok(linker)
}

/// Typed access to an instance's exports.
pub(crate) fn bindings_for(
    store: &mut Store<HostState>,
    instance: &wasmtime::component::Instance,
) -> anyhow::Result<Authz> {
    Ok(Authz::new(store, instance).context("the component does not export portcullis:authz/authorizer")?)
}

/// The `types` interface has no functions; its host side is empty.
impl wit::Host for HostState {}

impl sg::Host for HostState {
    fn verify(
        &mut self,
        alg: sg::Algorithm,
        key: sg::PublicKey,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> wasmtime::Result<sg::Verdict> {
        use portcullis_core::Alg;
        use portcullis_core::{PublicKeyRef, SignatureCheck};
        let Some(signatures) = &self.signatures else { return Ok(sg::Verdict::Unsupported) };
        let alg = match alg {
            sg::Algorithm::Rs256 => Alg::RS256,
            sg::Algorithm::Rs384 => Alg::RS384,
            sg::Algorithm::Rs512 => Alg::RS512,
            sg::Algorithm::Ps256 => Alg::PS256,
            sg::Algorithm::Ps384 => Alg::PS384,
            sg::Algorithm::Ps512 => Alg::PS512,
            sg::Algorithm::Es256 => Alg::ES256,
            sg::Algorithm::Es384 => Alg::ES384,
        };
        let key = match &key {
            sg::PublicKey::Rsa((n, e)) => PublicKeyRef::Rsa { n, e },
            sg::PublicKey::Ec(point) => PublicKeyRef::Ec { point },
        };
        let check = SignatureCheck { alg, key, message: &message, signature: &signature };
        Ok(match (signatures.0)(&check).map_err(|e| wasmtime::Error::msg(format!("signature check failed: {e}")))? {
            SignatureVerdict::Valid => sg::Verdict::Valid,
            SignatureVerdict::Invalid => sg::Verdict::Invalid,
            SignatureVerdict::Unsupported => sg::Verdict::Unsupported,
        })
    }
}

impl rl::Host for HostState {
    fn take(&mut self, key: String, interval_ns: u64, burst: u32) -> Option<rl::Taken> {
        let params = portcullis_core::rate::RateParams { interval_ns, burst };
        match self.revocations.rate_limit(&portcullis_core::rate::RateBucket { key: &key, params }) {
            portcullis_core::rate::RateCount::Counted(t) => Some(rl::Taken {
                allowed: t.allowed,
                remaining: t.remaining,
                retry_after_ns: t.retry_after_ns,
                reset_ns: t.reset_ns,
            }),
            portcullis_core::rate::RateCount::Unavailable => None,
        }
    }
}

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

/// Advances the engine's epoch every [`EpochTicker::TICK`] so deadlines can fire.
///
/// Ten milliseconds, not one: each tick wakes a thread, and on a small machine shared with
/// Envoy a thousand wake-ups a second cost the sidecar about a tenth of its CPU under load
/// (measured with `perf` during `benches/envoy.rs`). Call timeouts are hundreds of
/// milliseconds, so the coarser tick changes when a runaway call stops by at most one tick.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    const TICK: Duration = Duration::from_millis(10);

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
    exports: Exports,
    config: RuntimeConfig,
    _ticker: EpochTicker,
}

/// Where the two decision functions are, found once per compiled component.
#[derive(Clone, Copy)]
struct Exports {
    decide: ComponentExportIndex,
    decide_installed: ComponentExportIndex,
}

impl Exports {
    const INTERFACE: &str = "portcullis:authz/authorizer@0.1.0";

    fn find(component: &Component) -> anyhow::Result<Exports> {
        let (_, interface) = component
            .get_export(None, Self::INTERFACE)
            .with_context(|| format!("the component does not export {}", Self::INTERFACE))?;
        let func = |name: &str| {
            component
                .get_export_index(Some(&interface), name)
                .with_context(|| format!("the component does not export {}#{name}", Self::INTERFACE))
        };
        Ok(Exports { decide: func("[method]policy.decide")?, decide_installed: func("decide-installed")? })
    }
}

/// `[method]policy.decide`, typed to lift the decision straight into core types; the request is
/// lowered from a worker's [`RequestBuffer`].
type DecideFunc = TypedFunc<(ResourceAny, Arc<wit::Request>, bool), (DecisionOut,)>;
/// `decide-installed`, likewise.
type DecideInstalledFunc = TypedFunc<(Arc<wit::Request>, bool), (DecisionOut,)>;

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
        let (component, cached) = crate::compile_cache::load(&engine, wasm, config.compile_cache.as_deref())
            .context("cannot compile the Portcullis component")?;
        tracing::debug!(?cached, "component ready");
        let linker = linker(&engine, &component)?;
        let pre = bindings::AuthzPre::new(
            linker.instantiate_pre(&component).context("the component's imports do not match")?,
        )
        .context("the component does not export portcullis:authz/authorizer")?;
        let exports = Exports::find(&component)?;
        let ticker = EpochTicker::start(&engine);
        Ok(Runtime { engine, pre, exports, config, _ticker: ticker })
    }

    /// The wasmtime engine (for pre-initialisation).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    fn store(&self, revocations: SharedRevocations) -> Store<HostState> {
        let limits =
            StoreLimitsBuilder::new().memory_size(self.config.memory_limit).instances(8).tables(16).memories(2).build();
        let state = HostState { limits, revocations, signatures: self.config.signatures.clone() };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        store
    }

    /// Ticks for one call: the timeout rounded up, plus one for the tick already under way, so a
    /// call always gets at least its whole timeout.
    fn deadline_ticks(&self) -> u64 {
        let ticks = self.config.call_timeout.as_millis().div_ceil(EpochTicker::TICK.as_millis()).saturating_add(1);
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    /// A fresh instance with `bundle`'s policy loaded: a worker to decide with.
    pub fn worker(&self, bundle: &PolicyBundle, revocations: SharedRevocations) -> Result<Worker, WorkerError> {
        let mut store = self.store(revocations);
        store.set_epoch_deadline(self.deadline_ticks().saturating_mul(20));
        let instance = self.pre.instance_pre().instantiate(&mut store).map_err(|e| Fault::Trap(e.into()))?;
        let authz = bindings_for(&mut store, &instance).map_err(Fault::Trap)?;
        let decide = instance.get_typed_func(&mut store, self.exports.decide).map_err(|e| Fault::Trap(e.into()))?;
        let files = files(bundle);
        let loaded = authz
            .portcullis_authz_authorizer()
            .call_load(&mut store, &bundle.text, &files)
            .map_err(|e| Fault::Trap(e.into()))?;
        let policy = loaded.map_err(|e| WorkerError::Policy(load_error(&e)))?;
        Ok(Worker { store, decide, policy, ticks: self.deadline_ticks(), request: RequestBuffer::default() })
    }

    /// A new instance of a pre-initialised component (see [`crate::preinit`]): its installed
    /// policy is ready in the memory image, so no load runs.
    pub fn fresh(&self, revocations: SharedRevocations) -> Result<FreshInstance, Fault> {
        let mut store = self.store(revocations);
        store.set_epoch_deadline(self.deadline_ticks());
        let instance = self.pre.instance_pre().instantiate(&mut store).map_err(|e| Fault::Trap(e.into()))?;
        let decide =
            instance.get_typed_func(&mut store, self.exports.decide_installed).map_err(|e| Fault::Trap(e.into()))?;
        Ok(FreshInstance { store, decide })
    }

    /// A fresh instance of a pre-initialised component deciding one request with its installed
    /// policy, then dropped: no state survives the request.
    pub fn decide_fresh(
        &self,
        request: &OwnedRequest,
        revocations: SharedRevocations,
        with_audit: bool,
    ) -> Result<(Decision, Option<String>), Fault> {
        self.fresh(revocations)?.decide(request, with_audit)
    }
}

/// A never-used instance of a pre-initialised component; deciding consumes it.
pub struct FreshInstance {
    store: Store<HostState>,
    decide: DecideInstalledFunc,
}

impl std::fmt::Debug for FreshInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshInstance").finish_non_exhaustive()
    }
}

impl FreshInstance {
    /// Decides one request with the installed policy.
    pub fn decide(mut self, request: &OwnedRequest, with_audit: bool) -> Result<(Decision, Option<String>), Fault> {
        // One request per instance: nothing to reuse, so the buffer is a fresh one.
        let lowered = RequestBuffer::default().fill(request);
        let (d,) = self.decide.call(&mut self.store, (lowered, with_audit)).map_err(|e| Fault::Trap(e.into()))?;
        d.into_core()
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
    let plan = AddressPlan::new(c, address_space_limit());
    if let Some(limit) = plan.limited_by {
        tracing::warn!(
            limit_mib = limit >> 20,
            slots = plan.slots,
            slot_mib = plan.slot_bytes >> 20,
            "address space is limited (ulimit -v): linear memories are bounds-checked and sized by the memory limit"
        );
        config.memory_reservation(plan.slot_bytes.saturating_sub(BOUNDED_GUARD));
        config.memory_guard_size(BOUNDED_GUARD);
        config.memory_reservation_for_growth(0);
    }
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(plan.slots);
    pool.total_core_instances(plan.slots.saturating_mul(8));
    // One linear memory per instance: the component has a single core module with memory.
    pool.total_memories(plan.slots);
    pool.total_tables(plan.slots.saturating_mul(8));
    pool.max_memories_per_component(1);
    pool.max_tables_per_component(8);
    pool.max_core_instances_per_component(16);
    pool.max_memory_size(c.memory_limit);
    pool.linear_memory_keep_resident(c.keep_resident);
    pool.table_keep_resident(c.keep_resident.min(64 << 10));
    // Kernels before 6.7 lack the ioctl: wasmtime then resets the kept bytes without it.
    pool.pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(config)
}

/// Address space a linear-memory slot takes by default on 64-bit hosts: wasmtime reserves 4 GiB
/// plus a 32 MiB guard so that no bounds check is needed. Virtual, not resident.
pub const UNBOUNDED_SLOT_BYTES: u64 = (4 << 30) + (32 << 20);
/// Guard after a bounds-checked memory.
const BOUNDED_GUARD: u64 = 2 << 20;

/// How the pool's slots fit the address space the process may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressPlan {
    /// Instance slots (each with one linear memory).
    pub slots: u32,
    /// Address space per memory slot.
    pub slot_bytes: u64,
    /// `Some(limit)` when the process's address-space limit forced bounds-checked memories.
    pub limited_by: Option<u64>,
}

impl AddressPlan {
    /// The default (guard-page) layout when it fits in half of `limit` (the rest is for the
    /// process itself: code, heaps, thread stacks, the compiler); otherwise memories sized by
    /// the memory limit with explicit bounds checks, and as many slots as fit.
    pub fn new(c: &RuntimeConfig, limit: Option<u64>) -> AddressPlan {
        let wanted = c.max_instances.max(1);
        let budget = limit.map(|l| l / 2);
        if budget.is_none_or(|b| u64::from(wanted).saturating_mul(UNBOUNDED_SLOT_BYTES) <= b) {
            return AddressPlan { slots: wanted, slot_bytes: UNBOUNDED_SLOT_BYTES, limited_by: None };
        }
        let page = 64u64 << 10;
        let memory = u64::try_from(c.memory_limit).unwrap_or(u64::MAX).div_ceil(page).saturating_mul(page);
        let slot_bytes = memory.saturating_add(BOUNDED_GUARD);
        let fit = budget.unwrap_or(u64::MAX) / slot_bytes.max(1);
        let slots = u32::try_from(fit).unwrap_or(u32::MAX).clamp(1, wanted);
        AddressPlan { slots, slot_bytes, limited_by: limit }
    }
}

/// The soft address-space limit (`ulimit -v`) of this process, when there is one.
pub fn address_space_limit() -> Option<u64> {
    // Linux reports it here; elsewhere (or unreadable) the limit is treated as absent.
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The bundle's referenced files, as the guest receives them.
pub(crate) fn files(bundle: &PolicyBundle) -> Vec<wit::PolicyFile> {
    bundle
        .files
        .iter()
        .map(|(path, contents)| wit::PolicyFile { path: path.clone(), contents: contents.clone() })
        .collect()
}

/// An instance holding a loaded policy. Not `Sync`: one per worker thread.
pub struct Worker {
    store: Store<HostState>,
    decide: DecideFunc,
    policy: ResourceAny,
    ticks: u64,
    request: RequestBuffer,
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
        let lowered = self.request.fill(request);
        let (d,) =
            self.decide.call(&mut self.store, (self.policy, lowered, with_audit)).map_err(|e| Fault::Trap(e.into()))?;
        d.into_core()
    }
}

/// A worker's request in WIT terms, refilled in place for every call: its strings keep their
/// capacity, so a steady stream of requests is lowered without a host allocation (wasmtime
/// lowers through the `Arc`, which a call holds only while it runs). Cloning into a fresh
/// [`wit::Request`] instead cost about a dozen allocations and frees per call.
struct RequestBuffer(Arc<wit::Request>);

impl Default for RequestBuffer {
    fn default() -> Self {
        RequestBuffer(Arc::new(wit::Request {
            method: String::new(),
            scheme: String::new(),
            host: String::new(),
            path: String::new(),
            query: String::new(),
            headers: Vec::new(),
            client_address: None,
            now: 0,
        }))
    }
}

impl RequestBuffer {
    /// A string buffer larger than this is given back rather than kept for the next request,
    /// so one huge request does not pin its size in every worker.
    const KEEP_BYTES: usize = 8 << 10;
    /// Likewise for the header list.
    const KEEP_HEADERS: usize = 128;

    /// `r` in the buffer, and a handle to lower it from.
    fn fill(&mut self, r: &OwnedRequest) -> Arc<wit::Request> {
        // Nothing holds the buffer between calls, so this does not copy; were it still shared,
        // `make_mut` would copy rather than write under a reader.
        let w = Arc::make_mut(&mut self.0);
        copy_into(&mut w.method, &r.method);
        copy_into(&mut w.scheme, &r.scheme);
        copy_into(&mut w.host, &r.host);
        copy_into(&mut w.path, &r.path);
        copy_into(&mut w.query, &r.query);
        if w.headers.capacity() > Self::KEEP_HEADERS && r.headers.len() <= Self::KEEP_HEADERS {
            w.headers = Vec::new();
        }
        w.headers.truncate(r.headers.len());
        for (i, (k, v)) in r.headers.iter().enumerate() {
            match w.headers.get_mut(i) {
                Some((wk, wv)) => {
                    copy_into(wk, k);
                    copy_into(wv, v);
                }
                None => w.headers.push((k.clone(), v.clone())),
            }
        }
        match r.client_ip {
            Some(ip) => {
                use std::fmt::Write as _;
                let a = w.client_address.get_or_insert_with(String::new);
                a.clear();
                let _ = write!(a, "{ip}");
            }
            None => w.client_address = None,
        }
        w.now = r.now;
        Arc::clone(&self.0)
    }
}

/// `dst = src`, reusing `dst`'s buffer unless it is oversized.
fn copy_into(dst: &mut String, src: &str) {
    if dst.capacity() > RequestBuffer::KEEP_BYTES && src.len() <= RequestBuffer::KEEP_BYTES {
        *dst = String::new();
    }
    dst.clear();
    dst.push_str(src);
}

/// `types.decision` as the host lifts it: strings go straight into the `Arc<str>`s the core's
/// [`Decision`] holds, so nothing is copied twice. Checked against the WIT when a worker is
/// created (a mismatch is a startup error, never a wrong field).
#[derive(ComponentType, Lift)]
#[component(record)]
struct DecisionOut {
    allow: bool,
    status: u16,
    reason: Box<str>,
    identity: Option<IdentityOut>,
    route: Option<Arc<str>>,
    rule: Option<Arc<str>>,
    #[component(name = "headers-to-set")]
    headers_to_set: Vec<(Arc<str>, String)>,
    #[component(name = "headers-to-remove")]
    headers_to_remove: Names,
    shadow: Option<ShadowOut>,
    audit: Option<String>,
    #[component(name = "response-headers")]
    response_headers: Vec<(Arc<str>, Arc<str>)>,
}

/// `types.identity`, lifted like [`DecisionOut`].
#[derive(ComponentType, Lift)]
#[component(record)]
struct IdentityOut {
    credential: wit::CredentialKind,
    subject: Option<Arc<str>>,
    issuer: Option<Arc<str>>,
    #[component(name = "key-id")]
    key_id: Option<Arc<str>>,
    #[component(name = "token-id")]
    token_id: Option<Arc<str>>,
    audience: Option<Arc<str>>,
    tenant: Option<Arc<str>>,
    email: Option<Arc<str>>,
    scopes: Names,
    roles: Names,
    groups: Names,
    #[component(name = "expires-at")]
    expires_at: Option<f64>,
}

/// `types.shadow`, lifted like [`DecisionOut`].
#[derive(ComponentType, Lift)]
#[component(record)]
struct ShadowOut {
    reason: Box<str>,
    route: Option<Arc<str>>,
    rule: Option<Arc<str>>,
}

impl DecisionOut {
    /// The guest's decision as a core [`Decision`], checked for consistency (fail closed).
    fn into_core(self) -> Result<(Decision, Option<String>), Fault> {
        let reason = Reason::from_code(&self.reason)
            .ok_or_else(|| Fault::Inconsistent(format!("unknown reason `{}`", self.reason)))?;
        if self.allow != (reason == Reason::Allowed) || self.status != reason.status() {
            return Err(Fault::Inconsistent(format!(
                "allow={} status={} reason={}",
                self.allow, self.status, self.reason
            )));
        }
        let identity = self.identity.map(|i| {
            let mut id = Identity::new(match i.credential {
                wit::CredentialKind::Jwt => CredentialKind::Jwt,
                wit::CredentialKind::ServiceToken => CredentialKind::ServiceToken,
                wit::CredentialKind::ApiKey => CredentialKind::ApiKey,
            });
            id.subject = i.subject;
            id.issuer = i.issuer;
            id.key_id = i.key_id;
            id.token_id = i.token_id;
            id.audience = i.audience;
            id.tenant = i.tenant;
            id.email = i.email;
            id.scopes = i.scopes;
            id.roles = i.roles;
            id.groups = i.groups;
            id.expires_at = i.expires_at;
            Arc::new(id)
        });
        let shadow = match self.shadow {
            None => None,
            Some(s) => Some(Box::new(Shadow {
                reason: Reason::from_code(&s.reason)
                    .ok_or_else(|| Fault::Inconsistent(format!("unknown shadow reason `{}`", s.reason)))?,
                route: s.route,
                rule: s.rule,
            })),
        };
        let mut out = Decision::deny(reason);
        out.identity = identity;
        out.route = self.route;
        out.rule = self.rule;
        out.headers_to_set = self.headers_to_set;
        out.headers_to_remove = (!self.headers_to_remove.is_empty()).then_some(self.headers_to_remove);
        out.shadow = shadow;
        // Headers go to the client as they are: a guest that names one no HTTP peer would
        // accept (or smuggles a line break) is faulty, and the check fails closed.
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if let Some((k, _)) = self.response_headers.iter().find(|(k, v)| {
            k.is_empty() || !k.bytes().all(token) || !v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        }) {
            return Err(Fault::Inconsistent(format!("response header `{}` is not a valid header", k.escape_debug())));
        }
        out.response_headers = self.response_headers;
        Ok((out, self.audit))
    }
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

#[cfg(test)]
mod tests {
    use super::{AddressPlan, RuntimeConfig, UNBOUNDED_SLOT_BYTES};

    #[test]
    fn the_pool_fits_the_address_space_it_may_use() {
        let c = RuntimeConfig { max_instances: 24, memory_limit: 128 << 20, ..RuntimeConfig::default() };
        let free = AddressPlan::new(&c, None);
        assert_eq!((free.slots, free.slot_bytes, free.limited_by), (24, UNBOUNDED_SLOT_BYTES, None));
        assert_eq!(AddressPlan::new(&c, Some(1 << 50)), free, "a generous limit changes nothing");
        let tight = AddressPlan::new(&c, Some(4_000_000 << 10));
        assert_eq!(tight.limited_by, Some(4_000_000 << 10));
        assert!(tight.slot_bytes < 256 << 20 && tight.slot_bytes >= 128 << 20, "{tight:?}");
        assert!(u64::from(tight.slots) * tight.slot_bytes <= 2_000_000 << 10, "{tight:?}");
        assert_eq!(tight.slots, 15, "{tight:?}");
        let tiny = AddressPlan::new(&c, Some(64 << 20));
        assert_eq!(tiny.slots, 1, "always at least one slot; instantiation then reports what fails");
    }

    use super::*;

    fn request(headers: &[(&str, &str)], client_ip: Option<&str>, path: &str) -> OwnedRequest {
        OwnedRequest {
            method: "GET".into(),
            scheme: "https".into(),
            host: "api.example.com".into(),
            path: path.into(),
            query: "a=1".into(),
            headers: headers.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
            client_ip: client_ip.map(|ip| ip.parse().expect("test address")),
            now: 1_700_000_000,
        }
    }

    /// What a buffer must hold for `r`: exactly its fields, nothing left from earlier requests.
    fn assert_holds(w: &wit::Request, r: &OwnedRequest) {
        assert_eq!(
            (&w.method, &w.scheme, &w.host, &w.path, &w.query, w.now),
            (&r.method, &r.scheme, &r.host, &r.path, &r.query, r.now)
        );
        assert_eq!(w.headers, r.headers);
        assert_eq!(w.client_address, r.client_ip.map(|ip| ip.to_string()));
    }

    #[test]
    fn a_refilled_request_buffer_holds_only_the_current_request() {
        let big = "x".repeat(RequestBuffer::KEEP_BYTES * 4);
        let many: Vec<(String, String)> =
            (0..RequestBuffer::KEEP_HEADERS * 2).map(|i| (format!("h{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let sequence = [
            request(
                &[("authorization", "Bearer a.b.c"), ("accept", "*/*"), ("x-api-key", "k")],
                Some("10.0.0.1"),
                "/a",
            ),
            request(&[("authorization", "Bearer d")], None, "/longer/path"),
            request(&[], Some("::1"), "/"),
            request(&[("cookie", &big)], Some("192.0.2.7"), &big),
            request(&many, None, "/b"),
            request(&[("authorization", "Bearer e"), ("accept", "text/plain")], Some("10.0.0.2"), "/c"),
        ];
        let mut buffer = RequestBuffer::default();
        for r in &sequence {
            let lowered = buffer.fill(r);
            assert_holds(&lowered, r);
            drop(lowered);
        }
        // The huge request and the long header list were not kept for the requests after them.
        let w = &buffer.0;
        assert!(w.path.capacity() <= RequestBuffer::KEEP_BYTES, "path kept {} bytes", w.path.capacity());
        assert!(w.headers.capacity() <= RequestBuffer::KEEP_HEADERS, "kept {} header slots", w.headers.capacity());
    }

    #[test]
    fn a_buffer_still_shared_is_copied_not_overwritten() {
        let mut buffer = RequestBuffer::default();
        let first = request(&[("authorization", "Bearer a")], None, "/first");
        let held = buffer.fill(&first);
        let second = request(&[], Some("10.0.0.9"), "/second");
        assert_holds(&buffer.fill(&second), &second);
        assert_holds(&held, &first);
    }
}
