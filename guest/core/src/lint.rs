//! `policy lint`: everything the loader refuses, plus what it accepts but an operator should look at.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

use crate::credential::KeyAccept;
use crate::engine::matchers::Methods;
use crate::engine::path::Segment;
use crate::engine::{Effect, Route, Rule};
use crate::policy::doc::PolicyDocument;
use crate::policy::{FileSource, Policy, PolicyError, document_from_value, parse_text};
use crate::revocation::{RevocationQuery, RevocationStatus, Revocations};

/// How serious a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The policy does not load, or (with `--production`) must not ship.
    Error,
    /// It loads, but look at it.
    Warning,
}

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// A stable code (`leeway_too_long`, `shadowed_rule`, ...).
    pub code: &'static str,
    /// Where in the document, e.g. `routes[3].scopes`.
    pub path: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        if self.path.is_empty() {
            return write!(f, "{sev}[{}]: {}", self.code, self.message);
        }
        write!(f, "{sev}[{}]: {}: {}", self.code, self.path, self.message)
    }
}

struct Out {
    findings: Vec<Finding>,
    production: bool,
}

impl Out {
    fn warn(&mut self, code: &'static str, path: impl Into<String>, message: impl Into<String>) {
        self.findings.push(Finding { severity: Severity::Warning, code, path: path.into(), message: message.into() });
    }
    /// A warning that `--production` makes an error.
    fn strict(&mut self, code: &'static str, path: impl Into<String>, message: impl Into<String>) {
        let severity = if self.production { Severity::Error } else { Severity::Warning };
        self.findings.push(Finding { severity, code, path: path.into(), message: message.into() });
    }
}

fn from_error(e: &PolicyError) -> Finding {
    let path = match e {
        PolicyError::Invalid { path, .. } | PolicyError::File { path, .. } => path.clone(),
        // The message says the line and column; a path into a document that did not parse
        // would say nothing.
        PolicyError::Syntax(_) => String::new(),
    };
    let message = match e {
        PolicyError::Invalid { message, .. } => message.clone(),
        PolicyError::File { file, message, .. } => format!("`{file}`: {message}"),
        PolicyError::Syntax(m) => m.clone(),
    };
    Finding { severity: Severity::Error, code: e.code(), path, message }
}

/// Lints policy text. Errors first, then warnings, each in document order.
pub fn lint(text: &str, files: &dyn FileSource, production: bool) -> Vec<Finding> {
    let mut out = Out { findings: Vec::new(), production };
    let doc = match parse_text(text).and_then(document_from_value) {
        Ok(d) => d,
        Err(e) => return vec![from_error(&e)],
    };
    document_checks(&doc, &mut out);
    match Policy::compile(&doc, files) {
        Ok(policy) => compiled_checks(&doc, &policy, &mut out),
        Err(e) => out.findings.push(from_error(&e)),
    }
    out.findings.sort_by_key(|f| f.severity);
    out.findings
}

