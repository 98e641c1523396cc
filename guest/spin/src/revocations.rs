//! Revocations for a runtime with no memory between requests: the sidecar's feed, kept in a
//! key-value store (Spin's) that every instance shares.
//!
//! - **Per request** (the hot path): one read of a small record (when the set was last
//!   confirmed fresh, and whether a snapshot ever loaded), then one read per credential
//!   identifier the core asks about. Nothing proportional to the size of the set.
//! - **Sync** (at most once per poll period, by whichever request finds it due): the follower's
//!   whole state ([`SavedFeed`], the kit's [`FeedClient`]) is read back, brought up to date over
//!   the feed (a snapshot, or the changes after its cursor), and the difference written as
//!   one key per revoked identifier; then the state, then the record. The follower's rules
//!   (no un-revoking snapshot, no gap, the staleness bound and mode) are the kit's, unchanged.
//!
//! Until the first snapshot has been stored every lookup answers `unavailable` (503
//! `revocation_stale`), as the sidecar and the Envoy filter do. A failed sync keeps what the
//! store holds; the staleness bound then applies.

use std::collections::BTreeMap;
use std::time::Duration;

use portcullis_adapter::revocation::{FeedClient, FeedTransport, SavedFeed, StaleMode, Synced, answer};
use portcullis_core::{RevocationKind, RevocationQuery, RevocationSet, RevocationStatus, Revocations};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::settings::Feed;

/// The record read on every request.
pub const RECORD: &str = "portcullis.revocations.record";
/// The follower's whole state, read and written only by a sync.
pub const STATE: &str = "portcullis.revocations.state";
/// Prefix of the per-identifier keys.
const ENTRY: &str = "portcullis.revocations.entry.";

/// A key-value store (Spin's `fermyon:spin/key-value`, or a map in tests). Errors carry no
/// values.
pub trait Store {
    /// The value under `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Sets `key`.
    fn set(&self, key: &str, value: &[u8]) -> Result<(), String>;
    /// Removes `key` (absent is not an error).
    fn delete(&self, key: &str) -> Result<(), String>;
}

/// What every request reads first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Whether a snapshot has been stored.
    pub synced: bool,
    /// When the set was last confirmed fresh (ms since the Unix epoch).
    pub confirmed_ms: Option<u64>,
    /// When a sync last started (ms since the Unix epoch): the next is due a poll period later.
    pub attempted_ms: u64,
}

/// The key of one identifier: its kind and the SHA-256 of the identifier (keys stay short and
/// identifiers never appear in key listings).
fn entry_key(kind: RevocationKind, id: &str) -> String {
    let digest = Sha256::digest(id.as_bytes());
    let mut key = String::with_capacity(ENTRY.len() + 16 + 64);
    key.push_str(ENTRY);
    key.push_str(kind.code());
    key.push('.');
    for b in digest {
        key.push_str(&format!("{b:02x}"));
    }
    key
}

fn read_record(store: &dyn Store) -> Result<Record, String> {
    match store.get(RECORD)? {
        None => Ok(Record::default()),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("the stored record is damaged: {e}")),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The core's view of the stored set for one request.
pub struct Stored<'a> {
    store: &'a dyn Store,
    record: Record,
    stale: bool,
    mode: StaleMode,
}

impl std::fmt::Debug for Stored<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored").field("record", &self.record).field("stale", &self.stale).finish_non_exhaustive()
    }
}

