//! A core request from what every runtime has: a method, a request target, the authority, a
//! header list and the peer address it observed itself.
//!
//! The rules live here once: pseudo-headers (`:path`, `:authority`, ...) are dropped (the
//! runtime passes them as fields), `Host` is taken as the authority when the runtime has none
//! and never passed on as a header, the query is split off the target, header values that are
//! not UTF-8 are kept lossily (so a credential with a stray byte fails verification rather
//! than vanishing), and the client address is only ever the peer the runtime saw, or the last
//! entry of a header the runtime is configured to trust.

use std::borrow::Cow;
use std::net::IpAddr;

use portcullis_core::OwnedRequest;
use portcullis_core::split_path_and_query;

/// The parts of one request, as a runtime received it. The method, target, scheme and query are
/// borrowed until [`RequestParts::build`], which copies each once.
#[derive(Clone, Debug, Default)]
pub struct RequestParts<'a> {
    method: &'a str,
    scheme: &'a str,
    target: &'a str,
    authority: Cow<'a, str>,
    query: &'a str,
    headers: Vec<(String, String)>,
    client_ip: Option<IpAddr>,
}

impl<'a> RequestParts<'a> {
    /// `method` and `target` (path, optionally with `?query`) as received; `authority` the
    /// `:authority` or `Host` (empty when unknown: a `Host` header then fills it).
    pub fn new(method: &'a str, target: &'a str, authority: &'a str) -> RequestParts<'a> {
        RequestParts { method, scheme: "https", target, authority: Cow::Borrowed(authority), ..RequestParts::default() }
    }

    /// `http` or `https` (default `https`; empty keeps the default).
    #[must_use]
    pub fn scheme(mut self, scheme: &'a str) -> RequestParts<'a> {
        if !scheme.is_empty() {
            self.scheme = scheme;
        }
        self
    }

    /// A query the runtime received apart from the target (Envoy's `CheckRequest.query`); the
    /// target's own `?query` wins when both are present.
    #[must_use]
    pub fn query(mut self, query: &'a str) -> RequestParts<'a> {
        self.query = query;
        self
    }

    /// The request's headers, in order, repeats kept apart.
    #[must_use]
    pub fn headers<'h, V: AsRef<[u8]> + ?Sized + 'h>(
        mut self,
        headers: impl IntoIterator<Item = (&'h str, &'h V)>,
    ) -> RequestParts<'a> {
        for (name, value) in headers {
            if name.starts_with(':') {
                continue;
            }
            let value = String::from_utf8_lossy(value.as_ref());
            if name.eq_ignore_ascii_case("host") {
                if self.authority.is_empty() {
                    self.authority = Cow::Owned(value.into_owned());
                }
                continue;
            }
            self.headers.push((name.to_owned(), value.into_owned()));
        }
        self
    }

    /// The peer address the runtime observed (never read from a header a client could send).
    #[must_use]
    pub fn peer(mut self, ip: Option<IpAddr>) -> RequestParts<'a> {
        self.client_ip = ip;
        self
    }

    /// Takes the client address from the last entry of `header` (for example `x-forwarded-for`
    /// when the proxy in front appends the peer it saw, or Spin's `spin-client-addr`, which Spin
    /// writes after the client's own headers). Only for a listener reachable solely from that
    /// proxy: anyone else could write the header. An address with a port (`ip:port`,
    /// `[ipv6]:port`) counts as its address. Unparsable: unknown.
    #[must_use]
    pub fn client_address_from(mut self, header: &str) -> RequestParts<'a> {
        let last = self.headers.iter().rev().find(|(k, _)| k.eq_ignore_ascii_case(header));
        self.client_ip = last
            .and_then(|(_, v)| v.rsplit(',').next())
            .map(str::trim)
            .and_then(|v| v.parse::<IpAddr>().ok().or_else(|| v.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())));
        self
    }

    /// The request at `now` (Unix seconds, the runtime's clock).
    pub fn build(self, now: i64) -> OwnedRequest {
        let (path, query) = split_path_and_query(self.target);
        let query = if query.is_empty() { self.query } else { query };
        OwnedRequest {
            method: self.method.to_owned(),
            scheme: self.scheme.to_owned(),
            host: self.authority.into_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers: self.headers,
            client_ip: self.client_ip,
            now,
        }
    }
}

/// A request described as JSON: one line of `portcullis check --batch`, and the request part of
/// every corpus case. Unknown members are errors.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Echoed back on the decision line.
    #[serde(default)]
    pub id: Option<serde_json::Value>,
    /// A bearer credential, sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<String>,
    /// Unix seconds; the host's clock when absent.
    #[serde(default)]
    pub now: Option<i64>,
    /// Default `GET`.
    #[serde(default)]
    pub method: Option<String>,
    /// Default `https`.
    #[serde(default)]
    pub scheme: Option<String>,
    /// Default empty.
    #[serde(default)]
    pub host: Option<String>,
    /// Path, optionally with `?query`. Default `/`.
    #[serde(default)]
    pub path: Option<String>,
    /// `{"Name": "value"}` or `[["Name", "value"], ...]` (the latter allows repeats).
    #[serde(default)]
    pub headers: HeaderSpec,
    /// The client address.
    #[serde(default)]
    pub client_ip: Option<IpAddr>,
}

