//! Dynamic revocations: the store (Postgres, or a local file by default), the sidecar's live
//! in-memory set, and how the two are kept in step.
//!
//! Shape:
//! - [`Record`] is one revocation as stored and listed; [`Change`] is one numbered step of the
//!   store's change log (`revoke` or `unrevoke`), numbered by a gapless, commit-ordered cursor.
//! - [`LiveRevocations`] is the set every decision consults (through the WIT import). A follower
//!   ([`pg::follow`] or [`file::watch`]) loads a snapshot, then applies changes in cursor order,
//!   and confirms freshness; [`monitor`] turns "not confirmed for too long" into a metric, a log
//!   line and, when configured, `unavailable` answers (the guest's `revocation_stale`).
//! - [`Store`] writes and lists revocations for the CLI and the admin API.
//!
//! No change is ever lost: the cursor only moves over contiguous change numbers, a gap (pruned
//! history) forces a fresh snapshot, and a dropped connection resumes from the cursor.

pub mod file;
pub mod pg;
mod pg_tls;

pub use portcullis_core::revocation_log::{Change, Feed, FeedEntry, Invalid, MAX_ID_BYTES, MAX_TEXT_BYTES, Op, Record};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use portcullis_adapter::revocation::{Confirmations, Mirror, Replica, answer};
use portcullis_core::{RevocationKind, RevocationQuery, RevocationSet, RevocationStatus, Revocations};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use portcullis_adapter::revocation::{Refused, StaleMode};

/// Prometheus metrics of the live set.
#[derive(Clone, Debug, Default)]
pub struct RevocationMetrics {
    /// Entries in the set.
    pub entries: Gauge,
    /// Last change applied.
    pub cursor: Gauge,
    /// Changes announced by the store but not yet applied.
    pub cursor_lag: Gauge,
    /// Seconds since the set was last confirmed fresh.
    pub last_sync_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// 1 while past the staleness bound.
    pub stale: Gauge,
    /// Connections to the store lost and re-established.
    pub reconnects: Counter,
    /// Full snapshots loaded.
    pub snapshots: Counter,
    /// Failed sync attempts (query errors, unreadable file).
    pub sync_errors: Counter,
}

impl RevocationMetrics {
    /// Adds these metrics to a registry (prefixed `portcullis_revocations_`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("revocations");
        r.register("entries", "Entries in the in-memory revocation set", self.entries.clone());
        r.register("cursor", "Last change-log position applied", self.cursor.clone());
        r.register("cursor_lag", "Changes announced by the store and not yet applied", self.cursor_lag.clone());
        r.register(
            "last_sync_age_seconds",
            "Seconds since the set was last confirmed fresh",
            self.last_sync_age.clone(),
        );
        r.register("stale", "1 while the set is past its staleness bound", self.stale.clone());
        r.register("reconnects", "Store connections lost and re-established", self.reconnects.clone());
        r.register("snapshots", "Full snapshots loaded", self.snapshots.clone());
        r.register("sync_errors", "Failed sync attempts", self.sync_errors.clone());
    }
}

/// How many recent changes the feed can replay; older cursors get a snapshot.
const FEED_HISTORY: usize = 65_536;

/// The request-path index: 64-bit keyed hashes of `(kind, id)`, so a lookup touches one table
/// slot and never dereferences a stored string (at a million entries, that second cache miss
/// doubled the cost of a hit). A collision can only make a lookup answer "revoked" for an id
/// that is not: with a per-process random key, 10^6 entries and 64-bit hashes, about one
/// lookup in 10^13, in the fail-safe direction; a revoked id is never missed.
struct HotIndex {
    seed: foldhash::quality::RandomState,
    ids: std::collections::HashSet<u64, foldhash::fast::FixedState>,
    subjects: std::collections::HashMap<u64, i64, foldhash::fast::FixedState>,
}