fn document_checks(doc: &PolicyDocument, out: &mut Out) {
    for (i, iss) in doc.issuers.iter().enumerate() {
        let p = format!("issuers[{i}]");
        if iss.leeway_seconds > 300 {
            out.warn(
                "leeway_too_long",
                format!("{p}.leeway_seconds"),
                format!(
                    "{} seconds of leeway is more than 5 minutes; expired tokens stay usable that long",
                    iss.leeway_seconds
                ),
            );
        }
        if iss.max_lifetime_seconds.is_none() {
            out.warn("missing_max_lifetime", &p, "no max_lifetime_seconds: a token with a far-future exp is accepted");
        }
        if iss.insecure_skip_audience {
            out.strict(
                "insecure_switch",
                format!("{p}.insecure_skip_audience"),
                "audience checks are off: tokens minted for any other service are accepted here",
            );
        }
        if let Some(jwks) = &iss.jwks {
            let has_secret = jwks
                .get("keys")
                .and_then(|k| k.as_array())
                .is_some_and(|keys| keys.iter().any(|k| k.get("kty").and_then(|t| t.as_str()) == Some("oct")));
            if has_secret {
                out.strict(
                    "inline_secret",
                    format!("{p}.jwks"),
                    "HMAC keys are inline in the policy; move them to a jwks_file",
                );
            }
        }
    }
    if let Some(s) = &doc.service_tokens {
        if s.leeway_seconds > 300 {
            out.warn(
                "leeway_too_long",
                "service_tokens.leeway_seconds",
                format!("{} seconds of leeway is more than 5 minutes", s.leeway_seconds),
            );
        }
        for (i, k) in s.keys.iter().enumerate() {
            if k.secret.is_some() {
                out.strict(
                    "inline_secret",
                    format!("service_tokens.keys[{i}].secret"),
                    "the secret is inline in the policy; use secret_file",
                );
            }
        }
        if s.denied_scopes.is_empty() {
            out.warn(
                "service_token_wildcards",
                "service_tokens.denied_scopes",
                "service tokens may carry any grant, wildcards such as `admin:*` included; list what they must never hold",
            );
        }
        if doc.allow_global_scope_wildcard && !s.denied_scopes.iter().any(|d| d == "*") {
            out.warn(
                "service_token_wildcards",
                "allow_global_scope_wildcard",
                "`*` grants are honoured and service tokens may carry one: such a token holds every scope",
            );
        }
    }
    if let Some(a) = &doc.api_keys {
        for (i, k) in a.keys.iter().enumerate() {
            for (j, s) in k.scopes.iter().enumerate() {
                if s.ends_with('*') {
                    out.warn(
                        "wildcard_grant",
                        format!("api_keys.keys[{i}].scopes[{j}]"),
                        format!("the key `{}` is granted `{s}`, every matching scope, present and future", k.id),
                    );
                }
            }
        }
    }
    for (name, r) in &doc.roles {
        for (j, s) in r.scopes.iter().enumerate() {
            if s == "*" {
                out.warn("wildcard_grant", format!("roles.{name}.scopes[{j}]"), "the role grants `*`; it only counts when allow_global_scope_wildcard is set, and then it is every scope");
            }
        }
    }
    if doc.routes.is_none() {
        out.warn("no_routes", "routes", "no routes: every authenticated request is allowed on every path");
    }
    if let Some(routes) = &doc.routes {
        for (i, r) in routes.iter().enumerate() {
            if r.public
                && r.path.ends_with("/**")
                && r.host.is_none()
                && r.methods.is_empty()
                && r.path.matches('/').count() == 1
            {
                out.warn("public_catch_all", format!("routes[{i}]"), format!("public route `{}` matches every path no other route claims: nothing is denied for lack of a credential", r.id));
            }
        }
    }
}