/// Headers as an object or as a list of pairs.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(untagged)]
pub enum HeaderSpec {
    /// `[["Name", "value"], ...]`
    Pairs(Vec<(String, String)>),
    /// `{"Name": "value"}`
    Map(std::collections::BTreeMap<String, String>),
}

impl Default for HeaderSpec {
    fn default() -> Self {
        HeaderSpec::Pairs(Vec::new())
    }
}

impl RequestSpec {
    /// Builds the request, using `default_now` when the spec has no time.
    pub fn to_owned_request(&self, default_now: i64) -> OwnedRequest {
        let target = self.path.as_deref().unwrap_or("/");
        let (path, query) = split_path_and_query(target);
        let mut headers: Vec<(String, String)> = match &self.headers {
            HeaderSpec::Pairs(p) => p.clone(),
            HeaderSpec::Map(m) => m.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        };
        if let Some(t) = &self.token {
            headers.push(("Authorization".into(), format!("Bearer {t}")));
        }
        OwnedRequest {
            method: self.method.clone().unwrap_or_else(|| "GET".into()),
            scheme: self.scheme.clone().unwrap_or_else(|| "https".into()),
            host: self.host.clone().unwrap_or_default(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers,
            client_ip: self.client_ip,
            now: self.now.unwrap_or(default_now),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pseudo_headers_and_host_become_fields_and_the_query_is_split() {
        let r = RequestParts::new("GET", "/v1/orders?page=2", "")
            .headers([(":path", "/x".as_bytes()), ("Host", b"api.example.com"), ("authorization", b"Bearer t")])
            .peer(Some("203.0.113.9".parse().unwrap()))
            .build(7);
        assert_eq!((r.method.as_str(), r.path.as_str(), r.query.as_str()), ("GET", "/v1/orders", "page=2"));
        assert_eq!((r.host.as_str(), r.scheme.as_str(), r.now), ("api.example.com", "https", 7));
        assert_eq!(r.headers, vec![("authorization".to_owned(), "Bearer t".to_owned())]);
        assert_eq!(r.client_ip, Some("203.0.113.9".parse().unwrap()));
    }

    #[test]
    fn an_authority_given_wins_over_a_host_header_and_a_separate_query_fills_in() {
        let r = RequestParts::new("POST", "/p", "a.example").query("x=1").headers([("host", b"b.example")]).build(0);
        assert_eq!((r.host.as_str(), r.query.as_str()), ("a.example", "x=1"));
        let r = RequestParts::new("POST", "/p?y=2", "").query("x=1").build(0);
        assert_eq!(r.query, "y=2");
    }

    #[test]
    fn bytes_that_are_not_utf8_are_kept_lossily_not_dropped() {
        let r = RequestParts::new("GET", "/", "").headers([("authorization", b"Bearer \xff".as_slice())]).build(0);
        assert_eq!(r.headers[0].1, "Bearer \u{fffd}");
    }

    #[test]
    fn the_client_address_comes_from_the_last_entry_of_a_trusted_header_only() {
        let hs = [("x-forwarded-for", b"198.51.100.1, 10.0.0.1".as_slice()), ("x-forwarded-for", b"192.0.2.7")];
        let r = RequestParts::new("GET", "/", "").headers(hs).client_address_from("X-Forwarded-For").build(0);
        assert_eq!(r.client_ip, Some("192.0.2.7".parse().unwrap()));
        let r = RequestParts::new("GET", "/", "").headers([("x-forwarded-for", b"nonsense".as_slice())]);
        assert_eq!(r.client_address_from("x-forwarded-for").build(0).client_ip, None);
        let r = RequestParts::new("GET", "/", "").headers([("x-forwarded-for", b"192.0.2.7".as_slice())]).build(0);
        assert_eq!(r.client_ip, None, "never from a header unless asked");
        // Spin's `spin-client-addr`: the client's own copy first, Spin's (with a port) last.
        let hs = [("spin-client-addr", b"10.0.0.1".as_slice()), ("spin-client-addr", b"[2001:db8::7]:51000")];
        let r = RequestParts::new("GET", "/", "").headers(hs).client_address_from("spin-client-addr").build(0);
        assert_eq!(r.client_ip, Some("2001:db8::7".parse().unwrap()));
        let hs = [("spin-client-addr", b"203.0.113.9:443".as_slice())];
        let r = RequestParts::new("GET", "/", "").headers(hs).client_address_from("spin-client-addr").build(0);
        assert_eq!(r.client_ip, Some("203.0.113.9".parse().unwrap()));
    }
}
