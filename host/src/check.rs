//! `portcullis check`: one request, or a batch of JSON lines.

use std::io::{BufRead, Write};

use portcullis_adapter::request::RequestSpec;
use portcullis_core::Labeled;
use portcullis_core::{Decision, OwnedRequest, Policy};

/// Something that decides requests: the native core here, the component in the sidecar.
pub trait Decider {
    /// Decides one request.
    fn decide(&mut self, request: &OwnedRequest) -> Decision;
}

impl Decider for &Policy {
    fn decide(&mut self, request: &OwnedRequest) -> Decision {
        // No revocations; rate limits count in this process (a batch spends as one sidecar would).
        let host = crate::rate_limits::local();
        request.with_request(|r| Policy::decide(self, r, &*host))
    }
}

/// Counts from a batch run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Decisions written.
    pub decided: u64,
    /// Of which allowed.
    pub allowed: u64,
    /// Input lines that were not valid requests (each still got an output line).
    pub invalid: u64,
}

/// Longest batch line read; a longer one is answered with an error and skipped.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Reads one line (without its newline) into `buf`, at most [`MAX_LINE_BYTES`]; the rest of
/// a longer line is skipped. Returns `None` at the end of input, else whether it fit.
fn read_line(input: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    use std::io::Read as _;
    buf.clear();
    let limit = u64::try_from(MAX_LINE_BYTES).unwrap_or(u64::MAX);
    let n = input.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(true));
    }
    if buf.len() < MAX_LINE_BYTES {
        return Ok(Some(true)); // the last line, without a newline
    }
    // Too long: discard up to the next newline.
    let mut skipped = Vec::new();
    loop {
        skipped.clear();
        let m = input.by_ref().take(limit).read_until(b'\n', &mut skipped)?;
        if m == 0 || skipped.last() == Some(&b'\n') {
            return Ok(Some(false));
        }
    }
}

/// Decides each JSON line of `input`, writing one line per input line, in order. Blank lines
/// are skipped. An invalid line (not UTF-8, too long, not a request) produces an error object
/// with its line number instead of a decision, and the batch goes on, so output lines always
/// pair with input lines.
pub fn batch(
    decider: &mut dyn Decider,
    mut input: impl BufRead,
    mut out: impl Write,
    now: impl Fn() -> i64,
) -> std::io::Result<BatchStats> {
    let mut stats = BatchStats::default();
    let mut buf = Vec::new();
    let mut n = 0usize;
    while let Some(fits) = read_line(&mut input, &mut buf)? {
        n += 1;
        let line = match (fits, std::str::from_utf8(&buf)) {
            (true, Ok(line)) => line,
            (fits, _) => {
                stats.invalid += 1;
                let message = if fits {
                    "the line is not valid UTF-8".to_owned()
                } else {
                    format!("the line is longer than {MAX_LINE_BYTES} bytes")
                };
                let err = serde_json::json!({
                    "id": null,
                    "line": n,
                    "error": {"code": "bad_request", "message": message},
                });
                serde_json::to_writer(&mut out, &err)?;
                out.write_all(b"\n")?;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<RequestSpec>(line) {
            Ok(spec) => {
                let decision = decider.decide(&spec.to_owned_request(now()));
                stats.decided += 1;
                stats.allowed += u64::from(decision.allowed());
                serde_json::to_writer(&mut out, &Labeled { id: spec.id.as_ref(), decision: &decision })?;
            }
            Err(e) => {
                stats.invalid += 1;
                let id = serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v.get("id").cloned());
                let err = serde_json::json!({
                    "id": id,
                    "line": n,
                    "error": {"code": "bad_request", "message": e.to_string()},
                });
                serde_json::to_writer(&mut out, &err)?;
            }
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let text = "version: 1\napi_keys:\n  prefix: ask_\n  keys:\n    - id: k\n      prefix: ask_abcdefgh\n      sha256: \"6d0ee6ce4fcb0c0bd1fa0ad6e6a6bb8cc6ce0dd7ef7e3c1a1e4a2b1f0f1f0d0e\"\n";
        Policy::load(text, &portcullis_core::NoFiles).unwrap()
    }

    #[test]
    fn batch_echoes_ids_in_order_and_reports_bad_lines_in_place() {
        let p = policy();
        let input = "{\"id\":1}\n\n{\"id\":\"two\",\"headers\":{\"X-API-Key\":\"ask_abcdefghzzz\"}}\nnot json\n{\"id\":4,\"bogus\":1}\n";
        let mut out = Vec::new();
        let stats = batch(&mut &p, input.as_bytes(), &mut out, || 0).unwrap();
        let lines: Vec<serde_json::Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["id"], 1);
        assert_eq!(lines[0]["reason"], "missing_credential");
        assert_eq!(lines[1]["id"], "two");
        assert_eq!(lines[1]["reason"], "unknown_api_key");
        assert_eq!(lines[2]["line"], 4);
        assert_eq!(lines[2]["error"]["code"], "bad_request");
        assert_eq!(lines[3]["id"], 4, "the id of an invalid line is still echoed");
        assert_eq!(stats, BatchStats { decided: 2, allowed: 0, invalid: 2 });
    }

    #[test]
    fn a_line_that_is_not_utf8_or_too_long_gets_its_own_error_and_the_batch_goes_on() {
        let p = policy();
        let mut input = b"{\"id\":1}\n\xff\xfe{\"id\":2}\n".to_vec();
        input.extend(vec![b' '; MAX_LINE_BYTES + 5]);
        input.extend(b"\n{\"id\":3}");
        let mut out = Vec::new();
        let stats = batch(&mut &p, input.as_slice(), &mut out, || 0).unwrap();
        let lines: Vec<serde_json::Value> =
            String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(lines[0]["id"], 1);
        assert_eq!(
            (lines[1]["line"].as_u64(), lines[1]["error"]["message"].as_str()),
            (Some(2), Some("the line is not valid UTF-8"))
        );
        assert_eq!(lines[2]["line"], 3);
        assert!(lines[2]["error"]["message"].as_str().unwrap().contains("longer than"));
        assert_eq!((lines[3]["id"].as_u64(), lines[3]["reason"].as_str()), (Some(3), Some("missing_credential")));
        assert_eq!(stats, BatchStats { decided: 2, allowed: 0, invalid: 2 });
    }

    #[test]
    fn the_id_comes_first_on_each_line() {
        let p = policy();
        let mut out = Vec::new();
        batch(&mut &p, "{\"id\":\"x\"}\n".as_bytes(), &mut out, || 0).unwrap();
        assert!(String::from_utf8(out).unwrap().starts_with("{\"id\":\"x\",\"allow\":false"));
    }
}
