//! The decision corpus (`tests/fixtures/corpus.jsonl`), for every runtime's tests.
//!
//! A case is a request and the parts of the decision it must produce. Runtimes render their
//! decision as the same JSON object the CLI prints, and [`check`] compares only the fields the
//! case names, so one corpus checks the native core, the component, the CLI and Envoy alike.

use crate::request::{OwnedRequest, RequestSpec};

/// One corpus case.
#[derive(Debug, Clone)]
pub struct Case {
    /// Unique name.
    pub id: String,
    /// The request.
    pub request: OwnedRequest,
    /// The request as written (for runtimes that take JSON).
    pub spec: serde_json::Value,
    /// Expected decision fields.
    pub expect: serde_json::Map<String, serde_json::Value>,
}

/// Parses a corpus file.
pub fn parse_corpus(text: &str) -> Result<Vec<Case>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            let v: serde_json::Value = serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
            let id = v.get("id").and_then(|i| i.as_str()).ok_or(format!("line {}: no id", n + 1))?.to_owned();
            let spec = v.get("request").cloned().ok_or(format!("{id}: no request"))?;
            let parsed: RequestSpec = serde_json::from_value(spec.clone()).map_err(|e| format!("{id}: {e}"))?;
            let expect = v.get("expect").and_then(|e| e.as_object()).cloned().ok_or(format!("{id}: no expect"))?;
            Ok(Case { id, request: parsed.to_owned_request(0), spec, expect })
        })
        .collect()
}

/// Compares the fields `expect` names with a decision rendered as JSON.
pub fn check(expect: &serde_json::Map<String, serde_json::Value>, got: &serde_json::Value) -> Result<(), String> {
    for (k, want) in expect {
        let have = got.get(k).unwrap_or(&serde_json::Value::Null);
        if have != want {
            return Err(format!("{k}: expected {want}, got {have} (decision: {got})"));
        }
    }
    Ok(())
}
