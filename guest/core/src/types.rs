//! Validated names. Each type is built only through `FromStr`/`TryFrom`, so a value in hand
//! already satisfies its rule.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

macro_rules! validated_str {
    ($(#[$doc:meta])* $vis:vis $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis struct $name(Arc<str>);

        impl $name {
            /// The underlying string.
            #[allow(dead_code, reason = "generated for every validated type; not all read it back")]
            $vis fn as_str(&self) -> &str {
                &self.0
            }

            /// A cheap shared handle to the string.
            #[allow(dead_code, reason = "generated for every validated type; not all share it")]
            $vis fn shared(&self) -> Arc<str> {
                Arc::clone(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = ValueError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let check: fn(&str) -> Result<(), ValueError> = $check;
                check(s)?;
                Ok($name(Arc::from(s)))
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValueError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

/// Why a value in a policy was refused. Messages name the kind of value; they quote it only
/// where it is never secret (scopes, prefixes, times, algorithm names).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// Empty.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// Too long.
    #[error("{what} is longer than {max} bytes")]
    TooLong {
        /// The kind of value.
        what: &'static str,
        /// The most allowed.
        max: usize,
    },
    /// A control character.
    #[error("{0} contains a control character")]
    Control(&'static str),
    /// A tenant with characters outside visible ASCII.
    #[error("tenant must be visible ASCII")]
    TenantChars,
    /// A scope with characters RFC 6749 does not allow.
    #[error("scope `{0}` has characters RFC 6749 does not allow")]
    ScopeChars(String),
    /// A `*` in a concrete scope.
    #[error("scope `{0}` contains `*`; wildcards are only valid in grants and patterns")]
    ScopeWildcard(String),
    /// A malformed scope wildcard.
    #[error("scope pattern `{0}`: a wildcard is `*` alone or a trailing `:*`, as in `admin:*`")]
    ScopePattern(String),
    /// A malformed API key prefix.
    #[error("API key prefix `{0}` must be 2 to 16 characters of [A-Za-z0-9_-]")]
    ApiKeyPrefix(String),
    /// Neither Unix seconds nor RFC 3339.
    #[error("`{0}` is neither Unix seconds nor an RFC 3339 timestamp")]
    Time(String),
    /// An algorithm this build does not verify.
    #[error("unsupported algorithm `{0}` (supported: {supported})", supported = crate::keys::Alg::ALL.map(crate::keys::Alg::name).join(", "))]
    Algorithm(String),
}

fn bounded(s: &str, what: &'static str, max: usize) -> Result<(), ValueError> {
    if s.is_empty() {
        return Err(ValueError::Empty(what));
    }
    if s.len() > max {
        return Err(ValueError::TooLong { what, max });
    }
    if s.chars().any(char::is_control) {
        return Err(ValueError::Control(what));
    }
    Ok(())
}

/// RFC 6749 §3.3 `scope-token`: visible ASCII except space, `"` and `\`.
fn scope_chars(s: &str) -> bool {
    s.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

validated_str!(
    /// A JWK key id. Invariant: 1 to 256 bytes, no control characters.
    pub Kid,
    |s| bounded(s, "kid", 256)
);

validated_str!(
    /// A JWT issuer, compared byte for byte. Invariant: 1 to 512 bytes, no control characters.
    pub Issuer,
    |s| bounded(s, "issuer", 512)
);

validated_str!(
    /// A tenant identifier. Invariant: 1 to 128 bytes of visible ASCII.
    pub(crate) TenantId,
    |s| {
        bounded(s, "tenant", 128)?;
        if s.bytes().all(|b| b.is_ascii_graphic()) { Ok(()) } else { Err(ValueError::TenantChars) }
    }
);

validated_str!(
    /// A concrete scope. Invariant: an RFC 6749 scope-token of at most 256 bytes, no `*`.
    pub Scope,
    |s| {
        bounded(s, "scope", 256)?;
        if !scope_chars(s) {
            return Err(ValueError::ScopeChars(s.to_owned()));
        }
        if s.contains('*') {
            return Err(ValueError::ScopeWildcard(s.to_owned()));
        }
        Ok(())
    }
);

validated_str!(
    /// The type prefix every API key starts with (`ask_`). Invariant: 2 to 16 of `[A-Za-z0-9_-]`.
    pub(crate) ApiKeyPrefix,
    |s| {
        if (2..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            Ok(())
        } else {
            Err(ValueError::ApiKeyPrefix(s.to_owned()))
        }
    }
);

/// A scope pattern: a concrete scope, `prefix:*` (every scope starting with `prefix:`) or `*`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ScopePattern {
    /// Exactly this scope.
    Exact(Scope),
    /// Every scope that starts with this string (which ends in `:`).
    Prefix(Arc<str>),
    /// Every scope.
    Any,
}

impl ScopePattern {
    /// True when `scope` is covered by the pattern.
    pub fn matches(&self, scope: &str) -> bool {
        match self {
            ScopePattern::Exact(s) => s.as_str() == scope,
            ScopePattern::Prefix(p) => scope.len() > p.len() && scope.starts_with(&**p),
            ScopePattern::Any => true,
        }
    }

    /// True when some scope is covered by both patterns.
    pub fn overlaps(&self, other: &ScopePattern) -> bool {
        match (self, other) {
            (ScopePattern::Any, _) | (_, ScopePattern::Any) => true,
            (ScopePattern::Exact(s), o) | (o, ScopePattern::Exact(s)) => o.matches(s.as_str()),
            (ScopePattern::Prefix(p), ScopePattern::Prefix(q)) => p.starts_with(&**q) || q.starts_with(&**p),
        }
    }

    /// True when every scope this pattern covers is also covered by `other`.
    pub fn is_covered_by(&self, other: &ScopePattern) -> bool {
        match (self, other) {
            (_, ScopePattern::Any) => true,
            (ScopePattern::Any, _) => false,
            (ScopePattern::Exact(s), o) => o.matches(s.as_str()),
            (ScopePattern::Prefix(p), ScopePattern::Prefix(q)) => p.starts_with(&**q),
            (ScopePattern::Prefix(_), ScopePattern::Exact(_)) => false,
        }
    }
}

impl FromStr for ScopePattern {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "*" {
            return Ok(ScopePattern::Any);
        }
        if let Some(prefix) = s.strip_suffix('*') {
            if !prefix.ends_with(':') || prefix.len() < 2 || prefix.contains('*') || !scope_chars(prefix) {
                return Err(ValueError::ScopePattern(s.to_owned()));
            }
            return Ok(ScopePattern::Prefix(Arc::from(prefix)));
        }
        s.parse().map(ScopePattern::Exact)
    }
}

impl fmt::Display for ScopePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScopePattern::Exact(s) => f.write_str(s.as_str()),
            ScopePattern::Prefix(p) => write!(f, "{p}*"),
            ScopePattern::Any => f.write_str("*"),
        }
    }
}

impl fmt::Debug for ScopePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopePattern({self})")
    }
}

