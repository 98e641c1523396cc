//! Revocations kept as a replica of a store's change log, with no IO and no clock.
//!
//! Every runtime holds the same thing: a [`RevocationSet`] that follows a numbered change log
//! (a snapshot at a cursor, then changes after it, in order), and a freshness bound. The
//! sidecar follows Postgres or a file and serves the log as a feed; the Envoy filter and the
//! Spin component follow the sidecar's feed. The rules live here once:
//!
//! - [`Replica`]: a snapshot replaces the set only when it cannot un-revoke anything
//!   ([`Refused`] otherwise); changes apply only when they continue the cursor with no gap; the
//!   last changes are kept so the replica can serve the feed itself ([`Replica::feed`]).
//! - [`Confirmations`] and [`answer`]: how long since the set was last confirmed fresh, and
//!   what a lookup answers when it is not ([`StaleMode`]).
//! - [`FeedClient`]: a consumer of the sidecar's feed as a state machine. It says what to ask
//!   for next ([`FeedClient::target`]), takes the answer ([`FeedClient::on_response`]) or the
//!   failure ([`FeedClient::on_failure`]), falls back to a snapshot after a gap, and answers
//!   lookups. Runtimes with callback IO (proxy-wasm) drive it by hand; runtimes that can wait
//!   use [`FeedClient::sync`] over a [`FeedTransport`].
//!
//! Time is a [`Duration`] since any fixed point the runtime chooses (a monotonic clock when it
//! has one), passed into every call that needs it.

use std::collections::VecDeque;
use std::time::Duration;

use portcullis_core::revocation_log::{Change, Feed, FeedEntry, Op};
use portcullis_core::{RevocationKind, RevocationQuery, RevocationSet, RevocationStatus, Revocations};

/// A snapshot was not applied: trusting it could un-revoke credentials. The set in force
/// stays, unconfirmed, so the staleness bound applies until the store is sound again (or the
/// replica restarts, accepting whatever the store then holds).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("snapshot refused: {0}")]
pub struct Refused(pub String);

/// What a replica does when its set has not been confirmed fresh within the bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StaleMode {
    /// Keep answering from the set it has (a metric and a log line say it is stale).
    #[default]
    Serve,
    /// Answer `unavailable` for credentials not known to be revoked (`revocation_stale`, 503)
    /// until fresh again.
    FailClosed,
}

impl StaleMode {
    /// The configuration spelling: `serve` or `fail-closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            StaleMode::Serve => "serve",
            StaleMode::FailClosed => "fail-closed",
        }
    }
}

impl std::str::FromStr for StaleMode {
    type Err = String;

    fn from_str(s: &str) -> Result<StaleMode, String> {
        match s {
            "serve" => Ok(StaleMode::Serve),
            "fail-closed" => Ok(StaleMode::FailClosed),
            _ => Err(format!("unknown stale mode `{s}`: expected `serve` or `fail-closed`")),
        }
    }
}

impl std::fmt::Display for StaleMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a lookup answers: a known revocation always (it is still true when stale); nothing is
/// known before the first snapshot; past the bound, `fail-closed` refuses to vouch.
pub fn answer(revoked: bool, synced: bool, stale: bool, mode: StaleMode) -> RevocationStatus {
    if revoked {
        RevocationStatus::Revoked
    } else if !synced || (stale && mode == StaleMode::FailClosed) {
        RevocationStatus::Unavailable
    } else {
        RevocationStatus::Active
    }
}

