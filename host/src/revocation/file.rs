//! The embedded default store: a JSON Lines file of [`Record`]s, watched for changes.
//!
//! One record per line. Writers (`portcullis revoke`, the admin API) take an exclusive lock on
//! `<file>.lock` and either append a line or rewrite the file through a temporary file and a
//! rename, so a reader never sees half a file and concurrent writers never lose a line. The
//! watcher re-reads the file when its size, modification time or inode change, and turns the
//! difference into numbered changes, so the feed serves deltas in file mode too.
//!
//! For one sidecar on one machine (the quick start, development, small fleets with a shared
//! volume). Production fleets use Postgres.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use portcullis_core::RevocationKind;
use tokio::sync::watch;

use super::{Change, ListFilter, LiveRevocations, Op, Record, StoreError};

/// A revocations file.
#[derive(Clone, Debug)]
pub struct FileStore {
    path: PathBuf,
}

/// The file could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct ParseError {
    path: String,
    line: usize,
    message: String,
}

type Key = (RevocationKind, String);

impl FileStore {
    /// A store at `path` (created on first write; a missing file is an empty set).
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every record; a missing file is empty.
    pub fn read(&self) -> Result<Vec<Record>, StoreError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => parse(&self.path, &text).map_err(|e| StoreError::Unavailable(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(unavailable(&self.path, &e)),
        }
    }

    fn locked<T>(&self, f: impl FnOnce(&FileStore) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| unavailable(Path::new(&lock_path), &e))?;
        lock.lock().map_err(|e| unavailable(Path::new(&lock_path), &e))?;
        let out = f(self);
        drop(lock);
        out
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FileStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.locked(f))
            .await
            .map_err(|_| StoreError::Unavailable("the file writer panicked".into()))?
    }

    /// Appends a revocation unless it would change nothing.
    pub async fn revoke(&self, record: &Record) -> Result<bool, StoreError> {
        let record = record.clone();
        self.blocking(move |s| {
            let existing = s.read()?;
            let covered =
                existing.iter().any(|r| r.kind == record.kind && r.id == record.id && r.before() >= record.before());
            if covered {
                return Ok(false);
            }
            let mut line = serde_json::to_string(&record).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            line.push('\n');
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&s.path)
                .map_err(|e| unavailable(&s.path, &e))?;
            f.write_all(line.as_bytes()).and_then(|()| f.sync_data()).map_err(|e| unavailable(&s.path, &e))?;
            Ok(true)
        })
        .await
    }

    /// Removes every line of `(kind, id)`.
    pub async fn unrevoke(&self, kind: RevocationKind, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.blocking(move |s| s.rewrite(|r| !(r.kind == kind && r.id == id)).map(|n| n > 0)).await
    }

    /// Removes entries that expired before `now`.
    pub async fn prune(&self, now: i64) -> Result<u64, StoreError> {
        self.blocking(move |s| s.rewrite(|r| r.expires_at.is_none_or(|e| e >= now))).await
    }

    /// Lists records, newest first.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<Record>, StoreError> {
        let filter = filter.clone();
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut all: Vec<Record> = me.read()?.into_iter().filter(|r| filter.keeps(r)).collect();
            all.reverse();
            all.sort_by_key(|r| std::cmp::Reverse(r.created_at));
            all.truncate(filter.limit.unwrap_or(usize::MAX));
            Ok(all)
        })
        .await
        .map_err(|_| StoreError::Unavailable("the file reader panicked".into()))?
    }

    /// Keeps the records `keep` accepts; returns how many were dropped.
    fn rewrite(&self, keep: impl Fn(&Record) -> bool) -> Result<u64, StoreError> {
        let all = self.read()?;
        let before = all.len();
        let kept: Vec<&Record> = all.iter().filter(|r| keep(r)).collect();
        let dropped = before - kept.len();
        if dropped == 0 {
            return Ok(0);
        }
        let mut text = String::new();
        for r in kept {
            text.push_str(&serde_json::to_string(r).map_err(|e| StoreError::Unavailable(e.to_string()))?);
            text.push('\n');
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| unavailable(&self.path, &e))?;
        Ok(u64::try_from(dropped).unwrap_or(u64::MAX))
    }
}

fn unavailable(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
}

/// Parses a revocations file: one [`Record`] per non-empty line, each valid.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Record>, ParseError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| ParseError { path: path.display().to_string(), line: i + 1, message };
        let r: Record = serde_json::from_str(line).map_err(|e| err(e.to_string()))?;
        r.validate().map_err(|e| err(e.to_string()))?;
        out.push(r);
    }
    Ok(out)
}

/// The effective entries of a file: a key revoked twice keeps its latest cut-off.
fn effective(records: &[Record]) -> HashMap<Key, i64> {
    let mut m: HashMap<Key, i64> = HashMap::with_capacity(records.len());
    for r in records {
        let e = m.entry((r.kind, r.id.clone())).or_insert(r.before());
        *e = (*e).max(r.before());
    }
    m
}

