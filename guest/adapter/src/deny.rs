//! What a decision looks like on the wire, the same in every runtime.
//!
//! A denial is its status, a small JSON body naming the stable reason and nothing else,
//! `content-type: application/json`, `x-portcullis-reason`, and a `WWW-Authenticate`
//! challenge (RFC 6750 §3) when the reason is about the credential. An allow sets the
//! decision's identity headers and removes every name the policy reserves, so a client can
//! never forge one.

use portcullis_core::{Decision, Reason};

/// The header naming the reason of a denial.
pub const REASON_HEADER: &str = "x-portcullis-reason";

/// A denial as a response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status (401, 403, 429, 503, ...).
    pub status: u16,
    /// `{"error":"<reason>","status":<status>}`.
    pub body: String,
    /// Response headers, in order: content type, reason, challenge (when one applies). The
    /// decision's `response_headers` (CORS, rate limits, the policy's) go on it too.
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Denial {
    /// The response for `reason`, or `None` when the reason allows.
    pub fn of(reason: Reason) -> Option<Denial> {
        if reason == Reason::Allowed {
            return None;
        }
        if reason == Reason::CorsPreflight {
            // An allowed preflight: no body; its CORS headers are the decision's response headers.
            return Some(Denial {
                status: reason.status(),
                body: String::new(),
                headers: vec![(REASON_HEADER, reason.code())],
            });
        }
        let mut headers = vec![("content-type", "application/json"), (REASON_HEADER, reason.code())];
        if let Some(w) = www_authenticate(reason) {
            headers.push(("www-authenticate", w));
        }
        Some(Denial { status: reason.status(), body: body(reason), headers })
    }
}

/// `WWW-Authenticate` for a denial (RFC 6750 §3), when one applies.
pub fn www_authenticate(reason: Reason) -> Option<&'static str> {
    match reason {
        Reason::MissingCredential => Some(r#"Bearer realm="portcullis""#),
        Reason::InsufficientScope => Some(r#"Bearer realm="portcullis", error="insufficient_scope""#),
        r if r.status() == 401 => Some(r#"Bearer realm="portcullis", error="invalid_token""#),
        _ => None,
    }
}

/// The small JSON body of a denial: the stable reason and the status, nothing else.
pub fn body(reason: Reason) -> String {
    format!(r#"{{"error":"{}","status":{}}}"#, reason.code(), reason.status())
}

/// What an allow does to the request on its way upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward<'a> {
    /// Identity headers to set (replacing any the client sent).
    pub set: Vec<(&'a str, &'a str)>,
    /// Headers to strip (every reserved identity name, set or not).
    pub remove: Vec<&'a str>,
}

impl Forward<'_> {
    /// The upstream changes `d` asks for; on a denial, only the removals (nothing is set).
    pub fn of(d: &Decision) -> Forward<'_> {
        let set = if d.allowed() { d.headers_to_set.iter().map(|(k, v)| (&**k, &**v)).collect() } else { Vec::new() };
        let remove = d.headers_to_remove.as_deref().map(|r| r.iter().map(|h| &**h).collect()).unwrap_or_default();
        Forward { set, remove }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn denials_carry_status_reason_body_and_the_right_challenge() {
        let d = Denial::of(Reason::Expired).unwrap();
        assert_eq!((d.status, d.body.as_str()), (401, r#"{"error":"expired","status":401}"#));
        assert_eq!(
            d.headers,
            vec![
                ("content-type", "application/json"),
                ("x-portcullis-reason", "expired"),
                ("www-authenticate", r#"Bearer realm="portcullis", error="invalid_token""#)
            ]
        );
        let d = Denial::of(Reason::MissingCredential).unwrap();
        assert_eq!(d.headers[2].1, r#"Bearer realm="portcullis""#);
        let d = Denial::of(Reason::InsufficientScope).unwrap();
        assert_eq!((d.status, d.headers[2].1), (403, r#"Bearer realm="portcullis", error="insufficient_scope""#));
        let d = Denial::of(Reason::InternalError).unwrap();
        assert_eq!((d.status, d.headers.len()), (503, 2), "no challenge for a fault");
        assert_eq!(Denial::of(Reason::Allowed), None);
        let d = Denial::of(Reason::CorsPreflight).unwrap();
        assert_eq!((d.status, d.body.as_str(), d.headers.len()), (204, "", 1), "a preflight answer has no body");
        let d = Denial::of(Reason::RateLimited).unwrap();
        assert_eq!((d.status, d.headers.len()), (429, 2), "no challenge for a rate limit");
        let d = Denial::of(Reason::IpNotAllowed).unwrap();
        assert_eq!((d.status, d.headers.len()), (403, 2), "no challenge for a refused key: it is proven");
    }

    #[test]
    fn every_reason_renders_a_body_that_is_json_with_its_code_and_status() {
        for r in Reason::ALL {
            let b = body(*r);
            assert!(b.starts_with(r#"{"error":""#) && b.ends_with('}'), "{b}");
            assert!(b.contains(r.code()) && b.contains(&r.status().to_string()), "{b}");
        }
    }

    #[test]
    fn a_denial_sets_nothing_upstream() {
        let d = Decision::deny(Reason::Revoked);
        assert!(Forward::of(&d).set.is_empty());
    }
}