impl<'a> Stored<'a> {
    /// Reads the record at `now` (since the Unix epoch). A store that cannot be read answers
    /// as a set never loaded: `unavailable`, never `active`.
    pub fn open(store: &'a dyn Store, feed: &Feed, now: Duration) -> Stored<'a> {
        Stored::with_record(store, read_record(store).unwrap_or_default(), feed, now)
    }

    /// One request's view, reading the record once: when a poll period has passed since the
    /// last sync, the set is first brought up to date through `transport`. A failed sync is
    /// returned beside the view, which then holds what the store kept.
    pub fn open_synced(
        store: &'a dyn Store,
        feed: &Feed,
        transport: &mut impl FeedTransport,
        now: Duration,
    ) -> (Stored<'a>, Option<String>) {
        let (record, error) = match read_record(store).and_then(|r| sync_from(store, feed, transport, now, r)) {
            Ok((record, _)) => (record, None),
            // What a failed sync left (it may have claimed the period) is read again.
            Err(e) => (read_record(store).unwrap_or_default(), Some(e)),
        };
        (Stored::with_record(store, record, feed, now), error)
    }

    fn with_record(store: &'a dyn Store, record: Record, feed: &Feed, now: Duration) -> Stored<'a> {
        let age = record.confirmed_ms.map(|c| millis(now).saturating_sub(c));
        let stale = !record.synced || age.is_none_or(|a| a > millis(feed.stale_after));
        Stored { store, record, stale, mode: feed.mode }
    }

    /// Whether the set was past its bound (or never loaded) when opened.
    pub fn is_stale(&self) -> bool {
        self.stale
    }
}

impl Revocations for Stored<'_> {
    fn status(&self, query: RevocationQuery<'_>) -> RevocationStatus {
        let (kind, id) = match query {
            RevocationQuery::TokenId(id) => (RevocationKind::TokenId, id),
            RevocationQuery::ServiceTokenId(id) => (RevocationKind::ServiceTokenId, id),
            RevocationQuery::ApiKey(id) => (RevocationKind::ApiKey, id),
            RevocationQuery::Subject { subject, .. } => (RevocationKind::Subject, subject),
        };
        if !self.record.synced {
            return answer(false, false, true, self.mode);
        }
        let revoked = match self.store.get(&entry_key(kind, id)) {
            // The entry alone, asked the same question: the set's own rules decide (a subject's
            // cut-off against the credential's issue time included).
            Ok(Some(before)) => {
                let before = std::str::from_utf8(&before).ok().and_then(|b| b.parse().ok()).unwrap_or(i64::MAX);
                let mut one = RevocationSet::default();
                one.insert(kind, id, before);
                one.status(query) == RevocationStatus::Revoked
            }
            Ok(None) => false,
            // Unreadable: not known to be active.
            Err(_) => return RevocationStatus::Unavailable,
        };
        answer(revoked, true, self.stale, self.mode)
    }
}

/// Brings the stored set up to date through `transport` at `now`, when due. `Ok(None)`: not
/// due.
pub fn sync(
    store: &dyn Store,
    feed: &Feed,
    transport: &mut impl FeedTransport,
    now: Duration,
) -> Result<Option<Synced>, String> {
    sync_from(store, feed, transport, now, read_record(store)?).map(|(_, synced)| synced)
}

/// [`sync`] from the record already read; returns the record as it now is in the store.
fn sync_from(
    store: &dyn Store,
    feed: &Feed,
    transport: &mut impl FeedTransport,
    now: Duration,
    mut record: Record,
) -> Result<(Record, Option<Synced>), String> {
    if millis(now).saturating_sub(record.attempted_ms) < millis(feed.poll) {
        return Ok((record, None));
    }
    // Claim this period first, so that concurrent requests do not all fetch.
    record.attempted_ms = millis(now);
    store.set(RECORD, &serde_json::to_vec(&record).map_err(|e| e.to_string())?)?;

    let saved: Option<SavedFeed> = match store.get(STATE)? {
        Some(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| format!("the stored state is damaged: {e}"))?),
        None => None,
    };
    let mut client = match saved {
        Some(saved) => FeedClient::restore(saved, feed.mode, feed.stale_after, now).map_err(|e| e.to_string())?,
        None => FeedClient::new(feed.mode, feed.stale_after, now),
    };
    let before = entries(client.replica().set());
    let synced = client.sync(transport, now).map_err(|e| format!("[{}] {e}", e.code()))?;
    let after = entries(client.replica().set());
    for (kind, id) in before.keys().filter(|k| !after.contains_key(*k)) {
        store.delete(&entry_key(*kind, id))?;
    }
    for ((kind, id), cut) in after.iter().filter(|(k, v)| before.get(*k) != Some(*v)) {
        store.set(&entry_key(*kind, id), cut.to_string().as_bytes())?;
    }
    store.set(STATE, &serde_json::to_vec(&client.save()).map_err(|e| e.to_string())?)?;
    record.synced = client.replica().synced();
    record.confirmed_ms = client.confirmed_at().map(millis);
    store.set(RECORD, &serde_json::to_vec(&record).map_err(|e| e.to_string())?)?;
    Ok((record, Some(synced)))
}

fn entries(set: &RevocationSet) -> BTreeMap<(RevocationKind, String), i64> {
    set.entries().map(|(kind, id, before)| ((kind, id.to_owned()), before)).collect()
}

