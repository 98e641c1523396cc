//! Keys from the network: sources listed for the runtime, fetched sets merged with the policy's
//! own, and the 503 `keys_unavailable` while a source is missing.

use std::collections::BTreeMap;

use base64::Engine as _;
use ed25519_dalek::Signer as _;

use super::{Policy, RemoteKeySource};
use crate::b64::URL_SAFE_STRICT;
use crate::reason::Reason;
use crate::request::Request;
use crate::revocation::NoRevocations;
use crate::testutil::{NOW, claims};
use crate::time::UnixTime;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const JWKS_URI: &str = "https://idp.t.example/keys";

fn signer(seed: u8) -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[seed; 32])
}

fn jwk(seed: u8, kid: &str) -> String {
    let x = URL_SAFE_STRICT.encode(signer(seed).verifying_key().as_bytes());
    format!(r#"{{"kty":"OKP","crv":"Ed25519","kid":"{kid}","x":"{x}"}}"#)
}

fn jwks(keys: &[String]) -> Vec<u8> {
    format!(r#"{{"keys":[{}]}}"#, keys.join(",")).into_bytes()
}

fn token(seed: u8, kid: &str) -> String {
    let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#);
    let input = format!("{}.{}", URL_SAFE_STRICT.encode(header), URL_SAFE_STRICT.encode(claims("")));
    let sig = signer(seed).sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_STRICT.encode(sig.to_bytes()))
}

/// One EdDSA issuer with `sources` (indented YAML lines) as its key sources.
fn text(sources: &str) -> String {
    format!(
        "version: 1\nissuers:\n  - issuer: https://t.example\n    audiences: [api]\n    algorithms: [EdDSA]\n{sources}"
    )
}

fn load(sources: &str, files: &[(&str, Vec<u8>)]) -> Result<Policy, crate::PolicyError> {
    let files: BTreeMap<String, Vec<u8>> = files.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    Policy::load(&text(sources), &files)
}

fn reason(policy: &Policy, token: &str) -> Reason {
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];
    let req = Request { headers: &headers, ..Request::new("GET", "/", UnixTime(NOW)) };
    policy.decide(&req, &NoRevocations).reason
}

#[test]
fn a_fetched_key_set_verifies_and_an_unfetched_one_is_a_503() {
    let uri = format!("    jwks_uri: {JWKS_URI}\n");
    let fetched = load(&uri, &[(JWKS_URI, jwks(&[jwk(1, "a")]))]).unwrap();
    assert_eq!(reason(&fetched, &token(1, "a")), Reason::Allowed);
    assert_eq!(reason(&fetched, &token(2, "b")), Reason::UnknownKid, "every source fetched: the kid is unknown");
    assert_eq!(reason(&fetched, &token(2, "a")), Reason::BadSignature);

    let missing = load(&uri, &[]).unwrap();
    assert_eq!(reason(&missing, &token(1, "a")), Reason::KeysUnavailable);
    assert_eq!(Reason::KeysUnavailable.status(), 503);
    let status = missing.key_status();
    assert_eq!((status[0].keys, status[0].remote_sources, status[0].unfetched), (0, 1, 1));
}

#[test]
fn sources_combine_and_the_policys_own_kid_wins() {
    let inline = format!("    jwks: {{keys: [{}]}}\n    jwks_uri: {JWKS_URI}\n", jwk(1, "a"));
    // The network set reuses kid `a` for another key: the policy's key keeps the kid.
    let p = load(&inline, &[(JWKS_URI, jwks(&[jwk(3, "a"), jwk(2, "b")]))]).unwrap();
    assert_eq!(reason(&p, &token(1, "a")), Reason::Allowed);
    assert_eq!(reason(&p, &token(3, "a")), Reason::BadSignature);
    assert_eq!(reason(&p, &token(2, "b")), Reason::Allowed);
    // Not fetched: the inline key still serves; a kid it lacks may be in the missing set.
    let p = load(&inline, &[]).unwrap();
    assert_eq!(reason(&p, &token(1, "a")), Reason::Allowed);
    assert_eq!(reason(&p, &token(2, "b")), Reason::KeysUnavailable);
}

