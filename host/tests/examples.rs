//! Every example policy in `policies/` decides its expected cases (`tests/fixtures/policies/`),
//! and lints without errors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;

use portcullis_core::NoRevocations;
use portcullis_core::testkit::{check, parse_corpus};

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
fn there_are_the_four_documented_examples() {
    assert_eq!(examples(), ["api-gateway", "identity-forwarding", "saas", "service-mesh"]);
}

#[test]
fn every_example_policy_decides_its_expected_cases() {
    let mut failures = Vec::new();
    let mut total = 0;
    for name in examples() {
        let policy = portcullis_host::policy_files::load(&root().join(format!("policies/{name}.yaml"))).unwrap();
        let cases_file = root().join(format!("tests/fixtures/policies/{name}.jsonl"));
        let text = std::fs::read_to_string(&cases_file).unwrap_or_else(|_| panic!("{name} has no expected decisions"));
        let cases = parse_corpus(&text).unwrap();
        assert!(cases.len() >= 8, "{name}: only {} cases", cases.len());
        for c in &cases {
            total += 1;
            let d = c.request.with_request(|r| policy.decide(r, &NoRevocations));
            let got = serde_json::to_value(&d).unwrap();
            if let Err(e) = check(&c.expect, &got) {
                failures.push(format!("{}: {e}", c.id));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {total} failed:\n{}", failures.len(), failures.join("\n"));
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
