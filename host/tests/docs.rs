//! Documentation that must stay true to the code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeSet;

use portcullis_core::Reason;

fn read(rel: &str) -> String {
    std::fs::read_to_string(format!("{}/../{rel}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_reason_code_table_lists_exactly_the_codes_with_their_statuses() {
    let doc = read("docs/reason-codes.md");
    let mut documented = BTreeSet::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let code = cells[1].trim_matches('`');
        let status: u16 = cells[2].parse().unwrap();
        let reason = Reason::from_code(code).unwrap_or_else(|| panic!("documented code `{code}` does not exist"));
        assert_eq!(reason.status(), status, "{code}: documented status differs");
        assert!(documented.insert(code.to_owned()), "{code} documented twice");
    }
    for r in Reason::ALL {
        assert!(documented.contains(r.code()), "`{r}` is not documented in docs/reason-codes.md");
    }
}
