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

/// Every policy the project ships with its expected decisions: (policy, corpus), paths from the
/// repository root. A runtime's corpus test runs all of them through [`run`].
pub const SUITES: &[(&str, &str)] = &[
    ("policies/example.yaml", "tests/fixtures/corpus.jsonl"),
    ("policies/api-gateway.yaml", "tests/fixtures/policies/api-gateway.jsonl"),
    ("policies/saas.yaml", "tests/fixtures/policies/saas.jsonl"),
    ("policies/service-mesh.yaml", "tests/fixtures/policies/service-mesh.jsonl"),
    ("policies/identity-forwarding.yaml", "tests/fixtures/policies/identity-forwarding.jsonl"),
];

/// What a runtime made of one case.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The decision, rendered as the CLI prints it.
    Decided(serde_json::Value),
    /// The runtime cannot carry this case unchanged (say why): counted, not compared.
    Skipped(&'static str),
}

/// A runtime under test. Adding a runtime to the corpus means implementing this and calling
/// [`run`] with it.
pub trait Decider {
    /// Makes `policy` (a path from the repository root, one of [`SUITES`]) the policy for the
    /// cases that follow.
    fn load(&mut self, policy: &str) -> Result<(), String>;
    /// Decides one case.
    fn decide(&mut self, case: &Case) -> Result<Outcome, String>;
}

/// What a corpus run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Cases read.
    pub total: usize,
    /// Cases the runtime skipped.
    pub skipped: usize,
    /// One line per case that failed.
    pub failures: Vec<String>,
}

impl Report {
    /// Panics with every failure, or when fewer than `min_carried` in a hundred cases were
    /// decided (a runtime must not pass by skipping).
    #[allow(clippy::panic)]
    pub fn assert_ok(&self, min_carried_percent: usize) {
        assert!(
            self.failures.is_empty(),
            "{} of {} cases failed:\n{}",
            self.failures.len(),
            self.total,
            self.failures.join("\n")
        );
        let carried = self.total - self.skipped;
        assert!(
            carried * 100 >= self.total * min_carried_percent,
            "only {carried} of {} cases were decided",
            self.total
        );
        assert!(self.total >= 180, "the corpus shrank to {} cases", self.total);
    }
}

/// Runs every suite through `decider`, reading each corpus with `read` (the caller does the IO,
/// so this works in wasm with embedded files too), and checks every decided case.
pub fn run(decider: &mut dyn Decider, read: &dyn Fn(&str) -> Result<String, String>) -> Report {
    let mut report = Report::default();
    for (policy, corpus) in SUITES {
        let cases = match read(corpus).and_then(|text| parse_corpus(&text)) {
            Ok(c) => c,
            Err(e) => {
                report.failures.push(format!("{corpus}: {e}"));
                continue;
            }
        };
        if let Err(e) = decider.load(policy) {
            report.failures.push(format!("{policy}: {e}"));
            continue;
        }
        for case in &cases {
            report.total += 1;
            match decider.decide(case) {
                Ok(Outcome::Decided(got)) => {
                    if let Err(e) = check(&case.expect, &got) {
                        report.failures.push(format!("{policy} {}: {e}", case.id));
                    }
                }
                Ok(Outcome::Skipped(_)) => report.skipped += 1,
                Err(e) => report.failures.push(format!("{policy} {}: {e}", case.id)),
            }
        }
    }
    report
}
