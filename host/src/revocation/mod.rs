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

pub use portcullis_core::revocation_log::{Change, Feed, FeedEntry, Invalid, MAX_ID_BYTES, MAX_TEXT_BYTES, Op, Record};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use portcullis_core::{RevocationKind, RevocationQuery, RevocationSet, RevocationStatus, Revocations};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// A snapshot was not applied: trusting it could un-revoke credentials. The set in force
/// stays, unconfirmed, so the staleness bound applies until the store is sound again (or the
/// sidecar restarts, accepting whatever the store then holds).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("snapshot refused: {0}")]
pub struct Refused(pub String);

/// What the sidecar does when its set has not been confirmed fresh within the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StaleMode {
    /// Keep answering from the set it has, with a metric and a log line.
    Serve,
    /// Deny revocable credentials with `revocation_stale` (503) until fresh again.
    FailClosed,
}

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

impl HotIndex {
    fn new() -> HotIndex {
        HotIndex {
            seed: foldhash::quality::RandomState::default(),
            ids: Default::default(),
            subjects: Default::default(),
        }
    }

    fn key(&self, kind: RevocationKind, id: &str) -> u64 {
        use std::hash::BuildHasher as _;
        self.seed.hash_one((kind as u8, id))
    }

    fn of(set: &RevocationSet) -> HotIndex {
        let mut h = HotIndex::new();
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

    fn revoked(&self, q: RevocationQuery<'_>) -> bool {
        match q {
            RevocationQuery::TokenId(id) => self.ids.contains(&self.key(RevocationKind::TokenId, id)),
            RevocationQuery::ServiceTokenId(id) => self.ids.contains(&self.key(RevocationKind::ServiceTokenId, id)),
            RevocationQuery::ApiKey(id) => self.ids.contains(&self.key(RevocationKind::ApiKey, id)),
            RevocationQuery::Subject { subject, issued_at } => self
                .subjects
                .get(&self.key(RevocationKind::Subject, subject))
                .is_some_and(|&before| portcullis_core::revocation::subject_revoked(before, issued_at)),
        }
    }
}

struct Inner {
    /// Every entry with its identifier (the feed, removals); not read on the request path.
    set: RevocationSet,
    hot: HotIndex,
    /// Last change applied; `None` until the first snapshot.
    cursor: Option<i64>,
    /// Identifies the change-log numbering (a store's log id, or a file watcher's run).
    source: String,
    /// Recent changes, contiguous, ending at `cursor`.
    history: VecDeque<Change>,
}

/// The sidecar's revocation set: read on every decision, written by one follower.
pub struct LiveRevocations {
    inner: RwLock<Inner>,
    fail_closed: bool,
    stale: AtomicBool,
    /// Set once the first snapshot is in place.
    loaded: AtomicBool,
    /// Highest change number the store has announced (NOTIFY payloads).
    announced: AtomicU64,
    confirmed_at: Mutex<Option<Instant>>,
    started: Instant,
    /// The metrics.
    pub metrics: RevocationMetrics,
}

impl std::fmt::Debug for LiveRevocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveRevocations").field("fail_closed", &self.fail_closed).finish_non_exhaustive()
    }
}

impl Revocations for LiveRevocations {
    fn status(&self, query: RevocationQuery<'_>) -> RevocationStatus {
        let g = self.read();
        // A known revocation is reported even when stale: it is still true.
        if g.hot.revoked(query) {
            RevocationStatus::Revoked
        } else if g.cursor.is_none() {
            // Nothing is known before the first load, in every stale mode.
            RevocationStatus::Unavailable
        } else if self.fail_closed && self.stale.load(Ordering::Relaxed) {
            RevocationStatus::Unavailable
        } else {
            RevocationStatus::Active
        }
    }
}

