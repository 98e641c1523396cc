//! The component in wasmtime decides exactly as the native core: same corpus, same JSON.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use portcullis_core::testkit::{Case, check, parse_corpus};
use portcullis_core::{NoRevocations, Reason, RevocationQuery, RevocationSet, RevocationStatus, Revocations};
use portcullis_host::policy_files::PolicyBundle;
use portcullis_host::runtime::{Runtime, RuntimeConfig, WorkerError};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One compiled runtime per test binary (compiling the component is the slow part).
static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| Runtime::embedded(RuntimeConfig::default()).unwrap());

fn bundle(name: &str) -> PolicyBundle {
    PolicyBundle::read(&root().join("policies").join(name)).unwrap()
}

fn cases(rel: &str) -> Vec<Case> {
    parse_corpus(&std::fs::read_to_string(root().join(rel)).unwrap()).unwrap()
}

/// Every (policy, corpus) pair the project has.
fn suites() -> Vec<(&'static str, String)> {
    let mut v = vec![("example.yaml", "tests/fixtures/corpus.jsonl".to_string())];
    for name in ["api-gateway", "saas", "service-mesh", "identity-forwarding"] {
        let policy: &'static str = Box::leak(format!("{name}.yaml").into_boxed_str());
        v.push((policy, format!("tests/fixtures/policies/{name}.jsonl")));
    }
    v
}