fn compiled_checks(doc: &PolicyDocument, policy: &Policy, out: &mut Out) {
    let e = policy.engine();
    for (i, (iss, d)) in policy.credentials.issuers.iter().zip(&doc.issuers).enumerate() {
        let field = if d.jwks_file.is_some() { "jwks_file" } else { "jwks" };
        for (k, why) in iss.keys.skipped() {
            out.warn("unusable_key", format!("issuers[{i}].{field}"), format!("keys[{k}]: {why}; the key is ignored"));
        }
    }
    // Roles nothing refers to.
    let mut used: BTreeSet<&str> = BTreeSet::new();
    for r in doc.roles.values() {
        used.extend(r.inherits.iter().map(String::as_str));
    }
    for iss in &doc.issuers {
        used.extend(iss.group_roles.values().flatten().map(String::as_str));
    }
    if let Some(a) = &policy.credentials.api_keys {
        used.extend(a.entries().iter().flat_map(|k| k.identity.roles.iter().map(|r| &**r)));
    }
    for r in doc.routes.iter().flatten() {
        used.extend(r.roles.iter().map(String::as_str));
        if let Some(t) = &r.tenant {
            used.extend(t.cross_tenant_roles.iter().map(String::as_str));
        }
    }
    for r in &doc.rules {
        used.extend(r.when.roles.iter().map(String::as_str));
    }
    let inherited_by_something: BTreeSet<&str> =
        doc.roles.values().flat_map(|r| r.inherits.iter().map(String::as_str)).collect();
    for name in doc.roles.keys() {
        if !used.contains(name.as_str()) && !inherited_by_something.contains(name.as_str()) {
            out.warn(
                "unused_role",
                format!("roles.{name}"),
                "no route, rule, group mapping, API key or other role refers to this role; JWTs may still carry it",
            );
        }
    }

    for (i, r) in e.routes.iter().enumerate() {
        if unreachable(r, &e.routes) {
            out.warn(
                "unreachable_route",
                format!("routes[{i}]"),
                format!(
                    "route `{}`: more specific routes with the same path and host take every standard method",
                    r.id
                ),
            );
        }
        if let KeyAccept::Ids(ids) = &r.accept.api_keys
            && !ids.is_empty()
            && r.accept.issuers.as_ref().is_some_and(Vec::is_empty)
            && r.accept.service_audiences.as_ref().is_some_and(Vec::is_empty)
            && ids
                .iter()
                .all(|id| policy.credentials.statics.status(RevocationQuery::ApiKey(id)) == RevocationStatus::Revoked)
        {
            out.warn(
                "unreachable_route",
                format!("routes[{i}].accept.api_keys"),
                format!("route `{}` accepts only revoked keys", r.id),
            );
        }
        if !r.shadow
            && let Some(d) = always_denied_by(i, r, e)
        {
            out.warn(
                "route_always_denied",
                format!("routes[{i}]"),
                format!("route `{}` can never allow: rule `{}` denies every request it matches", r.id, d.id),
            );
        }
    }
    // A limit keyed by the identity that only applies on public routes never counts anything.
    for (i, l) in e.rate.limits.iter().enumerate() {
        let on_public_only = l
            .routes
            .as_ref()
            .is_some_and(|rs| !rs.is_empty() && rs.iter().all(|&r| e.routes.get(r).is_some_and(|route| route.public)));
        if on_public_only && !l.before_auth {
            out.warn(
                "rate_limit_never_applies",
                format!("rate_limits.limits[{i}]"),
                format!(
                    "limit `{}` is keyed by the identity but applies only to public routes, which have none: it never counts",
                    l.id
                ),
            );
        }
    }
    for (i, b) in e.rules.iter().enumerate() {
        let rank_b = e.rule_rank.get(i).copied().unwrap_or(u32::MAX);
        for (j, a) in e.rules.iter().enumerate() {
            let rank_a = e.rule_rank.get(j).copied().unwrap_or(u32::MAX);
            if i != j && rank_a < rank_b && !a.shadow && at_least_as_general(a, b) {
                let how = if a.effect == b.effect { "is redundant: rule" } else { "never applies: rule" };
                out.warn(
                    "shadowed_rule",
                    format!("rules[{i}]"),
                    format!("rule `{}` {how} `{}` (higher rank) matches everything it does", b.id, a.id),
                );
                break;
            }
        }
    }
}

/// An any-method route whose same-path, same-host, explicit-method siblings cover every
/// standard method.
fn unreachable(r: &Route, all: &[Route]) -> bool {
    if r.methods.is_some() {
        return false;
    }
    let shape = |x: &Route| {
        x.path
            .segments()
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => Some(l.to_string()),
                Segment::Param(_) => None,
                Segment::Rest => Some("**".into()),
            })
            .collect::<Vec<_>>()
    };
    let mine = shape(r);
    let every = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];
    every.iter().all(|m| {
        all.iter().any(|a| {
            !a.shadow && a.host == r.host && a.methods.is_some_and(|s| s.contains(Methods::bit(m))) && shape(a) == mine
        })
    })
}