/// A store in memory, for the tests of this crate.
#[cfg(test)]
pub(crate) mod memory {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::Store;

    /// The values, and how many reads were made.
    #[derive(Default)]
    pub(crate) struct Map(pub(crate) RefCell<BTreeMap<String, Vec<u8>>>, pub(crate) std::cell::Cell<usize>);

    impl Store for Map {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            self.1.set(self.1.get() + 1);
            Ok(self.0.borrow().get(key).cloned())
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
            self.0.borrow_mut().insert(key.to_owned(), value.to_vec());
            Ok(())
        }
        fn delete(&self, key: &str) -> Result<(), String> {
            self.0.borrow_mut().remove(key);
            Ok(())
        }
    }

    /// One map shared by several openings of "the store" (a fresh instance per request).
    impl Store for std::rc::Rc<Map> {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
            (**self).get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), String> {
            (**self).set(key, value)
        }
        fn delete(&self, key: &str) -> Result<(), String> {
            (**self).delete(key)
        }
    }
}

#[cfg(test)]
mod tests {
    use portcullis_adapter::revocation::Replica;
    use portcullis_core::revocation_log::{Change, Op};

    use super::*;
    use crate::settings::Url;

    use super::memory::Map;

    /// The sidecar's side: a replica serving its own feed.
    struct Sidecar {
        replica: Replica,
        fresh: bool,
        up: bool,
    }

    impl FeedTransport for Sidecar {
        fn fetch(&mut self, target: &str) -> Result<Vec<u8>, String> {
            if !self.up {
                return Err("connection refused".into());
            }
            let since = target.split_once("since=").and_then(|(_, s)| s.parse().ok());
            let source = self.replica.source().to_owned();
            let feed = self.replica.feed(since.map(|s| (source.as_str(), s)), self.fresh).ok_or("no snapshot yet")?;
            Ok(serde_json::to_vec(&feed).unwrap())
        }
    }

    fn sidecar() -> Sidecar {
        let mut replica = Replica::new(100);
        let mut set = RevocationSet::default();
        set.insert(RevocationKind::TokenId, "jti-1", 0);
        replica.replace(set, "log-a", 1).unwrap();
        Sidecar { replica, fresh: true, up: true }
    }

    fn revoke(s: &mut Sidecar, seq: i64, kind: RevocationKind, id: &str, before: Option<i64>, op: Op) {
        let change = Change { seq, op, kind, id: id.into(), issued_before: before };
        assert!(s.replica.apply(&[change]));
    }

    fn feed() -> Feed {
        Feed {
            url: Url::parse("revocations_feed", "http://127.0.0.1:9901").unwrap(),
            credential: "Bearer x".into(),
            poll: Duration::from_secs(1),
            stale_after: Duration::from_secs(10),
            mode: StaleMode::Serve,
            store: "default".into(),
        }
    }

    const T0: Duration = Duration::from_secs(1_800_000_000);

    #[test]
    fn nothing_is_active_before_the_first_snapshot_is_stored() {
        let store = Map::default();
        let s = Stored::open(&store, &feed(), T0);
        assert_eq!(s.status(RevocationQuery::TokenId("jti-2")), RevocationStatus::Unavailable);
        assert!(s.is_stale());
    }

    #[test]
    fn a_sync_stores_the_set_and_each_request_reads_only_its_keys() {
        let store = Map::default();
        let mut side = sidecar();
        assert_eq!(sync(&store, &feed(), &mut side, T0).unwrap(), Some(Synced::Snapshot { entries: 1 }));
        let s = Stored::open(&store, &feed(), T0);
        assert_eq!(s.status(RevocationQuery::TokenId("jti-1")), RevocationStatus::Revoked);
        assert_eq!(s.status(RevocationQuery::TokenId("jti-2")), RevocationStatus::Active);
        assert!(!store.0.borrow().keys().any(|k| k.contains("jti-1")), "identifiers are hashed");

        // Not due again within the poll period.
        revoke(&mut side, 2, RevocationKind::TokenId, "jti-2", None, Op::Revoke);
        assert_eq!(sync(&store, &feed(), &mut side, T0 + Duration::from_millis(500)).unwrap(), None);
        let later = T0 + Duration::from_secs(1);
        assert_eq!(sync(&store, &feed(), &mut side, later).unwrap(), Some(Synced::Changes { applied: 1 }));
        let s = Stored::open(&store, &feed(), later);
        assert_eq!(s.status(RevocationQuery::TokenId("jti-2")), RevocationStatus::Revoked);

        // Subjects keep their cut-off; an unrevoke removes the key.
        revoke(&mut side, 3, RevocationKind::Subject, "alice", Some(100), Op::Revoke);
        revoke(&mut side, 4, RevocationKind::TokenId, "jti-1", None, Op::Unrevoke);
        let later = later + Duration::from_secs(1);
        sync(&store, &feed(), &mut side, later).unwrap();
        let s = Stored::open(&store, &feed(), later);
        let subject = |iat| RevocationQuery::Subject { subject: "alice", issued_at: iat };
        assert_eq!(s.status(subject(Some(99.0))), RevocationStatus::Revoked);
        assert_eq!(s.status(subject(Some(101.0))), RevocationStatus::Active);
        assert_eq!(s.status(RevocationQuery::TokenId("jti-1")), RevocationStatus::Active);
        assert_eq!(store.0.borrow().keys().filter(|k| k.starts_with(ENTRY)).count(), 2);
    }