/// A second index a runtime keeps beside the set, updated in the same steps (the sidecar keeps
/// hashed keys for one-probe lookups). `()` keeps none and looks up in the set.
pub trait Mirror {
    /// The index of a whole set.
    fn of(set: &RevocationSet) -> Self;
    /// One revocation added.
    fn insert(&mut self, kind: RevocationKind, id: &str, before: i64);
    /// One revocation removed.
    fn remove(&mut self, kind: RevocationKind, id: &str);
    /// Whether `query` is revoked; `set` is the replica's set, for mirrors that keep nothing.
    fn revoked(&self, set: &RevocationSet, query: RevocationQuery<'_>) -> bool;
}

impl Mirror for () {
    fn of(_: &RevocationSet) {}
    fn insert(&mut self, _: RevocationKind, _: &str, _: i64) {}
    fn remove(&mut self, _: RevocationKind, _: &str) {}
    fn revoked(&self, set: &RevocationSet, query: RevocationQuery<'_>) -> bool {
        set.status(query) == RevocationStatus::Revoked
    }
}

/// The set built by following one change log.
#[derive(Debug)]
pub struct Replica<M = ()> {
    set: RevocationSet,
    mirror: M,
    /// Last change applied; `None` until the first snapshot.
    cursor: Option<i64>,
    /// Identifies the change-log numbering (a store's log id, a file's lineage, a feed's source).
    source: String,
    /// Recent changes, contiguous, ending at `cursor`.
    history: VecDeque<Change>,
    history_cap: usize,
}

impl<M: Mirror> Replica<M> {
    /// An empty replica that keeps the last `history` changes for [`Replica::feed`].
    pub fn new(history: usize) -> Replica<M> {
        let set = RevocationSet::default();
        Replica {
            mirror: M::of(&set),
            set,
            cursor: None,
            source: String::new(),
            history: VecDeque::new(),
            history_cap: history,
        }
    }

    /// Whether a snapshot of `set` at `cursor` of the log `source` may replace the set in force:
    /// not an older point of the same log, not a different set at the same point, and not an
    /// empty set replacing a non-empty one (a wiped store is accepted only by a fresh replica).
    pub fn check(&self, set: &RevocationSet, source: &str, cursor: i64) -> Result<(), Refused> {
        let Some(held) = self.cursor else { return Ok(()) };
        if self.source == source && cursor < held {
            return Err(Refused(format!(
                "the store's change log is at {cursor}, behind the {held} already applied (restored from a backup?)"
            )));
        }
        if self.source == source && cursor == held && *set != self.set {
            return Err(Refused(format!(
                "the store's snapshot at {cursor} differs from the set built by following its log to {cursor}"
            )));
        }
        if set.is_empty() && !self.set.is_empty() {
            return Err(Refused(format!(
                "the store returned no revocations while {} are in force; restart to accept an emptied store",
                self.set.len()
            )));
        }
        Ok(())
    }

    /// Installs a snapshot already [checked](Replica::check), with its mirror built by the
    /// caller (outside any lock it holds); returns the old set, for the caller to free.
    pub fn install(&mut self, set: RevocationSet, mirror: M, source: &str, cursor: i64) -> RevocationSet {
        self.history.clear();
        source.clone_into(&mut self.source);
        self.cursor = Some(cursor);
        self.mirror = mirror;
        std::mem::replace(&mut self.set, set)
    }

    /// [Checks](Replica::check) and installs a snapshot.
    pub fn replace(&mut self, set: RevocationSet, source: &str, cursor: i64) -> Result<RevocationSet, Refused> {
        self.check(&set, source, cursor)?;
        let mirror = M::of(&set);
        Ok(self.install(set, mirror, source, cursor))
    }

    /// Applies changes that continue the log contiguously from the cursor. Returns false (and
    /// applies nothing) when they do not: the caller must take a snapshot.
    pub fn apply(&mut self, changes: &[Change]) -> bool {
        let Some(last) = changes.last() else { return true };
        let Some(mut cursor) = self.cursor else { return false };
        if changes.iter().any(|c| {
            cursor += 1;
            c.seq != cursor
        }) {
            return false;
        }
        for c in changes {
            match c.op {
                Op::Revoke => {
                    let before = c.issued_before.unwrap_or(0);
                    self.set.insert(c.kind, &c.id, before);
                    self.mirror.insert(c.kind, &c.id, before);
                }
                Op::Unrevoke => {
                    self.set.remove(c.kind, &c.id);
                    self.mirror.remove(c.kind, &c.id);
                }
            }
            if self.history_cap > 0 {
                if self.history.len() == self.history_cap {
                    self.history.pop_front();
                }
                self.history.push_back(c.clone());
            }
        }
        self.cursor = Some(last.seq);
        true
    }

