//! The component in wasmtime decides exactly as the native core: same corpus, same JSON.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use portcullis_adapter::testkit::{Case, Decider, Outcome, parse_corpus, run};
use portcullis_core::SignatureVerdict;
use portcullis_core::{NoRevocations, Reason, RevocationQuery, RevocationSet, RevocationStatus, Revocations};
use portcullis_host::policy_files::PolicyBundle;
use portcullis_host::runtime::{HostSignatures, Runtime, RuntimeConfig, WorkerError};

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

/// A warm component worker as a corpus runtime, held to the native core's exact decision.
struct ComponentAndNative<'r> {
    runtime: &'r Runtime,
    loaded: Option<(portcullis_core::Policy, portcullis_host::runtime::Worker)>,
}

impl Decider for ComponentAndNative<'_> {
    fn load(&mut self, policy: &str) -> Result<(), String> {
        let b = PolicyBundle::read(&root().join(policy)).map_err(|e| e.to_string())?;
        let native = b.compile().map_err(|e| e.to_string())?;
        let worker = self.runtime.worker(&b, Arc::new(NoRevocations)).map_err(|e| e.to_string())?;
        self.loaded = Some((native, worker));
        Ok(())
    }
    fn decide(&mut self, c: &Case) -> Result<Outcome, String> {
        let (native, worker) = self.loaded.as_mut().ok_or("no policy loaded")?;
        let n = serde_json::to_value(c.request.with_request(|r| native.decide(r, &NoRevocations))).unwrap();
        let (d, _) = worker.decide(&c.request, false).map_err(|e| e.to_string())?;
        let w = serde_json::to_value(&d).unwrap();
        if n != w {
            return Err(format!("native {n} != component {w}"));
        }
        Ok(Outcome::Decided(w))
    }
}

/// Every corpus case through `runtime`'s component, compared with the native core.
fn corpus_matches_native(runtime: &Runtime) {
    let read = |f: &str| std::fs::read_to_string(root().join(f)).map_err(|e| e.to_string());
    run(&mut ComponentAndNative { runtime, loaded: None }, &read).assert_ok(100);
}

#[test]
fn the_component_and_the_native_core_decide_every_corpus_identically() {
    // With the host verifying signatures natively (the default)...
    corpus_matches_native(&RUNTIME);
}

#[test]
fn without_the_host_signature_capability_the_guest_verifies_itself_and_decides_the_same() {
    let config = RuntimeConfig { signatures: None, ..RuntimeConfig::default() };
    corpus_matches_native(&Runtime::embedded(config).unwrap());
}

/// A runtime whose host answers every signature check with `answer`, counting the checks.
fn runtime_answering(
    answer: fn() -> Result<SignatureVerdict, String>,
) -> (Runtime, Arc<std::sync::atomic::AtomicUsize>) {
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&asked);
    let signatures = HostSignatures(Arc::new(move |_| {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        answer()
    }));
    (Runtime::embedded(RuntimeConfig { signatures: Some(signatures), ..RuntimeConfig::default() }).unwrap(), asked)
}

fn valid_rs256_case() -> Case {
    cases("tests/fixtures/corpus.jsonl").into_iter().find(|c| c.id == "jwt-rs256-valid").unwrap()
}

#[test]
fn a_host_saying_invalid_to_a_valid_signature_yields_bad_signature() {
    let b = bundle("example.yaml");
    let c = valid_rs256_case();
    let (runtime, asked) = runtime_answering(|| Ok(SignatureVerdict::Invalid));
    let (d, _) = runtime.worker(&b, Arc::new(NoRevocations)).unwrap().decide(&c.request, false).unwrap();
    assert_eq!((d.reason, d.status()), (Reason::BadSignature, 401));
    assert!(asked.load(std::sync::atomic::Ordering::Relaxed) >= 1, "the host was asked");
    // And `unsupported` leaves it to the guest, which finds the signature valid.
    let (runtime, asked) = runtime_answering(|| Ok(SignatureVerdict::Unsupported));
    let (d, _) = runtime.worker(&b, Arc::new(NoRevocations)).unwrap().decide(&c.request, false).unwrap();
    assert_eq!(d.reason, Reason::Allowed);
    assert!(asked.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[test]
fn a_host_whose_signature_check_fails_traps_the_call_never_allowing() {
    let b = bundle("example.yaml");
    let c = valid_rs256_case();
    let (runtime, _) = runtime_answering(|| Err("the crypto backend is gone".into()));
    let mut worker = runtime.worker(&b, Arc::new(NoRevocations)).unwrap();
    let e = worker.decide(&c.request, false).unwrap_err();
    assert!(e.to_string().contains("trapped"), "{e}");
    // HMAC never reaches the host: an HS256 token still decides on a fresh worker.
    let hs = cases("tests/fixtures/corpus.jsonl").into_iter().find(|c| c.id.starts_with("jwt-hs256")).unwrap();
    let mut worker = runtime.worker(&b, Arc::new(NoRevocations)).unwrap();
    assert!(worker.decide(&hs.request, false).is_ok());
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
    b.bundle.text = b.text.replace("roles: [admin]", "roles: [adminn]");
    let native = b.compile().unwrap_err();
    match RUNTIME.worker(&b, Arc::new(NoRevocations)) {
        Err(WorkerError::Policy(e)) => {
            let message = e.to_string();
            assert_eq!(e.code(), native.code());
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
