//! The README's serve-and-revoke sequence, run as written: the block after the
//! `readme-test: serve-revoke` marker goes to bash with only `cargo run --release --` replaced by
//! this build's binary, in a scratch directory (so `./revocations.jsonl` starts absent, as on a
//! fresh clone). Every `curl` line whose comment names an outcome must print exactly that.
//!
//! It binds the README's default ports (127.0.0.1:9191-9193).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shell block after `marker`, and the outputs its commented `curl` lines promise.
fn block(readme: &str, marker: &str) -> (String, Vec<String>) {
    let after = &readme[readme.find(marker).unwrap_or_else(|| panic!("README has no {marker}"))..];
    let start = after.find("```sh\n").unwrap() + "```sh\n".len();
    let body = &after[start..];
    let script = &body[..body.find("```").unwrap()];
    let expected = script
        .lines()
        .filter(|l| l.trim_start().starts_with("curl "))
        .filter_map(|l| l.rsplit_once("   # ").map(|(_, out)| out.trim().to_owned()))
        .collect();
    (script.to_owned(), expected)
}

#[test]
fn the_readme_serve_allow_revoke_deny_sequence_works_as_written() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let (script, expected) = block(&readme, "readme-test: serve-revoke");
    assert_eq!(expected.len(), 2, "the block promises an allowed and a denied request: {script}");
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let script = script.replace("cargo run --release --", &format!("'{bin}'"));
    let dir = std::env::temp_dir().join(format!("portcullis-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(root().join("policies"), dir.join("policies")).unwrap();
    // `timeout` stops a hung block with SIGTERM, and the EXIT trap then stops whatever the block
    // started in the background, so nothing outlives the test either way.
    let out = Command::new("timeout")
        .args(["150", "bash", "-c"])
        .arg(format!("set -eu\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}"))
        .current_dir(&dir)
        .env("PORTCULLIS_CACHE_DIR", dir.join("cache"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "the block failed or hung: {:?}\n{stdout}\n{stderr}", out.status);
    // The promised outputs, in order, among everything the block printed (`revoke` prints its
    // record too).
    let mut printed = stdout.lines();
    for want in &expected {
        assert!(
            printed.any(|l| l == want),
            "the README promises {want}; the block printed:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}
