//! The embedded default store: a JSON Lines file of [`Record`]s, watched for changes.
//!
//! The first line is a header naming the file's *lineage*, `{"portcullis_revocations":1,
//! "log":"<id>"}`; every other line is one record. Writers (`portcullis revoke`, the admin API)
//! take an exclusive lock on `<file>.lock`. A revocation is appended without parsing what is
//! already there, so revoking keeps working while the file holds a bad line. Removals
//! (`unrevoke`, `prune`, `revocations repair`) rewrite the file through a temporary file and a
//! rename, under a new lineage whose header names the one it continues (`"previous"`).
//!
//! The lineage is what lets the watcher tell an edit from an accident. Once a set has loaded,
//! a file that is missing, empty, unreadable, invalid, or that does not continue the lineage
//! loaded (truncated and appended to, replaced by another file) is a fault: the last good set
//! stays in force, an error is logged and counted, and the set is not confirmed, so the
//! staleness bound applies. Restarting the sidecar accepts whatever the file then holds.
//! Files without a header (written before the header existed, or by hand) are read as a
//! lineage of their own; they are accepted only while they hold at least one record.
//!
//! For one sidecar on one machine (the quick start, development, small fleets with a shared
//! volume). Production fleets use Postgres.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use portcullis_core::RevocationKind;
use portcullis_core::revocation_log::parse_file_line as parse_line;
use portcullis_core::revocation_log::{FileHeader as Header, FileLine as Line, MAX_FILE_LINE_BYTES};
use tokio::sync::watch;

use super::{Change, ListFilter, LiveRevocations, Op, Record, StoreError};

/// Largest revocations file read (about ten million entries).
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// A revocations file.
#[derive(Clone, Debug)]
pub struct FileStore {
    path: PathBuf,
    /// What this process has already read of the file, so a writer appends without
    /// re-reading everything (the admin API at a million entries).
    index: Arc<Mutex<Option<WriterIndex>>>,
}

/// A new lineage's header, continuing `previous` when there is one.
fn new_header(previous: Option<String>) -> Header {
    let mut rng = [0u8; 12];
    // Without randomness two lineages may share an id; the clock still tells them apart.
    let _ = getrandom::fill(&mut rng);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let log = format!("{nanos:x}-{}", rng.iter().map(|b| format!("{b:02x}")).collect::<String>());
    Header { portcullis_revocations: 1, log, previous }
}

fn header_line(h: &Header) -> Result<String, StoreError> {
    let mut s = serde_json::to_string(h).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    s.push('\n');
    Ok(s)
}

/// What a file holds.
#[derive(Debug, Default)]
pub struct Contents {
    /// The header, when the file has one.
    pub header: Option<Header>,
    /// Every valid record, in file order.
    pub records: Vec<Record>,
    /// Lines that are not valid records (tolerant reads only): `(line, message)`.
    pub rejected: Vec<(usize, String)>,
}

impl Contents {
    /// The lineage id (`""` for a file without a header).
    pub fn lineage(&self) -> &str {
        self.header.as_ref().map_or("", |h| h.log.as_str())
    }
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

/// A writer's view of the file: the effective entries up to `offset`.
#[derive(Debug)]
struct WriterIndex {
    offset: u64,
    entries: HashMap<Key, i64>,
    /// The file as this process last left it (after its own read or append). Anything else
    /// (another process's append, an edit in place) changes it, and the next call re-reads
    /// the whole file rather than trusting entries that may have been edited away.
    stamp: Option<Fingerprint>,
}

fn inode(m: &std::fs::Metadata) -> u64 {
    #[cfg(unix)]
    return std::os::unix::fs::MetadataExt::ino(m);
    #[cfg(not(unix))]
    return 0;
}

fn open_regular(path: &Path) -> std::io::Result<Option<(File, std::fs::Metadata)>> {
    crate::files::open_regular(path, MAX_FILE_BYTES).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => {
            std::io::Error::new(e.kind(), format!("{e}: compact it with `portcullis revocations prune`"))
        }
        _ => e,
    })
}

