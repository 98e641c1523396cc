//! Edge controls: rate limits, CORS, rules before authentication, claim rules, response and
//! identity headers. Each feature with its negative case.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::*;
use crate::rate::{RateBucket, RateCount, take};
use crate::revocation::{RevocationQuery, RevocationStatus, Revocations};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// A host that counts like every runtime does ([`take`]) on a clock the test moves.
#[derive(Default)]
struct Counter {
    buckets: RefCell<HashMap<String, u64>>,
    now_ns: Cell<u64>,
    asked: Cell<u32>,
}

impl Counter {
    fn at(secs: u64) -> Counter {
        let c = Counter::default();
        c.now_ns.set(secs * 1_000_000_000);
        c
    }
    fn advance_ms(&self, ms: u64) {
        self.now_ns.set(self.now_ns.get() + ms * 1_000_000);
    }
}

impl Revocations for Counter {
    fn status(&self, _: RevocationQuery<'_>) -> RevocationStatus {
        RevocationStatus::Active
    }
    fn rate_limit(&self, bucket: &RateBucket<'_>) -> RateCount {
        self.asked.set(self.asked.get() + 1);
        let mut b = self.buckets.borrow_mut();
        let tat = b.get(bucket.key).copied().unwrap_or(0);
        let (next, taken) = take(tat, self.now_ns.get(), bucket.params);
        if let Some(n) = next {
            b.insert(bucket.key.to_owned(), n);
        }
        RateCount::Counted(taken)
    }
}

impl Req {
    fn with(&self, p: &Policy, host: &dyn Revocations) -> Decision {
        self.run(|r| p.decide(r, host))
    }
    fn key(self) -> Req {
        self.header("X-API-Key", API_KEY)
    }
}

fn resp<'d>(d: &'d Decision, name: &str) -> Option<&'d str> {
    d.response_headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| &**v)
}

const OPEN: &str = "routes:\n  - {id: any, path: /**}\n  - {id: pub, path: /public/**, public: true}\n";

// ---------------------------------------------------------------- a refused key is a 403