impl Mirror for HotIndex {
    fn of(set: &RevocationSet) -> HotIndex {
        let mut h = HotIndex {
            seed: foldhash::quality::RandomState::default(),
            ids: Default::default(),
            subjects: Default::default(),
        };
        h.ids.reserve(set.len());
        for (kind, id, before) in set.entries() {
            h.insert(kind, id, before);
        }
        h
    }

    fn insert(&mut self, kind: RevocationKind, id: &str, before: i64) {
        let k = self.key(kind, id);
        if kind == RevocationKind::Subject {
            self.subjects.insert(k, before);
        } else {
            self.ids.insert(k);
        }
    }

    fn remove(&mut self, kind: RevocationKind, id: &str) {
        let k = self.key(kind, id);
        if kind == RevocationKind::Subject {
            self.subjects.remove(&k);
        } else {
            self.ids.remove(&k);
        }
    }

    fn revoked(&self, _: &RevocationSet, q: RevocationQuery<'_>) -> bool {
        match q {
            RevocationQuery::TokenId(id) => self.ids.contains(&self.key(RevocationKind::TokenId, id)),
            RevocationQuery::ServiceTokenId(id) => self.ids.contains(&self.key(RevocationKind::ServiceTokenId, id)),
            RevocationQuery::ApiKey(id) => self.ids.contains(&self.key(RevocationKind::ApiKey, id)),
            RevocationQuery::Subject { subject, issued_at } => self
                .subjects
                .get(&self.key(RevocationKind::Subject, subject))
                .is_some_and(|&before| portcullis_core::subject_revoked(before, issued_at)),
        }
    }
}

impl HotIndex {
    fn key(&self, kind: RevocationKind, id: &str) -> u64 {
        use std::hash::BuildHasher as _;
        self.seed.hash_one((kind as u8, id))
    }
}

/// The sidecar's revocation set: read on every decision, written by one follower. The
/// replica's rules (what a snapshot may replace, contiguous changes, the feed) are the
/// adapter kit's; this adds the locking, the lock-free flags the request path reads, the
/// monotonic clock and the metrics.
pub struct LiveRevocations {
    inner: RwLock<Replica<HotIndex>>,
    mode: StaleMode,
    stale: AtomicBool,
    /// Set once the first snapshot is in place.
    loaded: AtomicBool,
    /// Highest change number the store has announced (NOTIFY payloads).
    announced: AtomicU64,
    confirmations: Mutex<Confirmations>,
    started: Instant,
    /// The metrics.
    pub metrics: RevocationMetrics,
}

impl std::fmt::Debug for LiveRevocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRevocations").field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl Revocations for LiveRevocations {
    fn status(&self, query: RevocationQuery<'_>) -> RevocationStatus {
        let revoked = self.read().revoked(query);
        answer(revoked, self.synced(), self.stale.load(Ordering::Relaxed), self.mode)
    }
}