#[test]
fn a_network_set_skips_keys_it_cannot_use_but_refuses_a_broken_document() {
    let uri = format!("    jwks_uri: {JWKS_URI}\n");
    let odd = [
        r#"{"kty":"oct","kid":"s","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}"#.to_owned(),
        r#"{"kty":"EC","crv":"P-521","kid":"c","x":"AA","y":"AA"}"#.to_owned(),
        r#"{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}"#.to_owned(),
        jwk(1, "a"),
    ];
    let p = load(&uri, &[(JWKS_URI, jwks(&odd))]).unwrap();
    assert_eq!(p.key_status()[0].keys, 1);
    assert_eq!(reason(&p, &token(1, "a")), Reason::Allowed);
    for broken in [&b"not json"[..], br#"{"no_keys":[]}"#, &jwks(&[jwk(1, "a"), jwk(2, "a")])] {
        let e = load(&uri, &[(JWKS_URI, broken.to_vec())]).unwrap_err();
        assert_eq!(e.code(), "policy_file", "{e}");
    }
    // A fetched set with no usable key leaves the issuer with none: 503, not 401.
    let secret_only = odd.get(..1).unwrap();
    let p = load(&uri, &[(JWKS_URI, jwks(secret_only))]).unwrap();
    assert_eq!(reason(&p, &token(1, "a")), Reason::KeysUnavailable);
}

#[test]
fn sources_are_listed_for_the_runtime_and_checked() {
    let both = "    jwks_uri: https://idp.t.example/keys\n    discovery: true\n";
    assert_eq!(
        Policy::remote_key_sources(&text(both)).unwrap(),
        [
            RemoteKeySource { issuer: "https://t.example".into(), url: JWKS_URI.into(), discovery: false },
            RemoteKeySource {
                issuer: "https://t.example".into(),
                url: "https://t.example/.well-known/openid-configuration".into(),
                discovery: true
            },
        ]
    );
    for (sources, path) in [
        ("    jwks_uri: http://idp.t.example/keys\n", "jwks_uri"),
        ("    jwks_uri: https://user:pw@idp.t.example/keys\n", "jwks_uri"),
        ("    jwks_uri: https:///keys\n", "jwks_uri"),
        ("    jwks_file: https://idp.t.example/keys\n", "jwks_file"),
        ("    leeway_seconds: 5\n", "a key source is required"),
    ] {
        let e = load(sources, &[]).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains(path), "{sources}: {e}");
    }
    let plain = "version: 1\nissuers:\n  - issuer: http://t.example\n    audiences: [api]\n    algorithms: [EdDSA]\n    discovery: true\n";
    let e = Policy::load(plain, &super::NoFiles).map(|_| ()).unwrap_err();
    assert!(e.to_string().contains("discovery"), "{e}");
}

#[test]
fn the_issuer_a_token_names_is_read_for_refetching_only() {
    let p = load(&format!("    jwks_uri: {JWKS_URI}\n"), &[]).unwrap();
    let auth = format!("Bearer {}", token(9, "zz"));
    let headers = [("Authorization", auth.as_str())];
    let req = Request { headers: &headers, ..Request::new("GET", "/", UnixTime(NOW)) };
    assert_eq!(p.token_issuer(&req), Some("https://t.example"));
    let other = claims("").replace("https://t.example", "https://other.example");
    let forged = format!("Bearer {}.{}.AA", URL_SAFE_STRICT.encode("{}"), URL_SAFE_STRICT.encode(other));
    let headers = [("Authorization", forged.as_str())];
    let req = Request { headers: &headers, ..Request::new("GET", "/", UnixTime(NOW)) };
    assert_eq!(p.token_issuer(&req), None, "an issuer the policy does not trust");
}