/// Reads the lines of `file` from `offset`, numbering them from `first_line`, calling `each`
/// with each line's number and text. A last line without its newline is read too when
/// `unfinished` is true; otherwise reading stops before it (a writer appending after it must
/// first end it). Returns the offset after the last line read and the next line number.
fn read_lines(
    path: &Path,
    file: File,
    offset: u64,
    first_line: usize,
    unfinished: bool,
    mut each: impl FnMut(usize, &str) -> Result<(), ParseError>,
) -> Result<(u64, usize), ParseError> {
    let err = |line: usize, message: String| ParseError { path: path.display().to_string(), line, message };
    let mut reader = BufReader::new(file);
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(offset)).map_err(|e| err(first_line, e.to_string()))?;
    let mut reader = reader.take(MAX_FILE_BYTES.saturating_sub(offset));
    let (mut pos, mut n) = (offset, first_line);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let limit = u64::try_from(MAX_FILE_LINE_BYTES + 1).unwrap_or(u64::MAX);
        let read = (&mut reader).take(limit).read_until(b'\n', &mut buf).map_err(|e| err(n, e.to_string()))?;
        if read == 0 {
            return Ok((pos, n));
        }
        if buf.last() != Some(&b'\n') {
            if buf.len() > MAX_FILE_LINE_BYTES {
                return Err(err(n, format!("line longer than {MAX_FILE_LINE_BYTES} bytes")));
            }
            if !unfinished {
                return Ok((pos, n));
            }
        }
        let text = std::str::from_utf8(&buf).map_err(|_| err(n, "not UTF-8".into()))?;
        each(n, text.trim_end_matches(['\n', '\r']))?;
        if buf.last() != Some(&b'\n') {
            return Ok((pos + u64::try_from(read).unwrap_or(u64::MAX), n + 1));
        }
        pos += u64::try_from(read).unwrap_or(u64::MAX);
        n += 1;
    }
}

/// Reads `path`: `None` when it does not exist. Strict: the first bad line is an error.
/// Tolerant: bad lines are collected in [`Contents::rejected`] and reading goes on.
pub fn read_file(path: &Path, tolerant: bool) -> Result<Option<Contents>, StoreError> {
    let Some((file, _)) = open_regular(path).map_err(|e| unavailable(path, &e))? else { return Ok(None) };
    let mut out = Contents::default();
    let mut seen_content = false;
    let read = read_lines(path, file, 0, 1, true, |n, text| {
        let first = !seen_content;
        match parse_line(first, text) {
            Ok(Line::Blank) => {}
            Ok(Line::Header(h)) => {
                seen_content = true;
                out.header = Some(h);
            }
            Ok(Line::Record(r)) => {
                seen_content = true;
                out.records.push(r);
            }
            Err(message) if tolerant => {
                seen_content = true;
                out.rejected.push((n, message));
            }
            Err(message) => return Err(ParseError { path: path.display().to_string(), line: n, message }),
        }
        Ok(())
    });
    match read {
        Ok(_) => Ok(Some(out)),
        Err(e) if tolerant => {
            out.rejected.push((e.line, e.message));
            Ok(Some(out))
        }
        Err(e) => Err(StoreError::Unavailable(e.to_string())),
    }
}

impl FileStore {
    /// A store at `path` (created on first write; a missing file is an empty set).
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into(), index: Arc::default() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every record strictly; a missing file is empty.
    pub fn read(&self) -> Result<Vec<Record>, StoreError> {
        Ok(read_file(&self.path, false)?.map(|c| c.records).unwrap_or_default())
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

    /// Appends a revocation unless the file already covers it. Reads only what this process
    /// has not read yet, and skips lines it cannot parse: a damaged file never stops a
    /// revocation.
    pub async fn revoke(&self, record: &Record) -> Result<bool, StoreError> {
        let record = record.clone();
        self.blocking(move |s| {
            let mut guard = s.index.lock().unwrap_or_else(PoisonError::into_inner);
            let index = s.catch_up(guard.take())?;
            let key = (record.kind, record.id.clone());
            if index.entries.get(&key).is_some_and(|&b| b >= record.before()) {
                *guard = Some(index);
                return Ok(false);
            }
            let mut text = String::new();
            if index.offset == 0 {
                text.push_str(&header_line(&new_header(None))?);
            }
            text.push_str(&serde_json::to_string(&record).map_err(|e| StoreError::Unavailable(e.to_string()))?);
            text.push('\n');
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&s.path)
                .map_err(|e| unavailable(&s.path, &e))?;
            f.write_all(text.as_bytes()).and_then(|()| f.sync_data()).map_err(|e| unavailable(&s.path, &e))?;
            // The next call reads from where this one stopped, this line included, unless
            // someone else has touched the file by then.
            let mut index = index;
            index.stamp = f.metadata().ok().map(|m| Fingerprint::of(&m));
            *guard = Some(index);
            Ok(true)
        })
        .await
    }

