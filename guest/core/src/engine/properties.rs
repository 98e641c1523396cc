//! Properties of the policy engine's matchers, each checked against an independent model.

use crate::engine::path::{PathBuffer, PathPattern, RequestPath, Segment, Trie};
use crate::engine::roles::grant_covers;
use crate::types::ScopePattern;
use crate::{NoFiles, NoRevocations, Policy, Request, UnixTime};
use proptest::prelude::*;

fn scope_token() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "admin", "users", ":", "read", "x"]), 1..5)
        .prop_map(|v| v.concat())
}

/// A pattern built from a few segment kinds over a tiny alphabet, so matches are common.
fn pattern() -> impl Strategy<Value = String> {
    (prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "{p}", "*"]), 0..5), any::<bool>()).prop_map(
        |(segs, rest)| {
            let mut named = 0;
            let mut parts: Vec<String> = segs
                .into_iter()
                .map(|s| {
                    if s == "{p}" {
                        named += 1;
                        format!("{{p{named}}}")
                    } else {
                        s.to_string()
                    }
                })
                .collect();
            if rest {
                parts.push("**".into());
            }
            format!("/{}", parts.join("/"))
        },
    )
}

fn path() -> impl Strategy<Value = Vec<&'static str>> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 0..6)
}

/// The specificity key from the docs: per position literal < parameter < `**`; at the end of
/// the path an exact end beats `**`. Lower sorts first.
fn key(p: &PathPattern, len: usize) -> Vec<u8> {
    let mut k = Vec::new();
    for s in p.segments() {
        match s {
            Segment::Literal(_) => k.push(0),
            Segment::Param(_) => k.push(1),
            Segment::Rest => {
                k.push(2);
                return k;
            }
        }
    }
    if k.len() == len {
        k.push(0);
    }
    k
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// `grant_covers` (request path) agrees with `ScopePattern::matches` (configuration path).
    #[test]
    fn wildcard_grants_agree_with_scope_patterns(grant in scope_token(), star in any::<bool>(), required in scope_token()) {
        let grant = if star { format!("{grant}*") } else { grant };
        prop_assume!(!required.contains('*'));
        let model = match grant.parse::<ScopePattern>() {
            Ok(ScopePattern::Any) => false,
            Ok(p) => p.matches(&required),
            // Not a valid pattern: only an exact, literal match counts.
            Err(_) => grant == required,
        };
        prop_assert_eq!(grant_covers(&grant, &required, false), model, "grant {} required {}", grant, required);
    }

    #[test]
    fn the_global_wildcard_covers_everything_only_when_allowed(required in scope_token()) {
        prop_assert!(grant_covers("*", &required, true));
        prop_assert_eq!(grant_covers("*", &required, false), required == "*");
    }

    /// The trie finds a match exactly when some pattern matches, and the one it finds is the
    /// most specific by the documented order.
    #[test]
    fn the_trie_returns_the_most_specific_matching_pattern(patterns in prop::collection::vec(pattern(), 1..8), p in path()) {
        let compiled: Vec<PathPattern> = patterns.iter().map(|s| s.parse().unwrap()).collect();
        let mut trie = Trie::default();
        for (i, c) in compiled.iter().enumerate() {
            trie.insert(c, i);
        }
        let matching: Vec<usize> = (0..compiled.len()).filter(|&i| compiled[i].matches(&p)).collect();
        let found = trie.first(&p, &mut |_| true).copied();
        match found {
            None => prop_assert!(matching.is_empty(), "trie missed {:?} for {:?}", matching, p),
            Some(i) => {
                prop_assert!(compiled[i].matches(&p), "trie returned a non-match");
                let best = matching.iter().map(|&j| key(&compiled[j], p.len())).min().unwrap();
                prop_assert_eq!(key(&compiled[i], p.len()), best);
            }
        }
        let mut all = Vec::new();
        trie.each(&p, &mut |v| all.push(*v));
        all.sort_unstable();
        all.dedup();
        prop_assert_eq!(all, matching, "each() must visit exactly the matching patterns");
    }

    /// Normalisation never panics, never yields a dot segment or a separator, and is idempotent.
    #[test]
    fn request_path_normalisation_is_safe_and_idempotent(raw in "(/[a-c.%2eEfF5C\\\\/]{0,4}){0,6}") {
        let mut buf = PathBuffer::default();
        if let Ok(p) = RequestPath::parse(&raw, &mut buf) {
            let segs: Vec<String> = p.segments().iter().map(|s| s.to_string()).collect();
            for s in &segs {
                prop_assert!(s != "." && s != ".." && !s.contains('/') && !s.contains('\\') && !s.is_empty(), "{:?}", segs);
            }
            let again = format!("/{}", segs.join("/"));
            let mut buf2 = PathBuffer::default();
            let p2 = RequestPath::parse(&again, &mut buf2).unwrap();
            let segs2: Vec<String> = p2.segments().iter().map(|s| s.to_string()).collect();
            prop_assert_eq!(segs, segs2);
        }
    }

    /// With routes, no request without a credential is allowed except on a public route.
    #[test]
    fn without_a_credential_only_public_routes_allow(p in "(/[a-z%0-9.]{0,3}){0,5}", method in prop::sample::select(vec!["GET", "POST", "DELETE", "BREW", "get"])) {
        let policy = Policy::load(
            "version: 1\napi_keys:\n  prefix: ask_\n  keys: [{id: k, prefix: ask_12345678, sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"}]\n\
             routes:\n  - {id: pub, path: /public/**, public: true}\n  - {id: any, path: /**}\n  - {id: a, path: \"/a/{x}\", methods: [GET]}\n",
            &NoFiles,
        )
        .unwrap();
        let (path, query) = crate::request::split_path_and_query(&p);
        let req = Request { method, path, query, ..Request::new(method, path, UnixTime(0)) };
        let d = policy.decide(&req, &NoRevocations);
        if d.allowed() {
            prop_assert_eq!(d.route.as_deref(), Some("pub"), "{} {}", method, p);
        }
    }
}