#[test]
fn a_valid_key_from_a_refused_address_or_origin_is_403() {
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(API_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let text = format!(
        "version: 1\napi_keys:\n  prefix: ask_\n  keys:\n    - {{id: ci, prefix: ask_test0001, sha256: \"{sha}\", \
         allowed_cidrs: [10.0.0.0/8], allowed_origins: [\"https://app.example.com\"]}}\n"
    );
    let p = Policy::load(&text, &NoFiles).unwrap();
    let d = get("/").key().ip("192.0.2.1").header("Origin", "https://app.example.com").on(&p);
    assert_eq!((d.reason, d.status()), (Reason::IpNotAllowed, 403));
    let d = get("/").key().ip("10.1.1.1").header("Origin", "https://evil.example").on(&p);
    assert_eq!((d.reason, d.status()), (Reason::OriginNotAllowed, 403));
    assert!(get("/").key().ip("10.1.1.1").header("Origin", "https://app.example.com").on(&p).allowed());
    // A wrong key is still a 401: nothing is proven.
    let d = get("/").header("X-API-Key", "ask_test0001wrong").ip("10.1.1.1").on(&p);
    assert_eq!(d.status(), 401);
}

// ---------------------------------------------------------------- rate limits

#[test]
fn an_api_key_limit_admits_its_burst_then_answers_429_with_retry_after() {
    let p = policy(&format!("{OPEN}rate_limits:\n  limits:\n    - {{id: per-key, requests: 2, burst: 3}}\n"));
    let host = Counter::at(1000);
    for remaining in ["2", "1", "0"] {
        let d = get("/x").key().with(&p, &host);
        assert!(d.allowed(), "{:?}", d.reason);
        assert_eq!(resp(&d, "x-ratelimit-remaining"), Some(remaining));
        assert_eq!(resp(&d, "x-ratelimit-limit"), Some("3"));
        assert_eq!(resp(&d, "retry-after"), None, "only refusals carry Retry-After");
    }
    let d = get("/x").key().with(&p, &host);
    assert_eq!((d.reason, d.status()), (Reason::RateLimited, 429));
    assert_eq!(d.rule.as_deref(), Some("per-key"), "the decision names the limit");
    assert_eq!(resp(&d, "retry-after"), Some("1"), "500 ms rounds up to a whole second");
    assert_eq!(resp(&d, "x-ratelimit-remaining"), Some("0"));
    assert_eq!(resp(&d, "x-ratelimit-reset"), Some("2"), "1.5 s until full, rounded up");
    assert!(d.headers_to_set.is_empty(), "nothing goes upstream");
    // A JWT has no API key: this limit does not count it.
    for _ in 0..10 {
        assert!(get("/x").bearer(&jwt("")).with(&p, &host).allowed());
    }
    // Half a second later one request fits again.
    host.advance_ms(499);
    assert_eq!(get("/x").key().with(&p, &host).reason, Reason::RateLimited);
    host.advance_ms(1);
    assert!(get("/x").key().with(&p, &host).allowed());
}

#[test]
fn the_default_limit_is_20_per_second_with_a_burst_of_40_per_api_key() {
    let p = policy(&format!("{OPEN}rate_limits:\n  limits:\n    - {{id: default}}\n"));
    let host = Counter::at(1000);
    let allowed = (0..100).filter(|_| get("/x").key().with(&p, &host).allowed()).count();
    assert_eq!(allowed, 40);
    host.advance_ms(1000);
    let allowed = (0..100).filter(|_| get("/x").key().with(&p, &host).allowed()).count();
    assert_eq!(allowed, 20, "a second refills 20");
}

#[test]
fn each_combination_of_key_parts_has_its_own_bucket() {
    let p = policy(&format!(
        "{OPEN}rate_limits:\n  limits:\n    - {{id: per-user-route, key: [subject, route], requests: 1, burst: 1}}\n"
    ));
    let host = Counter::at(1000);
    let alice = jwt("");
    let bob =
        hs256(SECRET, H, &format!(r#"{{"iss":"https://t.example","aud":"api","sub":"bob","exp":{}}}"#, NOW + 300));
    assert!(get("/x").bearer(&alice).with(&p, &host).allowed());
    assert_eq!(get("/x").bearer(&alice).with(&p, &host).reason, Reason::RateLimited);
    assert!(get("/x").bearer(&bob).with(&p, &host).allowed(), "another subject");
    assert_eq!(get("/y").bearer(&alice).with(&p, &host).reason, Reason::RateLimited, "same route: same bucket");
    // A public route has no subject: the limit does not apply there.
    for _ in 0..3 {
        assert!(get("/public/x").with(&p, &host).allowed());
    }
}

#[test]
fn overrides_change_the_rate_for_tenants_roles_and_kinds() {
    let p = policy(&format!(
        "{ROLES}{OPEN}rate_limits:
  limits:
    - id: per-subject
      key: [subject]
      requests: 1
      burst: 1
      overrides:
        - {{tenants: [acme], requests: 5, burst: 5}}
        - {{roles: [admin], requests: 3, burst: 3}}
"
    ));
    let host = Counter::at(1000);
    // The API key `ci` is tenant acme: 5.
    assert_eq!((0..10).filter(|_| get("/x").key().with(&p, &host).allowed()).count(), 5);
    // An admin (group /admins): 3.
    let admin = jwt(r#""groups":["/admins"]"#);
    assert_eq!((0..10).filter(|_| get("/x").bearer(&admin).with(&p, &host).allowed()).count(), 3);
    // Anyone else: 1.
    let carol =
        hs256(SECRET, H, &format!(r#"{{"iss":"https://t.example","aud":"api","sub":"carol","exp":{}}}"#, NOW + 300));
    assert_eq!((0..10).filter(|_| get("/x").bearer(&carol).with(&p, &host).allowed()).count(), 1);
}

#[test]
fn a_client_limit_is_spent_before_authentication_and_limits_floods_without_credentials() {
    let p = policy(&format!(
        "{OPEN}rate_limits:\n  limits:\n    - {{id: per-client, key: [client], requests: 1, burst: 2}}\n"
    ));
    let host = Counter::at(1000);
    assert_eq!(get("/x").ip("192.0.2.7").with(&p, &host).reason, Reason::MissingCredential);
    assert_eq!(get("/x").ip("192.0.2.7").bearer("garbage").with(&p, &host).reason, Reason::Malformed);
    let d = get("/x").ip("192.0.2.7").key().with(&p, &host);
    assert_eq!(d.reason, Reason::RateLimited, "the two unauthenticated requests spent the burst");
    assert!(d.identity.is_none(), "decided before the credential was read");
    assert!(get("/x").ip("192.0.2.8").key().with(&p, &host).allowed(), "another client");
    // IPv6 clients share their /64; IPv4-mapped addresses are their IPv4 address.
    assert!(get("/x").ip("2001:db8::1").key().with(&p, &host).allowed());
    assert!(get("/x").ip("2001:db8::2").key().with(&p, &host).allowed());
    assert_eq!(get("/x").ip("2001:db8::ffff").key().with(&p, &host).reason, Reason::RateLimited);
    assert_eq!(get("/x").ip("::ffff:192.0.2.7").key().with(&p, &host).reason, Reason::RateLimited);
}

#[test]
fn an_identity_limit_counts_only_requests_that_would_be_allowed() {
    let p = policy(&format!(
        "{OPEN}  - {{id: admin, path: /admin/**, scopes: [admin:all]}}
rate_limits:\n  limits:\n    - {{id: per-key, requests: 1, burst: 1}}\n"
    ));
    let host = Counter::at(1000);
    for _ in 0..5 {
        assert_eq!(get("/admin/x").key().with(&p, &host).reason, Reason::InsufficientScope);
    }
    assert!(get("/x").key().with(&p, &host).allowed(), "refused requests spent nothing");
    assert_eq!(get("/x").key().with(&p, &host).reason, Reason::RateLimited);
}

#[test]
fn a_limit_on_routes_or_kinds_leaves_the_others_alone() {
    let p = policy(&format!(
        "{OPEN}  - {{id: bulk, path: /bulk/**}}
rate_limits:\n  limits:\n    - {{id: bulk, key: [subject], routes: [bulk], credentials: [jwt], requests: 1, burst: 1}}\n"
    ));
    let host = Counter::at(1000);
    assert!(get("/bulk/a").bearer(&jwt("")).with(&p, &host).allowed());
    assert_eq!(get("/bulk/a").bearer(&jwt("")).with(&p, &host).reason, Reason::RateLimited);
    assert!(get("/x").bearer(&jwt("")).with(&p, &host).allowed(), "another route");
    assert!(get("/bulk/a").key().with(&p, &host).allowed(), "another kind");
    assert!(get("/bulk/a").key().with(&p, &host).allowed());
}

#[test]
fn an_uncounted_limit_fails_closed_unless_the_policy_allows_it() {
    let p = policy(&format!("{OPEN}rate_limits:\n  limits:\n    - {{id: per-key}}\n"));
    let d = get("/x").key().on(&p);
    assert_eq!((d.reason, d.status()), (Reason::LimitsUnavailable, 503));
    assert_eq!(d.rule.as_deref(), Some("per-key"));
    let p = policy(&format!("{OPEN}rate_limits:\n  when_uncounted: allow\n  limits:\n    - {{id: per-key}}\n"));
    let d = get("/x").key().on(&p);
    assert!(d.allowed());
    assert!(d.response_headers.is_empty());
}

#[test]
fn the_ietf_form_names_the_policy_and_allowed_responses_can_stay_quiet() {
    let p = policy(&format!(
        "{OPEN}rate_limits:\n  headers: ietf\n  limits:\n    - {{id: per-key, requests: 10, per: minute, burst: 5}}\n"
    ));
    let host = Counter::at(1000);
    let d = get("/x").key().with(&p, &host);
    assert_eq!(resp(&d, "ratelimit-policy"), Some(r#""per-key";q=5;w=30"#), "5 × 6 s");
    assert_eq!(resp(&d, "ratelimit"), Some(r#""per-key";r=4;t=6"#));
    assert_eq!(resp(&d, "x-ratelimit-limit"), None);
    let p = policy(&format!(
        "{OPEN}rate_limits:\n  headers: both\n  on_allowed: false\n  limits:\n    - {{id: k, requests: 1, burst: 1}}\n"
    ));
    let d = get("/x").key().with(&p, &host);
    assert!(d.allowed() && d.response_headers.is_empty());
    let d = get("/x").key().with(&p, &host);
    assert!(
        resp(&d, "ratelimit").is_some() && resp(&d, "x-ratelimit-limit").is_some() && resp(&d, "retry-after").is_some()
    );
}

#[test]
fn shadow_evaluation_and_explanations_spend_nothing_twice() {
    let p = policy(&format!(
        "{OPEN}rules:\n  - {{id: dry, effect: deny, shadow: true, when: {{paths: [/x]}}}}\nrate_limits:\n  limits:\n    - {{id: k, requests: 1, burst: 1}}\n"
    ));
    let host = Counter::at(1000);
    let d = get("/x").key().with(&p, &host);
    assert!(d.allowed() && d.shadow.is_some());
    assert_eq!(host.asked.get(), 1, "one bucket asked once, though the shadow verdict ran too");
}

#[test]
fn bad_limits_are_load_errors() {
    for (bad, why) in [
        ("- {id: a, key: [nope]}", "key part"),
        ("- {id: a, key: []}", "empty key"),
        ("- {id: a, key: [client, client]}", "repeated part"),
        ("- {id: a, requests: 0}", "zero rate"),
        ("- {id: a, burst: 0}", "zero burst"),
        ("- {id: a}\n    - {id: a}", "duplicate id"),
        ("- {id: \"a b\"}", "id characters"),
        ("- {id: a, routes: [nope]}", "unknown route"),
        ("- {id: a, credentials: [cookie]}", "unknown kind"),
        ("- {id: a, overrides: [{roles: [nope], requests: 1}]}", "unknown role"),
    ] {
        let text = format!("{OPEN}rate_limits:\n  limits:\n    {bad}\n");
        assert!(try_policy(&text).is_err(), "{why}");
    }
}

// ---------------------------------------------------------------- CORS

const CORS: &str = "routes:
  - id: api
    path: /api/**
    methods: [GET, PUT]
    cors:
      origins: [\"https://app.example.com\", \"https://*.example.org\"]
      headers: [X-Request-Id, Authorization]
      expose_headers: [X-Trace]
      max_age: 300
      credentials: true
  - {id: plain, path: /plain/**}
";

fn preflight(path: &str, origin: &str, method: &str) -> Req {
    get(path).method("OPTIONS").header("Origin", origin).header("Access-Control-Request-Method", method)
}

#[test]
fn an_allowed_preflight_is_answered_at_the_edge_without_a_credential() {
    let p = policy(CORS);
    let d = preflight("/api/orders", "https://app.example.com", "PUT")
        .header("Access-Control-Request-Headers", "x-request-id, content-type")
        .on(&p);
    assert_eq!((d.reason, d.status(), d.allowed()), (Reason::CorsPreflight, 204, false));
    assert_eq!(d.route.as_deref(), Some("api"));
    assert_eq!(resp(&d, "access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(resp(&d, "access-control-allow-methods"), Some("GET, PUT"), "the route's methods");
    assert_eq!(resp(&d, "access-control-allow-headers"), Some("x-request-id, authorization"));
    assert_eq!(resp(&d, "access-control-allow-credentials"), Some("true"));
    assert_eq!(resp(&d, "access-control-max-age"), Some("300"));
    assert!(resp(&d, "vary").is_some_and(|v| v.contains("Origin")));
    let d = preflight("/api/orders", "https://a.example.org", "GET").on(&p);
    assert_eq!(d.reason, Reason::CorsPreflight, "a wildcard origin");
}

#[test]
fn a_refused_preflight_gets_403_and_no_cors_headers() {
    let p = policy(CORS);
    for (req, why) in [
        (preflight("/api/o", "https://evil.example", "GET"), "origin"),
        (preflight("/api/o", "https://example.org", "GET"), "a wildcard needs a label"),
        (preflight("/api/o", "https://app.example.com", "DELETE"), "method"),
        (
            preflight("/api/o", "https://app.example.com", "GET").header("Access-Control-Request-Headers", "x-admin"),
            "header",
        ),
    ] {
        let d = req.on(&p);
        // A method the route does not serve finds no route at all (`no_route`, also 403).
        let want = if why == "method" { Reason::NoRoute } else { Reason::CorsRejected };
        assert_eq!((d.reason, d.status()), (want, 403), "{why}");
        assert!(d.response_headers.iter().all(|(k, _)| !k.starts_with("access-control-")), "{why}");
    }
}

#[test]
fn cors_methods_can_narrow_the_routes_methods() {
    let p = policy(
        "routes:\n  - {id: a, path: /a, methods: [GET, PUT], cors: {origins: [\"https://app.example.com\"], methods: [GET]}}\n",
    );
    assert_eq!(preflight("/a", "https://app.example.com", "GET").on(&p).reason, Reason::CorsPreflight);
    assert_eq!(preflight("/a", "https://app.example.com", "PUT").on(&p).reason, Reason::CorsRejected);
}

#[test]
fn actual_requests_get_the_allow_origin_only_for_allowed_origins() {
    let p = policy(CORS);
    let d = get("/api/o").key().header("Origin", "https://app.example.com").on(&p);
    assert!(d.allowed());
    assert_eq!(resp(&d, "access-control-allow-origin"), Some("https://app.example.com"));
    assert_eq!(resp(&d, "access-control-expose-headers"), Some("x-trace"));
    assert_eq!(resp(&d, "vary"), Some("Origin"));
    // Denials carry them too, so the page can read the error.
    let d = get("/api/o").header("Origin", "https://app.example.com").on(&p);
    assert_eq!(d.reason, Reason::MissingCredential);
    assert_eq!(resp(&d, "access-control-allow-origin"), Some("https://app.example.com"));
    // Another origin: Vary only.
    let d = get("/api/o").key().header("Origin", "https://evil.example").on(&p);
    assert!(d.allowed());
    assert_eq!(resp(&d, "access-control-allow-origin"), None);
    assert_eq!(resp(&d, "vary"), Some("Origin"));
}

#[test]
fn without_cors_settings_a_preflight_is_an_ordinary_request() {
    let p = policy(CORS);
    let d = preflight("/plain/x", "https://app.example.com", "GET").on(&p);
    assert_eq!(d.reason, Reason::MissingCredential);
    assert!(d.response_headers.is_empty());
}

#[test]
fn the_policy_cors_applies_to_routes_without_their_own_and_wildcards_are_refused() {
    let p = policy("cors: {origins: [\"https://app.example.com\"]}\nroutes:\n  - {id: a, path: /a}\n");
    let d = preflight("/a", "https://app.example.com", "POST").on(&p);
    assert_eq!(d.reason, Reason::CorsPreflight);
    assert_eq!(resp(&d, "access-control-allow-methods"), Some("GET, HEAD, POST"));
    assert!(try_policy("cors: {origins: [\"*\"]}\nroutes:\n  - {id: a, path: /a}\n").is_err());
    assert!(try_policy("cors: {origins: []}\nroutes:\n  - {id: a, path: /a}\n").is_err());
}

// ---------------------------------------------------------------- rules before authentication

#[test]
fn a_blocked_range_gets_403_whatever_it_presents() {
    let p = policy(&format!(
        "{OPEN}rules:\n  - {{id: block, effect: deny, before_authentication: true, when: {{client_cidrs: [203.0.113.0/24]}}}}\n"
    ));
    for r in [get("/x"), get("/x").bearer("not-a-token"), get("/x").key(), get("/public/x")] {
        let d = r.ip("203.0.113.9").on(&p);
        assert_eq!((d.reason, d.status()), (Reason::PolicyDenied, 403));
        assert_eq!(d.rule.as_deref(), Some("block"));
        assert!(d.identity.is_none());
    }
    assert_eq!(get("/x").ip("198.51.100.1").on(&p).reason, Reason::MissingCredential);
    assert!(get("/x").ip("198.51.100.1").key().on(&p).allowed());
}

#[test]
fn a_dry_run_never_reads_the_credential_of_a_request_blocked_before_authentication() {
    /// Counts revocation lookups: each is made only after a credential verified.
    #[derive(Default)]
    struct Watch(Cell<u32>);
    impl Revocations for Watch {
        fn status(&self, _: RevocationQuery<'_>) -> RevocationStatus {
            self.0.set(self.0.get() + 1);
            RevocationStatus::Active
        }
    }
    let p = policy(&format!(
        "{OPEN}rules:
  - {{id: block, effect: deny, before_authentication: true, when: {{client_cidrs: [203.0.113.0/24]}}}}
  - {{id: dry, effect: deny, shadow: true, when: {{subjects: [alice]}}}}
"
    ));
    let watch = Watch::default();
    let d = get("/x").bearer(&jwt(r#""jti":"t1""#)).ip("203.0.113.9").with(&p, &watch);
    assert_eq!((d.reason, d.shadow.is_none()), (Reason::PolicyDenied, true));
    assert_eq!(watch.0.get(), 0, "the token was never verified");
    // A preflight carrying a token (browsers send none; anyone else may): answered at the edge,
    // and the dry run does not verify the token either.
    let p = policy(&format!(
        "cors: {{origins: [\"https://app.example.com\"]}}\n{OPEN}rules:\n  - {{id: dry, effect: deny, shadow: true, when: {{subjects: [alice]}}}}\n"
    ));
    let d = preflight("/x", "https://app.example.com", "GET").bearer(&jwt(r#""jti":"t1""#)).with(&p, &watch);
    assert_eq!((d.reason, d.shadow.is_none()), (Reason::CorsPreflight, true));
    assert_eq!(watch.0.get(), 0, "the token was never verified");
    let d = get("/x").bearer(&jwt(r#""jti":"t1""#)).with(&p, &watch);
    assert!(d.allowed() && d.shadow.is_some(), "elsewhere the dry run still runs");
    assert!(watch.0.get() > 0);
}

#[test]
fn an_anonymous_route_can_be_kept_to_a_range() {
    let p = policy(&format!(
        "{OPEN}rules:\n  - {{id: internal-only, effect: deny, before_authentication: true, when: {{paths: [/public/**], not_client_cidrs: [10.0.0.0/8]}}}}\n"
    ));
    assert!(get("/public/x").ip("10.2.3.4").on(&p).allowed());
    assert_eq!(get("/public/x").ip("192.0.2.1").on(&p).reason, Reason::PolicyDenied);
    assert_eq!(get("/public/x").on(&p).reason, Reason::PolicyDenied, "an unknown address is outside");
    assert_eq!(get("/x").ip("192.0.2.1").on(&p).reason, Reason::MissingCredential, "other paths");
}

#[test]
fn a_higher_allow_before_authentication_only_lets_the_request_on_to_authentication() {
    let p = policy(&format!(
        "{OPEN}rules:
  - {{id: office, effect: allow, priority: 10, before_authentication: true, when: {{client_cidrs: [10.0.0.0/8]}}}}
  - {{id: others, effect: deny, before_authentication: true, when: {{paths: [/**]}}}}
"
    ));
    assert_eq!(get("/x").ip("10.0.0.1").on(&p).reason, Reason::MissingCredential);
    assert!(get("/x").ip("10.0.0.1").key().on(&p).allowed());
    assert_eq!(get("/x").ip("192.0.2.1").key().on(&p).reason, Reason::PolicyDenied);
}

#[test]
fn rules_before_authentication_cannot_look_at_identities() {
    for when in [
        "{subjects: [a]}",
        "{roles: [admin]}",
        "{scopes: [a]}",
        "{claims: {email: {equals: [a]}}}",
        "{not_claims: {email: {equals: [a]}}}",
    ] {
        let text =
            format!("{ROLES}{OPEN}rules:\n  - {{id: r, effect: deny, before_authentication: true, when: {when}}}\n");
        assert!(try_policy(&text).is_err(), "{when}");
    }
}

// ---------------------------------------------------------------- claims in rules

#[test]
fn an_email_domain_allowlist_is_one_rule() {
    let p = policy(&format!(
        "{OPEN}rules:
  - {{id: members, effect: allow, priority: 1, when: {{claims: {{email: {{domains: [company.com, \"*.company.org\"]}}}}}}}}
  - {{id: others, effect: deny, when: {{credentials: [jwt]}}}}
"
    ));
    let with = |email: &str| get("/x").bearer(&jwt(&format!(r#""email":"{email}""#))).on(&p).reason;
    assert_eq!(with("ann@company.com"), Reason::Allowed);
    assert_eq!(with("ann@COMPANY.Com"), Reason::Allowed, "domains are case-insensitive");
    assert_eq!(with("ann@eu.company.org"), Reason::Allowed);
    assert_eq!(with("ann@company.org"), Reason::PolicyDenied, "a wildcard needs a subdomain");
    assert_eq!(with("ann@evilcompany.com"), Reason::PolicyDenied);
    assert_eq!(with("ann@company.com.evil.io"), Reason::PolicyDenied);
    assert_eq!(with("@company.com"), Reason::PolicyDenied, "no local part");
    assert_eq!(get("/x").bearer(&jwt("")).on(&p).reason, Reason::PolicyDenied, "no email at all");
}

#[test]
fn only_members_of_these_domains_is_one_deny_rule() {
    let p = policy(&format!(
        "{OPEN}rules:\n  - {{id: staff-only, effect: deny, when: {{credentials: [jwt], not_claims: {{email: {{domains: [company.com]}}}}}}}}\n"
    ));
    let with = |extra: &str| get("/x").bearer(&jwt(extra)).on(&p);
    assert!(with(r#""email":"ann@Company.com""#).allowed());
    let d = with(r#""email":"ann@gmail.com""#);
    assert_eq!((d.reason, d.rule.as_deref()), (Reason::PolicyDenied, Some("staff-only")));
    assert_eq!(with("").reason, Reason::PolicyDenied, "no email is not a member");
    assert!(get("/x").key().on(&p).allowed(), "the rule names JWTs only");
}

#[test]
fn claim_rules_match_exact_values_suffixes_and_groups() {
    let p = policy(&format!(
        "{OPEN}rules:
  - {{id: bots, effect: deny, when: {{claims: {{subject: {{ends_with: [-bot]}}}}}}}}
  - {{id: sre, effect: deny, when: {{claims: {{groups: {{equals: [/contractors]}}}}}}}}
"
    ));
    let sub = |s: &str, extra: &str| {
        let t = hs256(
            SECRET,
            H,
            &format!(r#"{{"iss":"https://t.example","aud":"api","sub":"{s}","exp":{}{extra}}}"#, NOW + 300),
        );
        get("/x").bearer(&t).on(&p).reason
    };
    assert_eq!(sub("build-bot", ""), Reason::PolicyDenied);
    assert_eq!(sub("build-BOT", ""), Reason::Allowed, "suffixes are exact");
    assert_eq!(sub("ann", r#","groups":["/staff","/contractors"]"#), Reason::PolicyDenied);
    assert_eq!(sub("ann", r#","groups":["/staff"]"#), Reason::Allowed);
    for bad in
        ["{claims: {shoe_size: {equals: [42]}}}", "{claims: {email: {}}}", "{claims: {email: {domains: [\"a b\"]}}}"]
    {
        assert!(try_policy(&format!("{OPEN}rules:\n  - {{id: r, effect: deny, when: {bad}}}\n")).is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------- response and identity headers

#[test]
fn security_headers_go_on_every_response() {
    let p = policy(&format!(
        "{OPEN}response_headers:\n  Strict-Transport-Security: max-age=63072000\n  X-Content-Type-Options: nosniff\n"
    ));
    for d in [get("/x").key().on(&p), get("/x").on(&p), get("/x").bearer("junk").on(&p)] {
        assert_eq!(resp(&d, "strict-transport-security"), Some("max-age=63072000"), "{:?}", d.reason);
        assert_eq!(resp(&d, "x-content-type-options"), Some("nosniff"));
    }
    for bad in ["Vary: x", "Access-Control-Allow-Origin: x", "Retry-After: 1", "X-Bad: \"a\\nb\"", "\"a b\": x"] {
        assert!(try_policy(&format!("{OPEN}response_headers:\n  {bad}\n")).is_err(), "{bad}");
    }
}

#[test]
fn identity_header_names_follow_the_credential_kind() {
    let p = policy(&format!(
        "{ROLES}{OPEN}identity_headers:
  highest_role: X-User-Top-Role
  by_credential:
    api_key: {{subject: X-Api-Key-Id, tenant: null}}
    service_token: {{subject: X-Worker-Id}}
"
    ));
    let d = get("/x").key().on(&p);
    assert_eq!(header(&d, "X-Api-Key-Id"), Some("ci"));
    assert_eq!(header(&d, "X-User-Id"), None);
    assert_eq!(header(&d, "X-Tenant-Id"), None, "turned off for API keys");
    let d = get("/x").bearer(&jwt(r#""groups":["/admins"]"#)).on(&p);
    assert_eq!(header(&d, "X-User-Id"), Some("alice"));
    assert_eq!(header(&d, "X-Api-Key-Id"), None);
    assert_eq!(header(&d, "X-User-Top-Role"), Some("admin"));
    assert!(header(&d, "X-User-Role").is_some_and(|r| r.contains("viewer")), "the list stays");
    let d = get("/x").bearer(&svc_token(&p, "orders-api")).header("X-Worker-ID", "w1").on(&p);
    assert_eq!(header(&d, "X-Worker-Id"), Some("w1"));
    // Every kind's names are stripped from every request, so none can be forged.
    let removed = d.headers_to_remove.unwrap();
    for n in ["X-Api-Key-Id", "X-User-Id", "X-User-Top-Role", "X-Tenant-Id"] {
        assert!(removed.iter().any(|r| r.eq_ignore_ascii_case(n)), "{n}");
    }
    assert!(try_policy(&format!("{OPEN}identity_headers:\n  by_credential:\n    cookie: {{subject: X-A}}\n")).is_err());
}

#[test]
fn explanations_say_what_the_preflight_and_the_limits_decided() {
    let p = policy(CORS);
    let (d, x) = preflight("/api/o", "https://evil.example", "GET").run(|r| p.explain(r, &NoRevocations));
    assert_eq!(d.reason, Reason::CorsRejected);
    let check = x.requirements.iter().find(|c| c.requirement == "CORS preflight").unwrap();
    assert!(!check.held && check.detail.contains("https://evil.example"), "{check:?}");

    let p = policy(&format!("{OPEN}rate_limits:\n  limits:\n    - {{id: per-key, requests: 1, burst: 1}}\n"));
    let host = Counter::at(1000);
    let (_, x) = get("/x").key().run(|r| p.explain(r, &host));
    assert!(x.requirements.iter().any(|c| c.requirement == "rate limits" && c.held), "{x:?}");
    let (d, x) = get("/x").key().run(|r| p.explain(r, &host));
    assert_eq!(d.reason, Reason::RateLimited);
    let check = x.requirements.iter().find(|c| c.requirement == "rate limits").unwrap();
    assert!(!check.held && check.detail.contains("`per-key` is empty"), "{check:?}");
}
