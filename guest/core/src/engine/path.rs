//! Path patterns, request path normalisation, and the segment trie routes and rules live in.
//!
//! Specificity is decided segment by segment from the left: a literal beats `{param}` or `*`,
//! which beats `**`. A depth-first walk that tries the literal child, then the parameter child,
//! then the node's `**` entries therefore meets matches in order of specificity, and the walk
//! touches only nodes on the request's own path: its cost does not grow with the policy.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::FastMap;

/// Deepest request path accepted (segments).
pub(crate) const MAX_SEGMENTS: usize = 64;

/// One segment of a pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Segment {
    /// Exactly this text (normalised like request segments).
    Literal(Box<str>),
    /// Any one non-empty segment; `Some(name)` for `{name}`, `None` for `*`.
    Param(Option<Box<str>>),
    /// `**`: any number of segments, including none. Only last.
    Rest,
}

/// A compiled path pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PathPattern {
    segments: Vec<Segment>,
    text: Box<str>,
}

impl PathPattern {
    /// The segments.
    pub(crate) fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The position of `{name}`.
    pub(crate) fn param_index(&self, name: &str) -> Option<usize> {
        self.segments.iter().position(|s| matches!(s, Segment::Param(Some(n)) if &**n == name))
    }

    /// True when this pattern matches the normalised segments: the model the trie is tested
    /// against, and how the few rules decided before authentication are matched (the rest go
    /// through the trie).
    pub(crate) fn matches(&self, segs: &[&str]) -> bool {
        let mut i = 0;
        for s in &self.segments {
            match s {
                Segment::Rest => return true,
                Segment::Literal(l) => {
                    if segs.get(i) != Some(&&**l) {
                        return false;
                    }
                }
                Segment::Param(_) => {
                    if segs.get(i).is_none() {
                        return false;
                    }
                }
            }
            i += 1;
        }
        i == segs.len()
    }

    /// True when every path this pattern matches is also matched by `other`.
    pub(crate) fn is_subsumed_by(&self, other: &PathPattern) -> bool {
        let (a, b) = (&self.segments, &other.segments);
        for (i, sb) in b.iter().enumerate() {
            match (a.get(i), sb) {
                (_, Segment::Rest) => return true,
                (None, _) | (Some(Segment::Rest), _) => return false,
                (Some(Segment::Literal(x)), Segment::Literal(y)) if x == y => {}
                (Some(_), Segment::Param(_)) => {}
                _ => return false,
            }
        }
        a.len() == b.len()
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for PathPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix('/').ok_or_else(|| format!("path pattern `{s}` must start with `/`"))?;
        let mut segments = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        if !rest.is_empty() {
            let parts: Vec<&str> = rest.split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                let seg = match *part {
                    "" => {
                        return Err(format!("path pattern `{s}` has an empty segment (or a trailing `/`)"));
                    }
                    "**" if last => Segment::Rest,
                    "**" => {
                        return Err(format!("path pattern `{s}`: `**` may only be the last segment"));
                    }
                    "*" => Segment::Param(None),
                    p if p.starts_with('{') && p.ends_with('}') => {
                        let name = &p[1..p.len() - 1];
                        let valid = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                        if !valid {
                            return Err(format!("path pattern `{s}`: `{p}` is not a valid parameter name"));
                        }
                        if names.contains(&name) {
                            return Err(format!("path pattern `{s}`: parameter `{name}` appears twice"));
                        }
                        names.push(name);
                        Segment::Param(Some(name.into()))
                    }
                    p => {
                        if p.contains(['{', '}', '*']) {
                            return Err(format!("path pattern `{s}`: `{p}` mixes text with `{{}}` or `*`"));
                        }
                        let norm = normalize_segment(p)
                            .map_err(|_| format!("path pattern `{s}`: `{p}` is not a valid path segment"))?;
                        Segment::Literal(norm.into_owned().into_boxed_str())
                    }
                };
                segments.push(seg);
            }
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(format!("path pattern `{s}` has more than {MAX_SEGMENTS} segments"));
        }
        Ok(PathPattern { segments, text: s.into() })
    }
}

/// A path that cannot be normalised unambiguously (reported as `malformed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadPath;

impl fmt::Display for BadPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not an unambiguous path")
    }
}