impl LiveRevocations {
    /// An empty, not yet synchronised set.
    pub fn new(mode: StaleMode) -> LiveRevocations {
        LiveRevocations {
            inner: RwLock::new(Inner {
                set: RevocationSet::default(),
                hot: HotIndex::new(),
                cursor: None,
                source: String::new(),
                history: VecDeque::new(),
            }),
            fail_closed: mode == StaleMode::FailClosed,
            // Nothing is known before the first snapshot.
            stale: AtomicBool::new(true),
            loaded: AtomicBool::new(false),
            announced: AtomicU64::new(0),
            confirmed_at: Mutex::new(None),
            started: Instant::now(),
            metrics: RevocationMetrics::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces the whole set with a snapshot at `cursor` of the log `source`, unless the
    /// snapshot cannot be trusted to continue the set in force (see [`Refused`]): then nothing
    /// changes and the caller must not confirm the set.
    pub fn replace(&self, set: RevocationSet, source: &str, cursor: i64) -> Result<(), Refused> {
        let entries = set.len();
        {
            let g = self.read();
            if let Some(held) = g.cursor {
                if g.source == source && cursor < held {
                    return Err(Refused(format!(
                        "the store's change log is at {cursor}, behind the {held} already applied (restored from a backup?)"
                    )));
                }
                if g.source == source && cursor == held && set != g.set {
                    return Err(Refused(format!(
                        "the store's snapshot at {cursor} differs from the set built by following its log to {cursor}"
                    )));
                }
                if entries == 0 && !g.set.is_empty() {
                    return Err(Refused(format!(
                        "the store returned no revocations while {} are in force; restart to accept an emptied store",
                        g.set.len()
                    )));
                }
            }
        }
        let hot = HotIndex::of(&set);
        let old = {
            let mut g = self.write();
            g.history.clear();
            g.source.clear();
            g.source.push_str(source);
            g.cursor = Some(cursor);
            g.hot = hot;
            std::mem::replace(&mut g.set, set)
        };
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
        let Some(last) = changes.last() else { return true };
        let (entries, cursor) = {
            let mut g = self.write();
            let Some(mut cursor) = g.cursor else { return false };
            if changes.iter().any(|c| {
                cursor += 1;
                c.seq != cursor
            }) {
                return false;
            }
            for c in changes {
                match c.op {
                    Op::Revoke => {
                        g.set.insert(c.kind, &c.id, c.issued_before.unwrap_or(0));
                        g.hot.insert(c.kind, &c.id, c.issued_before.unwrap_or(0));
                    }
                    Op::Unrevoke => {
                        g.set.remove(c.kind, &c.id);
                        g.hot.remove(c.kind, &c.id);
                    }
                }
                if g.history.len() == FEED_HISTORY {
                    g.history.pop_front();
                }
                g.history.push_back(c.clone());
            }
            g.cursor = Some(last.seq);
            (g.set.len(), last.seq)
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

    /// Records that everything committed before `at` has been applied: the set is fresh now
    /// (the monitor turns it stale again once `at` is older than the bound).
    pub fn confirm(&self, at: Instant) {
        {
            let mut g = self.confirmed_at.lock().unwrap_or_else(PoisonError::into_inner);
            if g.is_none_or(|prev| prev < at) {
                *g = Some(at);
            }
        }
        if self.synced() && self.stale.swap(false, Ordering::Relaxed) {
            self.metrics.stale.set(0);
            tracing::info!("revocations are fresh");
        }
    }

    /// Time since the last confirmation (since start when never confirmed).
    pub fn sync_age(&self, now: Instant) -> Duration {
        let at = *self.confirmed_at.lock().unwrap_or_else(PoisonError::into_inner);
        now.saturating_duration_since(at.unwrap_or(self.started))
    }

    /// Whether a snapshot has ever been loaded (read on every check, so without the lock).
    pub fn synced(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The change log the cursor belongs to (empty before the first snapshot).
    pub fn source(&self) -> String {
        self.read().source.clone()
    }

    /// The last change applied.
    pub fn cursor(&self) -> Option<i64> {
        self.read().cursor
    }

    /// Entries in the set.
    pub fn len(&self) -> usize {
        self.read().set.len()
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
        let age = self.sync_age(now);
        self.metrics.last_sync_age.set(age.as_secs_f64());
        let stale = age > bound || !self.synced();
        self.metrics.stale.set(i64::from(stale));
        (self.stale.swap(stale, Ordering::Relaxed) != stale).then_some(stale)
    }

    /// The feed: changes after `since` in the log `source`, or a snapshot when they cannot be
    /// replayed. `None` before the first sync.
    pub fn feed(&self, since: Option<(&str, i64)>) -> Option<Feed> {
        let fresh = !self.is_stale();
        let g = self.read();
        let cursor = g.cursor?;
        let replay = since.and_then(|(source, since)| {
            if source != g.source || since > cursor {
                return None;
            }
            if since == cursor {
                return Some(Vec::new());
            }
            let first = g.history.front()?.seq;
            if since + 1 < first {
                return None;
            }
            let skip = usize::try_from(since + 1 - first).ok()?;
            Some(g.history.iter().skip(skip).cloned().collect())
        });
        let source = g.source.clone();
        Some(match replay {
            Some(changes) => Feed { source, cursor, snapshot: None, changes, fresh },
            None => {
                let snapshot = g
                    .set
                    .entries()
                    .map(|(kind, id, before)| FeedEntry {
                        kind,
                        id: id.to_owned(),
                        issued_before: (kind == RevocationKind::Subject).then_some(before),
                    })
                    .collect();
                Feed { source, cursor, snapshot: Some(snapshot), changes: Vec::new(), fresh }
            }
        })
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
    fn snapshots_that_could_unrevoke_are_refused_and_change_nothing() {
        let live = LiveRevocations::new(StaleMode::FailClosed);
        let mut held = RevocationSet::default();
        held.revoke_token_id("r");
        live.replace(held.clone(), "log", 10).unwrap();
        let revoked = |live: &LiveRevocations| live.status(RevocationQuery::TokenId("r")) == RevocationStatus::Revoked;

        let e = live.replace(RevocationSet::default(), "other-log", 20).unwrap_err();
        assert!(e.0.contains("no revocations while 1 are in force"), "{e}");
        let e = live.replace(held.clone(), "log", 9).unwrap_err();
        assert!(e.0.contains("behind"), "{e}");
        let mut other = RevocationSet::default();
        other.revoke_token_id("q");
        let e = live.replace(other.clone(), "log", 10).unwrap_err();
        assert!(e.0.contains("differs"), "{e}");
        assert!(revoked(&live) && live.cursor() == Some(10) && live.source() == "log", "nothing changed");
        assert_eq!(live.metrics.snapshots.get(), 1);

        // What a sound store sends is accepted: the same state, a later one, or a new log.
        live.replace(held.clone(), "log", 10).unwrap();
        live.replace(other.clone(), "log", 11).unwrap();
        assert!(!revoked(&live));
        live.replace(held, "new-log", 1).unwrap();
        assert!(revoked(&live));
        // A fresh follower (a restart) accepts an empty store.
        LiveRevocations::new(StaleMode::Serve).replace(RevocationSet::default(), "log", 0).unwrap();
    }

    #[test]
    fn feed_replays_history_or_falls_back_to_a_snapshot() {
        let live = LiveRevocations::new(StaleMode::Serve);
        assert!(live.feed(None).is_none(), "nothing to serve before the first sync");
        let mut set = RevocationSet::default();
        set.revoke_subject("s", 7);
        live.replace(set, "log-a", 10).unwrap();
        let first = live.feed(None).unwrap();
        assert_eq!(first.cursor, 10);
        assert_eq!(
            first.snapshot.unwrap(),
            vec![FeedEntry { kind: RevocationKind::Subject, id: "s".into(), issued_before: Some(7) }]
        );
        assert!(live.apply(&[change(11, Op::Revoke, "a"), change(12, Op::Revoke, "b")]));
        let delta = live.feed(Some(("log-a", 11))).unwrap();
        assert_eq!((delta.snapshot, delta.changes.len(), delta.cursor), (None, 1, 12));
        assert_eq!(delta.changes[0].id, "b");
        assert!(live.feed(Some(("log-a", 12))).unwrap().changes.is_empty());
        assert!(live.feed(Some(("log-a", 9))).unwrap().snapshot.is_some(), "before the history");
        assert!(live.feed(Some(("log-b", 12))).unwrap().snapshot.is_some(), "another log's cursor");
        assert!(live.feed(Some(("log-a", 99))).unwrap().snapshot.is_some(), "a cursor from the future");
    }
}