    /// Whether `query` is revoked in the set in force.
    pub fn revoked(&self, query: RevocationQuery<'_>) -> bool {
        self.mirror.revoked(&self.set, query)
    }

    /// The feed: changes after `since` in the log `source`, or a snapshot when they cannot be
    /// replayed (another log, a cursor before the history kept or after the cursor). `None`
    /// before the first snapshot. `fresh` is passed on to the reader.
    pub fn feed(&self, since: Option<(&str, i64)>, fresh: bool) -> Option<Feed> {
        let cursor = self.cursor?;
        let replay = since.and_then(|(source, since)| {
            if source != self.source || since > cursor {
                return None;
            }
            if since == cursor {
                return Some(Vec::new());
            }
            let first = self.history.front()?.seq;
            if since + 1 < first {
                return None;
            }
            let skip = usize::try_from(since + 1 - first).ok()?;
            Some(self.history.iter().skip(skip).cloned().collect())
        });
        let source = self.source.clone();
        Some(match replay {
            Some(changes) => Feed { source, cursor, snapshot: None, changes, fresh },
            None => {
                let snapshot = self
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

    /// The set in force.
    pub fn set(&self) -> &RevocationSet {
        &self.set
    }

    /// The last change applied (`None` before the first snapshot).
    pub fn cursor(&self) -> Option<i64> {
        self.cursor
    }

    /// The change log the cursor belongs to (empty before the first snapshot).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether a snapshot has been installed.
    pub fn synced(&self) -> bool {
        self.cursor.is_some()
    }
}

/// Builds a set from a feed's snapshot.
pub fn set_of_snapshot(entries: &[FeedEntry]) -> RevocationSet {
    let mut set = RevocationSet::default();
    for e in entries {
        set.insert(e.kind, &e.id, e.issued_before.unwrap_or(0));
    }
    set
}

/// When the set was last confirmed fresh: everything committed to the store before that
/// moment had been applied.
#[derive(Clone, Copy, Debug)]
pub struct Confirmations {
    started: Duration,
    confirmed_at: Option<Duration>,
}

impl Confirmations {
    /// Never confirmed; ages from `started`.
    pub fn new(started: Duration) -> Confirmations {
        Confirmations { started, confirmed_at: None }
    }

    /// Records a confirmation as of `at` (a request's start, not its end: what was committed
    /// while it ran may not be in it). Confirmations never move back.
    pub fn confirm(&mut self, at: Duration) {
        if self.confirmed_at.is_none_or(|prev| prev < at) {
            self.confirmed_at = Some(at);
        }
    }

    /// Time since the last confirmation (since start when never confirmed).
    pub fn age(&self, now: Duration) -> Duration {
        now.saturating_sub(self.confirmed_at.unwrap_or(self.started))
    }

    /// Whether a set confirmed this way is past `bound` at `now` (never synced counts as stale).
    pub fn stale(&self, now: Duration, bound: Duration, synced: bool) -> bool {
        !synced || self.age(now) > bound
    }
}

/// Why a feed response was not applied. The set in force stays in every case.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The body is not a feed.
    #[error("the revocation feed sent something that is not a feed: {0}")]
    Malformed(String),
    /// The snapshot could un-revoke credentials.
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The changes do not continue the cursor; the next request asks for a snapshot.
    #[error("the revocation feed skipped changes after {cursor}: asking for a snapshot")]
    Gap {
        /// The cursor held.
        cursor: i64,
    },
    /// The transport failed (connection, status, timeout).
    #[error("the revocation feed is unreachable: {0}")]
    Transport(String),
}

impl FeedError {
    /// A stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            FeedError::Malformed(_) => "feed_malformed",
            FeedError::Refused(_) => "feed_refused",
            FeedError::Gap { .. } => "feed_gap",
            FeedError::Transport(_) => "feed_unreachable",
        }
    }
}

/// What one applied response did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synced {
    /// A snapshot replaced the set.
    Snapshot {
        /// Entries in the new set.
        entries: usize,
    },
    /// Changes applied (possibly none).
    Changes {
        /// How many.
        applied: usize,
    },
}

/// Counters a runtime exports as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedStats {
    /// Snapshots installed.
    pub snapshots: u64,
    /// Changes applied.
    pub changes: u64,
    /// Responses not applied, and transport failures.
    pub errors: u64,
}