    #[test]
    fn a_request_reads_the_record_once_and_syncs_first_when_due() {
        let store = Map::default();
        let mut side = sidecar();
        let (s, error) = Stored::open_synced(&store, &feed(), &mut side, T0);
        assert_eq!(error, None);
        assert_eq!(s.status(RevocationQuery::TokenId("jti-1")), RevocationStatus::Revoked, "synced before deciding");
        assert!(!s.is_stale());
        // Within the poll period: the record alone, read once, then the identifier's key.
        store.1.set(0);
        let (s, error) = Stored::open_synced(&store, &feed(), &mut side, T0 + Duration::from_millis(300));
        assert_eq!((error, store.1.get()), (None, 1));
        assert_eq!(s.status(RevocationQuery::TokenId("jti-1")), RevocationStatus::Revoked);
        assert_eq!(store.1.get(), 2);
        // Due, and the feed is down: the error comes back, the stored set stays.
        side.up = false;
        let (s, error) = Stored::open_synced(&store, &feed(), &mut side, T0 + Duration::from_secs(2));
        assert!(error.is_some_and(|e| e.contains("feed_unreachable")));
        assert_eq!(s.status(RevocationQuery::TokenId("jti-1")), RevocationStatus::Revoked);
        assert_eq!(s.status(RevocationQuery::TokenId("jti-2")), RevocationStatus::Active);
    }

    #[test]
    fn a_failed_sync_keeps_the_set_and_the_bound_applies() {
        let store = Map::default();
        let mut side = sidecar();
        sync(&store, &feed(), &mut side, T0).unwrap();
        side.up = false;
        let later = T0 + Duration::from_secs(5);
        assert!(sync(&store, &feed(), &mut side, later).unwrap_err().contains("feed_unreachable"));
        let s = Stored::open(&store, &feed(), later);
        assert_eq!(s.status(RevocationQuery::TokenId("jti-1")), RevocationStatus::Revoked);
        assert!(!s.is_stale());
        let much_later = T0 + Duration::from_secs(11);
        let closed = Feed { mode: StaleMode::FailClosed, ..feed() };
        let s = Stored::open(&store, &closed, much_later);
        assert!(s.is_stale());
        assert_eq!(s.status(RevocationQuery::TokenId("jti-9")), RevocationStatus::Unavailable);
        assert_eq!(s.status(RevocationQuery::TokenId("jti-1")), RevocationStatus::Revoked);
    }

    #[test]
    fn a_snapshot_that_would_unrevoke_is_refused_and_the_store_keeps_its_set() {
        let store = Map::default();
        let mut side = sidecar();
        sync(&store, &feed(), &mut side, T0).unwrap();
        // The same log, an older point: refused by the kit's rules.
        let mut older = Replica::new(10);
        older.replace(RevocationSet::default(), "log-a", 0).unwrap();
        let mut stale_side = Sidecar { replica: older, fresh: true, up: true };
        let later = T0 + Duration::from_secs(2);
        // The stored follower asks for changes since 1; the older sidecar answers a snapshot at 0.
        let e = sync(&store, &feed(), &mut stale_side, later).unwrap_err();
        assert!(e.contains("feed_"), "{e}");
        let s = Stored::open(&store, &feed(), later);
        assert_eq!(s.status(RevocationQuery::TokenId("jti-1")), RevocationStatus::Revoked);
    }
}
