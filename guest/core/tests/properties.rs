//! Properties over arbitrary input: no panic, and nothing unknown is ever allowed.
#![cfg(not(target_arch = "wasm32"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use portcullis_core::b64::URL_SAFE_STRICT;
use portcullis_core::{NoFiles, NoRevocations, Policy, Reason, Request, UnixTime};
use proptest::prelude::*;
use sha2::Sha256;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const NOW: i64 = 1_800_000_000;
const LEEWAY: f64 = 10.0;
const MAX_LIFETIME: f64 = 600.0;

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    let k = URL_SAFE_STRICT.encode(SECRET);
    Policy::load(
        &format!(
            "version: 1\nissuers:\n  - issuer: https://t.example\n    audiences: [api]\n    algorithms: [HS256]\n    \
             jwks: {{keys: [{{kty: oct, kid: k1, k: {k}}}]}}\n    leeway_seconds: 10\n    max_lifetime_seconds: 600\n\
             service_tokens:\n  prefix: svc\n  keys: [{{id: s1, secret: {}}}]\n  audiences: [api]\n\
             api_keys:\n  prefix: ask_\n  keys: [{{id: k, prefix: ask_12345678, sha256: \"{}\"}}]\n",
            "s".repeat(32),
            "0".repeat(64)
        ),
        &NoFiles,
    )
    .unwrap()
});

static EXAMPLE: LazyLock<Policy> = LazyLock::new(|| {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies/");
    let text = std::fs::read_to_string(format!("{root}example.yaml")).unwrap();
    let mut files = BTreeMap::new();
    for f in Policy::referenced_files(&text).unwrap() {
        files.insert(f.clone(), std::fs::read(format!("{root}{f}")).unwrap());
    }
    Policy::load(&text, &files).unwrap()
});

fn hs256(header: &str, payload: &str) -> String {
    let input = format!("{}.{}", URL_SAFE_STRICT.encode(header), URL_SAFE_STRICT.encode(payload));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(SECRET).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_STRICT.encode(mac.finalize().into_bytes()))
}

fn decide(policy: &Policy, headers: &[(&str, &str)]) -> portcullis_core::Decision {
    let req = Request { headers, ..Request::new("GET", "/", UnixTime(NOW)) };
    policy.decide(&req, &NoRevocations)
}

fn bearer(policy: &Policy, token: &str) -> portcullis_core::Decision {
    let h = format!("Bearer {token}");
    decide(policy, &[("Authorization", &h)])
}

