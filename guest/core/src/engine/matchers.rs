//! Small compiled matchers: methods, hosts, header values for upstream.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::str::FromStr;

/// A set of HTTP methods (the nine registered ones).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Methods(u16);

const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

impl Methods {
    /// The bit of a request method; `None` for methods outside the nine (they only match routes
    /// and rules that do not restrict the method). Methods are case-sensitive (RFC 9110 §9.1).
    pub(crate) fn bit(method: &str) -> Option<u16> {
        METHODS.iter().position(|m| *m == method).and_then(|i| u16::try_from(i).ok()).map(|i| 1 << i)
    }

    /// True when the set holds the request method.
    pub(crate) fn contains(self, bit: Option<u16>) -> bool {
        bit.is_some_and(|b| self.0 & b != 0)
    }

    /// True when the two sets share a method.
    pub(crate) fn intersects(self, other: Methods) -> bool {
        self.0 & other.0 != 0
    }

    /// The names in the set, in registry order.
    pub(crate) fn names(self) -> impl Iterator<Item = &'static str> {
        METHODS.iter().enumerate().filter(move |(i, _)| self.0 & (1 << i) != 0).map(|(_, m)| *m)
    }

    /// Parses a list of method names.
    pub(crate) fn parse(list: &[String]) -> Result<Methods, String> {
        let mut m = Methods(0);
        for name in list {
            let bit = Methods::bit(name)
                .ok_or_else(|| format!("unknown method `{name}` (methods are upper case: {})", METHODS.join(", ")))?;
            m.0 |= bit;
        }
        Ok(m)
    }
}

/// A host pattern: exact, or `*.suffix` (one or more labels before the suffix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HostPattern {
    /// `api.example.com`
    Exact(Box<str>),
    /// `.example.com` (from `*.example.com`)
    Suffix(Box<str>),
}

impl HostPattern {
    /// True when the request host (port already removed) matches.
    pub(crate) fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(s) => {
                host.len() > s.len() && host.get(host.len() - s.len()..).is_some_and(|t| t.eq_ignore_ascii_case(s))
            }
        }
    }

    /// 0 for exact, 1 for a wildcard (lower is more specific).
    pub(crate) fn rank(&self) -> u8 {
        match self {
            HostPattern::Exact(_) => 0,
            HostPattern::Suffix(_) => 1,
        }
    }

    /// True when some host matches both.
    pub(crate) fn overlaps(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a.eq_ignore_ascii_case(b),
            (HostPattern::Exact(a), s @ HostPattern::Suffix(_))
            | (s @ HostPattern::Suffix(_), HostPattern::Exact(a)) => s.matches(a),
            (HostPattern::Suffix(a), HostPattern::Suffix(b)) => a.ends_with(&**b) || b.ends_with(&**a),
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.to_ascii_lowercase();
        let valid = |h: &str| {
            !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') && !h.contains("..")
        };
        match lower.strip_prefix("*.") {
            Some(rest) if valid(rest) => Ok(HostPattern::Suffix(format!(".{rest}").into())),
            None if valid(&lower) && !lower.starts_with('.') => Ok(HostPattern::Exact(lower.into())),
            _ => Err(format!("host `{s}` must be a name such as api.example.com or *.example.com (no port)")),
        }
    }
}

/// The host of an `:authority`: port and a trailing dot removed (IPv6 literals keep brackets).
pub(crate) fn request_host(authority: &str) -> &str {
    let host = if authority.starts_with('[') {
        authority.find(']').and_then(|i| authority.get(..=i)).unwrap_or(authority)
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { authority })
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// A value safe for an upstream header: bytes outside visible ASCII and space, and `%`, are
/// percent-encoded; in list elements `,` is too, so lists split unambiguously on commas.
pub(crate) fn header_value(s: &str, list_element: bool) -> Cow<'_, str> {
    let needs = |b: u8| !(0x20..0x7f).contains(&b) || b == b'%' || (list_element && b == b',');
    if !s.bytes().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if needs(b) {
            let _ = write!(out, "%{b:02X}");
        } else {
            out.push(char::from(b));
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn methods_are_case_sensitive_and_unknown_ones_match_only_unrestricted() {
        let m = Methods::parse(&["GET".into(), "POST".into()]).unwrap();
        assert!(m.contains(Methods::bit("GET")));
        assert!(!m.contains(Methods::bit("get")));
        assert!(!m.contains(Methods::bit("PROPFIND")));
        assert!(Methods::parse(&["get".into()]).is_err());
    }

    #[test]
    fn hosts_match_case_insensitively_without_port() {
        let exact: HostPattern = "API.example.com".parse().unwrap();
        let wild: HostPattern = "*.example.com".parse().unwrap();
        assert!(exact.matches(request_host("api.EXAMPLE.com:8443")));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("evilexample.com"));
        assert!(exact.overlaps(&wild));
        assert!(!exact.overlaps(&"other.org".parse().unwrap()));
        for bad in ["", "*", "a..b", "a:80", "*.*.x", "-?"] {
            assert!(bad.parse::<HostPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn request_hosts_drop_ports_and_trailing_dots() {
        assert_eq!(request_host("api.example.com:443"), "api.example.com");
        assert_eq!(request_host("api.example.com."), "api.example.com");
        assert_eq!(request_host("[::1]:8080"), "[::1]");
        assert_eq!(request_host("api"), "api");
    }

    #[test]
    fn header_values_are_encoded_only_where_needed() {
        assert!(matches!(header_value("alice@example.com", false), Cow::Borrowed(_)));
        assert_eq!(header_value("Zoë", false), "Zo%C3%AB");
        assert_eq!(header_value("a,b", true), "a%2Cb");
        assert_eq!(header_value("a,b", false), "a,b");
        assert_eq!(header_value("50%", false), "50%25");
        assert_eq!(header_value("a\r\nb", false), "a%0D%0Ab");
    }
}