/// Fetches one feed response: the body of `GET {target}` from the sidecar's admin listener,
/// with the runtime's credential.
pub trait FeedTransport {
    /// Performs the request; `Err` carries a message without secrets.
    fn fetch(&mut self, target: &str) -> Result<Vec<u8>, String>;
}

/// A [`FeedClient`]'s state between runs, for a runtime with no memory between requests (the
/// Spin component keeps it in a key-value store): the set as a snapshot at its cursor, when it
/// was last confirmed fresh, and whether the next fetch must ask for a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedFeed {
    /// The set, in the feed's snapshot form; `None` before the first snapshot.
    pub set: Option<Feed>,
    /// The last confirmation, in milliseconds on the runtime's clock.
    pub confirmed_ms: Option<u64>,
    /// See [`FeedClient::target`].
    pub resnapshot: bool,
}

/// Follows the sidecar's feed (`GET /v1/revocations/feed`) and answers lookups from it.
#[derive(Debug)]
pub struct FeedClient {
    replica: Replica,
    confirmations: Confirmations,
    mode: StaleMode,
    bound: Duration,
    stale: bool,
    /// Set after a gap or a refusal: the next request asks for a snapshot.
    resnapshot: bool,
    stats: FeedStats,
}

/// The feed's path on the sidecar's admin listener.
pub const FEED_PATH: &str = "/v1/revocations/feed";

impl FeedClient {
    /// A client that has loaded nothing yet (every lookup answers `unavailable` until the first
    /// snapshot), with the staleness `bound` and `mode`, started at `now`.
    pub fn new(mode: StaleMode, bound: Duration, now: Duration) -> FeedClient {
        FeedClient {
            replica: Replica::new(0),
            confirmations: Confirmations::new(now),
            mode,
            bound,
            stale: true,
            resnapshot: false,
            stats: FeedStats::default(),
        }
    }

    /// The state to [`FeedClient::restore`] from later.
    pub fn save(&self) -> SavedFeed {
        SavedFeed {
            set: self.replica.feed(None, false),
            confirmed_ms: self.confirmations.confirmed_at.map(|c| u64::try_from(c.as_millis()).unwrap_or(u64::MAX)),
            resnapshot: self.resnapshot,
        }
    }

    /// A client continuing from `saved` at `now`: the same set, cursor and confirmation, so it
    /// asks for the changes after the cursor and keeps the staleness bound.
    pub fn restore(saved: SavedFeed, mode: StaleMode, bound: Duration, now: Duration) -> Result<FeedClient, FeedError> {
        let mut client = FeedClient::new(mode, bound, now);
        if let Some(feed) = saved.set {
            let entries = feed.snapshot.ok_or_else(|| FeedError::Malformed("a saved set without a snapshot".into()))?;
            client.replica.replace(set_of_snapshot(&entries), &feed.source, feed.cursor)?;
        }
        client.confirmations.confirmed_at = saved.confirmed_ms.map(Duration::from_millis);
        client.resnapshot = saved.resnapshot;
        client.tick(now);
        Ok(client)
    }

    /// When the set was last confirmed fresh, on the runtime's clock.
    pub fn confirmed_at(&self) -> Option<Duration> {
        self.confirmations.confirmed_at
    }

    /// The request target for the next fetch: the feed's path, with `source` and `since` once
    /// there is a cursor to continue from.
    pub fn target(&self) -> String {
        match (self.replica.cursor(), self.resnapshot) {
            (Some(cursor), false) => {
                format!("{FEED_PATH}?source={}&since={cursor}", percent_encode(self.replica.source()))
            }
            _ => FEED_PATH.to_owned(),
        }
    }