/// The changes that turn `old` into `new`, numbered from `cursor + 1`.
fn diff(old: &HashMap<Key, i64>, new: &HashMap<Key, i64>, cursor: i64) -> Vec<Change> {
    let mut out = Vec::new();
    let mut seq = cursor;
    let mut push = |op, (kind, id): &Key, before: i64| {
        seq += 1;
        let issued_before = (*kind == RevocationKind::Subject).then_some(before);
        out.push(Change { seq, op, kind: *kind, id: id.clone(), issued_before });
    };
    for (k, &b) in new {
        if old.get(k) != Some(&b) {
            push(Op::Revoke, k, b);
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            push(Op::Unrevoke, k, 0);
        }
    }
    out
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn fingerprint(path: &Path) -> std::io::Result<Option<Fingerprint>> {
    match std::fs::metadata(path) {
        Ok(m) => {
            #[cfg(unix)]
            let inode = std::os::unix::fs::MetadataExt::ino(&m);
            #[cfg(not(unix))]
            let inode = 0;
            Ok(Some(Fingerprint { len: m.len(), modified: m.modified().ok(), inode }))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Follows the file until shutdown: loads it, then re-reads it whenever it changes.
pub async fn watch(store: FileStore, live: Arc<LiveRevocations>, poll: Duration, mut stop: watch::Receiver<bool>) {
    let mut rng = [0u8; 8];
    let _ = getrandom::fill(&mut rng);
    let source = format!("file-{}", u64::from_le_bytes(rng));
    let mut seen: Option<Option<Fingerprint>> = None;
    let mut current: HashMap<Key, i64> = HashMap::new();
    let mut interval = tokio::time::interval(poll);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let started = Instant::now();
        let s = store.clone();
        let polled = tokio::task::spawn_blocking(move || -> Result<_, String> {
            let fp = fingerprint(&s.path).map_err(|e| format!("{}: {e}", s.path.display()))?;
            Ok((fp, s))
        })
        .await;
        let (fp, s) = match polled {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                live.metrics.sync_errors.inc();
                tracing::error!(error = %e, "cannot read the revocations file");
                continue;
            }
            Err(_) => continue,
        };
        if seen == Some(fp) {
            live.confirm(started);
            continue;
        }
        let read = tokio::task::spawn_blocking(move || s.read()).await;
        match read {
            Ok(Ok(records)) => {
                let next = effective(&records);
                match live.cursor() {
                    None => {
                        live.replace(super::set_of(&records), &source, 0);
                        tracing::info!(entries = next.len(), file = %store.path.display(), "revocations loaded");
                    }
                    Some(cursor) => {
                        let changes = diff(&current, &next, cursor);
                        if !live.apply(&changes) {
                            live.replace(super::set_of(&records), &source, cursor);
                        }
                        if !changes.is_empty() {
                            tracing::info!(changes = changes.len(), entries = next.len(), "revocations file changed");
                        }
                    }
                }
                current = next;
                seen = Some(fp);
                live.confirm(started);
            }
            Ok(Err(e)) => {
                // The last good set stays in force; it is not confirmed, so the staleness bound
                // applies if nobody fixes the file.
                live.metrics.sync_errors.inc();
                tracing::error!(error = %e, "the revocations file is invalid; keeping the last good set");
                seen = Some(fp);
            }
            Err(_) => {
                live.metrics.sync_errors.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reports_the_line() {
        let ok = r#"{"kind":"jti","id":"a","actor":"ops","created_at":1}"#;
        let text = format!("{ok}\n\n{{\"kind\":\"nope\",\"id\":\"b\"}}\n");
        let e = parse(Path::new("r.jsonl"), &text).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unknown revocation kind"), "{e}");
        assert_eq!(parse(Path::new("r.jsonl"), ok).unwrap().len(), 1);
    }

    #[test]
    fn diff_numbers_changes_from_the_cursor() {
        let k = |id: &str| (RevocationKind::TokenId, id.to_string());
        let old = HashMap::from([(k("a"), 0), (k("b"), 0)]);
        let new = HashMap::from([(k("b"), 0), (k("c"), 0)]);
        let mut d = diff(&old, &new, 41);
        d.sort_by_key(|c| c.seq);
        assert_eq!(d.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![42, 43]);
        assert!(d.iter().any(|c| c.op == Op::Revoke && c.id == "c"));
        assert!(d.iter().any(|c| c.op == Op::Unrevoke && c.id == "a"));
    }

    #[tokio::test]
    async fn revoke_unrevoke_and_prune_round_trip() {
        let dir = std::env::temp_dir().join(format!("portcullis-file-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = FileStore::new(dir.join("revocations.jsonl"));
        let _ = std::fs::remove_file(store.path());
        let mut r = Record::new(RevocationKind::TokenId, "j1", "ops", 100);
        assert!(store.revoke(&r).await.unwrap());
        assert!(!store.revoke(&r).await.unwrap(), "already revoked");
        r.id = "j2".into();
        r.expires_at = Some(150);
        assert!(store.revoke(&r).await.unwrap());
        let s = Record::new(RevocationKind::Subject, "alice", "ops", 100);
        assert!(store.revoke(&s).await.unwrap());
        assert!(!store.revoke(&Record::new(RevocationKind::Subject, "alice", "ops", 90)).await.unwrap());
        assert!(store.revoke(&Record::new(RevocationKind::Subject, "alice", "ops", 120)).await.unwrap());
        assert_eq!(store.list(&ListFilter::default()).await.unwrap().len(), 4);
        assert_eq!(effective(&store.read().unwrap())[&(RevocationKind::Subject, "alice".into())], 120);
        assert_eq!(store.prune(200).await.unwrap(), 1, "j2 expired");
        assert!(store.unrevoke(RevocationKind::TokenId, "j1").await.unwrap());
        assert!(!store.unrevoke(RevocationKind::TokenId, "j1").await.unwrap());
        let left = store.list(&ListFilter { kind: Some(RevocationKind::Subject), ..Default::default() }).await;
        assert_eq!(left.unwrap().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
