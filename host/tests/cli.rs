//! The `portcullis` binary, driven as a user would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use portcullis_adapter::testkit::{Case, Decider, Outcome, parse_corpus, run};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn portcullis(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.unwrap_or("").to_owned();
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn demo_token() -> String {
    std::fs::read_to_string(root().join("policies/demo.jwt")).unwrap().trim().to_owned()
}

#[test]
fn an_allowed_check_prints_the_identity_and_exits_zero() {
    let t = demo_token();
    let out = portcullis(&["check", "--policy", "policies/example.yaml", "--token", &t, "--now", "1800000000"], None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allow"], true);
    assert_eq!(v["status"], 200);
    assert_eq!(v["reason"], "allowed");
    assert_eq!(v["subject"], "demo-user");
    assert_eq!(v["credential"], "jwt");
}

#[test]
fn a_batch_spends_rate_limits_as_one_sidecar_would_in_both_engines() {
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("tests/fixtures/api-keys.plaintext.json")).unwrap())
            .unwrap();
    let line =
        serde_json::json!({"method": "POST", "path": "/v1/deployments", "headers": [["X-API-Key", keys["live"]]]});
    let input = format!("{line}\n").repeat(4);
    for engine in ["component", "native"] {
        let out =
            portcullis(&["check", "--policy", "policies/edge.yaml", "--engine", engine, "--batch", "-"], Some(&input));
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<serde_json::Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let reasons: Vec<&str> = lines.iter().map(|l| l["reason"].as_str().unwrap()).collect();
        assert_eq!(reasons, ["allowed", "allowed", "allowed", "rate_limited"], "{engine}");
        assert_eq!(lines[3]["rule"], "deploys-per-key");
        assert_eq!(lines[3]["response_headers"]["x-ratelimit-remaining"], "0");
        assert!(lines[3]["response_headers"]["retry-after"].as_str().is_some(), "{engine}");
    }
}

#[test]
fn a_denied_check_exits_one_with_the_reason() {
    let t = demo_token();
    let out = portcullis(&["check", "--policy", "policies/example.yaml", "--token", &t, "--now", "1900000000"], None);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["allow"].clone(), v["status"].clone(), v["reason"].clone()),
        (false.into(), 401.into(), "expired".into())
    );
}

