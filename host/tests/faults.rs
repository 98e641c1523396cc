//! Fail closed: a guest that loops, traps, exhausts memory or answers inconsistently produces a
//! fault (which the sidecar turns into 503 `internal_error`), never a decision, and never hangs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use portcullis_core::{NoRevocations, OwnedRequest};
use portcullis_host::policy_files::PolicyBundle;
use portcullis_host::runtime::{Fault, Runtime, RuntimeConfig};

/// Builds the test-only faulty guest (tests/faulty-guest) once.
static FAULTY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/faulty-guest");
    let status = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&root)
        .args(["build", "-p", "portcullis-faulty-guest", "--target", "wasm32-wasip2", "--release"])
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "building tests/faulty-guest failed");
    std::fs::read(target.join("wasm32-wasip2/release/portcullis_faulty_guest.wasm")).unwrap()
});

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let config = RuntimeConfig {
        call_timeout: Duration::from_millis(50),
        memory_limit: 32 << 20,
        max_instances: 8,
        ..RuntimeConfig::default()
    };
    Runtime::new(&FAULTY, config).unwrap()
});

fn bundle() -> PolicyBundle {
    PolicyBundle {
        path: "faulty.yaml".into(),
        bundle: portcullis_adapter::bundle::Bundle {
            name: "faulty.yaml".into(),
            text: String::new(),
            files: Default::default(),
        },
    }
}

fn request(path: &str) -> OwnedRequest {
    OwnedRequest { method: "GET".into(), path: path.into(), ..OwnedRequest::default() }
}

fn fault(path: &str) -> Fault {
    let mut w = RUNTIME.worker(&bundle(), Arc::new(NoRevocations)).unwrap();
    match w.decide(&request(path), false) {
        Err(f) => f,
        Ok(d) => panic!("{path}: expected a fault, got {d:?}"),
    }
}

#[test]
fn a_well_behaved_answer_from_the_same_guest_is_accepted() {
    let mut w = RUNTIME.worker(&bundle(), Arc::new(NoRevocations)).unwrap();
    let (d, _) = w.decide(&request("/fine"), false).unwrap();
    assert_eq!(d.reason.code(), "missing_credential");
}

#[test]
fn a_guest_that_never_returns_is_stopped_by_its_deadline() {
    LazyLock::force(&RUNTIME);
    let started = Instant::now();
    assert!(matches!(fault("/loop"), Fault::Trap(_)));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[test]
fn a_trapping_guest_is_a_fault() {
    assert!(matches!(fault("/trap"), Fault::Trap(_)));
}

#[test]
fn a_guest_exhausting_its_memory_limit_is_a_fault() {
    assert!(matches!(fault("/memory"), Fault::Trap(_)));
}

#[test]
fn a_guest_reaching_for_output_environment_or_exit_traps() {
    for path in ["/print", "/env", "/exit"] {
        match fault(path) {
            Fault::Trap(e) => assert!(format!("{e:#}").contains("unknown import"), "{path}: {e:#}"),
            other => panic!("{path}: {other:?}"),
        }
    }
}

#[test]
fn inconsistent_answers_are_faults_not_allows() {
    for path in [
        "/allow-with-deny-reason",
        "/unknown-reason",
        "/wrong-status",
        "/smuggled-response-header",
        "/bad-response-header-name",
    ] {
        assert!(matches!(fault(path), Fault::Inconsistent(_)), "{path}");
    }
}

#[test]
fn a_fresh_instance_that_loops_is_stopped_too() {
    LazyLock::force(&RUNTIME);
    let started = Instant::now();
    assert!(RUNTIME.decide_fresh(&request("/loop"), Arc::new(NoRevocations), false).is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
}