impl<'de> serde::Deserialize<'de> for ScopePattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn scopes_follow_rfc6749() {
        assert!("read:orders".parse::<Scope>().is_ok());
        for bad in ["", "a b", "a\"b", "a\\b", "caf\u{e9}", "admin:*", "*"] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wildcard_patterns_match_only_their_prefix() {
        let p: ScopePattern = "admin:*".parse().unwrap();
        assert!(p.matches("admin:read"));
        assert!(p.matches("admin:users:write"));
        assert!(!p.matches("admin:"));
        assert!(!p.matches("admin"));
        assert!(!p.matches("administrator:read"));
        assert!(ScopePattern::Any.matches("anything"));
    }

    #[test]
    fn malformed_wildcards_are_rejected() {
        for bad in ["admin*", "ad*min:", ":*", "**", "a:*:*", "admin:**"] {
            assert!(bad.parse::<ScopePattern>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn coverage_between_patterns() {
        let admin: ScopePattern = "admin:*".parse().unwrap();
        let users: ScopePattern = "admin:users:*".parse().unwrap();
        let read: ScopePattern = "admin:read".parse().unwrap();
        assert!(users.is_covered_by(&admin));
        assert!(read.is_covered_by(&admin));
        assert!(!admin.is_covered_by(&users));
        assert!(admin.is_covered_by(&ScopePattern::Any));
        assert!(!ScopePattern::Any.is_covered_by(&admin));
    }

    #[test]
    fn overlap_is_symmetric_and_catches_wildcards() {
        let p = |s: &str| s.parse::<ScopePattern>().unwrap();
        let cases = [
            ("admin:*", "admin:read", true),
            ("admin:*", "admin:users:*", true),
            ("*", "read", true),
            ("admin:*", "api:*", false),
            ("read", "write", false),
            ("read", "read", true),
        ];
        for (a, b, want) in cases {
            assert_eq!(p(a).overlaps(&p(b)), want, "{a} ~ {b}");
            assert_eq!(p(b).overlaps(&p(a)), want, "{b} ~ {a}");
        }
    }

    #[test]
    fn api_key_prefixes_are_short_and_plain() {
        assert!("ask_".parse::<ApiKeyPrefix>().is_ok());
        for bad in ["a", "ask.", "way_too_long_prefix_", "ask "] {
            assert!(bad.parse::<ApiKeyPrefix>().is_err(), "{bad:?}");
        }
    }
}
