//! The sidecar's decision service: policy generations, warm instances, faults, metrics, audit.
//!
//! A generation is one loaded policy with its instances. Reloading builds a complete new
//! generation (every instance loaded and checked) before swapping it in atomically, so a bad
//! policy never replaces a good one and no request waits for a load. In `warm` isolation each
//! check borrows a loaded instance from the generation's pool; in `fresh` isolation each check
//! instantiates the pre-initialised component (the policy already in its memory image) and drops
//! it afterwards, so no state survives between requests.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use arc_swap::ArcSwap;
use portcullis_core::{Decision, OwnedRequest, Reason};

use super::audit::AuditSink;
use super::metrics::{DecisionLabels, FaultLabels, Metrics};
use crate::policy_files::PolicyBundle;
use crate::runtime::{Fault, Runtime, RuntimeConfig, SharedRevocations, Worker, WorkerError};

/// How instances are used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Isolation {
    /// An instance per worker, reused across requests (fastest).
    Warm,
    /// A fresh instance per request, from a pre-initialised image (no state survives a request).
    Fresh,
}

/// Settings of the decision service.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Instances pre-warmed per generation (warm isolation).
    pub workers: usize,
    /// Warm or fresh.
    pub isolation: Isolation,
    /// Guest limits.
    pub runtime: RuntimeConfig,
}

enum Mode {
    Warm { pool: Mutex<Vec<Worker>> },
    Fresh { runtime: Box<Runtime> },
}

/// One loaded policy and its instances.
pub struct Generation {
    /// Increments with every successful load.
    pub id: u64,
    /// What was loaded.
    pub bundle: Arc<PolicyBundle>,
    /// The policy's request limits (the HTTP listener sizes its header cap from them).
    pub limits: portcullis_core::Limits,
    /// The same policy compiled natively: the host asks it questions the WIT contract does not
    /// carry (whether an identity is granted a scope of the host's own).
    pub policy: portcullis_core::Policy,
    mode: Mode,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Where the time of each decision comes from (the system clock, or a fixed one in tests).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock, in Unix seconds.
pub fn system_clock() -> Clock {
    Arc::new(crate::unix_now)
}

/// The decision service.
pub struct Authorizer {
    runtime: Runtime,
    current: ArcSwap<Generation>,
    revocations: SharedRevocations,
    metrics: Arc<Metrics>,
    audit: Option<AuditSink>,
    settings: Settings,
    next_id: AtomicU64,
    draining: AtomicBool,
    clock: Clock,
    /// Checks wait for this set's first load: until then every check is a 503.
    gate: Option<Arc<crate::revocation::LiveRevocations>>,
    /// Verified signatures, emptied when a new generation (new keys) comes in.
    signature_cache: Option<Arc<crate::signature_cache::SignatureCache>>,
    /// Key sets from identity providers, merged into every generation.
    keys: Option<Arc<crate::remote_keys::RemoteKeys>>,
    /// Held while a generation is built by [`Authorizer::refresh`], so a policy reload and a
    /// key update cannot each swap in a generation that lacks the other's change.
    refreshing: Mutex<()>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").field("generation", &self.current.load().id).finish_non_exhaustive()
    }
}

/// A policy that could not become a generation (its code is a load code or `runtime`).
pub type Rejected = crate::error::Error;

impl Authorizer {
    /// Compiles the component and loads the first generation. Fails if the policy does not load.
    pub fn new(
        bundle: PolicyBundle,
        settings: Settings,
        revocations: SharedRevocations,
        metrics: Arc<Metrics>,
        audit: Option<AuditSink>,
        clock: Clock,
    ) -> anyhow::Result<Authorizer> {
        let runtime = Runtime::embedded(settings.runtime.clone())?;
        let first = build(&runtime, &settings, &revocations, Arc::new(bundle), 1)
            .map_err(|r| anyhow::anyhow!("[{}] {r}", r.code()))?;
        metrics.policy_generation.set(1);
        metrics.policy_loaded_at.set(crate::unix_now());
        Ok(Authorizer {
            runtime,
            current: ArcSwap::from_pointee(first),
            revocations,
            metrics,
            audit,
            settings,
            next_id: AtomicU64::new(2),
            draining: AtomicBool::new(false),
            clock,
            gate: None,
            signature_cache: None,
            keys: None,
            refreshing: Mutex::new(()),
        })
    }