impl LiveRevocations {
    /// An empty, not yet synchronised set.
    pub fn new(mode: StaleMode) -> LiveRevocations {
        LiveRevocations {
            inner: RwLock::new(Replica::new(FEED_HISTORY)),
            mode,
            // Nothing is known before the first snapshot.
            stale: AtomicBool::new(true),
            loaded: AtomicBool::new(false),
            announced: AtomicU64::new(0),
            confirmations: Mutex::new(Confirmations::new(Duration::ZERO)),
            started: Instant::now(),
            metrics: RevocationMetrics::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Replica<HotIndex>> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Replica<HotIndex>> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn since_start(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
    }

    /// Replaces the whole set with a snapshot at `cursor` of the log `source`, unless the
    /// snapshot cannot be trusted to continue the set in force (see [`Refused`]): then nothing
    /// changes and the caller must not confirm the set. The check and the index build run
    /// outside the write lock, so decisions never wait on them.
    pub fn replace(&self, set: RevocationSet, source: &str, cursor: i64) -> Result<(), Refused> {
        let entries = set.len();
        self.read().check(&set, source, cursor)?;
        let hot = HotIndex::of(&set);
        let old = self.write().install(set, hot, source, cursor);
        self.loaded.store(true, Ordering::Release);
        // A million-entry set is freed outside the lock.
        drop(old);
        self.metrics.snapshots.inc();
        self.after_apply(entries, cursor);
        Ok(())
    }

    /// Applies changes that continue the log contiguously from the cursor. Returns false (and
    /// applies nothing) when they do not: the caller must take a snapshot.
    pub fn apply(&self, changes: &[Change]) -> bool {
        let (entries, cursor) = {
            let mut g = self.write();
            if !g.apply(changes) {
                return false;
            }
            (g.set().len(), g.cursor().unwrap_or(0))
        };
        self.after_apply(entries, cursor);
        true
    }

    fn after_apply(&self, entries: usize, cursor: i64) {
        self.metrics.entries.set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.metrics.cursor.set(cursor);
        self.update_lag(cursor);
    }

    fn update_lag(&self, cursor: i64) {
        let announced = i64::try_from(self.announced.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        self.metrics.cursor_lag.set(announced.saturating_sub(cursor).max(0));
    }

    /// The store announced change `seq` (it may not be applied yet).
    pub fn announce(&self, seq: i64) {
        self.announced.fetch_max(u64::try_from(seq).unwrap_or(0), Ordering::Relaxed);
        if let Some(c) = self.cursor() {
            self.update_lag(c);
        }
    }

    fn confirmations(&self) -> std::sync::MutexGuard<'_, Confirmations> {
        self.confirmations.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that everything committed before `at` has been applied: the set is fresh now
    /// (the monitor turns it stale again once `at` is older than the bound).
    pub fn confirm(&self, at: Instant) {
        self.confirmations().confirm(self.since_start(at));
        if self.synced() && self.stale.swap(false, Ordering::Relaxed) {
            self.metrics.stale.set(0);
            tracing::info!("revocations are fresh");
        }
    }

    /// Time since the last confirmation (since start when never confirmed).
    pub fn sync_age(&self, now: Instant) -> Duration {
        self.confirmations().age(self.since_start(now))
    }

    /// Whether a snapshot has ever been loaded (read on every check, so without the lock).
    pub fn synced(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The change log the cursor belongs to (empty before the first snapshot).
    pub fn source(&self) -> String {
        self.read().source().to_owned()
    }

    /// The last change applied.
    pub fn cursor(&self) -> Option<i64> {
        self.read().cursor()
    }

    /// Entries in the set.
    pub fn len(&self) -> usize {
        self.read().set().len()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the set is past its staleness bound.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }

    /// Re-evaluates staleness at `now`; returns the new state when it changed.
    pub fn check_staleness(&self, now: Instant, bound: Duration) -> Option<bool> {
        let now = self.since_start(now);
        let (age, stale) = {
            let c = self.confirmations();
            (c.age(now), c.stale(now, bound, self.synced()))
        };
        self.metrics.last_sync_age.set(age.as_secs_f64());
        self.metrics.stale.set(i64::from(stale));
        (self.stale.swap(stale, Ordering::Relaxed) != stale).then_some(stale)
    }

    /// The feed: changes after `since` in the log `source`, or a snapshot when they cannot be
    /// replayed. `None` before the first sync.
    pub fn feed(&self, since: Option<(&str, i64)>) -> Option<Feed> {
        let fresh = !self.is_stale();
        self.read().feed(since, fresh)
    }
}

/// Builds a set from records.
pub fn set_of<'a>(records: impl IntoIterator<Item = &'a Record>) -> RevocationSet {
    let mut set = RevocationSet::default();
    for r in records {
        set.insert(r.kind, &r.id, r.before());
    }
    set
}

/// Staleness settings.
#[derive(Clone, Copy, Debug)]
pub struct Freshness {
    /// Longest time without confirmation before the set counts as stale.
    pub stale_after: Duration,
    /// What stale means for decisions.
    pub mode: StaleMode,
}

/// Re-evaluates staleness every `tick` until shutdown, logging each transition.
pub async fn monitor(live: Arc<LiveRevocations>, bound: Duration, mode: StaleMode, mut stop: watch::Receiver<bool>) {
    let tick = (bound / 4).clamp(Duration::from_millis(20), Duration::from_millis(250));
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        // `confirm` reports the way back to fresh.
        if live.check_staleness(Instant::now(), bound) == Some(true) {
            tracing::warn!(
                age_ms = u64::try_from(live.sync_age(Instant::now()).as_millis()).unwrap_or(u64::MAX),
                bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
                ?mode,
                "revocations are stale: not confirmed fresh within the bound"
            );
        }
    }
}

/// Where revocations are kept.
#[derive(Clone, Debug)]
pub enum Store {
    /// A local JSON Lines file (the embedded default).
    File(file::FileStore),
    /// Postgres.
    Postgres(pg::PgStore),
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The request was not acceptable.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// The store could not be reached or refused (never includes credentials).
    #[error("{0}")]
    Unavailable(String),
}

impl StoreError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Invalid(_) => "revocation_invalid",
            StoreError::Unavailable(_) => "store_unavailable",
        }
    }
}

