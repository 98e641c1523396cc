//! Paired ratios (interleaved batches) for the goals stated as ratios. Prints a Markdown table.
//!
//! `cargo bench -p portcullis-benches --bench ratios`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, clippy::print_stderr)]

use std::hint::black_box;

use portcullis_benches::{Claims, jwt_cases, load_policy, paired, unix_now};
use portcullis_core::{NoRevocations, Request, UnixTime};

fn main() {
    // `cargo test --benches` runs this with `--bench` absent: do one quick round as a smoke test.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (rounds, batch) = if quick { (3, 10) } else { (201, 200) };
    let policy = load_policy("policies/example.yaml");
    let now = unix_now();
    println!("| credential | Portcullis decide | jsonwebtoken::decode | ratio (median) | ratio IQR |");
    println!("| --- | --- | --- | --- | --- |");
    for case in jwt_cases(now) {
        let auth = format!("Bearer {}", case.token);
        let headers = [("authorization", auth.as_str()), ("user-agent", "bench/1.0"), ("accept", "*/*")];
        let req = Request { headers: &headers, ..Request::new("GET", "/v1/orders", UnixTime(now)) };
        assert!(policy.decide(&req, &NoRevocations).allowed());
        let (rounds, batch) = if case.name == "hs256" { (rounds, batch) } else { (rounds.min(61), batch / 20 + 1) };
        let p = paired(
            || {
                black_box(policy.decide(black_box(&req), &NoRevocations));
            },
            || {
                black_box(jsonwebtoken::decode::<Claims>(black_box(&case.token), &case.key, &case.validation).unwrap());
            },
            rounds,
            batch,
        );
        println!(
            "| {} | {:.2} µs | {:.2} µs | {:.2}x | {:.2}–{:.2} |",
            case.name,
            p.subject_ns / 1e3,
            p.peer_ns / 1e3,
            p.ratio,
            p.ratio_iqr.0,
            p.ratio_iqr.1
        );
    }
}