    /// Applies the body of a response to a request for [`FeedClient::target`] sent at
    /// `requested_at`. When the sidecar itself says it is fresh, the set is confirmed as of the
    /// request's start; a stale sidecar's answer is applied but confirms nothing.
    pub fn on_response(&mut self, body: &[u8], requested_at: Duration) -> Result<Synced, FeedError> {
        let result = self.apply(body, requested_at);
        if result.is_err() {
            self.stats.errors += 1;
        }
        result
    }

    fn apply(&mut self, body: &[u8], requested_at: Duration) -> Result<Synced, FeedError> {
        let feed: Feed = serde_json::from_slice(body).map_err(|e| FeedError::Malformed(e.to_string()))?;
        let synced = match &feed.snapshot {
            Some(entries) => {
                let set = set_of_snapshot(entries);
                let entries = set.len();
                self.replica.replace(set, &feed.source, feed.cursor).inspect_err(|_| self.resnapshot = true)?;
                self.resnapshot = false;
                self.stats.snapshots += 1;
                Synced::Snapshot { entries }
            }
            None => {
                let cursor = self.replica.cursor();
                let continues = cursor.is_some() && feed.source == self.replica.source() && !self.resnapshot;
                // An answer without a snapshot must end at its own cursor.
                let ends = feed.changes.last().map_or(cursor, |c| Some(c.seq)) == Some(feed.cursor);
                if !continues || !ends || !self.replica.apply(&feed.changes) {
                    self.resnapshot = true;
                    return Err(FeedError::Gap { cursor: cursor.unwrap_or(0) });
                }
                self.stats.changes += feed.changes.len() as u64;
                Synced::Changes { applied: feed.changes.len() }
            }
        };
        if feed.fresh {
            self.confirmations.confirm(requested_at);
            self.stale = false;
        }
        Ok(synced)
    }

    /// Records a failed fetch; the set in force stays.
    pub fn on_failure(&mut self) {
        self.stats.errors += 1;
    }

    /// Re-evaluates staleness at `now`; returns the new state when it changed.
    pub fn tick(&mut self, now: Duration) -> Option<bool> {
        let stale = self.confirmations.stale(now, self.bound, self.replica.synced());
        (std::mem::replace(&mut self.stale, stale) != stale).then_some(stale)
    }

    /// One fetch through `transport`, applied: the whole cycle for a runtime that can wait.
    /// `now` is read before the request is sent.
    pub fn sync(&mut self, transport: &mut impl FeedTransport, now: Duration) -> Result<Synced, FeedError> {
        match transport.fetch(&self.target()) {
            Ok(body) => self.on_response(&body, now),
            Err(e) => {
                self.on_failure();
                Err(FeedError::Transport(e))
            }
        }
    }

    /// The replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Time since the set was last confirmed fresh.
    pub fn age(&self, now: Duration) -> Duration {
        self.confirmations.age(now)
    }

    /// Whether the set was past its bound at the last [`FeedClient::tick`] (or never loaded).
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// The counters.
    pub fn stats(&self) -> FeedStats {
        self.stats
    }
}

impl Revocations for FeedClient {
    fn status(&self, query: RevocationQuery<'_>) -> RevocationStatus {
        answer(self.replica.revoked(query), self.replica.synced(), self.stale, self.mode)
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (a query value). Written
/// here because it is six lines and the adapter otherwise needs no URL crate.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: i64, op: Op, id: &str) -> Change {
        Change { seq, op, kind: RevocationKind::TokenId, id: id.into(), issued_before: None }
    }