/// RFC 3986 unreserved characters: percent-encoding them changes nothing, so they are decoded.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Characters allowed raw in a segment (RFC 3986 `pchar` minus `%`).
fn pchar(b: u8) -> bool {
    unreserved(b)
        || matches!(b, b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' | b':' | b'@')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalises one segment: percent-encoded unreserved characters are decoded, other escapes are
/// kept with upper-case hex. Refuses `.`/`..` (also when encoded), encoded `/`, `\` and NUL,
/// malformed escapes, and characters outside `pchar`. Borrows when nothing changes.
pub(crate) fn normalize_segment(seg: &str) -> Result<Cow<'_, str>, BadPath> {
    let bytes = seg.as_bytes();
    let out: Cow<'_, str> = if !bytes.contains(&b'%') {
        if !bytes.iter().all(|b| pchar(*b)) {
            return Err(BadPath);
        }
        Cow::Borrowed(seg)
    } else {
        let mut out = String::with_capacity(seg.len());
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b == b'%' {
                let (Some(h), Some(l)) =
                    (bytes.get(i + 1).and_then(|x| hex(*x)), bytes.get(i + 2).and_then(|x| hex(*x)))
                else {
                    return Err(BadPath);
                };
                let c = h * 16 + l;
                if unreserved(c) {
                    out.push(char::from(c));
                } else if matches!(c, b'/' | b'\\' | 0) {
                    return Err(BadPath);
                } else {
                    out.push('%');
                    for d in [h, l] {
                        out.push(char::from_digit(u32::from(d), 16).unwrap_or('0').to_ascii_uppercase());
                    }
                }
                i += 3;
            } else if pchar(b) {
                out.push(char::from(b));
                i += 1;
            } else {
                return Err(BadPath);
            }
        }
        Cow::Owned(out)
    };
    if out == "." || out == ".." {
        return Err(BadPath);
    }
    Ok(out)
}

/// A request path split into normalised segments, without allocating unless the path holds
/// percent-escapes.
#[derive(Debug)]
pub(crate) struct RequestPath<'a> {
    segs: [&'a str; MAX_SEGMENTS],
    len: usize,
}

/// Owned storage for a path that needed decoding; it must outlive the [`RequestPath`].
#[derive(Debug, Default)]
pub(crate) struct PathBuffer(String);

impl<'a> RequestPath<'a> {
    /// Splits and normalises `path`. `buf` receives the decoded copy when one is needed.
    /// Errors mean `malformed`: not absolute, too deep, an empty inner segment, a dot segment,
    /// a backslash or an encoded slash.
    pub(crate) fn parse(path: &'a str, buf: &'a mut PathBuffer) -> Result<RequestPath<'a>, BadPath> {
        let body = path.strip_prefix('/').ok_or(BadPath)?;
        if body.starts_with('/') {
            return Err(BadPath);
        }
        // One trailing slash is tolerated (`/a/` is `/a`); empty inner segments are not.
        let body = body.strip_suffix('/').unwrap_or(body);
        let escaped = body.contains('%');
        let source: &'a str = if escaped {
            let mut decoded = String::with_capacity(body.len());
            for (i, seg) in body.split('/').enumerate() {
                if i > 0 {
                    decoded.push('/');
                }
                decoded.push_str(&normalize_segment(seg)?);
            }
            buf.0 = decoded;
            let buf: &'a PathBuffer = buf;
            &buf.0
        } else {
            body
        };
        let mut out = RequestPath { segs: [""; MAX_SEGMENTS], len: 0 };
        if source.is_empty() {
            return Ok(out);
        }
        for seg in source.split('/') {
            // Escaped paths were normalised segment by segment above.
            if seg.is_empty() || (!escaped && normalize_segment(seg).is_err()) {
                return Err(BadPath);
            }
            let slot = out.segs.get_mut(out.len).ok_or(BadPath)?;
            *slot = seg;
            out.len += 1;
        }
        Ok(out)
    }

    /// The segments.
    pub(crate) fn segments(&self) -> &[&'a str] {
        self.segs.get(..self.len).unwrap_or(&[])
    }
}

/// Values stored by path pattern, matched in specificity order.
#[derive(Debug)]
pub(crate) struct Trie<T> {
    root: Node<T>,
}

#[derive(Debug)]
struct Node<T> {
    literal: FastMap<Box<str>, Node<T>>,
    param: Option<Box<Node<T>>>,
    /// Patterns that end exactly here.
    end: Vec<T>,
    /// Patterns whose `**` starts here.
    rest: Vec<T>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Node { literal: FastMap::default(), param: None, end: Vec::new(), rest: Vec::new() }
    }
}

impl<T> Default for Trie<T> {
    fn default() -> Self {
        Trie { root: Node::default() }
    }
}

impl<T> Trie<T> {
    /// Adds a value under `pattern`.
    pub(crate) fn insert(&mut self, pattern: &PathPattern, value: T) {
        let mut node = &mut self.root;
        for seg in &pattern.segments {
            node = match seg {
                Segment::Literal(l) => node.literal.entry(l.clone()).or_default(),
                Segment::Param(_) => node.param.get_or_insert_with(Box::default),
                Segment::Rest => {
                    node.rest.push(value);
                    return;
                }
            };
        }
        node.end.push(value);
    }

