//! The request as every runtime hands it to the core.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::reason::Reason;
use crate::time::UnixTime;

/// One request to decide. Borrowed: hosts keep their own buffers and the core copies only what
/// an allowed decision returns.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// HTTP method, as sent (`GET`).
    pub method: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The `:authority` / `Host`, possibly with a port.
    pub host: &'a str,
    /// The path, without the query string.
    pub path: &'a str,
    /// The query string without `?` (empty when absent).
    pub query: &'a str,
    /// Header names and values. Names are matched case-insensitively.
    pub headers: &'a [(&'a str, &'a str)],
    /// The peer address as the runtime observed it (never taken from a header).
    pub client_ip: Option<IpAddr>,
    /// The time of the decision.
    pub now: UnixTime,
}

/// How many times a header occurs, and its value when it occurs once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    /// Absent.
    Absent,
    /// Present exactly once.
    One(&'a str),
    /// Present more than once: ambiguous, never guessed at.
    Repeated,
}

impl<'a> Request<'a> {
    /// A request with no headers, for tests and tools.
    pub fn new(method: &'a str, path: &'a str, now: UnixTime) -> Self {
        Request { method, scheme: "https", host: "", path, query: "", headers: &[], client_ip: None, now }
    }

    /// Looks up a header by name (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> HeaderValue<'a> {
        let mut found = HeaderValue::Absent;
        for (k, v) in self.headers {
            if k.eq_ignore_ascii_case(name) {
                if found != HeaderValue::Absent {
                    return HeaderValue::Repeated;
                }
                found = HeaderValue::One(v);
            }
        }
        found
    }
}

impl<'v> HeaderValue<'v> {
    /// The value when present exactly once.
    pub fn value(self) -> Option<&'v str> {
        match self {
            HeaderValue::One(v) => Some(v),
            _ => None,
        }
    }
}

impl HeaderValue<'_> {
    fn add<'v>(self, v: &'v str) -> HeaderValue<'v>
    where
        Self: 'v,
    {
        match self {
            HeaderValue::Absent => HeaderValue::One(v),
            _ => HeaderValue::Repeated,
        }
    }
}

impl<'a> Request<'a> {
    /// Looks up two headers in one pass (the credential headers, on every request).
    pub fn header_pair(&self, a: &str, b: &str) -> (HeaderValue<'a>, HeaderValue<'a>) {
        let (mut va, mut vb) = (HeaderValue::Absent, HeaderValue::Absent);
        for (k, v) in self.headers {
            if k.len() == a.len() && k.eq_ignore_ascii_case(a) {
                va = va.add(v);
            } else if k.len() == b.len() && k.eq_ignore_ascii_case(b) {
                vb = vb.add(v);
            }
        }
        (va, vb)
    }
}

/// Splits a request target into path and query at the first `?`.
pub fn split_path_and_query(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

/// An owned request, for hosts that assemble one from parts (CLI, batch, component adapter).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnedRequest {
    /// See [`Request::method`].
    pub method: String,
    /// See [`Request::scheme`].
    pub scheme: String,
    /// See [`Request::host`].
    pub host: String,
    /// See [`Request::path`].
    pub path: String,
    /// See [`Request::query`].
    pub query: String,
    /// See [`Request::headers`].
    pub headers: Vec<(String, String)>,
    /// See [`Request::client_ip`].
    pub client_ip: Option<IpAddr>,
    /// See [`Request::now`].
    pub now: i64,
}

impl OwnedRequest {
    /// Borrows the request. `headers` is scratch space the caller owns, so no allocation is
    /// needed when the caller reuses it.
    pub fn with_request<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        f(&Request {
            method: &self.method,
            scheme: &self.scheme,
            host: &self.host,
            path: &self.path,
            query: &self.query,
            headers: &headers,
            client_ip: self.client_ip,
            now: UnixTime(self.now),
        })
    }
}

/// Size limits, validated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`crate::policy::doc::LimitsDoc::max_token_bytes`].
    pub max_token_bytes: usize,
    /// See [`crate::policy::doc::LimitsDoc::max_headers`].
    pub max_headers: usize,
    /// See [`crate::policy::doc::LimitsDoc::max_header_bytes`].
    pub max_header_bytes: usize,
    /// See [`crate::policy::doc::LimitsDoc::max_path_bytes`].
    pub max_path_bytes: usize,
}

impl Limits {
    /// Whether a request fits: header count, total header bytes, path and query length. A
    /// request that does not is `malformed`, before anything else is looked at.
    pub(crate) fn check(&self, req: &Request<'_>) -> Result<(), Reason> {
        if req.headers.len() > self.max_headers || req.path.len() + req.query.len() > self.max_path_bytes {
            return Err(Reason::Malformed);
        }
        let header_bytes: usize = req.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if header_bytes > self.max_header_bytes {
            return Err(Reason::Malformed);
        }
        Ok(())
    }
}

/// True when the client address is in one of the ranges (IPv4-mapped IPv6 compared as IPv4).
pub(crate) fn client_in(ip: Option<IpAddr>, nets: &[IpNet]) -> bool {
    let Some(ip) = ip else { return false };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn header_lookup_is_case_insensitive_and_flags_repeats() {
        let h = [("Authorization", "Bearer a"), ("x-api-key", "k"), ("X-API-KEY", "k2")];
        let r = Request { headers: &h, ..Request::new("GET", "/", UnixTime(0)) };
        assert_eq!(r.header("authorization"), HeaderValue::One("Bearer a"));
        assert_eq!(r.header("X-Api-Key"), HeaderValue::Repeated);
        assert_eq!(r.header("origin"), HeaderValue::Absent);
        assert_eq!(r.header_pair("AUTHORIZATION", "x-api-key"), (HeaderValue::One("Bearer a"), HeaderValue::Repeated));
        assert_eq!(r.header_pair("origin", "x-api-key").0, HeaderValue::Absent);
    }

    #[test]
    fn path_and_query_split_at_the_first_question_mark() {
        assert_eq!(split_path_and_query("/a?b=1?c"), ("/a", "b=1?c"));
        assert_eq!(split_path_and_query("/a"), ("/a", ""));
    }
}