/// An enforced deny rule that matches every request of route `i` unconditionally, with no allow
/// rule able to outrank it.
fn always_denied_by<'e>(i: usize, r: &Route, e: &'e crate::engine::Engine) -> Option<&'e Rule> {
    let unconditional = |x: &Rule| {
        x.hosts.is_empty()
            && x.credentials.is_empty()
            && x.subjects.is_none()
            && x.tenants.is_empty()
            && x.roles.is_none()
            && x.scopes.is_empty()
            && x.client_cidrs.is_empty()
            && x.not_client_cidrs.is_empty()
            && x.claims.is_empty()
            && x.not_claims.is_empty()
            && x.origins.is_empty()
            && x.headers.is_empty()
            && x.methods.is_none_or(|m| r.methods.is_some_and(|rm| covers(m, rm)))
            && x.routes.as_ref().is_none_or(|rs| rs.contains(&i))
            && (x.paths.is_empty() || x.paths.iter().any(|p| r.path.is_subsumed_by(p)))
    };
    let (k, deny) =
        e.rules.iter().enumerate().find(|(_, x)| !x.shadow && x.effect == Effect::Deny && unconditional(x))?;
    let deny_rank = e.rule_rank.get(k).copied().unwrap_or(u32::MAX);
    let outranked = e.rules.iter().enumerate().any(|(j, x)| {
        !x.shadow && x.effect == Effect::Allow && e.rule_rank.get(j).copied().unwrap_or(u32::MAX) < deny_rank
    });
    (!outranked).then_some(deny)
}

fn covers(outer: Methods, inner: Methods) -> bool {
    ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
        .iter()
        .all(|m| !inner.contains(Methods::bit(m)) || outer.contains(Methods::bit(m)))
}

/// Whenever `b` matches, `a` matches too: every condition `a` has is one `b` has, no wider.
fn at_least_as_general(a: &Rule, b: &Rule) -> bool {
    fn sub<T: PartialEq>(a: &[T], b: &[T]) -> bool {
        a.is_empty() || (!b.is_empty() && b.iter().all(|x| a.contains(x)))
    }
    let methods = match (a.methods, b.methods) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(ma), Some(mb)) => covers(ma, mb),
    };
    let routes = match (&a.routes, &b.routes) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(ra), Some(rb)) => rb.iter().all(|x| ra.contains(x)),
    };
    let paths = a.paths.is_empty()
        || (!b.paths.is_empty() && b.paths.iter().all(|pb| a.paths.iter().any(|pa| pb.is_subsumed_by(pa))));
    let subjects = match (&a.subjects, &b.subjects) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(sa), Some(sb)) => sb.iter().all(|x| sa.contains(x)),
    };
    let roles = match (&a.roles, &b.roles) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(ra), Some(rb)) => ra == rb,
    };
    methods
        && routes
        && paths
        && subjects
        && roles
        && sub(&a.hosts, &b.hosts)
        && sub(&a.credentials, &b.credentials)
        && sub(&a.tenants, &b.tenants)
        && sub(&a.scopes, &b.scopes)
        && sub(&a.client_cidrs, &b.client_cidrs)
        && sub(&a.origins, &b.origins)
        && sub(&a.headers, &b.headers)
        && sub(&a.not_client_cidrs, &b.not_client_cidrs)
        // Claim conditions are not compared: a rule with any is never called more general.
        && a.claims.is_empty()
        && a.not_claims.is_empty()
        // Rules decided before authentication and after it are ranked apart.
        && a.before_auth == b.before_auth
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NoFiles;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const BASE: &str = "version: 1
issuers:
  - issuer: https://t.example
    audiences: [api]
    algorithms: [RS256]
    jwks: {keys: [{kty: OKP, crv: Ed25519, kid: e, x: 11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo}]}
    max_lifetime_seconds: 3600