    /// The first value, in specificity order, that `accept` takes.
    pub(crate) fn first<'t>(&'t self, segs: &[&str], accept: &mut dyn FnMut(&T) -> bool) -> Option<&'t T> {
        first(&self.root, segs, accept)
    }

    /// Calls `f` for every value whose pattern matches.
    pub(crate) fn each(&self, segs: &[&str], f: &mut dyn FnMut(&T)) {
        each(&self.root, segs, f);
    }
}

fn first<'t, T>(node: &'t Node<T>, segs: &[&str], accept: &mut dyn FnMut(&T) -> bool) -> Option<&'t T> {
    let Some((head, tail)) = segs.split_first() else {
        return node.end.iter().chain(&node.rest).find(|v| accept(v));
    };
    if let Some(v) = node.literal.get(*head).and_then(|n| first(n, tail, accept)) {
        return Some(v);
    }
    if let Some(v) = node.param.as_deref().and_then(|n| first(n, tail, accept)) {
        return Some(v);
    }
    node.rest.iter().find(|v| accept(v))
}

fn each<T>(node: &Node<T>, segs: &[&str], f: &mut dyn FnMut(&T)) {
    node.rest.iter().for_each(&mut *f);
    let Some((head, tail)) = segs.split_first() else {
        node.end.iter().for_each(f);
        return;
    };
    if let Some(n) = node.literal.get(*head) {
        each(n, tail, f);
    }
    if let Some(n) = node.param.as_deref() {
        each(n, tail, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn p(s: &str) -> PathPattern {
        s.parse().unwrap()
    }

    fn segs(path: &str) -> Result<Vec<String>, BadPath> {
        let mut buf = PathBuffer::default();
        RequestPath::parse(path, &mut buf).map(|r| r.segments().iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn patterns_parse_and_reject_bad_shapes() {
        assert_eq!(p("/").segments().len(), 0);
        assert_eq!(p("/v1/orgs/{org}/projects/{project}/**").segments().len(), 6);
        for bad in ["v1", "/v1/", "/a//b", "/**/a", "/{1x}", "/{a}/{a}", "/a{b}", "/a*", "/a/../b", "/a\\b", "/a%2Fb"] {
            assert!(bad.parse::<PathPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn request_paths_normalise_unreserved_escapes() {
        assert_eq!(segs("/v1/%6Frders").unwrap(), ["v1", "orders"]);
        assert_eq!(segs("/v1/a%3ab").unwrap(), ["v1", "a%3Ab"]);
        assert_eq!(segs("/v1/orders/").unwrap(), ["v1", "orders"]);
        assert_eq!(segs("/").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn ambiguous_request_paths_are_refused() {
        for bad in [
            "",
            "v1",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a%00",
            "/a%zz",
            "/a%4",
            "/a b",
            "/a/b//",
        ] {
            assert!(segs(bad).is_err(), "{bad:?}");
        }
        let deep = "/a".repeat(MAX_SEGMENTS + 1);
        assert!(segs(&deep).is_err());
    }

    #[test]
    fn literal_beats_param_beats_rest() {
        let mut t = Trie::default();
        t.insert(&p("/v1/**"), "rest");
        t.insert(&p("/v1/{x}"), "param");
        t.insert(&p("/v1/orders"), "literal");
        let find = |path: &[&str]| t.first(path, &mut |_| true).copied();
        assert_eq!(find(&["v1", "orders"]), Some("literal"));
        assert_eq!(find(&["v1", "items"]), Some("param"));
        assert_eq!(find(&["v1", "items", "x"]), Some("rest"));
        assert_eq!(find(&["v1"]), Some("rest"), "`**` matches zero segments");
        assert_eq!(find(&["v2"]), None);
    }

    #[test]
    fn a_rejected_match_falls_back_to_the_next_most_specific() {
        let mut t = Trie::default();
        t.insert(&p("/v1/**"), 1);
        t.insert(&p("/v1/orders"), 2);
        assert_eq!(t.first(&["v1", "orders"], &mut |v| *v != 2), Some(&1));
    }

    #[test]
    fn each_visits_every_matching_pattern() {
        let mut t = Trie::default();
        for (i, pat) in ["/**", "/a/**", "/a/{x}", "/a/b", "/c"].iter().enumerate() {
            t.insert(&p(pat), i);
        }
        let mut got = Vec::new();
        t.each(&["a", "b"], &mut |v| got.push(*v));
        got.sort();
        assert_eq!(got, [0, 1, 2, 3]);
    }

    #[test]
    fn subsumption() {
        assert!(p("/a/b").is_subsumed_by(&p("/a/{x}")));
        assert!(p("/a/b/c").is_subsumed_by(&p("/a/**")));
        assert!(p("/a").is_subsumed_by(&p("/a/**")));
        assert!(!p("/a/{x}").is_subsumed_by(&p("/a/b")));
        assert!(!p("/a/**").is_subsumed_by(&p("/a/{x}")));
    }
}
