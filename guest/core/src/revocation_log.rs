//! What revocation stores and feeds exchange: records as stored and listed, the numbered
//! changes of a store's log, the feed's snapshots and deltas, and the lines of the revocations
//! file. Plain data with their parsers and checks, no IO, so that every runtime (the sidecar,
//! the Envoy filter, Spin) reads them the same way, and the parsers can be fuzzed alone.

use serde::{Deserialize, Serialize};

use crate::RevocationKind;

/// Longest identifier accepted (bytes).
pub const MAX_ID_BYTES: usize = 1024;
/// Longest tenant, reason or actor accepted (bytes).
pub const MAX_TEXT_BYTES: usize = 1024;

/// One revocation, as stored, listed and written to the revocations file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// What is revoked.
    pub kind: RevocationKind,
    /// The `jti`, API key id or subject.
    pub id: String,
    /// Subjects only: credentials issued at or before this Unix time are revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<i64>,
    /// The tenant the entry belongs to (metadata; lookups are not scoped by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Why.
    #[serde(default)]
    pub reason: String,
    /// Who (a CLI user, or the admin API caller's subject).
    #[serde(default)]
    pub actor: String,
    /// When it was recorded (Unix seconds).
    #[serde(default)]
    pub created_at: i64,
    /// After this Unix time every credential it targets has expired, so it may be pruned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// A revocation request was not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Record {
    /// A new record at `now`; subjects default to "everything issued up to now".
    pub fn new(kind: RevocationKind, id: impl Into<String>, actor: impl Into<String>, now: i64) -> Record {
        Record {
            kind,
            id: id.into(),
            issued_before: (kind == RevocationKind::Subject).then_some(now),
            tenant: None,
            reason: String::new(),
            actor: actor.into(),
            created_at: now,
            expires_at: None,
        }
    }

    /// Checks the fields every store relies on.
    pub fn validate(&self) -> Result<(), Invalid> {
        let text = |what: &str, s: &str, max: usize| {
            if s.len() > max {
                return Err(Invalid(format!("{what} is longer than {max} bytes")));
            }
            if s.chars().any(char::is_control) {
                return Err(Invalid(format!("{what} contains control characters")));
            }
            Ok(())
        };
        if self.id.is_empty() {
            return Err(Invalid("the id is empty".into()));
        }
        text("the id", &self.id, MAX_ID_BYTES)?;
        text("the tenant", self.tenant.as_deref().unwrap_or_default(), MAX_TEXT_BYTES)?;
        text("the reason", &self.reason, MAX_TEXT_BYTES)?;
        text("the actor", &self.actor, MAX_TEXT_BYTES)?;
        match (self.kind, self.issued_before) {
            (RevocationKind::Subject, None) => Err(Invalid("a subject revocation needs issued_before".into())),
            (RevocationKind::Subject, Some(_)) | (_, None) => Ok(()),
            (_, Some(_)) => Err(Invalid("issued_before applies to subject revocations only".into())),
        }
    }

    /// The cut-off the live set stores (0 for kinds without one).
    pub fn before(&self) -> i64 {
        self.issued_before.unwrap_or(0)
    }
}

/// Whether a change adds or removes an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// The entry is revoked (new, or a subject's cut-off moved).
    Revoke,
    /// The entry was deleted (undone, or pruned after expiry).
    Unrevoke,
}

/// One step of a store's change log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Position in the log: gapless and in commit order.
    pub seq: i64,
    /// Revoke or unrevoke.
    pub op: Op,
    /// Kind of entry.
    pub kind: RevocationKind,
    /// Identifier.
    pub id: String,
    /// Subjects: the cut-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<i64>,
}

/// A snapshot or a batch of changes, as the feed returns it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Feed {
    /// The change-log numbering this cursor belongs to; pass it back with `since`.
    pub source: String,
    /// The cursor after applying this response.
    pub cursor: i64,
    /// Present when the client must replace its set (first call, unknown source, or a cursor
    /// older than the history kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Vec<FeedEntry>>,
    /// Changes after `since`, in order (empty when up to date).
    #[serde(default)]
    pub changes: Vec<Change>,
    /// False while the sidecar itself is past its staleness bound.
    pub fresh: bool,
}

/// One entry of a feed snapshot.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FeedEntry {
    /// Kind.
    pub kind: RevocationKind,
    /// Identifier.
    pub id: String,
    /// Subjects: the cut-off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<i64>,
}

/// The first line of a revocations file: which *lineage* the file belongs to. A rewrite
/// (removals, compaction, repair) starts a new lineage naming the one it continues, so a
/// reader can tell a rewrite from a file that was truncated or replaced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHeader {
    /// Format version (1).
    pub portcullis_revocations: u32,
    /// This lineage.
    pub log: String,
    /// The lineage this file was rewritten from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
}

/// Longest line of a revocations file: a record's fields are bounded well below this.
pub const MAX_FILE_LINE_BYTES: usize = 16 << 10;

/// One line of a revocations file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileLine {
    /// Empty or whitespace.
    Blank,
    /// The header (only as the first line with content).
    Header(FileHeader),
    /// A valid record.
    Record(Record),
}

/// Parses one line of a revocations file; `first` is true while no line with content came
/// before it (only then may it be the header).
pub fn parse_file_line(first: bool, line: &str) -> Result<FileLine, String> {
    if line.len() > MAX_FILE_LINE_BYTES {
        return Err(format!("line longer than {MAX_FILE_LINE_BYTES} bytes"));
    }
    if line.trim().is_empty() {
        return Ok(FileLine::Blank);
    }
    if first && line.contains("\"portcullis_revocations\"") {
        return serde_json::from_str(line).map(FileLine::Header).map_err(|e| format!("invalid header: {e}"));
    }
    let r: Record = serde_json::from_str(line).map_err(|e| e.to_string())?;
    r.validate().map_err(|e| e.to_string())?;
    Ok(FileLine::Record(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_validated() {
        let ok = Record::new(RevocationKind::Subject, "alice", "ops", 100);
        assert_eq!(ok.issued_before, Some(100));
        assert!(ok.validate().is_ok());
        let mut r = Record::new(RevocationKind::TokenId, "", "ops", 100);
        assert!(r.validate().is_err());
        r.id = "x".repeat(MAX_ID_BYTES + 1);
        assert!(r.validate().is_err());
        r.id = "a\nb".into();
        assert!(r.validate().is_err());
        r.id = "ok".into();
        r.issued_before = Some(1);
        assert!(r.validate().is_err(), "issued_before on a jti");
    }

    #[test]
    fn file_lines_parse_as_header_record_or_blank() {
        let header = r#"{"portcullis_revocations":1,"log":"x"}"#;
        assert!(matches!(parse_file_line(true, header), Ok(FileLine::Header(h)) if h.log == "x"));
        assert!(parse_file_line(false, header).is_err(), "a header only comes first");
        assert_eq!(parse_file_line(true, "  "), Ok(FileLine::Blank));
        let rec = r#"{"kind":"jti","id":"a","actor":"ops","created_at":1}"#;
        assert!(matches!(parse_file_line(true, rec), Ok(FileLine::Record(r)) if r.id == "a"));
        assert!(parse_file_line(false, r#"{"kind":"jti","id":""}"#).is_err(), "validated");
        assert!(parse_file_line(false, &"x".repeat(MAX_FILE_LINE_BYTES + 1)).unwrap_err().contains("longer"));
    }
}