    /// Brings a writer's index up to the file's end: only the lines this process appended
    /// itself when nobody else has touched the file since, else the whole file again.
    fn catch_up(&self, index: Option<WriterIndex>) -> Result<WriterIndex, StoreError> {
        let Some((file, meta)) = open_regular(&self.path).map_err(|e| unavailable(&self.path, &e))? else {
            return Ok(WriterIndex { offset: 0, entries: HashMap::new(), stamp: None });
        };
        let now = Fingerprint::of(&meta);
        let mut index = match index {
            Some(i) if i.stamp == Some(now) && i.offset <= meta.len() => i,
            _ => WriterIndex { offset: 0, entries: HashMap::new(), stamp: None },
        };
        let first = index.offset == 0;
        let entries = &mut index.entries;
        let mut seen_content = !first;
        let (offset, _) = read_lines(&self.path, file, index.offset, 1, false, |_, text| {
            if let Ok(Line::Record(r)) = parse_line(!seen_content, text) {
                let e = entries.entry((r.kind, r.id)).or_insert(r.issued_before.unwrap_or(0));
                *e = (*e).max(r.issued_before.unwrap_or(0));
            }
            seen_content |= !text.trim().is_empty();
            Ok(())
        })
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        index.offset = offset;
        index.stamp = Some(now);
        // A writer's view always ends at a line boundary; a file without a trailing newline
        // (edited by hand) gets one before the next append.
        if offset < meta.len() {
            let mut f =
                std::fs::OpenOptions::new().append(true).open(&self.path).map_err(|e| unavailable(&self.path, &e))?;
            f.write_all(b"\n").map_err(|e| unavailable(&self.path, &e))?;
            return self.catch_up(Some(index));
        }
        Ok(index)
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

    /// Rewrites the file keeping only its valid records; the lines dropped are appended to
    /// `<file>.rejected`. Returns `(kept, rejected)`.
    pub async fn repair(&self) -> Result<(usize, usize), StoreError> {
        self.blocking(|s| {
            let Some(contents) = read_file(&s.path, true)? else { return Ok((0, 0)) };
            if !contents.rejected.is_empty() {
                let mut rejected_path = s.path.clone().into_os_string();
                rejected_path.push(".rejected");
                let mut out = String::new();
                for (line, message) in &contents.rejected {
                    out.push_str(&serde_json::json!({ "line": line, "error": message }).to_string());
                    out.push('\n');
                }
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&rejected_path)
                    .map_err(|e| unavailable(Path::new(&rejected_path), &e))?;
                f.write_all(out.as_bytes()).map_err(|e| unavailable(Path::new(&rejected_path), &e))?;
            }
            let records: Vec<&Record> = contents.records.iter().collect();
            s.write_all(&contents, &records)?;
            Ok((records.len(), contents.rejected.len()))
        })
        .await
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

    /// Keeps the records `keep` accepts; returns how many were dropped. Needs a valid file:
    /// a rewrite must not silently drop lines it cannot read (`revocations repair` does that,
    /// keeping them aside).
    fn rewrite(&self, keep: impl Fn(&Record) -> bool) -> Result<u64, StoreError> {
        let Some(contents) = read_file(&self.path, false).map_err(|e| match e {
            StoreError::Unavailable(m) => StoreError::Unavailable(format!(
                "{m} (fix the line, or run `portcullis revocations repair` to set bad lines aside)"
            )),
            e => e,
        })?
        else {
            return Ok(0);
        };
        let kept: Vec<&Record> = contents.records.iter().filter(|r| keep(r)).collect();
        let dropped = contents.records.len() - kept.len();
        if dropped == 0 {
            return Ok(0);
        }
        self.write_all(&contents, &kept)?;
        Ok(u64::try_from(dropped).unwrap_or(u64::MAX))
    }

    /// Replaces the file with `records` under a new lineage continuing the current one.
    fn write_all(&self, contents: &Contents, records: &[&Record]) -> Result<(), StoreError> {
        let mut text = header_line(&new_header(Some(contents.lineage().to_owned())))?;
        for r in records {
            text.push_str(&serde_json::to_string(r).map_err(|e| StoreError::Unavailable(e.to_string()))?);
            text.push('\n');
        }
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| unavailable(&self.path, &e))?;
        // The inode changed: the next append re-reads from the start.
        *self.index.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }
}