#[test]
fn a_token_may_arrive_as_an_authorization_header() {
    let h = format!("Authorization: Bearer {}", demo_token());
    let out = portcullis(&["check", "--policy", "policies/example.yaml", "-H", &h, "--now", "1800000000"], None);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn policy_errors_exit_two_with_a_code_and_path_and_no_secret() {
    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("bad.yaml");
    std::fs::write(
        &p,
        "version: 1\nservice_tokens:\n  prefix: svc\n  keys: [{id: a, secret: short-secret-value}]\n  audiences: [x]\n",
    )
    .unwrap();
    let out = portcullis(&["check", "--policy", p.to_str().unwrap(), "--token", "x"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error[policy_"), "{err}");
    assert!(err.contains("service_tokens.keys[0]"), "{err}");
    assert!(!err.contains("short-secret-value"), "a secret leaked: {err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn usage_errors_exit_two() {
    assert_eq!(portcullis(&["check"], None).status.code(), Some(2));
    assert_eq!(
        portcullis(&["check", "--policy", "policies/example.yaml", "--token", "a", "--batch", "-"], None).status.code(),
        Some(2)
    );
}

#[test]
fn help_is_complete_for_every_command() {
    for args in [&["--help"][..], &["check", "--help"], &["token", "--help"], &["token", "service", "--help"]] {
        let out = portcullis(args, None);
        assert_eq!(out.status.code(), Some(0));
        assert!(!out.stdout.is_empty());
    }
    let check_help = String::from_utf8(portcullis(&["check", "--help"], None).stdout).unwrap();
    for flag in
        ["--policy", "--token", "--batch", "--now", "--method", "--path", "--header", "--client-ip", "Exit status"]
    {
        assert!(check_help.contains(flag), "check --help lacks {flag}");
    }
}

/// `portcullis check --batch` as a corpus runtime: one process per corpus, one line per case.
struct BatchCli {
    policy: String,
}

impl Decider for BatchCli {
    fn load(&mut self, policy: &str) -> Result<(), String> {
        policy.clone_into(&mut self.policy);
        Ok(())
    }

    fn decide(&mut self, case: &Case) -> Result<Outcome, String> {
        self.decide_all(std::slice::from_ref(case)).pop().unwrap_or(Err("no output".into()))
    }

    fn decide_all(&mut self, cases: &[Case]) -> Vec<Result<Outcome, String>> {
        let input: String = cases
            .iter()
            .map(|c| {
                let mut spec = c.spec.clone();
                spec["id"] = c.id.clone().into();
                format!("{spec}\n")
            })
            .collect();
        let out = portcullis(&["check", "--policy", &self.policy, "--batch", "-"], Some(&input));
        if out.status.code() != Some(0) {
            let e = format!("exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
            return cases.iter().map(|_| Err(e.clone())).collect();
        }
        let lines: Vec<serde_json::Value> =
            String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        cases
            .iter()
            .zip(lines)
            .map(|(c, got)| {
                if got["id"] == c.id.as_str() {
                    Ok(Outcome::Decided(got))
                } else {
                    Err(format!("out of order: got {}", got["id"]))
                }
            })
            .collect()
    }
}

/// Every corpus through `--batch`: the CLI is one more runtime that must agree.
#[test]
fn every_corpus_through_batch_mode_decides_as_expected() {
    let report = run(&mut BatchCli { policy: String::new() }, &|p| {
        std::fs::read_to_string(root().join(p)).map_err(|e| e.to_string())
    });
    report.assert_ok(100);
}

#[test]
fn minted_service_tokens_verify_and_respect_the_policy() {
    let out = portcullis(
        &[
            "token",
            "service",
            "--policy",
            "policies/example.yaml",
            "--worker-id",
            "w1",
            "--aud",
            "orders-api",
            "--scope",
            "orders:read",
            "--now",
            "1800000000",
            "--ttl",
            "300",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("svc-v1."));
    let check = |worker: &str| {
        portcullis(
            &[
                "check",
                "--policy",
                "policies/example.yaml",
                "--token",
                &token,
                "-H",
                &format!("X-Worker-ID: {worker}"),
                "--now",
                "1800000100",
            ],
            None,
        )
    };
    assert_eq!(check("w1").status.code(), Some(0));
    assert_eq!(check("w2").status.code(), Some(1));
    let too_long = portcullis(
        &[
            "token",
            "service",
            "--policy",
            "policies/example.yaml",
            "--worker-id",
            "w1",
            "--aud",
            "orders-api",
            "--ttl",
            "901",
        ],
        None,
    );
    assert_eq!(too_long.status.code(), Some(2));
}

#[test]
fn api_keys_made_by_the_cli_hash_consistently() {
    let out = portcullis(&["token", "api-key", "--prefix", "ask_"], None);
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = made["key"].as_str().unwrap();
    let hashed = portcullis(&["token", "hash-api-key"], Some(&format!("{key}\n")));
    let h: serde_json::Value = serde_json::from_slice(&hashed.stdout).unwrap();
    assert_eq!(h["sha256"], made["sha256"]);
    assert_eq!(h["prefix"], made["prefix"]);
}

#[test]
fn component_writes_the_embedded_component_or_a_preinitialised_one_that_decides_like_the_core() {
    use std::sync::Arc;

    use portcullis_core::NoRevocations;
    use portcullis_host::runtime::{Runtime, RuntimeConfig};

    let dir = std::env::temp_dir().join(format!("portcullis-component-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (plain, pre) = (dir.join("plain.wasm"), dir.join("pre.wasm"));
    let out = portcullis(&["component", "-o", plain.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&plain).unwrap(), portcullis_host::runtime::COMPONENT);

    let out = portcullis(&["component", "--policy", "policies/example.yaml", "-o", pre.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fresh = Runtime::new(&std::fs::read(&pre).unwrap(), RuntimeConfig::default()).unwrap();
    let native = portcullis_host::policy_files::load(&root().join("policies/example.yaml")).unwrap();
    let corpus = parse_corpus(&std::fs::read_to_string(root().join("tests/fixtures/corpus.jsonl")).unwrap()).unwrap();
    for c in corpus.iter().take(40) {
        let expected = c.request.with_request(|r| native.decide(r, &NoRevocations));
        assert_eq!(fresh.decide_fresh(&c.request, Arc::new(NoRevocations), false).unwrap().0, expected, "{}", c.id);
    }

    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "version: 1\nroutes: 3\n").unwrap();
    let out =
        portcullis(&["component", "--policy", bad.to_str().unwrap(), "-o", dir.join("x.wasm").to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error[policy_"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn token_jwt_mints_development_tokens_the_policy_accepts_and_refuses_the_rest() {
    let now = "1800000000";
    let hs = portcullis(
        &[
            "token",
            "jwt",
            "--policy",
            "policies/example.yaml",
            "--issuer",
            "https://hmac.example",
            "--kid",
            "hmac-2026",
            "--aud",
            "edge-api",
            "--scope",
            "orders:read",
            "--role",
            "admin",
            "--tenant",
            "acme",
            "--jti",
            "dev-1",
            "--now",
            now,
        ],
        None,
    );
    assert_eq!(hs.status.code(), Some(0), "{}", String::from_utf8_lossy(&hs.stderr));
    let rsa = portcullis(
        &[
            "token",
            "jwt",
            "--policy",
            "policies/example.yaml",
            "--issuer",
            "https://issuer.example",
            "--kid",
            "rsa-2026",
            "--key",
            "tests/fixtures/keys/rsa-2026.pem",
            "--aud",
            "edge-api",
            "--sub",
            "alice",
            "--now",
            now,
        ],
        None,
    );
    assert_eq!(rsa.status.code(), Some(0), "{}", String::from_utf8_lossy(&rsa.stderr));
    for (out, alg, sub) in [(&hs, "HS256", "dev-user"), (&rsa, "RS256", "alice")] {
        let token = String::from_utf8(out.stdout.clone()).unwrap();
        let token = token.trim();
        let v = portcullis(&["check", "--policy", "policies/example.yaml", "--token", token, "--now", now], None);
        let d: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
        assert_eq!((d["allow"].as_bool(), d["subject"].as_str()), (Some(true), Some(sub)), "{alg}: {d}");
        let seen = portcullis(&["token", "inspect", token], None);
        let seen: serde_json::Value = serde_json::from_slice(&seen.stdout).unwrap();
        assert_eq!(seen["header"]["alg"], alg);
    }
    let d: serde_json::Value = serde_json::from_slice(
        &portcullis(
            &[
                "check",
                "--policy",
                "policies/example.yaml",
                "--token",
                String::from_utf8_lossy(&hs.stdout).trim(),
                "--now",
                now,
            ],
            None,
        )
        .stdout,
    )
    .unwrap();
    assert_eq!((d["token_id"].as_str(), d["tenant"].as_str()), (Some("dev-1"), Some("acme")), "{d}");

    // What the policy would refuse is never printed: an unknown key, a wrong audience, a
    // private key the issuer does not trust.
    for args in [
        &["--issuer", "https://hmac.example", "--kid", "nope", "--aud", "edge-api"][..],
        &["--issuer", "https://hmac.example", "--kid", "hmac-2026", "--aud", "someone-else"],
        &[
            "--issuer",
            "https://issuer.example",
            "--kid",
            "rsa-2026",
            "--key",
            "tests/fixtures/keys/attacker-rsa.pem",
            "--aud",
            "edge-api",
        ],
    ] {
        let mut all = vec!["token", "jwt", "--policy", "policies/example.yaml", "--now", now];
        all.extend_from_slice(args);
        let out = portcullis(&all, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stdout));
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("error[usage]"), "{args:?}");
    }
}

#[test]
fn token_verify_shows_each_check_in_the_cores_order() {
    let t = demo_token();
    let ok = portcullis(&["token", "verify", "--policy", "policies/example.yaml", "--now", "1800000000", &t], None);
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["accepted"], true);
    let results: Vec<&str> = v["checks"].as_array().unwrap().iter().map(|c| c["result"].as_str().unwrap()).collect();
    assert!(results.len() >= 6 && results.iter().all(|r| *r == "passed"), "{v}");
    assert_eq!(v["decision_for_path"]["subject"], "demo-user");

    // Expired: everything before the times passed, the times failed, the rest was not reached.
    let late = portcullis(&["token", "verify", "--policy", "policies/example.yaml", "--now", "1900000000", &t], None);
    assert_eq!(late.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&late.stdout).unwrap();
    let checks = v["checks"].as_array().unwrap();
    let failed = checks.iter().position(|c| c["result"] == "failed").unwrap();
    assert_eq!(checks[failed]["reason"], "expired");
    assert!(checks[..failed].iter().all(|c| c["result"] == "passed"), "{v}");
    assert!(checks[failed + 1..].iter().all(|c| c["result"] == "not reached"), "{v}");
    assert!(checks[..failed].iter().any(|c| c["check"] == "signature"));

    // A forged signature fails at the signature, and nothing after it is claimed to pass.
    let (signing, _) = t.rsplit_once('.').unwrap();
    let forged = format!("{signing}.{}", "A".repeat(342));
    let v: serde_json::Value = serde_json::from_slice(
        &portcullis(&["token", "verify", "--policy", "policies/example.yaml", "--now", "1800000000", &forged], None)
            .stdout,
    )
    .unwrap();
    let checks = v["checks"].as_array().unwrap();
    let failed = checks.iter().find(|c| c["result"] == "failed").unwrap();
    assert_eq!(
        (failed["check"].as_str(), failed["reason"].as_str()),
        (Some("signature"), Some("bad_signature")),
        "{v}"
    );
}

#[test]
fn rotation_plans_name_the_signer_and_when_each_old_key_may_go() {
    let out =
        portcullis(&["token", "rotation-plan", "--policy", "policies/example.yaml", "--since", "1800000000"], None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // service_tokens: the first key signs; max_lifetime_seconds 900, leeway 30.
    assert_eq!(v["signing"], "service-2026");
    assert_eq!(v["remove"][0]["kid"], "service-2025");
    assert_eq!(v["remove"][0]["earliest_removal"], 1_800_000_000i64 + 900 + 30);

    let out = portcullis(
        &[
            "token",
            "rotation-plan",
            "--policy",
            "policies/example.yaml",
            "--issuer",
            "https://issuer.example",
            "--signing",
            "rsa-2026",
            "--since",
            "1800000000",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let old = v["remove"].as_array().unwrap().iter().find(|r| r["kid"] == "rsa-2025").unwrap();
    assert_eq!(old["earliest_removal"], 1_800_000_000i64 + 86_400 + 30, "{v}");
    assert!(v["verifying"].as_array().unwrap().iter().any(|k| k == "rsa-2026"));

    // No maximum lifetime: no safe time, and the plan says why rather than guessing.
    let hmac_plan = |signing: &str| {
        portcullis(
            &[
                "token",
                "rotation-plan",
                "--policy",
                "policies/example.yaml",
                "--issuer",
                "https://hmac.example",
                "--signing",
                signing,
            ],
            None,
        )
    };
    let v: serde_json::Value = serde_json::from_slice(&hmac_plan("hmac-2026").stdout).unwrap();
    assert!(v["remove"][0]["earliest_removal"].is_null() && v["remove"][0]["why"].is_string(), "{v}");
    let out = hmac_plan("nope");
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn policy_bundle_prints_the_policy_and_every_file_it_references_or_nothing() {
    let out = portcullis(&["policy", "bundle", "policies/example.yaml"], None);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = std::fs::read_to_string(root().join("policies/example.yaml")).unwrap();
    assert_eq!(v["policy"], text.as_str());
    let files = v["files"].as_object().unwrap();
    let mut names: Vec<&str> = files.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want = portcullis_core::Policy::referenced_files(&text).unwrap();
    want.sort();
    assert_eq!(names, want);
    let jwks = std::fs::read_to_string(root().join("policies/keys/jwks.json")).unwrap();
    assert_eq!(files["keys/jwks.json"], jwks.as_str(), "text files are carried as text, unchanged");

    let dir = std::env::temp_dir().join(format!("portcullis-bundle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("p.yaml");
    std::fs::write(
        &broken,
        "version: 1\nissuers:\n  - issuer: x\n    audiences: [a]\n    algorithms: [HS256]\n    jwks_file: gone.json\n",
    )
    .unwrap();
    let out = portcullis(&["policy", "bundle", broken.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty(), "a policy that does not load prints nothing");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("error[policy_file]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn spin_build_names_what_is_wrong_and_writes_nothing() {
    let dir = std::env::temp_dir().join(format!("portcullis-spin-build-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out_file = dir.join("gate.wasm");
    let out = dir.to_str().unwrap().to_owned();
    let run = |component: &str, set: &str| {
        let args = ["spin", "build", "--component", component, "--policy", "policies/api-gateway.yaml", "--set", set];
        portcullis(&[&args[..], &["-o", out_file.to_str().unwrap()]].concat(), None)
    };
    // (A misspelt setting is the component's to refuse: see the Spin end-to-end tests.)
    // A component that is not there.
    let o = run(&format!("{out}/nowhere.wasm"), "upstream=http://127.0.0.1:8080");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error[io]"), "{stderr}");
    // A file that is not a Portcullis Spin component.
    let not_wasm = dir.join("not.wasm");
    std::fs::write(&not_wasm, b"not wasm").unwrap();
    let o = run(not_wasm.to_str().unwrap(), "upstream=http://127.0.0.1:8080");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("error[runtime]"), "{stderr}");
    assert!(!out_file.exists(), "nothing is written on failure");
    let _ = std::fs::remove_dir_all(&dir);
}
