//! Per-feature tests of the policy engine, each with its negative case.

use crate::Decision;
use crate::policy::{NoFiles, Policy};
use crate::reason::Reason;
use crate::request::Request;
use crate::revocation::NoRevocations;
use crate::testutil::{NOW, SECRET, hs256};
use crate::time::UnixTime;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

mod edge;

const H: &str = r#"{"alg":"HS256","kid":"k1"}"#;
/// The API key `ask_test0001secret-secret-secret` (sha256 below).
const API_KEY: &str = "ask_test0001secret-secret-secret";

/// A policy with one HS256 issuer, service tokens and one API key, plus `rest` (top-level YAML).
fn policy(rest: &str) -> Policy {
    try_policy(rest).unwrap()
}

fn try_policy(rest: &str) -> Result<Policy, crate::PolicyError> {
    use base64::Engine as _;
    use sha2::Digest;
    let k = crate::b64::URL_SAFE_STRICT.encode(SECRET);
    let sha: String = sha2::Sha256::digest(API_KEY.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let text = format!(
        "version: 1
issuers:
  - issuer: https://t.example
    audiences: [api]
    algorithms: [HS256]
    jwks: {{keys: [{{kty: oct, kid: k1, k: {k}}}]}}
    group_roles: {{\"/admins\": [admin]}}
  - issuer: https://other.example
    audiences: [api]
    algorithms: [HS256]
    jwks: {{keys: [{{kty: oct, kid: k1, k: {k}}}]}}
service_tokens:
  prefix: svc
  keys: [{{id: s1, secret: {svc}}}]
  audiences: [orders-api, billing-api]
api_keys:
  prefix: ask_
  keys:
    - {{id: ci, prefix: ask_test0001, sha256: \"{sha}\", scopes: [\"deploy:write\"], tenant: acme}}
{rest}",
        svc = "s".repeat(32)
    );
    Policy::load(&text, &NoFiles)
}

fn jwt(extra: &str) -> String {
    let base = format!(r#""iss":"https://t.example","aud":"api","sub":"alice","exp":{}"#, NOW + 300);
    let payload = if extra.is_empty() { format!("{{{base}}}") } else { format!("{{{base},{extra}}}") };
    hs256(SECRET, H, &payload)
}

fn svc_token(p: &Policy, aud: &str) -> String {
    p.service_tokens()
        .unwrap()
        .sign(&format!(r#"{{"worker_id":"w1","jti":"j","aud":"{aud}","iat":{NOW},"exp":{}}}"#, NOW + 60))
        .unwrap()
}

struct Req {
    method: &'static str,
    path: String,
    host: &'static str,
    headers: Vec<(String, String)>,
    client_ip: Option<std::net::IpAddr>,
}

fn get(path: &str) -> Req {
    Req { method: "GET", path: path.into(), host: "api.example.com", headers: Vec::new(), client_ip: None }
}

impl Req {
    fn method(mut self, m: &'static str) -> Req {
        self.method = m;
        self
    }
    fn host(mut self, h: &'static str) -> Req {
        self.host = h;
        self
    }
    fn bearer(self, t: &str) -> Req {
        self.header("Authorization", &format!("Bearer {t}"))
    }
    fn header(mut self, k: &str, v: &str) -> Req {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn ip(mut self, ip: &str) -> Req {
        self.client_ip = Some(ip.parse().unwrap());
        self
    }
    fn run<R>(&self, f: impl FnOnce(&Request<'_>) -> R) -> R {
        let h: Vec<(&str, &str)> = self.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (path, query) = crate::request::split_path_and_query(&self.path);
        f(&Request {
            method: self.method,
            scheme: "https",
            host: self.host,
            path,
            query,
            headers: &h,
            client_ip: self.client_ip,
            now: UnixTime(NOW),
        })
    }
    fn on(&self, p: &Policy) -> Decision {
        self.run(|r| p.decide(r, &NoRevocations))
    }
}

fn reason(p: &Policy, r: Req) -> Reason {
    r.on(p).reason
}

fn route_of(p: &Policy, r: Req) -> Option<String> {
    r.on(p).route.map(|s| s.to_string())
}

fn header<'d>(d: &'d Decision, name: &str) -> Option<&'d str> {
    d.headers_to_set.iter().find(|(k, _)| &**k == name).map(|(_, v)| v.as_str())
}

// ---------------------------------------------------------------- routes

#[test]
fn the_most_specific_route_wins() {
    let p = policy(
        "routes:
  - {id: rest, path: /v1/**}
  - {id: param, path: \"/v1/{x}\"}
  - {id: literal, path: /v1/orders}
  - {id: host, path: /v1/orders, host: api.example.com}
  - {id: host-get, path: /v1/orders, host: api.example.com, methods: [GET]}
",
    );
    let t = jwt("");
    assert_eq!(route_of(&p, get("/v1/orders").bearer(&t)).as_deref(), Some("host-get"));
    assert_eq!(route_of(&p, get("/v1/orders").bearer(&t).method("POST")).as_deref(), Some("host"));
    assert_eq!(route_of(&p, get("/v1/orders").bearer(&t).host("other.example.com")).as_deref(), Some("literal"));
    assert_eq!(route_of(&p, get("/v1/items").bearer(&t)).as_deref(), Some("param"));
    assert_eq!(route_of(&p, get("/v1/items/1").bearer(&t)).as_deref(), Some("rest"));
}

#[test]
fn unmatched_requests_are_denied_by_default_once_routes_exist() {
    let p = policy("routes:\n  - {id: a, path: /a}\n");
    let d = get("/b").bearer(&jwt("")).on(&p);
    assert_eq!((d.reason, d.status()), (Reason::NoRoute, 403));
    assert!(d.identity.is_none(), "no credential is examined for unmatched requests");
    let p = policy("default: authenticated\nroutes:\n  - {id: a, path: /a}\n");
    assert_eq!(reason(&p, get("/b").bearer(&jwt(""))), Reason::Allowed);
    assert_eq!(reason(&p, get("/b")), Reason::MissingCredential);
}

#[test]
fn equal_specificity_is_a_load_error() {
    let e = try_policy("routes:\n  - {id: a, path: \"/v1/{x}\"}\n  - {id: b, path: /v1/*}\n").unwrap_err();
    assert!(e.to_string().contains("equal specificity"), "{e}");
    assert!(
        try_policy("routes:\n  - {id: a, path: /v1, methods: [GET]}\n  - {id: b, path: /v1, methods: [GET, PUT]}\n")
            .is_err()
    );
    assert!(try_policy("routes:\n  - {id: a, path: /v1, host: \"*.example.com\"}\n  - {id: b, path: /v1, host: \"*.a.example.com\"}\n").is_err());
    // Disjoint methods or hosts, different ranks, or a shadow beside its enforced twin are fine.
    assert!(
        try_policy("routes:\n  - {id: a, path: /v1, methods: [GET]}\n  - {id: b, path: /v1, methods: [PUT]}\n").is_ok()
    );
    assert!(try_policy("routes:\n  - {id: a, path: /v1, host: a.com}\n  - {id: b, path: /v1, host: b.com}\n").is_ok());
    assert!(try_policy("routes:\n  - {id: a, path: /v1}\n  - {id: b, path: /v1, methods: [GET]}\n").is_ok());
    assert!(try_policy("routes:\n  - {id: a, path: /v1}\n  - {id: b, path: /v1, shadow: true}\n").is_ok());
}

#[test]
fn duplicate_route_ids_are_errors() {
    assert!(try_policy("routes:\n  - {id: a, path: /a}\n  - {id: a, path: /b}\n").is_err());
}

#[test]
fn encoded_and_dotted_paths_cannot_reach_a_weaker_route() {
    let p = policy(
        "routes:
  - {id: open, path: /v1/**}
  - {id: admin, path: /v1/admin/**, scopes: [admin:all]}
",
    );
    let t = jwt("");
    for path in ["/v1/admin/users", "/v1/%61dmin/users", "/v1/ADMIN%2Fx", "/v1/admin/"] {
        let d = get(path).bearer(&t).on(&p);
        assert_ne!(d.reason, Reason::Allowed, "{path} reached the open route");
    }
    assert_eq!(route_of(&p, get("/v1/%61dmin/users").bearer(&t)).as_deref(), Some("admin"));
    for path in ["/v1/x/../admin/users", "/v1//admin", "/v1/%2e%2e/admin", "/v1\\admin", "v1/admin"] {
        assert_eq!(reason(&p, get(path).bearer(&t)), Reason::Malformed, "{path}");
    }
}

#[test]
fn a_public_route_needs_no_credential_and_ignores_one() {
    let p = policy("routes:\n  - {id: health, path: /healthz, public: true}\n");
    let d = get("/healthz").on(&p);
    assert!(d.allowed());
    assert!(d.identity.is_none());
    let d = get("/healthz").bearer("garbage").header("X-User-Id", "admin").on(&p);
    assert!(d.allowed());
    assert!(d.headers_to_set.is_empty());
    assert!(d.headers_to_remove.unwrap().iter().any(|h| &**h == "X-User-Id"), "forged identity is stripped");
    assert!(try_policy("routes:\n  - {id: h, path: /h, public: true, scopes: [a]}\n").is_err());
}

// ---------------------------------------------------------------- accept

#[test]
fn a_route_accepts_only_the_credentials_it_lists() {
    let p = policy(
        "routes:
  - {id: keys-only, path: /k, accept: {api_keys: true}}
  - {id: t-only, path: /t, accept: {issuers: [https://t.example]}}
  - {id: orders, path: /o, accept: {service_audiences: [orders-api]}}
  - {id: key-ci, path: /ci, accept: {api_keys: [ci]}}
",
    );
    assert_eq!(reason(&p, get("/k").bearer(&jwt(""))), Reason::CredentialNotAccepted);
    assert_eq!(reason(&p, get("/k").header("X-API-Key", API_KEY)), Reason::Allowed);
    let ours = jwt("");
    let other_iss =
        hs256(SECRET, H, &format!(r#"{{"iss":"https://other.example","aud":"api","sub":"a","exp":{}}}"#, NOW + 60));
    assert_eq!(reason(&p, get("/t").bearer(&ours)), Reason::Allowed);
    assert_eq!(reason(&p, get("/t").bearer(&other_iss)), Reason::CredentialNotAccepted);
    assert_eq!(reason(&p, get("/t").header("X-API-Key", API_KEY)), Reason::CredentialNotAccepted);
    assert_eq!(reason(&p, get("/ci").header("X-API-Key", API_KEY)), Reason::Allowed);
    let with_worker = |r: Req| r.header("X-Worker-ID", "w1");
    assert_eq!(reason(&p, with_worker(get("/o").bearer(&svc_token(&p, "orders-api")))), Reason::Allowed);
    assert_eq!(
        reason(&p, with_worker(get("/o").bearer(&svc_token(&p, "billing-api")))),
        Reason::WrongAudience,
        "a billing token does not open an orders route"
    );
}

#[test]
fn accept_lists_must_name_configured_credentials() {
    assert!(try_policy("routes:\n  - {id: a, path: /a, accept: {issuers: [https://nope]}}\n").is_err());
    assert!(try_policy("routes:\n  - {id: a, path: /a, accept: {service_audiences: [payroll]}}\n").is_err());
    assert!(try_policy("routes:\n  - {id: a, path: /a, accept: {api_keys: [nobody]}}\n").is_err());
    assert!(try_policy("routes:\n  - {id: a, path: /a, accept: {}}\n").is_err());
}

// ---------------------------------------------------------------- scopes

#[test]
fn all_listed_scopes_are_required() {
    let p = policy("routes:\n  - {id: a, path: /a, scopes: [orders:read, orders:write]}\n");
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""scope":"orders:read""#))), Reason::InsufficientScope);
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""scope":"orders:read orders:write""#))), Reason::Allowed);
}

#[test]
fn any_scope_set_held_in_full_is_enough() {
    let p = policy("routes:\n  - {id: a, path: /a, any_scopes: [[admin:all], [orders:read, orders:write]]}\n");
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""scope":"admin:all""#))), Reason::Allowed);
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""scp":["orders:read","orders:write"]"#))), Reason::Allowed);
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""scope":"orders:read""#))), Reason::InsufficientScope);
}

#[test]
fn wildcard_grants_cover_their_prefix_and_star_only_when_allowed() {
    let p = policy("routes:\n  - {id: a, path: /a, scopes: [admin:users:write]}\n");
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""scope":"admin:*""#))), Reason::Allowed);
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""scope":"admin:users*""#))), Reason::InsufficientScope);
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""scope":"*""#))), Reason::InsufficientScope);
    let p = policy("allow_global_scope_wildcard: true\nroutes:\n  - {id: a, path: /a, scopes: [admin:users:write]}\n");
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""scope":"*""#))), Reason::Allowed);
}

#[test]
fn required_scopes_must_be_concrete() {
    assert!(try_policy("routes:\n  - {id: a, path: /a, scopes: [\"admin:*\"]}\n").is_err());
    assert!(try_policy("routes:\n  - {id: a, path: /a, any_scopes: [[]]}\n").is_err());
}

// ---------------------------------------------------------------- roles

const ROLES: &str = "roles:
  owner: {inherits: [admin]}
  admin: {inherits: [dev, operator], scopes: [\"admin:*\"]}
  dev: {inherits: [billing]}
  billing: {inherits: [viewer]}
  operator: {inherits: [viewer]}
  viewer: {scopes: [orders:read]}
";

#[test]
fn higher_roles_satisfy_lower_role_requirements() {
    let p = policy(&format!(
        "{ROLES}routes:\n  - {{id: a, path: /a, roles: [admin]}}\n  - {{id: v, path: /v, roles: [viewer]}}\n"
    ));
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""roles":["owner"]"#))), Reason::Allowed);
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""roles":["dev"]"#))), Reason::ForbiddenRole);
    assert_eq!(reason(&p, get("/v").bearer(&jwt(r#""roles":"operator""#))), Reason::Allowed);
    assert_eq!(reason(&p, get("/v").bearer(&jwt(r#""roles":["stranger"]"#))), Reason::ForbiddenRole);
}

#[test]
fn groups_map_to_roles() {
    let p = policy(&format!("{ROLES}routes:\n  - {{id: a, path: /a, roles: [admin]}}\n"));
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""groups":["/admins"]"#))), Reason::Allowed);
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""groups":["/users"]"#))), Reason::ForbiddenRole);
}

#[test]
fn roles_grant_scopes_through_the_hierarchy() {
    let p = policy(&format!("{ROLES}routes:\n  - {{id: a, path: /a, scopes: [orders:read, admin:users]}}\n"));
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""roles":["owner"]"#))), Reason::Allowed);
    assert_eq!(reason(&p, get("/a").bearer(&jwt(r#""roles":["viewer"]"#))), Reason::InsufficientScope);
}

#[test]
fn undefined_roles_are_load_errors() {
    assert!(try_policy("routes:\n  - {id: a, path: /a, roles: [admin]}\n").is_err());
    let e = try_policy("roles:\n  a: {inherits: [b]}\n  b: {inherits: [a]}\n").unwrap_err();
    assert!(e.to_string().contains("cycle"), "{e}");
    // Once roles exist, group mappings must use them.
    assert!(try_policy("roles:\n  viewer: {}\n").unwrap_err().to_string().contains("group_roles"));
}

// ---------------------------------------------------------------- tenants

#[test]
fn a_path_bound_tenant_must_be_the_identitys() {
    let p = policy(&format!(
        "{ROLES}  platform-admin: {{}}\nroutes:\n  - {{id: org, path: \"/v1/orgs/{{org}}/**\", tenant: {{path_param: org, cross_tenant_roles: [platform-admin]}}}}\n"
    ));
    assert_eq!(reason(&p, get("/v1/orgs/acme/projects").bearer(&jwt(r#""tenant":"acme""#))), Reason::Allowed);
    let d = get("/v1/orgs/globex/projects").bearer(&jwt(r#""tenant":"acme""#)).on(&p);
    assert_eq!((d.reason, d.status()), (Reason::TenantMismatch, 403));
    assert!(d.identity.is_some(), "an authorization denial keeps the verified identity for audit");
    assert_eq!(reason(&p, get("/v1/orgs/globex").bearer(&jwt(""))), Reason::TenantMismatch, "no tenant claim");
    assert_eq!(
        reason(&p, get("/v1/orgs/globex").bearer(&jwt(r#""tenant":"acme","roles":["platform-admin"]"#))),
        Reason::Allowed
    );
    // API keys carry their tenant too.
    assert_eq!(reason(&p, get("/v1/orgs/acme").header("X-API-Key", API_KEY)), Reason::Allowed);
    assert_eq!(reason(&p, get("/v1/orgs/globex").header("X-API-Key", API_KEY)), Reason::TenantMismatch);
}

#[test]
fn a_header_bound_tenant_must_be_present_once_and_match() {
    let p = policy("routes:\n  - {id: a, path: /a, tenant: {header: X-Org}}\n");
    let t = jwt(r#""tenant":"acme""#);
    assert_eq!(reason(&p, get("/a").bearer(&t).header("X-Org", "acme")), Reason::Allowed);
    assert_eq!(reason(&p, get("/a").bearer(&t).header("X-Org", "globex")), Reason::TenantMismatch);
    assert_eq!(reason(&p, get("/a").bearer(&t)), Reason::TenantMismatch);
    assert_eq!(
        reason(&p, get("/a").bearer(&t).header("X-Org", "acme").header("x-org", "acme")),
        Reason::TenantMismatch
    );
}

#[test]
fn tenant_binding_must_name_a_path_parameter() {
    assert!(try_policy("routes:\n  - {id: a, path: \"/o/{org}\", tenant: {path_param: orgz}}\n").is_err());
    assert!(try_policy("routes:\n  - {id: a, path: /o, tenant: {}}\n").is_err());
}

// ---------------------------------------------------------------- rules

#[test]
fn a_matching_deny_rule_names_itself() {
    let p = policy("rules:\n  - {id: no-delete, effect: deny, when: {methods: [DELETE]}}\n");
    let d = get("/x").bearer(&jwt("")).method("DELETE").on(&p);
    assert_eq!((d.reason, d.rule.as_deref()), (Reason::PolicyDenied, Some("no-delete")));
    assert!(get("/x").bearer(&jwt("")).on(&p).allowed());
}

#[test]
fn higher_priority_wins_and_deny_wins_ties() {
    let p = policy(
        "rules:
  - {id: deny-all-delete, effect: deny, priority: 10, when: {methods: [DELETE]}}
  - {id: break-glass, effect: allow, priority: 100, when: {methods: [DELETE], subjects: [root]}}
  - {id: tie-allow, effect: allow, priority: 5, when: {paths: [/tie]}}
  - {id: tie-deny, effect: deny, priority: 5, when: {paths: [/tie]}}
",
    );
    let root =
        hs256(SECRET, H, &format!(r#"{{"iss":"https://t.example","aud":"api","sub":"root","exp":{}}}"#, NOW + 60));
    assert_eq!(get("/x").bearer(&root).method("DELETE").on(&p).rule.as_deref(), Some("break-glass"));
    assert_eq!(reason(&p, get("/x").bearer(&jwt("")).method("DELETE")), Reason::PolicyDenied);
    let d = get("/tie").bearer(&jwt("")).on(&p);
    assert_eq!((d.reason, d.rule.as_deref()), (Reason::PolicyDenied, Some("tie-deny")));
}

#[test]
fn an_allow_rule_overrides_route_requirements() {
    let p = policy(
        "routes:\n  - {id: a, path: /a, scopes: [admin:all]}\nrules:\n  - {id: ops, effect: allow, when: {client_cidrs: [10.0.0.0/8], routes: [a]}}\n",
    );
    assert_eq!(reason(&p, get("/a").bearer(&jwt("")).ip("10.1.1.1")), Reason::Allowed);
    assert_eq!(reason(&p, get("/a").bearer(&jwt("")).ip("192.0.2.1")), Reason::InsufficientScope);
    assert_eq!(reason(&p, get("/a").ip("10.1.1.1")), Reason::MissingCredential, "rules never replace authentication");
}

#[test]
fn rule_conditions_all_have_to_hold() {
    let p = policy(
        "rules:
  - id: old-clients
    effect: deny
    when:
      headers: {X-Client-Version: [\"1.0\", \"1.1\"]}
      origins: [\"https://*.legacy.example\"]
      credentials: [jwt]
      tenants: [acme]
",
    );
    let t = jwt(r#""tenant":"acme""#);
    let base = || get("/x").bearer(&t).header("X-Client-Version", "1.0").header("Origin", "https://a.legacy.example");
    assert_eq!(reason(&p, base()), Reason::PolicyDenied);
    assert_eq!(
        reason(&p, get("/x").bearer(&t).header("X-Client-Version", "2.0").header("Origin", "https://a.legacy.example")),
        Reason::Allowed
    );
    assert_eq!(reason(&p, get("/x").bearer(&t).header("X-Client-Version", "1.0")), Reason::Allowed, "no Origin");
    assert_eq!(
        reason(
            &p,
            get("/x")
                .bearer(&jwt(r#""tenant":"globex""#))
                .header("X-Client-Version", "1.0")
                .header("Origin", "https://a.legacy.example")
        ),
        Reason::Allowed
    );
}

#[test]
fn path_rules_apply_only_under_their_paths() {
    let p = policy("rules:\n  - {id: freeze, effect: deny, when: {paths: [\"/v1/billing/**\"], methods: [POST]}}\n");
    assert_eq!(reason(&p, get("/v1/billing/invoices").bearer(&jwt("")).method("POST")), Reason::PolicyDenied);
    assert_eq!(reason(&p, get("/v1/orders").bearer(&jwt("")).method("POST")), Reason::Allowed);
}

#[test]
fn rules_with_unknown_references_are_load_errors() {
    assert!(try_policy("rules:\n  - {id: r, effect: deny, when: {routes: [nope]}}\n").is_err());
    assert!(try_policy("rules:\n  - {id: r, effect: deny, when: {roles: [nope]}}\n").is_err());
    assert!(try_policy("rules:\n  - {id: r, effect: deny, when: {credentials: [cookie]}}\n").is_err());
    assert!(try_policy("rules:\n  - {id: r, effect: deny}\n  - {id: r, effect: allow}\n").is_err());
}

// ---------------------------------------------------------------- shadow

#[test]
fn a_shadow_rule_reports_without_enforcing() {
    let p = policy("rules:\n  - {id: would-block, effect: deny, shadow: true, when: {methods: [POST]}}\n");
    let d = get("/x").bearer(&jwt("")).method("POST").on(&p);
    assert!(d.allowed(), "shadow rules are never enforced");
    let s = d.shadow.unwrap();
    assert_eq!((s.reason, s.rule.as_deref()), (Reason::PolicyDenied, Some("would-block")));
    assert!(get("/x").bearer(&jwt("")).on(&p).shadow.is_none());
}

#[test]
fn a_shadow_route_reports_its_verdict_while_the_next_route_decides() {
    let p = policy(
        "routes:\n  - {id: old, path: /v1/**}\n  - {id: new, path: /v1/admin/**, scopes: [admin:all], shadow: true}\n",
    );
    let d = get("/v1/admin/x").bearer(&jwt("")).on(&p);
    assert_eq!((d.reason, d.route.as_deref()), (Reason::Allowed, Some("old")));
    let s = d.shadow.unwrap();
    assert_eq!((s.reason, s.route.as_deref()), (Reason::InsufficientScope, Some("new")));
}

// ---------------------------------------------------------------- headers

#[test]
fn allowed_requests_carry_identity_headers_and_every_request_strips_them() {
    let p = policy(&format!("{ROLES}routes:\n  - {{id: a, path: /a}}\n"));
    let d = get("/a")
        .bearer(&jwt(
            r#""email":"a@x.io","tenant":"acme","roles":["dev"],"groups":["g,1","Zoë"],"scope":"orders:write""#,
        ))
        .on(&p);
    assert!(d.allowed());
    assert_eq!(header(&d, "X-User-Id"), Some("alice"));
    assert_eq!(header(&d, "X-User-Email"), Some("a@x.io"));
    assert_eq!(header(&d, "X-Tenant-Id"), Some("acme"));
    assert_eq!(header(&d, "X-User-Role"), Some("dev,billing,viewer"), "own roles, then implied ones");
    assert_eq!(header(&d, "X-User-Groups"), Some("g%2C1,Zo%C3%AB"), "list elements are encoded");
    assert_eq!(header(&d, "X-Auth-Scopes"), Some("orders:write orders:read"), "token and role grants");
    // Everything set is overwritten, never also removed (proxies remove after they set).
    let remove: Vec<String> = d.headers_to_remove.unwrap().iter().map(|h| h.to_string()).collect();
    for (name, _) in &d.headers_to_set {
        assert!(!remove.iter().any(|r| r.eq_ignore_ascii_case(name)), "{name} is both set and removed");
    }
    let no_groups = get("/a").bearer(&jwt("")).on(&p);
    let remove: Vec<String> = no_groups.headers_to_remove.unwrap().iter().map(|h| h.to_string()).collect();
    assert!(remove.contains(&"X-User-Groups".to_string()), "a name not set is stripped");
    let denied = get("/b").bearer(&jwt("")).on(&p);
    assert!(denied.headers_to_set.is_empty());
    let remove = denied.headers_to_remove.unwrap();
    for h in ["X-User-Id", "X-User-Email", "X-User-Role", "X-User-Groups", "X-Tenant-Id", "X-Auth-Scopes"] {
        assert!(remove.iter().any(|r| &**r == h), "denials strip {h} too");
    }
}

#[test]
fn identity_header_names_are_configurable() {
    let p = policy("identity_headers: {subject: X-Sub, email: null, credential: X-Cred, remove: [X-Internal]}\n");
    let d = get("/a").bearer(&jwt(r#""email":"a@x.io""#)).on(&p);
    assert_eq!(header(&d, "X-Sub"), Some("alice"));
    assert_eq!(header(&d, "X-Cred"), Some("jwt"));
    assert!(header(&d, "X-User-Email").is_none());
    let remove = d.headers_to_remove.unwrap();
    assert!(remove.iter().any(|h| &**h == "X-Internal"));
    assert!(!remove.iter().any(|h| &**h == "X-User-Email"));
    assert!(try_policy("identity_headers: {subject: Authorization}\n").is_err());
    assert!(try_policy("identity_headers: {subject: X-A, email: x-a}\n").is_err());
}

// ---------------------------------------------------------------- audit and explain

#[test]
fn audit_events_record_allow_listed_fields_and_never_credentials() {
    let p = policy(
        "audit: {headers: [User-Agent, Authorization, X-API-Key], query_keys: [page]}\nroutes:\n  - {id: a, path: /a}\n",
    );
    let t = jwt(r#""jti":"t-1""#);
    let r = get("/a?page=2&token=secret").bearer(&t).header("User-Agent", "curl/8");
    let d = r.on(&p);
    let event = r.run(|req| serde_json::to_value(p.audit_event(req, &d)).unwrap());
    assert_eq!(event["decision"], "allow");
    assert_eq!(event["actor"], "alice");
    assert_eq!(event["route"], "a");
    assert_eq!(event["token_id"], "t-1");
    assert_eq!(event["headers"]["user-agent"], "curl/8");
    assert_eq!(event["query"]["page"], "2");
    let text = event.to_string();
    assert!(!text.contains(&t) && !text.contains("Bearer") && !text.contains("secret"), "{text}");
}

#[test]
fn the_audit_actor_falls_back_to_role_and_credential() {
    let p = policy(ROLES);
    let no_sub = hs256(
        SECRET,
        H,
        &format!(r#"{{"iss":"https://t.example","aud":"api","roles":["viewer"],"exp":{}}}"#, NOW + 60),
    );
    let r = get("/a").bearer(&no_sub);
    let d = r.on(&p);
    assert!(d.allowed());
    let actor = r.run(|req| p.audit_event(req, &d).actor);
    assert_eq!(actor, "viewer:jwt");
    let r = get("/a");
    let d = r.on(&p);
    assert_eq!(r.run(|req| p.audit_event(req, &d).actor), "anonymous");
}

#[test]
fn explain_reports_the_route_each_requirement_and_the_rules() {
    let p = policy(&format!(
        "{ROLES}routes:\n  - {{id: a, path: /a, roles: [admin], scopes: [orders:read]}}\nrules:\n  - {{id: r, effect: deny, when: {{methods: [PUT]}}}}\n"
    ));
    let (d, x) = get("/a").bearer(&jwt(r#""roles":["viewer"]"#)).run(|req| p.explain(req, &NoRevocations));
    assert_eq!(d.reason, Reason::ForbiddenRole);
    assert_eq!(x.route.as_deref(), Some("a"));
    assert_eq!(x.authentication.as_deref(), Some("allowed"));
    let held: Vec<(String, bool)> = x.requirements.iter().map(|c| (c.requirement.clone(), c.held)).collect();
    assert_eq!(held, [("roles (any of)".to_string(), false), ("scopes (all of)".to_string(), true)]);
    assert_eq!(x.rules.len(), 1);
    assert!(!x.rules[0].matched);
}

#[test]
fn ipv4_mapped_clients_match_ipv4_ranges() {
    use super::client_in;
    let nets = vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()];
    assert!(client_in(Some("10.1.2.3".parse().unwrap()), &nets));
    assert!(client_in(Some("::ffff:10.1.2.3".parse().unwrap()), &nets));
    assert!(!client_in(Some("11.1.2.3".parse().unwrap()), &nets));
    assert!(!client_in(None, &nets), "an unknown client address is outside every range");
}

#[test]
fn decide_for_authorizes_a_given_identity_with_the_same_rules() {
    let p = policy(&format!(
        "{ROLES}routes:\n  - {{id: a, path: /a, roles: [admin]}}\n  - {{id: keys, path: /k, accept: {{api_keys: true}}}}\n"
    ));
    let verified = get("/a").bearer(&jwt(r#""roles":["admin"]"#)).on(&p).identity.unwrap();
    let d = get("/a").run(|r| p.decide_for(r, &verified));
    assert_eq!((d.reason, d.route.as_deref()), (Reason::Allowed, Some("a")));
    let d = get("/k").run(|r| p.decide_for(r, &verified));
    assert_eq!(d.reason, Reason::CredentialNotAccepted, "the route's accept list still applies");
    let viewer = get("/a").bearer(&jwt(r#""roles":["viewer"]"#)).on(&p).identity.unwrap();
    assert_eq!(get("/a").run(|r| p.decide_for(r, &viewer)).reason, Reason::ForbiddenRole);
}
