//! Prometheus metrics for the sidecar.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The reason code.
    pub reason: &'static str,
    /// `grpc` or `http`.
    pub api: &'static str,
}

/// Labels of an internal error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// `trap`, `inconsistent` or `instantiate`.
    pub kind: &'static str,
}

/// Every metric the sidecar exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Decisions by reason.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Time to decide (seconds), from request conversion to response conversion.
    pub latency: Histogram,
    /// The generation of the policy in force (increments on every successful reload).
    pub policy_generation: Gauge,
    /// Unix time the policy in force was loaded.
    pub policy_loaded_at: Gauge,
    /// Successful reloads.
    pub reloads: Counter,
    /// Rejected reloads (the previous policy stayed in force).
    pub reload_failures: Counter,
    /// Faults turned into 503 `internal_error`.
    pub internal_errors: Family<FaultLabels, Counter>,
    /// Instances created outside pre-warming (pool empty).
    pub instances_created: Counter,
    /// Audit events dropped because the writer could not keep up.
    pub audit_dropped: Counter,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register("decisions", "Decisions by reason code", decisions.clone());
        // 2 µs to ~0.5 s.
        let latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(2e-6, 2.0, 18));
        registry.register("decision_duration_seconds", "Time to decide one check", latency.clone());
        let policy_generation = Gauge::default();
        registry.register("policy_generation", "Generation of the policy in force", policy_generation.clone());
        let policy_loaded_at = Gauge::default();
        registry.register(
            "policy_loaded_timestamp_seconds",
            "When the policy in force was loaded",
            policy_loaded_at.clone(),
        );
        let reloads = Counter::default();
        registry.register("policy_reloads", "Successful policy reloads", reloads.clone());
        let reload_failures = Counter::default();
        registry.register(
            "policy_reload_failures",
            "Rejected policy reloads (old policy kept)",
            reload_failures.clone(),
        );
        let internal_errors = Family::<FaultLabels, Counter>::default();
        registry.register("internal_errors", "Faults answered with 503 internal_error", internal_errors.clone());
        let instances_created = Counter::default();
        registry.register(
            "instances_created",
            "Instances created because the warm pool was empty",
            instances_created.clone(),
        );
        let audit_dropped = Counter::default();
        registry.register("audit_events_dropped", "Audit events dropped (writer too slow)", audit_dropped.clone());
        Metrics {
            registry,
            decisions,
            latency,
            policy_generation,
            policy_loaded_at,
            reloads,
            reload_failures,
            internal_errors,
            instances_created,
            audit_dropped,
        }
    }

    /// Registers more metrics (the revocation subsystem's).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