";

    fn codes(extra: &str, production: bool) -> Vec<(Severity, &'static str, String)> {
        let text = format!("{}{extra}", BASE.replace("[RS256]", "[EdDSA]"));
        lint(&text, &NoFiles, production).into_iter().map(|f| (f.severity, f.code, f.path)).collect()
    }

    fn has(found: &[(Severity, &'static str, String)], code: &str, path: &str) -> bool {
        found.iter().any(|(_, c, p)| *c == code && p == path)
    }

    #[test]
    fn an_identity_limit_on_public_routes_only_is_reported() {
        let routes = "routes:\n  - {id: a, path: /a, public: true}\n  - {id: b, path: /b}\n";
        let f =
            codes(&format!("{routes}rate_limits:\n  limits:\n    - {{id: l, key: [subject], routes: [a]}}\n"), false);
        assert!(has(&f, "rate_limit_never_applies", "rate_limits.limits[0]"), "{f:?}");
        for ok in ["{id: l, key: [client], routes: [a]}", "{id: l, key: [subject], routes: [a, b]}"] {
            let f = codes(&format!("{routes}rate_limits:\n  limits:\n    - {ok}\n"), false);
            assert!(!f.iter().any(|(_, c, _)| *c == "rate_limit_never_applies"), "{ok}: {f:?}");
        }
    }

    #[test]
    fn a_clean_policy_has_no_findings() {
        assert_eq!(codes("routes:\n  - {id: a, path: /a}\n", false), vec![]);
    }

    #[test]
    fn load_errors_are_errors_with_their_path() {
        let f = codes("routes:\n  - {id: a, path: /a, roles: [ghost]}\n", false);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].0, f[0].1, f[0].2.as_str()), (Severity::Error, "policy_invalid", "routes[0].roles[0]"));
        let f = codes("routes:\n  - {id: a, path: /a}\n  - {id: b, path: /a}\n", false);
        assert!(f.iter().any(|(s, _, p)| *s == Severity::Error && p == "routes[1]"), "{f:?}");
    }

    #[test]
    fn issuer_hygiene_is_reported() {
        let text = BASE
            .replace("[RS256]", "[EdDSA]")
            .replace("    max_lifetime_seconds: 3600\n", "    leeway_seconds: 600\n    insecure_skip_audience: true\n");
        let f: Vec<_> = lint(&format!("{text}routes: []\n"), &NoFiles, false)
            .into_iter()
            .map(|f| (f.severity, f.code, f.path))
            .collect();
        assert!(has(&f, "leeway_too_long", "issuers[0].leeway_seconds"), "{f:?}");
        assert!(has(&f, "missing_max_lifetime", "issuers[0]"), "{f:?}");
        assert!(f.iter().any(|(s, c, _)| *s == Severity::Warning && *c == "insecure_switch"), "{f:?}");
        let f: Vec<_> =
            lint(&format!("{text}routes: []\n"), &NoFiles, true).into_iter().map(|f| (f.severity, f.code)).collect();
        assert!(f.contains(&(Severity::Error, "insecure_switch")), "--production makes it an error: {f:?}");
    }

    #[test]
    fn inline_secrets_are_errors_in_production() {
        let svc = "service_tokens:\n  prefix: svc\n  keys: [{id: a, secret: 0123456789abcdef0123456789abcdef}]\n  audiences: [x]\n  denied_scopes: [\"admin:*\"]\nroutes: []\n";
        assert!(
            codes(svc, false).iter().any(|(s, c, p)| *s == Severity::Warning
                && *c == "inline_secret"
                && p == "service_tokens.keys[0].secret")
        );
        assert!(codes(svc, true).iter().any(|(s, c, _)| *s == Severity::Error && *c == "inline_secret"));
        assert!(!codes(svc, false).iter().any(|(_, c, _)| *c == "service_token_wildcards"));
        let open = svc.replace("  denied_scopes: [\"admin:*\"]\n", "");
        assert!(has(&codes(&open, false), "service_token_wildcards", "service_tokens.denied_scopes"));
    }

    #[test]
    fn missing_routes_and_public_catch_alls_are_reported() {
        assert!(has(&codes("", false), "no_routes", "routes"));
        assert!(has(
            &codes("routes:\n  - {id: all, path: /**, public: true}\n", false),
            "public_catch_all",
            "routes[0]"
        ));
        assert!(
            !codes("routes:\n  - {id: s, path: /static/**, public: true}\n", false)
                .iter()
                .any(|(_, c, _)| *c == "public_catch_all")
        );
    }

    #[test]
    fn shadowed_rules_are_reported() {
        let f = codes(
            "routes: []\nrules:\n  - {id: wide, effect: deny, priority: 10, when: {methods: [DELETE]}}\n  - {id: narrow, effect: allow, priority: 1, when: {methods: [DELETE], paths: [/x]}}\n",
            false,
        );
        assert!(has(&f, "shadowed_rule", "rules[1]"), "{f:?}");
        let f = codes(
            "routes: []\nrules:\n  - {id: wide, effect: deny, priority: 1, when: {methods: [DELETE]}}\n  - {id: narrow, effect: allow, priority: 10, when: {methods: [DELETE], paths: [/x]}}\n",
            false,
        );
        assert!(
            !f.iter().any(|(_, c, _)| *c == "shadowed_rule"),
            "a higher-priority narrow rule is not shadowed: {f:?}"
        );
    }

    #[test]
    fn routes_a_rule_always_denies_are_reported() {
        let f = codes(
            "routes:\n  - {id: a, path: /a/**}\nrules:\n  - {id: freeze, effect: deny, when: {paths: [/**]}}\n",
            false,
        );
        assert!(has(&f, "route_always_denied", "routes[0]"), "{f:?}");
        let f = codes(
            "routes:\n  - {id: a, path: /a/**}\nrules:\n  - {id: freeze, effect: deny, when: {paths: [/**], client_cidrs: [10.0.0.0/8]}}\n",
            false,
        );
        assert!(!f.iter().any(|(_, c, _)| *c == "route_always_denied"), "{f:?}");
        let f = codes(
            "routes:\n  - {id: a, path: /a/**, public: true}\nrules:\n  - {id: office, effect: deny, before_authentication: true, when: {routes: [a], not_client_cidrs: [10.0.0.0/8]}}\n",
            false,
        );
        assert!(!f.iter().any(|(_, c, _)| *c == "route_always_denied"), "a range rule is conditional: {f:?}");
    }

    #[test]
    fn a_route_every_method_of_which_is_taken_is_unreachable() {
        let methods = "[GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH]";
        let f = codes(
            &format!("routes:\n  - {{id: any, path: /a}}\n  - {{id: all, path: /a, methods: {methods}}}\n"),
            false,
        );
        assert!(has(&f, "unreachable_route", "routes[0]"), "{f:?}");
        let f = codes("routes:\n  - {id: any, path: /a}\n  - {id: get, path: /a, methods: [GET]}\n", false);
        assert!(!f.iter().any(|(_, c, _)| *c == "unreachable_route"), "{f:?}");
    }

    #[test]
    fn unused_roles_and_wildcard_grants_are_reported() {
        let f = codes(
            "roles:\n  lonely: {}\n  boss: {scopes: [\"*\"]}\nroutes:\n  - {id: a, path: /a, roles: [boss]}\n",
            false,
        );
        assert!(has(&f, "unused_role", "roles.lonely"), "{f:?}");
        assert!(!has(&f, "unused_role", "roles.boss"));
        assert!(has(&f, "wildcard_grant", "roles.boss.scopes[0]"), "{f:?}");
    }
}