/// Arbitrary JSON, bounded in depth and size.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e12f64..1e12).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("https://t.example".into())),
        Just(Value::String("api".into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![Just("iss".to_string()), Just("aud".to_string()), Just("exp".to_string()), "[a-z]{1,4}"],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Offsets from `NOW`, half of them on or next to a boundary (leeway, lifetime).
fn offset() -> impl Strategy<Value = f64> {
    let edges: Vec<f64> = [0.0, LEEWAY, MAX_LIFETIME, MAX_LIFETIME + LEEWAY]
        .iter()
        .flat_map(|e| [-e - 1.0, -e - 0.5, -e, -e + 0.5, e - 0.5, *e, e + 0.5, e + 1.0])
        .collect();
    prop_oneof![prop::sample::select(edges), -2000.0f64..2000.0]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bearer_strings_never_allow(token in "\\PC{0,400}") {
        for p in [&*POLICY, &*EXAMPLE] {
            prop_assert!(!bearer(p, &token).allowed());
        }
    }

    #[test]
    fn arbitrary_header_sets_never_allow(headers in prop::collection::vec(("[A-Za-z-]{1,16}", "\\PC{0,64}"), 0..12)) {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        for p in [&*POLICY, &*EXAMPLE] {
            prop_assert!(!decide(p, &h).allowed());
        }
    }

    #[test]
    fn any_single_character_change_to_a_valid_token_is_denied(
        pos in any::<prop::sample::Index>(),
        with in prop::sample::select(b"ABCxyz019-_.=+/ ".to_vec()),
    ) {
        let payload = format!(r#"{{"iss":"https://t.example","aud":"api","sub":"a","iat":{},"exp":{}}}"#, NOW, NOW + 60);
        let token = hs256(r#"{"alg":"HS256","kid":"k1"}"#, &payload);
        prop_assume!(bearer(&POLICY, &token).allowed());
        let mut bytes = token.into_bytes();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != with);
        bytes[i] = with;
        let mutated = String::from_utf8(bytes).unwrap();
        prop_assert!(!bearer(&POLICY, &mutated).allowed(), "{mutated}");
    }

    #[test]
    fn correctly_signed_arbitrary_payloads_never_panic_and_allow_only_valid_claims(
        payload in prop::collection::btree_map("[a-z]{1,4}", json_value(), 0..6),
        iss in prop::option::of(json_value()),
        aud in prop::option::of(json_value()),
        exp in prop::option::of(json_value()),
    ) {
        let mut m: serde_json::Map<_, _> = payload.into_iter().collect();
        for (k, v) in [("iss", iss), ("aud", aud), ("exp", exp)] {
            if let Some(v) = v { m.insert(k.into(), v); }
        }
        let token = hs256(r#"{"alg":"HS256"}"#, &serde_json::Value::Object(m.clone()).to_string());
        let d = bearer(&POLICY, &token);
        if d.allowed() {
            prop_assert_eq!(m.get("iss").and_then(|v| v.as_str()), Some("https://t.example"));
            let exp = m.get("exp").and_then(serde_json::Value::as_f64).unwrap();
            prop_assert!((NOW as f64) < exp + LEEWAY);
            let aud_ok = match m.get("aud") {
                Some(serde_json::Value::String(s)) => s == "api",
                Some(serde_json::Value::Array(a)) => a.iter().any(|x| x == "api"),
                _ => false,
            };
            prop_assert!(aud_ok);
        }
    }

    /// The time, issuer and audience rules against a reference model written from the spec.
    #[test]
    fn time_issuer_and_audience_rules_match_the_model(
        exp in prop::option::of(offset()),
        nbf in prop::option::of(offset()),
        iat in prop::option::of(offset()),
        iss in prop::sample::select(vec![None, Some("https://t.example"), Some("https://t.example/"), Some("x")]),
        aud in prop::sample::select(vec![None, Some(r#""api""#), Some(r#""web""#), Some(r#"["web","api"]"#), Some("[]")]),
        whole in any::<bool>(),
    ) {
        let t = |o: Option<f64>| o.map(|d| NOW as f64 + if whole { d.trunc() } else { d });
        let (exp, nbf, iat) = (t(exp), t(nbf), t(iat));
        let mut members = vec![r#""sub":"a""#.to_string()];
        if let Some(v) = exp { members.push(format!(r#""exp":{v}"#)); }
        if let Some(v) = nbf { members.push(format!(r#""nbf":{v}"#)); }
        if let Some(v) = iat { members.push(format!(r#""iat":{v}"#)); }
        if let Some(v) = iss { members.push(format!(r#""iss":"{v}""#)); }
        if let Some(v) = aud { members.push(format!(r#""aud":{v}"#)); }
        let token = hs256(r#"{"alg":"HS256","kid":"k1"}"#, &format!("{{{}}}", members.join(",")));

        let now = NOW as f64;
        let expected = if iss != Some("https://t.example") {
            Reason::WrongIssuer
        } else if exp.is_none() {
            Reason::MissingClaim
        } else if exp.is_some_and(|e| now >= e + LEEWAY) {
            Reason::Expired
        } else if nbf.is_some_and(|n| n > now + LEEWAY) {
            Reason::NotYetValid
        } else if iat.is_some_and(|i| i > now + LEEWAY) {
            Reason::IssuedInFuture
        } else if matches!((exp, iat), (Some(e), Some(i)) if e - i > MAX_LIFETIME) {
            Reason::LifetimeTooLong
        } else if !matches!(aud, Some(r#""api""#) | Some(r#"["web","api"]"#)) {
            Reason::WrongAudience
        } else {
            Reason::Allowed
        };
        prop_assert_eq!(bearer(&POLICY, &token).reason, expected);
    }

    #[test]
    fn arbitrary_policy_text_never_panics(text in "\\PC{0,300}") {
        let _ = Policy::load(&text, &NoFiles);
    }

    #[test]
    fn arbitrary_yaml_shaped_policies_never_panic(doc in json_value()) {
        let mut m = serde_json::Map::new();
        m.insert("version".into(), 1.into());
        m.insert("issuers".into(), serde_json::Value::Array(vec![doc.clone()]));
        m.insert("api_keys".into(), doc);
        let _ = Policy::load(&serde_json::Value::Object(m).to_string(), &NoFiles);
    }
}