    /// Merges `keys`' sets into every generation built by [`Authorizer::refresh`]. The first
    /// generation's bundle should already carry them ([`crate::remote_keys::fetch_at_start`]).
    #[must_use]
    pub fn with_remote_keys(mut self, keys: Arc<crate::remote_keys::RemoteKeys>) -> Authorizer {
        self.keys = Some(keys);
        self
    }

    /// The key sets from identity providers, when the sidecar follows any.
    pub fn remote_keys(&self) -> Option<&Arc<crate::remote_keys::RemoteKeys>> {
        self.keys.as_ref()
    }

    /// Builds a generation from `files` (a policy read from disk; `None`: the one in force)
    /// with the key sets now held, and swaps it in, unless it is the generation in force and
    /// `forced` is false (`Ok(None)`). Blocking: call from a blocking context.
    pub fn refresh(&self, files: Option<PolicyBundle>, forced: bool) -> Result<Option<u64>, Rejected> {
        let _one_at_a_time = self.refreshing.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.generation();
        let base = files.unwrap_or_else(|| (*current.bundle).clone());
        let bundle = match &self.keys {
            Some(keys) => PolicyBundle { bundle: base.bundle.with_remote_keys(&keys.documents())?, path: base.path },
            None => base,
        };
        if !forced && *current.bundle == bundle {
            return Ok(None);
        }
        self.reload(bundle).map(Some)
    }

    /// Empties `cache` whenever a new generation is swapped in.
    #[must_use]
    pub fn with_signature_cache(mut self, cache: Arc<crate::signature_cache::SignatureCache>) -> Authorizer {
        self.signature_cache = Some(cache);
        self
    }

    /// Answers every check with 503 `revocation_stale` until `live` has loaded, whatever its
    /// stale mode: before the first load nothing is known to be revoked, so nothing may pass.
    #[must_use]
    pub fn gated_on(mut self, live: Arc<crate::revocation::LiveRevocations>) -> Authorizer {
        self.gate = Some(live);
        self
    }

    /// The generation in force.
    pub fn generation(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// The time of a decision starting now.
    pub fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Builds a generation from exactly `bundle` and swaps it in; the old one keeps serving
    /// until then, and keeps serving if this fails. Key sets from the network are in force only
    /// if `bundle` carries them: [`Authorizer::refresh`] merges the ones held. Blocking: call
    /// from a blocking context.
    pub fn reload(&self, bundle: PolicyBundle) -> Result<u64, Rejected> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        match build(&self.runtime, &self.settings, &self.revocations, Arc::new(bundle), id) {
            Ok(g) => {
                self.current.store(Arc::new(g));
                if let Some(cache) = &self.signature_cache {
                    cache.clear();
                }
                self.metrics.policy_generation.set(i64::try_from(id).unwrap_or(i64::MAX));
                self.metrics.policy_loaded_at.set(crate::unix_now());
                self.metrics.reloads.inc();
                Ok(id)
            }
            Err(r) => {
                self.metrics.reload_failures.inc();
                Err(r)
            }
        }
    }

    /// Queues an event for the audit log, when there is one.
    pub fn audit(&self, line: String) {
        if let Some(sink) = &self.audit {
            sink.send(line);
        }
    }