/// Filters for listing.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this kind.
    pub kind: Option<RevocationKind>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// At most this many (newest first).
    pub limit: Option<usize>,
}

impl ListFilter {
    fn keeps(&self, r: &Record) -> bool {
        self.kind.is_none_or(|k| k == r.kind) && self.tenant.as_ref().is_none_or(|t| r.tenant.as_ref() == Some(t))
    }
}

impl Store {
    /// Records a revocation. Returns false when it changed nothing (already revoked; for a
    /// subject, already revoked up to a later cut-off).
    pub async fn revoke(&self, record: &Record) -> Result<bool, StoreError> {
        record.validate()?;
        match self {
            Store::File(f) => f.revoke(record).await,
            Store::Postgres(p) => p.revoke(record).await,
        }
    }

    /// Deletes a revocation. Returns false when there was none.
    pub async fn unrevoke(&self, kind: RevocationKind, id: &str) -> Result<bool, StoreError> {
        match self {
            Store::File(f) => f.unrevoke(kind, id).await,
            Store::Postgres(p) => p.unrevoke(kind, id).await,
        }
    }

    /// Lists revocations, newest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Record>, StoreError> {
        match self {
            Store::File(f) => f.list(filter).await,
            Store::Postgres(p) => p.list(filter).await,
        }
    }

    /// Deletes entries whose `expires_at` is before `now`; returns how many.
    pub async fn prune(&self, now: i64) -> Result<u64, StoreError> {
        match self {
            Store::File(f) => f.prune(now).await,
            Store::Postgres(p) => p.prune(now).await,
        }
    }

    /// Human-readable description (no credentials).
    pub fn describe(&self) -> String {
        match self {
            Store::File(f) => format!("file {}", f.path().display()),
            Store::Postgres(p) => format!("postgres {}", p.describe()),
        }
    }
}

/// Runs the follower for `store` until shutdown: the file watcher or the Postgres follower.
pub async fn follow(store: Store, live: Arc<LiveRevocations>, options: FollowOptions, stop: watch::Receiver<bool>) {
    match store {
        Store::File(f) => file::watch(f, live, options.poll, stop).await,
        Store::Postgres(p) => pg::follow(p, live, options, stop).await,
    }
}

/// How a follower paces itself.
#[derive(Clone, Copy, Debug)]
pub struct FollowOptions {
    /// Postgres: how often a catch-up query confirms freshness without a notification.
    /// File: how often the file is checked for changes.
    pub poll: Duration,
    /// Longest wait for one query before the connection is considered lost.
    pub query_timeout: Duration,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions { poll: Duration::from_millis(1000), query_timeout: Duration::from_secs(5) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: i64, op: Op, id: &str) -> Change {
        Change { seq, op, kind: RevocationKind::TokenId, id: id.into(), issued_before: None }
    }

