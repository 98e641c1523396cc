//! The decision corpus against the native core (and, under `wasm-bindgen-test`, against the core
//! compiled to wasm32-unknown-unknown: inputs are embedded, so no file IO is needed).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;

use portcullis_adapter::testkit::{check, parse_corpus};
use portcullis_core::{NoRevocations, Policy};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const POLICY: &str = include_str!("../../../policies/example.yaml");
const CORPUS: &str = include_str!("../../../tests/fixtures/corpus.jsonl");

fn files() -> BTreeMap<String, Vec<u8>> {
    let mut f = BTreeMap::new();
    let mut add = |name: &str, bytes: &[u8]| f.insert(name.to_owned(), bytes.to_vec());
    add("keys/jwks.json", include_bytes!("../../../policies/keys/jwks.json"));
    add("keys/hmac-jwks.json", include_bytes!("../../../policies/keys/hmac-jwks.json"));
    add("keys/mixed-jwks.json", include_bytes!("../../../policies/keys/mixed-jwks.json"));
    add("keys/service-2026.key", include_bytes!("../../../policies/keys/service-2026.key"));
    add("keys/service-2025.key", include_bytes!("../../../policies/keys/service-2025.key"));
    add("keys/api-keys.yaml", include_bytes!("../../../policies/keys/api-keys.yaml"));
    f
}

#[test]
fn example_policy_references_exactly_the_embedded_files() {
    let referenced = Policy::referenced_files(POLICY).unwrap();
    let mut have: Vec<_> = files().into_keys().collect();
    let mut want = referenced.clone();
    have.sort();
    want.sort();
    assert_eq!(have, want);
}

#[test]
fn every_corpus_case_decides_as_expected() {
    let policy = Policy::load(POLICY, &files()).unwrap();
    let cases = parse_corpus(CORPUS).unwrap();
    assert!(cases.len() >= 100, "the corpus shrank to {}", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let decision = case.request.with_request(|r| policy.decide(r, &NoRevocations));
        let got = serde_json::to_value(&decision).unwrap();
        if let Err(e) = check(&case.expect, &got) {
            failures.push(format!("{}: {e}", case.id));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn the_corpus_covers_every_authentication_reason() {
    use portcullis_core::Reason;
    let cases = parse_corpus(CORPUS).unwrap();
    let seen: std::collections::BTreeSet<&str> =
        cases.iter().filter_map(|c| c.expect.get("reason").and_then(|r| r.as_str())).collect();
    for r in Reason::ALL.iter().filter(|r| r.status() == 401 && **r != Reason::CredentialNotAccepted) {
        assert!(seen.contains(r.code()), "no corpus case expects `{r}`");
    }
}