    /// Marks the service as draining (`/readyz` turns 503); checks are still answered.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Ready: a generation is loaded and the service is not draining.
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::SeqCst)
    }

    /// Decides one check. Never fails: any fault is a 503 `internal_error`, counted and logged.
    pub fn check(&self, req: &OwnedRequest, api: &'static str) -> Decision {
        self.check_pinned(req, api).0
    }

    /// [`Authorizer::check`], also returning the generation that decided, for a caller that asks
    /// the same policy a follow-up question (the admin API's scope grants) across a reload.
    pub fn check_pinned(&self, req: &OwnedRequest, api: &'static str) -> (Decision, Arc<Generation>) {
        let started = Instant::now();
        let generation = self.current.load_full();
        if self.gate.as_ref().is_some_and(|live| !live.synced()) {
            let decision = Decision::deny(Reason::RevocationStale);
            self.metrics.decisions.get_or_create(&DecisionLabels { reason: decision.reason.code(), api }).inc();
            return (decision, generation);
        }
        let with_audit = self.audit.is_some();
        let outcome = match &generation.mode {
            Mode::Warm { pool } => self.check_warm(&generation, pool, req, with_audit),
            Mode::Fresh { runtime } => {
                runtime.decide_fresh(req, Arc::clone(&self.revocations), with_audit).map_err(|f| ("trap", f))
            }
        };
        let decision = match outcome {
            Ok((d, audit)) => {
                if let (Some(sink), Some(event)) = (&self.audit, audit) {
                    sink.send(event);
                }
                d
            }
            Err((kind, fault)) => {
                let kind = match fault {
                    Fault::Inconsistent(_) => "inconsistent",
                    Fault::Trap(_) => kind,
                };
                self.metrics.internal_errors.get_or_create(&FaultLabels { kind }).inc();
                tracing::error!(generation = generation.id, kind, error = %fault, "check failed; denying with internal_error");
                if let Some(sink) = &self.audit {
                    sink.send(fault_event(req));
                }
                Decision::deny(Reason::InternalError)
            }
        };
        self.metrics.decisions.get_or_create(&DecisionLabels { reason: decision.reason.code(), api }).inc();
        self.metrics.latency.observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            reason = decision.reason.code(),
            route = decision.route.as_deref(),
            rule = decision.rule.as_deref(),
            subject = decision.identity.as_ref().and_then(|i| i.subject.as_deref()),
            "decision"
        );
        (decision, generation)
    }

    #[allow(clippy::type_complexity)]
    fn check_warm(
        &self,
        generation: &Generation,
        pool: &Mutex<Vec<Worker>>,
        req: &OwnedRequest,
        with_audit: bool,
    ) -> Result<(Decision, Option<String>), (&'static str, Fault)> {
        let pooled = pool.lock().unwrap_or_else(PoisonError::into_inner).pop();
        let mut worker = match pooled {
            Some(w) => w,
            None => {
                self.metrics.instances_created.inc();
                match self.runtime.worker(&generation.bundle, Arc::clone(&self.revocations)) {
                    Ok(w) => w,
                    Err(WorkerError::Fault(f)) => return Err(("instantiate", f)),
                    Err(e @ WorkerError::Policy { .. }) => {
                        return Err((
                            "instantiate",
                            Fault::Inconsistent(format!("a loaded policy failed to load again: {e}")),
                        ));
                    }
                }
            }
        };
        let result = worker.decide(req, with_audit);
        if result.is_ok() {
            // A worker that faulted is dropped: its instance may be in any state.
            let mut idle = pool.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < self.settings.workers.saturating_mul(2) {
                idle.push(worker);
            }
        }
        result.map_err(|f| ("trap", f))
    }
}

/// Validates `bundle` natively (precise errors), then builds every instance of a generation.
fn build(
    runtime: &Runtime,
    settings: &Settings,
    revocations: &SharedRevocations,
    bundle: Arc<PolicyBundle>,
    id: u64,
) -> Result<Generation, Rejected> {
    let policy = bundle.compile()?;
    let limits = policy.limits();
    let mode = match settings.isolation {
        Isolation::Warm => {
            let mut workers = Vec::with_capacity(settings.workers);
            for _ in 0..settings.workers.max(1) {
                let w = runtime.worker(&bundle, Arc::clone(revocations))?;
                workers.push(w);
            }
            Mode::Warm { pool: Mutex::new(workers) }
        }
        Isolation::Fresh => {
            let snapshot = crate::preinit::preinitialize(&bundle).map_err(|e| Rejected::new("runtime", e))?;
            let runtime = Runtime::new(&snapshot, settings.runtime.clone()).map_err(|e| Rejected::new("runtime", e))?;
            Mode::Fresh { runtime: Box::new(runtime) }
        }
    };
    Ok(Generation { id, bundle, limits, policy, mode })
}

/// The audit record of a check that faulted (the guest produced none).
fn fault_event(req: &OwnedRequest) -> String {
    serde_json::json!({
        "time": req.now,
        "decision": "deny",
        "status": 503,
        "reason": "internal_error",
        "actor": "anonymous",
        "method": req.method,
        "host": req.host,
        "path": req.path,
    })
    .to_string()
}
