//! `policies/schema.json` is what the loader accepts, and every example policy follows it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::{Path, PathBuf};

use portcullis_core::{json_schema, parse_text};

fn policies() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn policy_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if p.is_dir() {
            // keys/ holds key material, not policies.
            if name != "keys" {
                out.extend(policy_files(&p));
            }
        } else if (name.ends_with(".yaml") || name.ends_with(".json")) && name != "schema.json" {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[test]
fn the_committed_schema_is_the_generated_one() {
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(policies().join("schema.json")).unwrap()).unwrap();
    assert!(
        committed == json_schema(),
        "policies/schema.json is stale: run `cargo run -- policy schema > policies/schema.json`"
    );
}

#[test]
fn every_policy_in_policies_validates_against_the_schema_and_loads() {
    let validator = jsonschema::validator_for(&json_schema()).unwrap();
    let files = policy_files(&policies());
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let value = parse_text(&text).unwrap();
        let errors: Vec<String> =
            validator.iter_errors(&value).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{}: {}", f.display(), errors.join("; "));
        portcullis_host::policy_files::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[test]
fn the_schema_rejects_what_the_loader_rejects_structurally() {
    let validator = jsonschema::validator_for(&json_schema()).unwrap();
    for bad in [
        "version: 1\nissuers: [{issuer: x, audiences: [a], algorithms: [HS256], jwks_file: k, leway_seconds: 1}]\n",
        "version: 1\nunknown_top_level: true\n",
        "issuers: []\n",
        "version: 1\nlimits: {max_token_bytes: many}\n",
    ] {
        let v = parse_text(bad).unwrap();
        assert!(!validator.is_valid(&v), "schema accepted: {bad}");
        assert!(portcullis_core::document_from_value(v).is_err(), "loader accepted: {bad}");
    }
}
