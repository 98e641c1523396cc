//! Strict JSON for credentials: objects only, duplicate member names rejected at every depth.
//!
//! `serde_json` does the lexing (strict UTF-8, no lone surrogates, no trailing data, bounded
//! recursion). It has no mode that rejects duplicate member names (a `Map` keeps the last one),
//! and duplicates are how two parsers are made to disagree about a token's claims, so this module
//! builds its own small tree through a visitor and checks each object as it closes. Strings borrow
//! from the input when they hold no escapes, so a typical payload parses with a handful of
//! allocations.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};

/// A JSON number, kept exact where it fits an integer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Number {
    /// A non-negative integer.
    U(u64),
    /// A negative integer.
    I(i64),
    /// Anything with a fraction or exponent.
    F(f64),
}

impl Number {
    /// The value as `f64` (exact for the integers that matter here: times below 2^53).
    #[allow(clippy::cast_precision_loss)]
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Number::U(n) => n as f64,
            Number::I(n) => n as f64,
            Number::F(n) => n,
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Number::U(n) => write!(f, "{n}"),
            Number::I(n) => write!(f, "{n}"),
            Number::F(n) => write!(f, "{n}"),
        }
    }
}

/// A parsed JSON value borrowing from its input.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Json<'a> {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number.
    Num(Number),
    /// A string.
    Str(Cow<'a, str>),
    /// An array.
    Arr(Vec<Json<'a>>),
    /// An object with unique member names, in input order.
    Obj(Object<'a>),
}

/// A JSON object whose member names are unique.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Object<'a> {
    members: Vec<(Cow<'a, str>, Json<'a>)>,
}

impl<'a> Object<'a> {
    /// The member named `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Json<'a>> {
        self.members.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Members in input order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &Json<'a>)> {
        self.members.iter().map(|(k, v)| (k.as_ref(), v))
    }

    /// Follows a dotted path (`realm_access.roles`) through nested objects.
    pub(crate) fn path(&self, path: &ClaimPath) -> Option<&Json<'a>> {
        let mut segments = path.segments();
        let first = segments.next()?;
        let mut cur = self.get(first)?;
        for seg in segments {
            match cur {
                Json::Obj(o) => cur = o.get(seg)?,
                _ => return None,
            }
        }
        Some(cur)
    }

    fn has_duplicates(&self) -> bool {
        let m = &self.members;
        if m.len() <= 16 {
            // Quadratic but branch-cheap for the small objects tokens are made of.
            m.iter().enumerate().any(|(i, (k, _))| m.iter().skip(i + 1).any(|(k2, _)| k == k2))
        } else {
            let mut names: Vec<&str> = m.iter().map(|(k, _)| k.as_ref()).collect();
            names.sort_unstable();
            names.windows(2).any(|w| matches!(w, [a, b] if a == b))
        }
    }
}

impl<'a> Json<'a> {
    /// The string, if this is one.
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The number as `f64`, if this is one.
    pub(crate) fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Num(n) => Some(n.as_f64()),
            _ => None,
        }
    }

    /// Converts to a `serde_json::Value` (used for policy documents, never on the request path).
    pub(crate) fn to_value(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Num(Number::U(n)) => Value::from(*n),
            Json::Num(Number::I(n)) => Value::from(*n),
            Json::Num(Number::F(n)) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
            Json::Str(s) => Value::String(s.to_string()),
            Json::Arr(a) => Value::Array(a.iter().map(Json::to_value).collect()),
            Json::Obj(o) => Value::Object(o.iter().map(|(k, v)| (k.to_owned(), v.to_value())).collect()),
        }
    }
}

/// Why a JSON document was refused. Deliberately coarse: every variant is `malformed` to callers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JsonError {
    /// Not valid JSON (syntax, UTF-8, escapes, nesting depth, trailing data).
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// Valid JSON, but the top level is not an object.
    #[error("the top level is not a JSON object")]
    NotAnObject,
}

/// Parses `bytes` as one JSON object, rejecting duplicate member names at any depth.
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Object<'_>, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Json::deserialize(&mut de).map_err(|e| JsonError::Syntax(e.to_string()))?;
    de.end().map_err(|e| JsonError::Syntax(e.to_string()))?;
    match value {
        Json::Obj(o) => Ok(o),
        _ => Err(JsonError::NotAnObject),
    }
}

/// A dotted claim path such as `realm_access.roles`. Invariant: non-empty segments, no empty
/// path. Member names that themselves contain dots (`https://example.com/roles`) are written with
/// the whole name in brackets: `[https://example.com/roles]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClaimPath {
    segments: Vec<String>,
}

