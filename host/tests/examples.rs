//! Every example policy in `policies/` decides its expected cases (`tests/fixtures/policies/`),
//! and lints without errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use portcullis_adapter::testkit::{Case, Decider, Outcome, SUITES, run};
use portcullis_core::NoRevocations;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Example policies (every `policies/*.yaml` except the credential corpus' `example.yaml`).
fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("policies"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().to_string();
            name.strip_suffix(".yaml").filter(|n| *n != "example").map(str::to_owned)
        })
        .collect();
    names.sort();
    names
}

#[test]
fn there_are_the_five_documented_examples() {
    assert_eq!(examples(), ["api-gateway", "edge", "identity-forwarding", "saas", "service-mesh"]);
}

/// The native core, as a corpus runtime.
struct Native(Option<portcullis_core::Policy>);

impl Decider for Native {
    fn load(&mut self, policy: &str) -> Result<(), String> {
        self.0 = Some(portcullis_host::policy_files::load(&root().join(policy)).map_err(|e| e.to_string())?);
        Ok(())
    }
    fn decide(&mut self, case: &Case) -> Result<Outcome, String> {
        let policy = self.0.as_ref().ok_or("no policy loaded")?;
        let d = case.request.with_request(|r| policy.decide(r, &NoRevocations));
        serde_json::to_value(&d).map(Outcome::Decided).map_err(|e| e.to_string())
    }
}

#[test]
fn every_policy_decides_its_expected_cases_natively() {
    run(&mut Native(None), &|f| std::fs::read_to_string(root().join(f)).map_err(|e| e.to_string())).assert_ok(100);
}

#[test]
fn every_example_policy_has_its_expected_decisions() {
    for name in examples() {
        let policy = format!("policies/{name}.yaml");
        assert!(SUITES.iter().any(|(p, _)| *p == policy), "{policy} is not in the corpus suites");
    }
}

#[test]
fn every_example_policy_lints_without_errors() {
    for name in examples().into_iter().chain(["example".to_string()]) {
        let path = root().join(format!("policies/{name}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let files = portcullis_host::policy_files::DirFiles(portcullis_host::policy_files::policy_dir(&path));
        let errors: Vec<String> = portcullis_core::lint::lint(&text, &files, false)
            .into_iter()
            .filter(|f| f.severity == portcullis_core::lint::Severity::Error)
            .map(|f| f.to_string())
            .collect();
        assert!(errors.is_empty(), "{name}: {}", errors.join("\n"));
    }
}
