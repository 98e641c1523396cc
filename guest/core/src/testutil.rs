//! Helpers for unit tests: HMAC-signed tokens with exact header and payload text.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::b64::URL_SAFE_STRICT;
use crate::policy::{NoFiles, Policy};
use crate::request::Request;
use crate::revocation::NoRevocations;
use crate::time::UnixTime;
use crate::{Decision, Revocations};

pub(crate) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
pub(crate) const NOW: i64 = 1_800_000_000;

/// HS256 over the exact header and payload text.
pub(crate) fn hs256(secret: &[u8], header: &str, payload: &str) -> String {
    let input = format!("{}.{}", URL_SAFE_STRICT.encode(header), URL_SAFE_STRICT.encode(payload));
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", URL_SAFE_STRICT.encode(mac.finalize().into_bytes()))
}

/// A one-issuer HS256 policy; `extra` is appended to the issuer entry (indented YAML lines).
pub(crate) fn hs_policy(extra: &str) -> Policy {
    let k = URL_SAFE_STRICT.encode(SECRET);
    let text = format!(
        "version: 1\nissuers:\n  - issuer: https://t.example\n    audiences: [api]\n    algorithms: [HS256]\n    \
         jwks: {{keys: [{{kty: oct, kid: k1, k: {k}}}]}}\n    leeway_seconds: 10\n{extra}"
    );
    Policy::load(&text, &NoFiles).unwrap()
}

/// Claims with sensible defaults; `extra` is spliced in as raw JSON members.
pub(crate) fn claims(extra: &str) -> String {
    let base = format!(r#""iss":"https://t.example","aud":"api","sub":"alice","iat":{},"exp":{}"#, NOW - 10, NOW + 300);
    if extra.is_empty() { format!("{{{base}}}") } else { format!("{{{base},{extra}}}") }
}

pub(crate) fn decide_token(policy: &Policy, token: &str) -> Decision {
    decide_with(policy, token, &NoRevocations)
}

pub(crate) fn decide_with(policy: &Policy, token: &str, revs: &dyn Revocations) -> Decision {
    let auth = format!("Bearer {token}");
    let headers = [("Authorization", auth.as_str())];
    let req = Request { headers: &headers, ..Request::new("GET", "/", UnixTime(NOW)) };
    policy.decide(&req, revs)
}