impl ClaimPath {
    fn segments(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map(String::as_str)
    }
}

impl std::str::FromStr for ClaimPath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            if inner.is_empty() {
                return Err("empty claim name".into());
            }
            return Ok(ClaimPath { segments: vec![inner.to_owned()] });
        }
        let segments: Vec<String> = s.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!("claim path `{s}` has an empty segment"));
        }
        Ok(ClaimPath { segments })
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.segments.as_slice() {
            [one] if one.contains('.') => write!(f, "[{one}]"),
            segs => f.write_str(&segs.join(".")),
        }
    }
}

struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Json::Num(Number::U(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Num(if v >= 0 { Number::U(v.unsigned_abs()) } else { Number::I(v) }))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if v.is_finite() { Ok(Json::Num(Number::F(v))) } else { Err(E::custom("non-finite number")) }
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element::<Json<'de>>()? {
            items.push(item);
        }
        Ok(Json::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8).min(64));
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            let v = map.next_value::<Json<'de>>()?;
            members.push((k, v));
        }
        let obj = Object { members };
        if obj.has_duplicates() {
            return Err(de::Error::custom("duplicate member name"));
        }
        Ok(Json::Obj(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn plain_object_parses_and_borrows() {
        let src = br#"{"a":"x","b":[1,-2,3.5],"c":{"d":null,"e":true}}"#;
        let o = parse_object(src).unwrap();
        assert_eq!(o.iter().count(), 3);
        assert!(matches!(o.get("a"), Some(Json::Str(Cow::Borrowed("x")))));
        assert_eq!(
            o.get("b"),
            Some(&Json::Arr(vec![Json::Num(Number::U(1)), Json::Num(Number::I(-2)), Json::Num(Number::F(3.5))]))
        );
    }

    #[test]
    fn duplicate_members_are_rejected_at_top_level() {
        assert!(parse_object(br#"{"sub":"a","sub":"b"}"#).is_err());
    }

    #[test]
    fn duplicate_members_are_rejected_when_nested() {
        assert!(parse_object(br#"{"x":{"r":1,"r":2}}"#).is_err());
        assert!(parse_object(br#"{"x":[{"r":1,"r":2}]}"#).is_err());
    }

    #[test]
    fn duplicates_spelled_with_escapes_are_still_duplicates() {
        assert!(parse_object(br#"{"sub":"a","s\u0075b":"b"}"#).is_err());
    }

    #[test]
    fn duplicates_in_large_objects_are_found() {
        let mut s = String::from("{");
        for i in 0..40 {
            s.push_str(&format!("\"k{i}\":{i},"));
        }
        s.push_str("\"k7\":0}");
        assert!(parse_object(s.as_bytes()).is_err());
        let ok = s.replace("\"k7\":0}", "\"k99\":0}");
        assert!(parse_object(ok.as_bytes()).is_ok());
    }

    #[test]
    fn non_objects_and_trailing_data_are_rejected() {
        for bad in [&b"[1]"[..], b"\"s\"", b"1", b"null", b"{} {}", b"{}x", b"", b"{"] {
            assert!(parse_object(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn invalid_utf8_and_lone_surrogates_are_rejected() {
        assert!(parse_object(b"{\"a\":\"\xff\"}").is_err());
        assert!(parse_object(br#"{"a":"\ud800"}"#).is_err());
        assert!(parse_object(b"\xef\xbb\xbf{}").is_err(), "a byte-order mark is not JSON");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        let doc = format!("{{\"a\":{deep}}}");
        assert!(parse_object(doc.as_bytes()).is_err());
    }

    #[test]
    fn claim_paths_follow_nested_objects() {
        let o = parse_object(br#"{"realm_access":{"roles":["a"]},"https://x.io/roles":["b"]}"#).unwrap();
        let p: ClaimPath = "realm_access.roles".parse().unwrap();
        assert_eq!(o.path(&p), Some(&Json::Arr(vec![Json::Str("a".into())])));
        let p: ClaimPath = "[https://x.io/roles]".parse().unwrap();
        assert_eq!(o.path(&p), Some(&Json::Arr(vec![Json::Str("b".into())])));
        assert_eq!(p.to_string(), "[https://x.io/roles]");
        assert!("a..b".parse::<ClaimPath>().is_err());
        assert!("".parse::<ClaimPath>().is_err());
        assert!("[]".parse::<ClaimPath>().is_err());
    }
}
