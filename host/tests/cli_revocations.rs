//! `portcullis revoke`, `unrevoke`, `revocations` and `db migrate`, driven as a user would:
//! against the embedded file store, and against a real Postgres.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};

use portcullis_e2e::TempDir;
use portcullis_e2e::pg::Database;

fn portcullis(args: &[&str], cwd: &Path, database_url: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    c.args(args).current_dir(cwd).env_remove("DATABASE_URL");
    if let Some(u) = database_url {
        c.env("DATABASE_URL", u);
    }
    c.output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_file_store_is_the_default_and_round_trips() {
    let dir = TempDir::new("cli-revocations");
    let d = dir.path();
    let first = json(&portcullis(&["revoke", "jti", "abc", "--reason", "stolen laptop", "--tenant", "acme"], d, None));
    assert_eq!(first["changed"], true);
    assert!(first["revocation"]["actor"].as_str().unwrap().starts_with("cli:"));
    assert!(d.join("revocations.jsonl").exists(), "the default file is created in the working directory");
    assert_eq!(json(&portcullis(&["revoke", "jti", "abc"], d, None))["changed"], false, "idempotent");
    json(&portcullis(&["revoke", "subject", "alice", "--issued-before", "1700000000"], d, None));

    let list = json(&portcullis(&["revocations", "list", "--format", "json", "--tenant", "acme"], d, None));
    assert_eq!(list["revocations"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["revocations"][0]["reason"], "stolen laptop");
    let text = portcullis(&["revocations", "list"], d, None);
    assert!(String::from_utf8_lossy(&text.stdout).contains("2 revocation(s)"));

    assert!(portcullis(&["unrevoke", "jti", "abc"], d, None).status.success());
    assert_eq!(portcullis(&["unrevoke", "jti", "abc"], d, None).status.code(), Some(1), "nothing to undo");

    let bad = portcullis(&["revoke", "token", "x"], d, None);
    assert_eq!(bad.status.code(), Some(2));
    let bad = portcullis(&["revoke", "jti", "x", "--issued-before", "5"], d, None);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("error[revocation_invalid]"));
    let bad = portcullis(&["revoke", "jti", "a\u{7}b"], d, None);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("control characters"));
}

#[test]
fn revoking_works_on_a_damaged_file_and_repair_sets_bad_lines_aside() {
    let dir = TempDir::new("cli-damaged");
    let d = dir.path();
    json(&portcullis(&["revoke", "jti", "a"], d, None));
    let file = d.join("revocations.jsonl");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("NOT JSON\n");
    std::fs::write(&file, text).unwrap();
    assert_eq!(json(&portcullis(&["revoke", "jti", "b"], d, None))["changed"], true, "appended past the damage");
    let unrevoke = portcullis(&["unrevoke", "jti", "a"], d, None);
    assert_eq!(unrevoke.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&unrevoke.stderr);
    assert!(stderr.contains("error[store_unavailable]") && stderr.contains("revocations repair"), "{stderr}");
    assert!(!stderr.contains("[store_unavailable] "), "the code is said once: {stderr}");
    let repaired = json(&portcullis(&["revocations", "repair"], d, None));
    assert_eq!((repaired["kept"].as_u64(), repaired["rejected"].as_u64()), (Some(2), Some(1)));
    assert!(std::fs::read_to_string(d.join("revocations.jsonl.rejected")).unwrap().contains("\"line\":3"));
    assert!(portcullis(&["unrevoke", "jti", "a"], d, None).status.success());
}

#[test]
fn a_database_password_is_never_printed() {
    let dir = TempDir::new("cli-secret");
    let out = portcullis(&["revoke", "jti", "x"], dir.path(), Some("postgres://u:sekret-pw@127.0.0.1:1/db"));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error[store_unavailable]"), "{stderr}");
    assert!(!stderr.contains("sekret-pw"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrate_revoke_list_prune() {
    let db = Database::new().await;
    let dir = TempDir::new("cli-pg");
    let d = dir.path().to_owned();
    let url = db.url.clone();
    tokio::task::spawn_blocking(move || {
        let u = Some(url.as_str());
        let before = portcullis(&["revoke", "jti", "x"], &d, u);
        assert!(String::from_utf8_lossy(&before.stderr).contains("portcullis db migrate"), "unmigrated is refused");
        let m = json(&portcullis(&["db", "migrate"], &d, u));
        let all = usize::try_from(m["version"].as_u64().unwrap()).unwrap();
        assert_eq!(m["applied"].as_array().unwrap().len(), all, "every migration on a fresh database: {m}");
        assert!(json(&portcullis(&["db", "migrate"], &d, u))["applied"].as_array().unwrap().is_empty());

        assert_eq!(json(&portcullis(&["revoke", "subject", "alice", "--tenant", "acme"], &d, u))["changed"], true);
        assert_eq!(json(&portcullis(&["revoke", "subject", "alice", "--issued-before", "1"], &d, u))["changed"], false);
        assert_eq!(json(&portcullis(&["revoke", "api-key", "k1", "--expires-at", "1000"], &d, u))["changed"], true);
        let list = json(&portcullis(&["revocations", "list", "--format", "json"], &d, u));
        assert_eq!(list["revocations"].as_array().unwrap().len(), 2, "{list}");
        assert!(list["store"].as_str().unwrap().starts_with("postgres "));
        let pruned = json(&portcullis(&["revocations", "prune", "--now", "2000"], &d, u));
        assert_eq!(pruned["pruned"], 1);
        let list = json(&portcullis(&["revocations", "list", "--format", "json", "--kind", "subject"], &d, u));
        assert_eq!(list["revocations"][0]["tenant"], "acme");
        assert!(!d.join("revocations.jsonl").exists(), "with a database URL the file is not touched");
    })
    .await
    .unwrap();
}