#[test]
fn the_component_and_the_native_core_decide_every_corpus_identically() {
    let mut failures = Vec::new();
    let mut total = 0;
    for (policy, corpus) in suites() {
        let b = bundle(policy);
        let native = b.compile().unwrap();
        let mut worker = RUNTIME.worker(&b, Arc::new(NoRevocations)).unwrap();
        for c in cases(&corpus) {
            total += 1;
            let n = serde_json::to_value(c.request.with_request(|r| native.decide(r, &NoRevocations))).unwrap();
            let (d, _) = worker.decide(&c.request, false).unwrap();
            let w = serde_json::to_value(&d).unwrap();
            if n != w {
                failures.push(format!("{}: native {n} != component {w}", c.id));
            } else if let Err(e) = check(&c.expect, &w) {
                failures.push(format!("{}: {e}", c.id));
            }
        }
    }
    assert!(total > 180, "only {total} cases");
    assert!(failures.is_empty(), "{} of {total}:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn audit_events_come_back_from_the_component() {
    let b = bundle("api-gateway.yaml");
    let mut worker = RUNTIME.worker(&b, Arc::new(NoRevocations)).unwrap();
    let c = cases("tests/fixtures/policies/api-gateway.jsonl")
        .into_iter()
        .find(|c| c.id.ends_with("/admin-by-role"))
        .unwrap();
    let (d, audit) = worker.decide(&c.request, true).unwrap();
    assert!(d.allowed());
    let event: serde_json::Value = serde_json::from_str(&audit.unwrap()).unwrap();
    assert_eq!(event["route"], "admin");
    assert_eq!(event["actor"], "alice");
    assert!(!event.to_string().contains("Bearer"));
}

#[test]
fn policy_errors_from_the_guest_match_the_native_loader() {
    let mut b = bundle("api-gateway.yaml");
    b.text = b.text.replace("roles: [admin]", "roles: [adminn]");
    let native = b.compile().unwrap_err();
    match RUNTIME.worker(&b, Arc::new(NoRevocations)) {
        Err(WorkerError::Policy { code, message }) => {
            assert_eq!(code, native.code);
            assert!(native.to_string().contains(&message), "native: {native}; guest: {message}");
            assert!(message.contains("routes[4].roles[0]"), "{message}");
        }
        other => panic!("expected a policy error, got {other:?}"),
    }
}

#[test]
fn the_revocations_import_reaches_the_hosts_store() {
    let b = bundle("example.yaml");
    let case = cases("tests/fixtures/corpus.jsonl").into_iter().find(|c| c.id == "jwt-rs256-valid").unwrap();
    let mut set = RevocationSet::default();
    set.revoke_token_id("jti-ok");
    let mut worker = RUNTIME.worker(&b, Arc::new(set)).unwrap();
    assert_eq!(worker.decide(&case.request, false).unwrap().0.reason, Reason::Revoked);

    struct Stale;
    impl Revocations for Stale {
        fn status(&self, _: RevocationQuery<'_>) -> RevocationStatus {
            RevocationStatus::Unavailable
        }
    }
    let mut worker = RUNTIME.worker(&b, Arc::new(Stale)).unwrap();
    let d = worker.decide(&case.request, false).unwrap().0;
    assert_eq!((d.reason, d.status()), (Reason::RevocationStale, 503), "a store that cannot vouch fails closed");
}

/// The guest allocates each call's short-lived data from a bump arena that is reset when the
/// call's last block is freed. Calls that outgrow it, audit events, and thousands of calls in a
/// row on one instance must decide exactly as the native core, and must not leak: 1,500 calls
/// of 300 KiB each would exhaust the instance's 128 MiB if any of it stayed behind.
#[test]
fn one_warm_instance_decides_identically_across_oversized_and_ordinary_calls_without_leaking() {
    let b = bundle("example.yaml");
    let native = b.compile().unwrap();
    let mut worker = RUNTIME.worker(&b, Arc::new(NoRevocations)).unwrap();
    let corpus = cases("tests/fixtures/corpus.jsonl");
    let ordinary = corpus.iter().find(|c| c.id == "jwt-rs256-valid").unwrap().request.clone();
    // Within the policy's limits (64 KiB of headers) but larger than a call usually needs.
    let mut large = ordinary.clone();
    large.headers.push(("x-padding".into(), "p".repeat(60 << 10)));
    // Far beyond them: refused as malformed, after the host lowered all of it into the guest.
    let mut oversized = ordinary.clone();
    oversized.headers.extend((0..10).map(|i| (format!("x-pad-{i}"), "q".repeat(30 << 10))));
    let expect = |r: &portcullis_core::OwnedRequest| {
        serde_json::to_value(r.with_request(|r| native.decide(r, &NoRevocations))).unwrap()
    };
    let (want_ordinary, want_large, want_oversized) = (expect(&ordinary), expect(&large), expect(&oversized));
    assert_eq!(want_oversized["reason"], "malformed");
    assert_eq!(want_large["reason"], want_ordinary["reason"]);
    for round in 0..1_500 {
        let (r, want) = match round % 3 {
            0 => (&oversized, &want_oversized),
            1 => (&large, &want_large),
            _ => (&ordinary, &want_ordinary),
        };
        let (d, audit) = worker.decide(r, round % 2 == 0).unwrap();
        assert_eq!(&serde_json::to_value(&d).unwrap(), want, "round {round}");
        assert_eq!(audit.is_some(), round % 2 == 0);
    }
    for c in &corpus {
        let (d, _) = worker.decide(&c.request, true).unwrap();
        assert_eq!(serde_json::to_value(&d).unwrap(), expect(&c.request), "{}", c.id);
    }
}

#[test]
fn a_preinitialised_component_decides_from_a_fresh_instance_each_time() {
    let b = bundle("example.yaml");
    let snapshot = portcullis_host::preinit::preinitialize(&b).unwrap();
    let fresh = Runtime::new(&snapshot, RuntimeConfig::default()).unwrap();
    let native = b.compile().unwrap();
    for c in cases("tests/fixtures/corpus.jsonl") {
        let n = serde_json::to_value(c.request.with_request(|r| native.decide(r, &NoRevocations))).unwrap();
        let d = fresh.decide_fresh(&c.request, Arc::new(NoRevocations), false).unwrap().0;
        assert_eq!(n, serde_json::to_value(&d).unwrap(), "{}", c.id);
    }
}

#[test]
fn a_component_without_an_installed_policy_denies_with_internal_error() {
    let case = &cases("tests/fixtures/corpus.jsonl")[0];
    let d = RUNTIME.decide_fresh(&case.request, Arc::new(NoRevocations), false).unwrap().0;
    assert_eq!((d.reason, d.status()), (Reason::InternalError, 503));
}
