//! The decision corpus (`tests/fixtures/corpus.jsonl`), for every runtime's tests.
//!
//! A case is a request and the parts of the decision it must produce. Runtimes render their
//! decision as the same JSON object the CLI prints, and [`check`] compares only the fields the
//! case names, so one corpus checks the native core, the component, the CLI and Envoy alike.

use portcullis_core::OwnedRequest;

use crate::request::RequestSpec;

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
    ("policies/edge.yaml", "tests/fixtures/policies/edge.jsonl"),
];

/// What a runtime made of one case.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The decision, rendered as the CLI prints it.
    Decided(serde_json::Value),
    /// What a runtime behind a proxy can observe of the decision (the status and reason a
    /// client gets, the headers an upstream gets), rendered with the decision's field names:
    /// only the case's expectations for these `fields` are compared, and at least one must be.
    Observed {
        /// The observed fields.
        got: serde_json::Value,
        /// Which fields the runtime can observe.
        fields: &'static [&'static str],
    },
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
    /// Decides every case of one corpus, in order (a runtime with a batch mode overrides this
    /// to decide them in one go).
    fn decide_all(&mut self, cases: &[Case]) -> Vec<Result<Outcome, String>> {
        cases.iter().map(|c| self.decide(c)).collect()
    }
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
        let outcomes = decider.decide_all(&cases);
        if outcomes.len() != cases.len() {
            report.failures.push(format!("{policy}: {} outcomes for {} cases", outcomes.len(), cases.len()));
            continue;
        }
        for (case, outcome) in cases.iter().zip(outcomes) {
            report.total += 1;
            let checked = match outcome {
                Ok(Outcome::Decided(got)) => check(&case.expect, &got),
                Ok(Outcome::Observed { got, fields }) => {
                    let expect: serde_json::Map<_, _> = case
                        .expect
                        .iter()
                        .filter(|(k, _)| fields.contains(&k.as_str()))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if expect.is_empty() {
                        Err(format!("expects none of the observable fields {fields:?}"))
                    } else {
                        check(&expect, &got)
                    }
                }
                Ok(Outcome::Skipped(_)) => {
                    report.skipped += 1;
                    Ok(())
                }
                Err(e) => Err(e),
            };
            if let Err(e) = checked {
                report.failures.push(format!("{policy} {}: {e}", case.id));
            }
        }
    }
    report
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;

    /// Answers every case from a fixed JSON value, to test the runner itself.
    struct Fixed(Outcome);

    impl Decider for Fixed {
        fn load(&mut self, _: &str) -> Result<(), String> {
            Ok(())
        }
        fn decide(&mut self, _: &Case) -> Result<Outcome, String> {
            Ok(self.0.clone())
        }
    }

    fn read(path: &str) -> Result<String, String> {
        let mut p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        p.pop();
        p.pop();
        std::fs::read_to_string(p.join(path)).map_err(|e| e.to_string())
    }

    #[test]
    fn the_runner_fails_wrong_decisions_and_observations_and_never_passes_by_skipping() {
        let wrong = run(&mut Fixed(Outcome::Decided(serde_json::json!({"allow": true}))), &read);
        assert!(wrong.total >= 180 && !wrong.failures.is_empty());
        let observed = Outcome::Observed { got: serde_json::json!({"reason": "nope"}), fields: &["reason"] };
        assert_eq!(run(&mut Fixed(observed), &read).failures.len(), wrong.total, "every case names a reason");
        let skipped = run(&mut Fixed(Outcome::Skipped("test")), &read);
        assert!(skipped.failures.is_empty() && skipped.skipped == skipped.total);
        assert!(std::panic::catch_unwind(|| skipped.assert_ok(90)).is_err(), "skipping everything is not a pass");
    }
}