fn unavailable(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Unavailable(format!("{}: {e}", path.display()))
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

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
struct Fingerprint {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Fingerprint {
    fn of(m: &std::fs::Metadata) -> Fingerprint {
        Fingerprint { len: m.len(), modified: m.modified().ok(), inode: inode(m) }
    }
}

fn fingerprint(path: &Path) -> std::io::Result<Option<Fingerprint>> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(Some(Fingerprint::of(&m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Which lineage the loaded set came from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Lineage {
    /// The file did not exist when the set loaded: whatever file appears first is accepted.
    NoFile,
    /// The lineage id (`""` for a file without a header).
    Known(String),
}

/// The watcher's verdict on what it read.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Apply it.
    Accept(Lineage),
    /// Keep the last good set; the message says why.
    Refuse(String),
}

/// Whether `read` may replace a set loaded from `loaded` (`None`: nothing loaded yet).
fn judge(loaded: Option<&Lineage>, read: Option<&Contents>) -> Verdict {
    let Some(loaded) = loaded else {
        return Verdict::Accept(read.map_or(Lineage::NoFile, |c| Lineage::Known(c.lineage().to_owned())));
    };
    let Some(c) = read else {
        return match loaded {
            Lineage::NoFile => Verdict::Accept(Lineage::NoFile),
            Lineage::Known(_) => Verdict::Refuse("the revocations file is missing".into()),
        };
    };
    let id = c.lineage();
    match loaded {
        Lineage::NoFile => Verdict::Accept(Lineage::Known(id.to_owned())),
        _ if c.header.is_none() && c.records.is_empty() => Verdict::Refuse("the revocations file is empty".into()),
        Lineage::Known(known) if known == id => Verdict::Accept(Lineage::Known(id.to_owned())),
        Lineage::Known(known) if c.header.as_ref().and_then(|h| h.previous.as_deref()) == Some(known.as_str()) => {
            Verdict::Accept(Lineage::Known(id.to_owned()))
        }
        Lineage::Known(_) => Verdict::Refuse(
            "the revocations file was replaced by one that does not continue it (truncated, or another file)".into(),
        ),
    }
}

/// Follows the file until shutdown: loads it, then re-reads it whenever it changes.
pub async fn watch(store: FileStore, live: Arc<LiveRevocations>, poll: Duration, mut stop: watch::Receiver<bool>) {
    let mut rng = [0u8; 8];
    let _ = getrandom::fill(&mut rng);
    let source = format!("file-{}", u64::from_le_bytes(rng));
    // The fingerprint last read, and whether that read was accepted.
    let mut seen: Option<(Option<Fingerprint>, bool)> = None;
    let mut lineage: Option<Lineage> = None;
    let mut current: HashMap<Key, i64> = HashMap::new();
    let mut interval = tokio::time::interval(poll);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let started = Instant::now();
        let path = store.path.clone();
        let polled = tokio::task::spawn_blocking(move || fingerprint(&path)).await;
        let fp = match polled {
            Ok(Ok(fp)) => fp,
            Ok(Err(e)) => {
                live.metrics.sync_errors.inc();
                tracing::error!(error = %e, file = %store.path.display(), "cannot read the revocations file; keeping the last good set");
                continue;
            }
            Err(_) => continue,
        };
        match seen {
            // Unchanged since a good read: still fresh. Unchanged since a bad one: still not.
            Some((prev, true)) if prev == fp => {
                live.confirm(started);
                continue;
            }
            Some((prev, false)) if prev == fp => continue,
            _ => {}
        }
        let path = store.path.clone();
        let read = match tokio::task::spawn_blocking(move || read_file(&path, false)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable("the file reader panicked".into())),
        };
        let outcome = read.and_then(|contents| match judge(lineage.as_ref(), contents.as_ref()) {
            Verdict::Accept(l) => Ok((l, contents.map(|c| c.records).unwrap_or_default())),
            Verdict::Refuse(why) => Err(StoreError::Unavailable(why)),
        });
        match outcome {
            Ok((l, records)) => {
                let next = effective(&records);
                match live.cursor() {
                    None => {
                        if let Err(e) = live.replace(super::set_of(&records), &source, 0) {
                            tracing::error!(error = %e, "revocations not loaded");
                            continue;
                        }
                        tracing::info!(entries = next.len(), file = %store.path.display(), "revocations loaded");
                    }
                    Some(cursor) => {
                        let changes = diff(&current, &next, cursor);
                        if !live.apply(&changes)
                            && let Err(e) = live.replace(super::set_of(&records), &source, cursor + 1)
                        {
                            tracing::error!(error = %e, "revocations not reloaded; keeping the last good set");
                            continue;
                        }
                        if !changes.is_empty() {
                            tracing::info!(changes = changes.len(), entries = next.len(), "revocations file changed");
                        }
                    }
                }
                current = next;
                lineage = Some(l);
                seen = Some((fp, true));
                live.confirm(started);
            }
            Err(e) => {
                // The last good set stays in force, unconfirmed: the staleness bound applies
                // if nobody fixes the file.
                live.metrics.sync_errors.inc();
                tracing::error!(error = %e, file = %store.path.display(), "revocations file rejected; keeping the last good set (unconfirmed)");
                seen = Some((fp, false));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portcullis-file-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_strict_read_reports_the_line_and_a_header_only_comes_first() {
        let dir = scratch("strict");
        let f = dir.join("r.jsonl");
        let ok = r#"{"kind":"jti","id":"a","actor":"ops","created_at":1}"#;
        std::fs::write(&f, format!("{ok}\n\n{{\"kind\":\"nope\",\"id\":\"b\"}}\n")).unwrap();
        let e = read_file(&f, false).unwrap_err().to_string();
        assert!(e.contains("r.jsonl:3:") && e.contains("unknown revocation kind"), "{e}");
        let tolerant = read_file(&f, true).unwrap().unwrap();
        assert_eq!((tolerant.records.len(), tolerant.rejected.len()), (1, 1));
        let header = r#"{"portcullis_revocations":1,"log":"x"}"#;
        std::fs::write(&f, format!("{header}\n{ok}\n")).unwrap();
        let c = read_file(&f, false).unwrap().unwrap();
        assert_eq!((c.lineage(), c.records.len()), ("x", 1));
        std::fs::write(&f, format!("{ok}\n{header}\n")).unwrap();
        assert!(read_file(&f, false).is_err(), "a header only comes first");
        let _ = std::fs::remove_dir_all(&dir);
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

    fn contents(header: Option<(&str, Option<&str>)>, records: usize) -> Contents {
        Contents {
            header: header.map(|(log, previous)| Header {
                portcullis_revocations: 1,
                log: log.into(),
                previous: previous.map(Into::into),
            }),
            records: (0..records).map(|i| Record::new(RevocationKind::TokenId, format!("j{i}"), "t", 1)).collect(),
            rejected: Vec::new(),
        }
    }

    #[test]
    fn a_loaded_lineage_is_only_continued_never_replaced() {
        let known = Lineage::Known("a".into());
        let accept = |id: &str| Verdict::Accept(Lineage::Known(id.into()));
        // First load: anything, including no file.
        assert_eq!(judge(None, None), Verdict::Accept(Lineage::NoFile));
        assert_eq!(judge(None, Some(&contents(Some(("a", None)), 0))), accept("a"));
        // Same lineage (appends, edits), or a rewrite that names it as previous.
        assert_eq!(judge(Some(&known), Some(&contents(Some(("a", None)), 0))), accept("a"));
        assert_eq!(judge(Some(&known), Some(&contents(Some(("b", Some("a"))), 0))), accept("b"));
        // Missing, emptied, or truncated and appended to (a new lineage from nothing).
        assert!(matches!(judge(Some(&known), None), Verdict::Refuse(m) if m.contains("missing")));
        assert!(matches!(judge(Some(&known), Some(&contents(None, 0))), Verdict::Refuse(m) if m.contains("empty")));
        assert!(matches!(judge(Some(&known), Some(&contents(Some(("c", None)), 3))), Verdict::Refuse(_)));
        assert!(matches!(judge(Some(&known), Some(&contents(Some(("c", Some("z"))), 3))), Verdict::Refuse(_)));
        // A file without a header is its own lineage, accepted only while it holds records.
        let legacy = Lineage::Known(String::new());
        assert_eq!(judge(Some(&legacy), Some(&contents(None, 2))), accept(""));
        assert!(matches!(judge(Some(&legacy), Some(&contents(None, 0))), Verdict::Refuse(_)));
        assert_eq!(judge(Some(&legacy), Some(&contents(Some(("d", Some(""))), 0))), accept("d"));
        assert!(matches!(judge(Some(&legacy), Some(&contents(Some(("d", None)), 1))), Verdict::Refuse(_)));
        // No file at load: the first file to appear is accepted, a still-missing one too.
        assert_eq!(judge(Some(&Lineage::NoFile), None), Verdict::Accept(Lineage::NoFile));
        assert_eq!(judge(Some(&Lineage::NoFile), Some(&contents(Some(("e", None)), 1))), accept("e"));
    }

    #[tokio::test]
    async fn revoke_unrevoke_and_prune_round_trip() {
        let dir = scratch("round-trip");
        let store = FileStore::new(dir.join("revocations.jsonl"));
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
        let first = read_file(store.path(), false).unwrap().unwrap();
        assert!(first.header.is_some(), "a new file starts with its header");
        assert_eq!(store.prune(200).await.unwrap(), 1, "j2 expired");
        let pruned = read_file(store.path(), false).unwrap().unwrap();
        assert_eq!(pruned.header.unwrap().previous.as_deref(), Some(first.lineage()), "a rewrite continues");
        assert!(store.unrevoke(RevocationKind::TokenId, "j1").await.unwrap());
        assert!(!store.unrevoke(RevocationKind::TokenId, "j1").await.unwrap());
        let left = store.list(&ListFilter { kind: Some(RevocationKind::Subject), ..Default::default() }).await;
        assert_eq!(left.unwrap().len(), 2);
        // After a rewrite (new inode) a writer re-reads rather than trusting its old offset.
        assert!(!store.revoke(&Record::new(RevocationKind::Subject, "alice", "ops", 110)).await.unwrap());
        assert!(store.revoke(&Record::new(RevocationKind::TokenId, "j1", "ops", 300)).await.unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_writer_never_trusts_what_it_read_once_the_file_changed_behind_it() {
        let dir = scratch("edited");
        let store = FileStore::new(dir.join("revocations.jsonl"));
        let r = Record::new(RevocationKind::TokenId, "x", "ops", 1);
        assert!(store.revoke(&r).await.unwrap());
        assert!(!store.revoke(&r).await.unwrap(), "covered, from what this writer knows");
        // Edited in place (same file, longer, the line for x gone): x must be written again.
        let text = std::fs::read_to_string(store.path()).unwrap();
        let header = text.lines().next().unwrap();
        let other =
            serde_json::to_string(&Record::new(RevocationKind::TokenId, "a-much-longer-id-than-x", "ops", 1)).unwrap();
        std::fs::write(store.path(), format!("{header}\n{other}\n")).unwrap();
        assert!(store.revoke(&r).await.unwrap(), "re-read, not trusted");
        assert!(store.read().unwrap().iter().any(|l| l.id == "x"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn revoking_works_while_the_file_holds_a_bad_line_and_repair_sets_it_aside() {
        let dir = scratch("bad-line");
        let store = FileStore::new(dir.join("revocations.jsonl"));
        assert!(store.revoke(&Record::new(RevocationKind::TokenId, "j1", "ops", 1)).await.unwrap());
        std::fs::OpenOptions::new().append(true).open(store.path()).unwrap().write_all(b"NOT JSON").unwrap();
        // Another process (a fresh writer index) appends past the damage.
        let other = FileStore::new(store.path());
        assert!(other.revoke(&Record::new(RevocationKind::TokenId, "j2", "ops", 2)).await.unwrap());
        assert!(store.revoke(&Record::new(RevocationKind::TokenId, "j3", "ops", 3)).await.unwrap());
        assert!(!other.revoke(&Record::new(RevocationKind::TokenId, "j1", "ops", 4)).await.unwrap());
        assert!(store.read().is_err(), "strict reads still report the bad line");
        let e = store.unrevoke(RevocationKind::TokenId, "j1").await.unwrap_err();
        assert!(e.to_string().contains("revocations repair"), "{e}");
        assert_eq!(store.repair().await.unwrap(), (3, 1));
        let ids: Vec<String> = store.read().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["j1", "j2", "j3"]);
        let rejected = std::fs::read_to_string(dir.join("revocations.jsonl.rejected")).unwrap();
        assert!(rejected.contains("\"line\":3"), "{rejected}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reads_are_bounded_and_refuse_what_is_not_a_regular_file() {
        let dir = scratch("bounds");
        let long = dir.join("long.jsonl");
        std::fs::write(&long, "x".repeat(MAX_FILE_LINE_BYTES + 10) + "\n").unwrap();
        let e = read_file(&long, false).unwrap_err().to_string();
        assert!(e.contains("longer than"), "{e}");
        let e = read_file(&dir, false).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        #[cfg(unix)]
        {
            let e = read_file(Path::new("/dev/zero"), false).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let bad = dir.join("bad.jsonl");
        std::fs::write(&bad, b"\xff\xfe\n").unwrap();
        assert!(read_file(&bad, false).unwrap_err().to_string().contains(":1: not UTF-8"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