    #[test]
    fn changes_apply_only_contiguously() {
        let live = LiveRevocations::new(StaleMode::Serve);
        assert!(!live.apply(&[change(1, Op::Revoke, "a")]), "no snapshot yet");
        live.replace(RevocationSet::default(), "log", 0).unwrap();
        assert!(live.apply(&[change(1, Op::Revoke, "a"), change(2, Op::Revoke, "b")]));
        assert!(!live.apply(&[change(4, Op::Revoke, "c")]), "3 is missing");
        assert_eq!(live.status(RevocationQuery::TokenId("c")), RevocationStatus::Active);
        assert!(live.apply(&[change(3, Op::Unrevoke, "a")]));
        assert_eq!(live.status(RevocationQuery::TokenId("a")), RevocationStatus::Active);
        assert_eq!(live.status(RevocationQuery::TokenId("b")), RevocationStatus::Revoked);
        assert_eq!(live.cursor(), Some(3));
        assert_eq!(live.metrics.entries.get(), 1);
    }

    #[test]
    fn fail_closed_answers_unavailable_only_when_stale_and_not_revoked() {
        let live = LiveRevocations::new(StaleMode::FailClosed);
        assert_eq!(live.status(RevocationQuery::TokenId("x")), RevocationStatus::Unavailable, "never synced");
        let mut set = RevocationSet::default();
        set.revoke_token_id("r");
        live.replace(set, "log", 5).unwrap();
        let t0 = Instant::now();
        live.confirm(t0);
        assert!(!live.is_stale(), "a confirmation makes the set fresh at once");
        assert_eq!(live.check_staleness(t0, Duration::from_secs(1)), None);
        assert_eq!(live.status(RevocationQuery::TokenId("x")), RevocationStatus::Active);
        assert_eq!(live.check_staleness(t0 + Duration::from_secs(2), Duration::from_secs(1)), Some(true));
        assert_eq!(live.status(RevocationQuery::TokenId("x")), RevocationStatus::Unavailable);
        assert_eq!(live.status(RevocationQuery::TokenId("r")), RevocationStatus::Revoked);
        assert_eq!(live.metrics.stale.get(), 1);

        let serving = LiveRevocations::new(StaleMode::Serve);
        serving.replace(RevocationSet::default(), "log", 0).unwrap();
        serving.check_staleness(Instant::now() + Duration::from_secs(60), Duration::from_secs(1));
        assert!(serving.is_stale());
        assert_eq!(serving.status(RevocationQuery::TokenId("x")), RevocationStatus::Active, "serve mode");
    }

    #[test]
    fn nothing_is_active_before_the_first_load_in_either_mode() {
        for mode in [StaleMode::Serve, StaleMode::FailClosed] {
            let live = LiveRevocations::new(mode);
            assert_eq!(live.status(RevocationQuery::TokenId("x")), RevocationStatus::Unavailable, "{mode:?}");
            let q = RevocationQuery::Subject { subject: "s", issued_at: Some(1.0) };
            assert_eq!(live.status(q), RevocationStatus::Unavailable, "{mode:?}");
            live.replace(RevocationSet::default(), "log", 0).unwrap();
            live.confirm(Instant::now());
            assert_eq!(live.status(RevocationQuery::TokenId("x")), RevocationStatus::Active, "{mode:?}");
        }
    }

    #[test]
    fn a_refused_snapshot_changes_nothing_and_counts_nothing() {
        // The rules themselves are the adapter's (tested there); this is the locking around them.
        let live = LiveRevocations::new(StaleMode::FailClosed);
        let mut held = RevocationSet::default();
        held.revoke_token_id("r");
        live.replace(held, "log", 10).unwrap();
        let e = live.replace(RevocationSet::default(), "other-log", 20).unwrap_err();
        assert!(e.0.contains("no revocations while 1 are in force"), "{e}");
        assert_eq!(live.status(RevocationQuery::TokenId("r")), RevocationStatus::Revoked);
        assert_eq!((live.cursor(), live.source().as_str(), live.metrics.snapshots.get()), (Some(10), "log", 1));
        assert!(live.feed(Some(("log", 10))).unwrap().changes.is_empty());
    }
}