    fn token(id: &str) -> RevocationQuery<'_> {
        RevocationQuery::TokenId(id)
    }

    #[test]
    fn changes_apply_only_contiguously() {
        let mut r = Replica::<()>::new(16);
        assert!(!r.apply(&[change(1, Op::Revoke, "a")]), "no snapshot yet");
        r.replace(RevocationSet::default(), "log", 0).unwrap();
        assert!(r.apply(&[change(1, Op::Revoke, "a"), change(2, Op::Revoke, "b")]));
        assert!(!r.apply(&[change(4, Op::Revoke, "c")]), "3 is missing");
        assert!(!r.revoked(token("c")));
        assert!(r.apply(&[change(3, Op::Unrevoke, "a")]));
        assert!(!r.revoked(token("a")) && r.revoked(token("b")));
        assert_eq!((r.cursor(), r.set().len()), (Some(3), 1));
    }

    #[test]
    fn snapshots_that_could_unrevoke_are_refused_and_change_nothing() {
        let mut r = Replica::<()>::new(16);
        let mut held = RevocationSet::default();
        held.revoke_token_id("r");
        r.replace(held.clone(), "log", 10).unwrap();

        let e = r.replace(RevocationSet::default(), "other-log", 20).unwrap_err();
        assert!(e.0.contains("no revocations while 1 are in force"), "{e}");
        let e = r.replace(held.clone(), "log", 9).unwrap_err();
        assert!(e.0.contains("behind"), "{e}");
        let mut other = RevocationSet::default();
        other.revoke_token_id("q");
        let e = r.replace(other.clone(), "log", 10).unwrap_err();
        assert!(e.0.contains("differs"), "{e}");
        assert!(r.revoked(token("r")) && r.cursor() == Some(10) && r.source() == "log", "nothing changed");

        // What a sound store sends is accepted: the same state, a later one, or a new log.
        r.replace(held.clone(), "log", 10).unwrap();
        r.replace(other, "log", 11).unwrap();
        assert!(!r.revoked(token("r")));
        r.replace(held, "new-log", 1).unwrap();
        assert!(r.revoked(token("r")));
        // A fresh replica (a restart) accepts an empty store.
        Replica::<()>::new(0).replace(RevocationSet::default(), "log", 0).unwrap();
    }

    #[test]
    fn feed_replays_history_or_falls_back_to_a_snapshot() {
        let mut r = Replica::<()>::new(16);
        assert!(r.feed(None, true).is_none(), "nothing to serve before the first sync");
        let mut set = RevocationSet::default();
        set.revoke_subject("s", 7);
        r.replace(set, "log-a", 10).unwrap();
        let first = r.feed(None, true).unwrap();
        assert_eq!(first.cursor, 10);
        assert_eq!(
            first.snapshot.unwrap(),
            vec![FeedEntry { kind: RevocationKind::Subject, id: "s".into(), issued_before: Some(7) }]
        );
        assert!(r.apply(&[change(11, Op::Revoke, "a"), change(12, Op::Revoke, "b")]));
        let delta = r.feed(Some(("log-a", 11)), true).unwrap();
        assert_eq!((delta.snapshot, delta.changes.len(), delta.cursor), (None, 1, 12));
        assert_eq!(delta.changes[0].id, "b");
        assert!(r.feed(Some(("log-a", 12)), true).unwrap().changes.is_empty());
        assert!(r.feed(Some(("log-a", 9)), true).unwrap().snapshot.is_some(), "before the history");
        assert!(r.feed(Some(("log-b", 12)), true).unwrap().snapshot.is_some(), "another log's cursor");
        assert!(r.feed(Some(("log-a", 99)), true).unwrap().snapshot.is_some(), "a cursor from the future");
    }

    #[test]
    fn answers_in_every_state_and_mode() {
        use RevocationStatus::{Active, Revoked, Unavailable};
        for mode in [StaleMode::Serve, StaleMode::FailClosed] {
            assert_eq!(answer(true, false, true, mode), Revoked, "a known revocation is always reported");
            assert_eq!(answer(false, false, false, mode), Unavailable, "nothing is known before the first load");
            assert_eq!(answer(false, true, false, mode), Active);
        }
        assert_eq!(answer(false, true, true, StaleMode::Serve), Active);
        assert_eq!(answer(false, true, true, StaleMode::FailClosed), Unavailable);
        assert_eq!("fail-closed".parse(), Ok(StaleMode::FailClosed));
        assert!("closed".parse::<StaleMode>().is_err());
    }

    #[test]
    fn confirmations_age_from_start_and_never_move_back() {
        let s = Duration::from_secs;
        let mut c = Confirmations::new(s(100));
        assert_eq!(c.age(s(103)), s(3));
        assert!(c.stale(s(100), s(5), false), "never synced is stale");
        c.confirm(s(110));
        c.confirm(s(105));
        assert_eq!(c.age(s(112)), s(2));
        assert!(!c.stale(s(115), s(5), true) && c.stale(s(116), s(5), true));
    }

    /// A transport that answers from a server-side replica (the sidecar's own feed logic), so
    /// the client is held to what the real server sends; `down` makes it fail.
    struct Loopback {
        server: Replica,
        fresh: bool,
        down: bool,
        targets: Vec<String>,
    }

    impl FeedTransport for Loopback {
        fn fetch(&mut self, target: &str) -> Result<Vec<u8>, String> {
            self.targets.push(target.to_owned());
            if self.down {
                return Err("connection refused".into());
            }
            let since = target.split_once('?').map(|(_, q)| {
                let mut source = String::new();
                let mut since = 0;
                for (k, v) in q.split('&').filter_map(|kv| kv.split_once('=')) {
                    match k {
                        "source" => source = v.replace("%3A", ":"),
                        "since" => since = v.parse().unwrap(),
                        _ => panic!("unexpected parameter {k}"),
                    }
                }
                (source, since)
            });
            let feed =
                self.server.feed(since.as_ref().map(|(s, n)| (s.as_str(), *n)), self.fresh).ok_or("not loaded")?;
            Ok(serde_json::to_vec(&feed).unwrap())
        }
    }

    #[test]
    fn a_client_follows_snapshots_and_changes_and_keeps_its_set_through_failures() {
        let s = Duration::from_secs;
        let mut server = Replica::new(2);
        server.replace(RevocationSet::default(), "pg:log", 0).unwrap();
        let mut t = Loopback { server, fresh: true, down: false, targets: Vec::new() };
        let mut c = FeedClient::new(StaleMode::FailClosed, s(5), s(0));
        assert_eq!(c.status(token("x")), RevocationStatus::Unavailable, "denies until the first snapshot");

        assert_eq!(c.sync(&mut t, s(1)).unwrap(), Synced::Snapshot { entries: 0 });
        assert_eq!(c.status(token("x")), RevocationStatus::Active);
        assert!(t.server.apply(&[change(1, Op::Revoke, "x")]));
        assert_eq!(c.sync(&mut t, s(2)).unwrap(), Synced::Changes { applied: 1 });
        assert_eq!(t.targets.last().unwrap(), "/v1/revocations/feed?source=pg%3Alog&since=0");
        assert_eq!(c.status(token("x")), RevocationStatus::Revoked);

        // More changes than the server's history: it answers with a snapshot.
        assert!(t.server.apply(&[
            change(2, Op::Revoke, "y"),
            change(3, Op::Revoke, "z"),
            change(4, Op::Unrevoke, "x")
        ]));
        assert_eq!(c.sync(&mut t, s(3)).unwrap(), Synced::Snapshot { entries: 2 });
        assert_eq!(c.status(token("x")), RevocationStatus::Active);
        assert_eq!(c.replica().cursor(), Some(4));

        // The feed goes down: the set stays, and goes stale after the bound (fail-closed).
        t.down = true;
        assert!(matches!(c.sync(&mut t, s(4)), Err(FeedError::Transport(_))));
        assert_eq!(c.tick(s(8)), None, "within the bound of the last confirmation (3 s)");
        assert_eq!(c.status(token("y")), RevocationStatus::Revoked);
        assert_eq!(c.tick(s(9)), Some(true));
        assert_eq!(c.status(token("q")), RevocationStatus::Unavailable);
        assert_eq!(c.status(token("y")), RevocationStatus::Revoked, "still known revoked");

        // Back, but the sidecar is stale itself: applied, yet not confirmed.
        t.down = false;
        t.fresh = false;
        c.sync(&mut t, s(10)).unwrap();
        assert!(c.is_stale());
        t.fresh = true;
        c.sync(&mut t, s(11)).unwrap();
        assert_eq!(c.tick(s(11)), None);
        assert!(!c.is_stale());
        assert_eq!(c.stats(), FeedStats { snapshots: 2, changes: 1, errors: 1 });
    }

    #[test]
    fn a_saved_client_continues_where_it_stopped() {
        let s = Duration::from_secs;
        let mut server = Replica::new(8);
        server.replace(RevocationSet::default(), "pg:log", 0).unwrap();
        assert!(server.apply(&[change(1, Op::Revoke, "x")]));
        let mut t = Loopback { server, fresh: true, down: false, targets: Vec::new() };
        let mut c = FeedClient::new(StaleMode::FailClosed, s(5), s(0));
        c.sync(&mut t, s(1)).unwrap();
        let saved: SavedFeed = serde_json::from_slice(&serde_json::to_vec(&c.save()).unwrap()).unwrap();

        let mut again = FeedClient::restore(saved.clone(), StaleMode::FailClosed, s(5), s(3)).unwrap();
        assert_eq!((again.replica().cursor(), again.confirmed_at()), (Some(1), Some(s(1))));
        assert_eq!(again.status(token("x")), RevocationStatus::Revoked);
        assert!(!again.is_stale());
        assert!(t.server.apply(&[change(2, Op::Unrevoke, "x")]));
        assert_eq!(again.sync(&mut t, s(4)).unwrap(), Synced::Changes { applied: 1 }, "changes, not a snapshot");
        assert_eq!(again.status(token("x")), RevocationStatus::Active);

        // Restored past the bound: stale at once (fail-closed answers unavailable).
        let late = FeedClient::restore(saved, StaleMode::FailClosed, s(5), s(7)).unwrap();
        assert_eq!(late.status(token("q")), RevocationStatus::Unavailable);
        // Never synced: as new.
        let none = SavedFeed { set: None, confirmed_ms: None, resnapshot: false };
        let fresh = FeedClient::restore(none, StaleMode::Serve, s(5), s(0)).unwrap();
        assert_eq!(fresh.status(token("q")), RevocationStatus::Unavailable);
    }

    #[test]
    fn a_gap_or_a_bad_body_keeps_the_set_and_asks_for_a_snapshot_next() {
        let s = Duration::from_secs;
        let mut c = FeedClient::new(StaleMode::Serve, s(5), s(0));
        let snapshot = br#"{"source":"log","cursor":5,"snapshot":[{"kind":"jti","id":"r"}],"fresh":true}"#;
        c.on_response(snapshot, s(0)).unwrap();
        assert_eq!(c.target(), "/v1/revocations/feed?source=log&since=5");

        let gap =
            br#"{"source":"log","cursor":7,"changes":[{"seq":7,"op":"revoke","kind":"jti","id":"q"}],"fresh":true}"#;
        assert!(matches!(c.on_response(gap, s(1)), Err(FeedError::Gap { cursor: 5 })));
        assert_eq!(c.target(), "/v1/revocations/feed", "a snapshot next");
        assert!(matches!(c.on_response(b"<html>", s(1)), Err(FeedError::Malformed(_))));
        let empty = br#"{"source":"log","cursor":8,"snapshot":[],"fresh":true}"#;
        assert!(matches!(c.on_response(empty, s(1)), Err(FeedError::Refused(_))), "cannot empty a set");
        assert_eq!(c.status(token("r")), RevocationStatus::Revoked);
        assert_eq!(c.status(token("q")), RevocationStatus::Active);
        // Changes claiming a cursor they do not reach are a gap too.
        let short = br#"{"source":"log","cursor":9,"changes":[],"fresh":true}"#;
        c.on_response(snapshot, s(2)).unwrap();
        assert!(matches!(c.on_response(short, s(2)), Err(FeedError::Gap { .. })));
        assert_eq!(c.stats().errors, 4);
    }
}
