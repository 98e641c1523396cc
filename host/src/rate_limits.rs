//! The sidecar's rate-limit counter: the adapter kit's [`RateTable`] on a monotonic clock,
//! shared by every worker and every instance (warm or fresh), answering the guest's
//! `rate-limits` import. Limits are therefore per sidecar process: a fleet of N sidecars admits
//! up to N times a limit (docs/rate-limits.md).

use std::sync::Arc;
use std::time::Instant;

use portcullis_adapter::rate::RateTable;
use portcullis_core::rate::{RateBucket, RateCount};
use portcullis_core::{RevocationQuery, RevocationStatus, Revocations, SignatureCheck, SignatureVerdict, TokenCache};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// Buckets the sidecar keeps by default (about 4 MiB).
pub const DEFAULT_BUCKETS: usize = 1 << 18;

/// The buckets and their clock.
#[derive(Debug)]
pub struct Counter {
    table: RateTable,
    epoch: Instant,
}

impl Counter {
    /// A counter of at least `buckets` buckets, its hash seeded with fresh randomness (so
    /// clients cannot aim keys at one another's slots).
    pub fn new(buckets: usize) -> Counter {
        let mut seed = [0u8; 8];
        // Without OS randomness the seed is fixed: buckets still count exactly, only
        // eviction becomes predictable.
        let _ = getrandom::fill(&mut seed);
        Counter { table: RateTable::new(buckets, u64::from_le_bytes(seed)), epoch: Instant::now() }
    }

    /// Spends one request from a bucket.
    pub fn take(&self, bucket: &RateBucket<'_>) -> RateCount {
        // Starts at one second so a bucket's stored time 0 always means "full".
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX).saturating_add(1_000_000_000);
        RateCount::Counted(self.table.take(bucket.key, bucket.params, now))
    }

    /// Adds `portcullis_rate_limit_buckets` and `portcullis_rate_limit_evictions_total`.
    pub fn register(self: &Arc<Self>, registry: &mut Registry) {
        registry.register_collector(Box::new(CounterMetrics(Arc::clone(self))));
    }
}

#[derive(Debug)]
struct CounterMetrics(Arc<Counter>);

impl Collector for CounterMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let t = &self.0.table;
        let capacity = ConstGauge::new(i64::try_from(t.capacity()).unwrap_or(i64::MAX));
        let m = encoder.encode_descriptor(
            "rate_limit_buckets",
            "Rate-limit buckets the sidecar can hold at once",
            None,
            capacity.metric_type(),
        )?;
        capacity.encode(m)?;
        let evictions = ConstCounter::new(t.evictions());
        let m = encoder.encode_descriptor(
            "rate_limit_evictions",
            "Rate-limit buckets dropped before they had refilled (raise --rate-limit-buckets)",
            None,
            evictions.metric_type(),
        )?;
        evictions.encode(m)
    }
}

/// A host's revocations with the counter beside them: every capability delegates to `inner`
/// except rate limits.
pub struct Counted {
    inner: Arc<dyn Revocations + Send + Sync>,
    counter: Arc<Counter>,
}

impl std::fmt::Debug for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").field("counter", &self.counter).finish_non_exhaustive()
    }
}

impl Counted {
    /// `inner`, counting with `counter`.
    pub fn new(inner: Arc<dyn Revocations + Send + Sync>, counter: Arc<Counter>) -> Counted {
        Counted { inner, counter }
    }
}

impl Revocations for Counted {
    fn status(&self, query: RevocationQuery<'_>) -> RevocationStatus {
        self.inner.status(query)
    }
    fn verify_signature(&self, check: &SignatureCheck<'_>) -> SignatureVerdict {
        self.inner.verify_signature(check)
    }
    fn signature_checked(&self, check: &SignatureCheck<'_>, valid: bool) {
        self.inner.signature_checked(check, valid);
    }
    fn rate_limit(&self, bucket: &RateBucket<'_>) -> RateCount {
        self.counter.take(bucket)
    }
    fn verified_tokens(&self) -> Option<&dyn TokenCache> {
        self.inner.verified_tokens()
    }
}

static LOCAL: std::sync::LazyLock<Arc<Counted>> = std::sync::LazyLock::new(|| {
    Arc::new(Counted::new(Arc::new(portcullis_core::NoRevocations), Arc::new(Counter::new(1 << 12))))
});

/// No revocations and a counter of this process's own: the CLI's `check` (a batch counts
/// across its lines, as one sidecar would) and `explain`.
pub fn local() -> Arc<Counted> {
    Arc::clone(&LOCAL)
}
