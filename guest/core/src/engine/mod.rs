//! The policy engine: routes, scopes, roles, tenants and rules, compiled once.
//!
//! A decision walks: limits → path normalisation → route (trie, most specific first; a CORS
//! preflight by the method it asks about) → rules before authentication → CORS preflight → rate
//! limits on the request alone → credential (only what the route accepts) → requirements
//! (tenant, roles, scopes) → rules (indexed by path and route; highest priority wins, deny wins
//! ties; a winning allow overrides the route's requirements) → rate limits on the identity (only
//! for requests that would be allowed) → identity and response headers. Nothing on this path
//! compiles a pattern, walks the whole policy, or allocates beyond the identity, the bucket keys
//! and the headers it returns.

pub(crate) mod audit;
pub(crate) mod edge;
pub(crate) mod explain;
pub(crate) mod matchers;
pub(crate) mod path;
pub(crate) mod roles;

use std::sync::Arc;

use ipnet::IpNet;

use crate::FastSet;
use crate::credential::api_key::OriginPattern;
use crate::credential::{Accept, Credentials};
use crate::decision::{Decision, Shadow};
use crate::identity::{CredentialKind, Identity, Names};
use crate::reason::Reason;
use crate::request::{Limits, Request, client_in};
use crate::revocation::Revocations;
use explain::Trace;
use matchers::{HostPattern, Methods, header_value, request_host};
use path::{PathBuffer, PathPattern, RequestPath, Trie};
use roles::{RoleSet, Roles, grant_covers};

/// What happens to requests no route matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Default {
    /// 403 `no_route`.
    Deny,
    /// Any accepted credential; no requirements.
    Authenticated,
}

/// Where a route reads the tenant a request addresses.
#[derive(Clone, Debug)]
pub(crate) enum TenantSource {
    /// The path segment at this index.
    PathSegment(usize),
    /// A request header.
    Header(Box<str>),
}

/// A route's tenant binding.
#[derive(Clone, Debug)]
pub(crate) struct TenantBinding {
    /// Where the request's tenant comes from.
    pub source: TenantSource,
    /// Roles allowed across tenants.
    pub cross_tenant: RoleSet,
}

/// A compiled route.
#[derive(Debug)]
pub(crate) struct Route {
    /// Id.
    pub id: Arc<str>,
    /// Host, if restricted.
    pub host: Option<HostPattern>,
    /// Methods, if restricted.
    pub methods: Option<Methods>,
    /// The path pattern.
    pub path: PathPattern,
    /// No credential needed.
    pub public: bool,
    /// Accepted credentials.
    pub accept: Accept,
    /// All of these scopes.
    pub scopes: Vec<Box<str>>,
    /// At least one of these sets, in full.
    pub any_scopes: Vec<Vec<Box<str>>>,
    /// Roles that satisfy the route (through the hierarchy); `None` when no role is required.
    pub roles: Option<RoleSet>,
    /// The role names as written (for explanations).
    pub role_names: Vec<Box<str>>,
    /// Tenant binding.
    pub tenant: Option<TenantBinding>,
    /// Dry run.
    pub shadow: bool,
    /// CORS settings (the route's own or the policy's).
    pub cors: Option<Arc<edge::Cors>>,
}

impl Route {
    fn matches(&self, method: Option<u16>, host: &str) -> bool {
        self.methods.is_none_or(|m| m.contains(method)) && self.host.as_ref().is_none_or(|h| h.matches(host))
    }

    /// (host rank, method rank): lower is more specific.
    pub(crate) fn rank(&self) -> (u8, u8) {
        (self.host.as_ref().map_or(2, HostPattern::rank), u8::from(self.methods.is_none()))
    }
}

/// A rule's effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Allow, overriding route requirements.
    Allow,
    /// Deny (`policy_denied`).
    Deny,
}

/// A compiled rule. Each `Some`/non-empty condition must hold.
#[derive(Debug)]
pub(crate) struct Rule {
    /// Id.
    pub id: Arc<str>,
    /// Effect.
    pub effect: Effect,
    /// Priority (higher wins).
    pub priority: i32,
    /// Dry run.
    pub shadow: bool,
    /// Route indices.
    pub routes: Option<Vec<usize>>,
    /// Methods.
    pub methods: Option<Methods>,
    /// Path patterns (the rule is indexed by them; kept for explanations).
    pub paths: Vec<PathPattern>,
    /// Hosts.
    pub hosts: Vec<HostPattern>,
    /// Credential kinds.
    pub credentials: Vec<CredentialKind>,
    /// Subjects.
    pub subjects: Option<FastSet<Box<str>>>,
    /// Tenants.
    pub tenants: Vec<Box<str>>,
    /// Roles that satisfy (through the hierarchy).
    pub roles: Option<RoleSet>,
    /// Scopes, any of which the identity must be granted.
    pub scopes: Vec<Box<str>>,
    /// Client ranges.
    pub client_cidrs: Vec<IpNet>,
    /// Origins.
    pub origins: Vec<OriginPattern>,
    /// Header name → accepted values.
    pub headers: Vec<(Box<str>, Vec<Box<str>>)>,
    /// Client ranges the client must be outside of.
    pub not_client_cidrs: Vec<IpNet>,
    /// Conditions on identity values.
    pub claims: Vec<edge::ClaimMatch>,
    /// Identity values that must not match.
    pub not_claims: Vec<edge::ClaimMatch>,
    /// Decided before any credential is read.
    pub before_auth: bool,
}

/// Upstream header names for one credential kind; `None` turns one off.
#[derive(Debug, Clone, Default)]
pub(crate) struct HeaderNames {
    /// Subject.
    pub subject: Option<Arc<str>>,
    /// E-mail.
    pub email: Option<Arc<str>>,
    /// Roles.
    pub roles: Option<Arc<str>>,
    /// Groups.
    pub groups: Option<Arc<str>>,
    /// Tenant.
    pub tenant: Option<Arc<str>>,
    /// Scopes.
    pub scopes: Option<Arc<str>>,
    /// Credential kind.
    pub credential: Option<Arc<str>>,
    /// Issuer.
    pub issuer: Option<Arc<str>>,
    /// The highest role by the hierarchy.
    pub highest_role: Option<Arc<str>>,
}

/// Upstream identity headers.
#[derive(Debug, Clone)]
pub(crate) struct IdentityHeaders {
    /// Names per credential kind: JWT, service token, API key.
    pub kinds: [HeaderNames; 3],
    /// Every configured name of every kind plus `remove`: stripped from every request.
    pub remove: Names,
}

impl IdentityHeaders {
    fn of(&self, kind: CredentialKind) -> Option<&HeaderNames> {
        self.kinds.get(kind as usize)
    }
}

/// The compiled engine part of a policy.
#[derive(Debug)]
pub(crate) struct Engine {
    /// Routes, in document order.
    pub routes: Vec<Route>,
    /// Route indices by path, each terminal in rank order.
    pub(crate) route_trie: Trie<usize>,
    /// Unmatched requests.
    pub default: Default,
    /// The role hierarchy.
    pub roles: Roles,
    /// Whether `*` grants are honoured.
    pub allow_global_wildcard: bool,
    /// Rules, in document order.
    pub rules: Vec<Rule>,
    /// Rank of each rule: position in (priority desc, deny first, document order).
    pub(crate) rule_rank: Vec<u32>,
    /// Rules with path conditions, by path.
    pub(crate) rule_trie: Trie<usize>,
    /// Rules with a route condition and no path condition, by route.
    pub(crate) rules_by_route: Vec<Vec<usize>>,
    /// Rules with neither.
    pub(crate) global_rules: Vec<usize>,
    /// True when any route or rule is a dry run.
    pub(crate) has_shadow: bool,
    /// True when any rule is a dry run.
    pub(crate) has_shadow_rules: bool,
    /// Upstream identity headers.
    pub headers: IdentityHeaders,
    /// Audit settings.
    pub audit: audit::AuditConfig,
    /// Rules decided before authentication, by rank.
    pub(crate) pre_rules: Vec<usize>,
    /// Rate limits.
    pub(crate) rate: edge::RateLimits,
    /// The policy's response headers, added to every decision.
    pub(crate) response_headers: Vec<edge::Header>,
}

/// Where the identity comes from.
#[derive(Clone, Copy)]
pub(crate) enum Auth<'a> {
    /// Verify the request's credential, consulting these revocations.
    Verify(&'a dyn Revocations),
    /// An identity the caller already verified.
    Given(&'a Arc<Identity>),
}

/// The request facts every stage needs, computed once.
pub(crate) struct Facts<'r> {
    pub req: &'r Request<'r>,
    pub segs: &'r [&'r str],
    pub method: Option<u16>,
    pub host: &'r str,
}

struct Verdict {
    reason: Reason,
    identity: Option<Arc<Identity>>,
    route: Option<usize>,
    rule: Option<usize>,
    /// What the rate limits said (their headers; the limit that refused names the decision).
    rate: edge::RateOutcome,
    /// The headers of an allowed CORS preflight.
    preflight: Option<Vec<edge::Header>>,
    /// Decided before any credential was read (a rule before authentication, a preflight, a
    /// limit on the request alone): no dry run may read it either.
    before_auth: bool,
}

impl Verdict {
    fn new(reason: Reason, identity: Option<Arc<Identity>>, route: Option<usize>, rule: Option<usize>) -> Verdict {
        Verdict { reason, identity, route, rule, rate: edge::RateOutcome::None, preflight: None, before_auth: false }
    }

    fn before_auth(self) -> Verdict {
        Verdict { before_auth: true, ..self }
    }
}

/// A CORS preflight's parts: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
#[derive(Clone, Copy)]
struct PreflightAsk<'r> {
    origin: &'r str,
    method: &'r str,
    headers: Option<&'r str>,
}

impl<'r> PreflightAsk<'r> {
    fn of(req: &Request<'r>) -> Option<PreflightAsk<'r>> {
        if req.method != "OPTIONS" {
            return None;
        }
        Some(PreflightAsk {
            origin: req.header("origin").value()?,
            method: req.header("access-control-request-method").value()?,
            headers: req.header("access-control-request-headers").value(),
        })
    }
}

/// A policy's parts, borrowed for one decision.
pub(crate) struct Decider<'p> {
    pub limits: &'p Limits,
    pub credentials: &'p Credentials,
    pub engine: &'p Engine,
}

impl Decider<'_> {
    /// Decides one request: see the module documentation for the order of stages.
    pub(crate) fn decide(&self, req: &Request<'_>, revocations: &dyn Revocations) -> Decision {
        self.decide_traced(req, Auth::Verify(revocations), &mut explain::NoTrace)
    }

    /// Authorizes a request for an identity the caller has already verified (for example behind
    /// another authenticator): routes, the route's accepted credentials, requirements and rules
    /// apply exactly as in [`Policy::decide`]; no credential in the request is looked at.
    pub(crate) fn decide_for(&self, req: &Request<'_>, identity: &Arc<Identity>) -> Decision {
        self.decide_traced(req, Auth::Given(identity), &mut explain::NoTrace)
    }

    pub(crate) fn decide_traced(&self, req: &Request<'_>, auth: Auth<'_>, t: &mut dyn Trace) -> Decision {
        let e = &self.engine;
        let mut d = match self.limits.check(req) {
            Err(reason) => Decision::deny(reason),
            Ok(()) => {
                let mut buf = PathBuffer::default();
                match RequestPath::parse(req.path, &mut buf) {
                    Err(_) => {
                        t.note("the path is not a normalisable absolute path");
                        Decision::deny(Reason::Malformed)
                    }
                    Ok(path) => {
                        let facts = Facts {
                            req,
                            segs: path.segments(),
                            method: Methods::bit(req.method),
                            host: request_host(req.host),
                        };
                        self.decide_facts(&facts, auth, t)
                    }
                }
            }
        };
        if !e.headers.remove.is_empty() {
            d.headers_to_remove = Some(if d.headers_to_set.is_empty() {
                Arc::clone(&e.headers.remove)
            } else {
                // Never strip what is being set: proxies apply removals after additions (Envoy
                // does), and the set value overwrites any forged one anyway.
                let kept: Vec<Arc<str>> = e
                    .headers
                    .remove
                    .iter()
                    .filter(|r| !d.headers_to_set.iter().any(|(s, _)| s.eq_ignore_ascii_case(r)))
                    .cloned()
                    .collect();
                Names::from(kept)
            });
        }
        if !e.response_headers.is_empty() {
            d.response_headers.extend(e.response_headers.iter().cloned());
        }
        d
    }

    fn decide_facts(&self, f: &Facts<'_>, auth: Auth<'_>, t: &mut dyn Trace) -> Decision {
        let e = &self.engine;
        let find = |method: Option<u16>| {
            e.route_trie
                .first(f.segs, &mut |&i| e.routes.get(i).is_some_and(|r| !r.shadow && r.matches(method, f.host)))
                .copied()
        };
        // A CORS preflight is routed by the method it asks about; it is one only where that
        // route has CORS settings, otherwise it is an ordinary OPTIONS request.
        let ask = PreflightAsk::of(f.req);
        let (route, ask) = match ask.map(|a| (a, find(Methods::bit(a.method)))) {
            Some((a, Some(i))) if e.routes.get(i).is_some_and(|r| r.cors.is_some()) => (Some(i), Some(a)),
            _ => (find(f.method), None),
        };
        t.route(route.and_then(|i| e.routes.get(i)), false);
        let enforced = self.verdict(route, ask, f, auth, false, t);

        let shadow = if e.has_shadow { self.shadow(route, &enforced, f, auth) } else { None };
        let mut d = self.render(enforced, f);
        d.shadow = shadow;
        d
    }

    /// The dry-run verdict, when a shadow route or rule is involved.
    fn shadow(
        &self,
        enforced_route: Option<usize>,
        enforced: &Verdict,
        f: &Facts<'_>,
        auth: Auth<'_>,
    ) -> Option<Box<Shadow>> {
        let e = &self.engine;
        let route =
            e.route_trie.first(f.segs, &mut |&i| e.routes.get(i).is_some_and(|r| r.matches(f.method, f.host))).copied();
        let route_is_shadow = route.is_some_and(|i| e.routes.get(i).is_some_and(|r| r.shadow));
        if !route_is_shadow && !e.has_shadow_rules {
            return None;
        }
        if !route_is_shadow && route == enforced_route && enforced.reason.status() == 401 {
            // Rules never run on an unauthenticated request, shadow or not.
            return None;
        }
        if enforced.before_auth {
            // Decided before the credential was read: a dry run must not read it either.
            return None;
        }
        let v = self.verdict(route, None, f, auth, true, &mut explain::NoTrace);
        let rule_is_shadow = v.rule.is_some_and(|i| e.rules.get(i).is_some_and(|r| r.shadow));
        (route_is_shadow || rule_is_shadow).then(|| {
            Box::new(Shadow {
                reason: v.reason,
                rule: v.rule.and_then(|i| e.rules.get(i)).map(|r| Arc::clone(&r.id)),
                route: v.route.and_then(|i| e.routes.get(i)).map(|r| Arc::clone(&r.id)),
            })
        })
    }

    fn verdict(
        &self,
        route: Option<usize>,
        ask: Option<PreflightAsk<'_>>,
        f: &Facts<'_>,
        auth: Auth<'_>,
        with_shadow: bool,
        t: &mut dyn Trace,
    ) -> Verdict {
        let e = &self.engine;
        let r = route.and_then(|i| e.routes.get(i));
        let deny = |reason, identity| Verdict::new(reason, identity, route, None);
        // Rules on the request alone come first: no credential is read for a blocked request.
        if let Some(i) = self.pre_rule(route, f, with_shadow, t)
            && e.rules.get(i).is_some_and(|r| r.effect == Effect::Deny)
        {
            return Verdict::new(Reason::PolicyDenied, None, route, Some(i)).before_auth();
        }
        let accept = match r {
            Some(r) => &r.accept,
            None if e.default == Default::Deny => return deny(Reason::NoRoute, None),
            None => &Accept::ANY,
        };
        if let (Some(ask), Some(cors)) = (ask, r.and_then(|r| r.cors.as_deref())) {
            let answer = cors.preflight(ask.origin, ask.method, ask.headers);
            let what =
                || format!("origin {}, method {}, headers {}", ask.origin, ask.method, ask.headers.unwrap_or("(none)"));
            t.check("CORS preflight", &what, matches!(answer, edge::Preflight::Allowed(_)));
            return match answer {
                edge::Preflight::Allowed(headers) => {
                    Verdict { preflight: Some(headers), ..Verdict::new(Reason::CorsPreflight, None, route, None) }
                }
                edge::Preflight::Refused => deny(Reason::CorsRejected, None),
            }
            .before_auth();
        }
        // Limits on the request alone are spent before the credential is read, so a flood
        // without credentials is limited too.
        let counting = match auth {
            Auth::Verify(host) if !with_shadow => Some(host),
            _ => None,
        };
        let mut rate = edge::RateOutcome::None;
        if let Some(host) = counting
            && e.rate.any_before
        {
            let input = edge::RateInput { req: f.req, route: route.zip(r).map(|(i, r)| (i, &*r.id)), identity: None };
            rate = e.rate.run(true, &input, &e.roles, host, rate);
            self.trace_rate(rate, t);
            if let Some(v) = Self::rate_refusal(rate, route) {
                return v.before_auth();
            }
        }
        let identity = if r.is_some_and(|r| r.public) {
            None
        } else {
            let result = match auth {
                Auth::Verify(revs) => self.credentials.authenticate(f.req, accept, revs),
                Auth::Given(id) => self.credentials.accepts(accept, id).map(|()| Arc::clone(id)),
            };
            match result {
                Ok(id) => {
                    t.authenticated(Ok(&id));
                    Some(id)
                }
                Err(reason) => {
                    t.authenticated(Err(reason));
                    return Verdict { rate, ..deny(reason, None) };
                }
            }
        };
        let requirements = match r {
            Some(r) => self.requirements(r, identity.as_deref(), f, t),
            None => Ok(()),
        };
        let mut v = match self.winning_rule(route, identity.as_deref(), f, with_shadow, t) {
            Some(i) if e.rules.get(i).is_some_and(|r| r.effect == Effect::Deny) => {
                Verdict::new(Reason::PolicyDenied, identity, route, Some(i))
            }
            Some(i) => Verdict::new(Reason::Allowed, identity, route, Some(i)),
            None => Verdict::new(requirements.err().unwrap_or(Reason::Allowed), identity, route, None),
        };
        v.rate = rate;
        if let Some(host) = counting
            && e.rate.any_after
            && v.reason == Reason::Allowed
        {
            let input = edge::RateInput {
                req: f.req,
                route: route.zip(r).map(|(i, r)| (i, &*r.id)),
                identity: v.identity.as_deref(),
            };
            v.rate = e.rate.run(false, &input, &e.roles, host, v.rate);
            self.trace_rate(v.rate, t);
            if let Some(refused) = Self::rate_refusal(v.rate, route) {
                return Verdict { identity: v.identity, ..refused };
            }
        }
        v
    }

    /// Tells an explanation what the rate limits said.
    fn trace_rate(&self, rate: edge::RateOutcome, t: &mut dyn Trace) {
        let id = |i: usize| self.engine.rate.limits.get(i).map_or("?", |l| &*l.id);
        let (held, what): (bool, &dyn Fn() -> String) = match rate {
            edge::RateOutcome::None => return,
            edge::RateOutcome::Admitted { limit, taken, .. } => {
                (true, &move || format!("tightest `{}`: {} left", id(limit), taken.remaining))
            }
            edge::RateOutcome::Limited { limit, taken, .. } => {
                (false, &move || format!("`{}` is empty for {} ms more", id(limit), taken.retry_after_ns / 1_000_000))
            }
            edge::RateOutcome::Uncounted { limit } => (false, &move || format!("`{}` could not be counted", id(limit))),
        };
        t.check("rate limits", what, held);
    }

    /// The verdict of a refusing rate outcome.
    fn rate_refusal(rate: edge::RateOutcome, route: Option<usize>) -> Option<Verdict> {
        let (reason, limit) = match rate {
            edge::RateOutcome::Limited { limit, .. } => (Reason::RateLimited, limit),
            edge::RateOutcome::Uncounted { limit } => (Reason::LimitsUnavailable, limit),
            _ => return None,
        };
        Some(Verdict { rate, ..Verdict::new(reason, None, route, Some(limit)) })
    }

    /// The winning rule among those decided before authentication.
    fn pre_rule(&self, route: Option<usize>, f: &Facts<'_>, with_shadow: bool, t: &mut dyn Trace) -> Option<usize> {
        let e = &self.engine;
        // `pre_rules` is in rank order: the first that matches wins.
        e.pre_rules.iter().copied().find(|&i| {
            e.rules.get(i).is_some_and(|rule| {
                (with_shadow || !rule.shadow) && {
                    let matched = rule.paths.is_empty() || rule.paths.iter().any(|p| p.matches(f.segs));
                    let matched = matched && self.rule_matches(rule, route, None, f);
                    t.rule(rule, matched);
                    matched
                }
            })
        })
    }

    /// Tenant, then roles, then scopes: the first that fails names the denial.
    fn requirements(&self, r: &Route, id: Option<&Identity>, f: &Facts<'_>, t: &mut dyn Trace) -> Result<(), Reason> {
        let e = &self.engine;
        let Some(id) = id else { return Ok(()) };
        let mut first_failure = None;
        let mut fail = |reason| {
            first_failure.get_or_insert(reason);
        };
        if let Some(b) = &r.tenant {
            let wanted = match &b.source {
                TenantSource::PathSegment(i) => f.segs.get(*i).copied(),
                TenantSource::Header(h) => f.req.header(h).value(),
            };
            let same = matches!((wanted, id.tenant.as_deref()), (Some(w), Some(have)) if w == have);
            let cross = !same && e.roles.any_in(&id.roles, &b.cross_tenant);
            let held = same || cross;
            t.check("tenant", &|| format_tenant(wanted, id.tenant.as_deref(), cross), held);
            if !held {
                fail(Reason::TenantMismatch);
            }
        }
        if let Some(need) = &r.roles {
            let held = e.roles.any_in(&id.roles, need);
            t.check("roles (any of)", &|| r.role_names.join(", "), held);
            if !held {
                fail(Reason::ForbiddenRole);
            }
        }
        let granted = |s: &str| self.engine.granted(id, s);
        if !r.scopes.is_empty() {
            let held = r.scopes.iter().all(|s| granted(s));
            t.check("scopes (all of)", &|| r.scopes.join(" "), held);
            if !held {
                fail(Reason::InsufficientScope);
            }
        }
        if !r.any_scopes.is_empty() {
            let held = r.any_scopes.iter().any(|set| set.iter().all(|s| granted(s)));
            let sets = || r.any_scopes.iter().map(|s| format!("[{}]", s.join(" "))).collect::<Vec<_>>().join(" or ");
            t.check("scopes (any set of)", &sets, held);
            if !held {
                fail(Reason::InsufficientScope);
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// The matching rule of lowest rank (highest priority, deny first), enforced or including
    /// shadow rules. Only rules indexed under this path or route, and global rules, are looked at.
    fn winning_rule(
        &self,
        route: Option<usize>,
        id: Option<&Identity>,
        f: &Facts<'_>,
        with_shadow: bool,
        t: &mut dyn Trace,
    ) -> Option<usize> {
        let e = &self.engine;
        if e.rules.is_empty() {
            return None;
        }
        let mut best: Option<(u32, usize)> = None;
        let mut consider = |i: usize| {
            let (Some(rule), Some(&rank)) = (e.rules.get(i), e.rule_rank.get(i)) else {
                return;
            };
            if (rule.shadow && !with_shadow) || best.is_some_and(|(b, _)| b <= rank) {
                return;
            }
            let matched = self.rule_matches(rule, route, id, f);
            t.rule(rule, matched);
            if matched {
                best = Some((rank, i));
            }
        };
        for &i in &e.global_rules {
            consider(i);
        }
        if let Some(list) = route.and_then(|r| e.rules_by_route.get(r)) {
            for &i in list {
                consider(i);
            }
        }
        e.rule_trie.each(f.segs, &mut |&i| consider(i));
        best.map(|(_, i)| i)
    }

    fn rule_matches(&self, r: &Rule, route: Option<usize>, id: Option<&Identity>, f: &Facts<'_>) -> bool {
        let e = &self.engine;
        if r.methods.is_some_and(|m| !m.contains(f.method)) {
            return false;
        }
        if r.routes.as_ref().is_some_and(|rs| !route.is_some_and(|x| rs.contains(&x))) {
            return false;
        }
        // Rules with paths are only reached through the trie, so their paths already match.
        if !r.hosts.is_empty() && !r.hosts.iter().any(|h| h.matches(f.host)) {
            return false;
        }
        if !r.client_cidrs.is_empty() && !client_in(f.req.client_ip, &r.client_cidrs) {
            return false;
        }
        if !r.not_client_cidrs.is_empty()
            && f.req.client_ip.is_some()
            && client_in(f.req.client_ip, &r.not_client_cidrs)
        {
            return false;
        }
        if !r.origins.is_empty()
            && !f.req.header("origin").value().is_some_and(|o| r.origins.iter().any(|p| p.matches(o)))
        {
            return false;
        }
        for (name, values) in &r.headers {
            if !f.req.header(name).value().is_some_and(|v| values.iter().any(|x| **x == *v)) {
                return false;
            }
        }
        let needs_identity = !r.credentials.is_empty()
            || r.subjects.is_some()
            || !r.tenants.is_empty()
            || r.roles.is_some()
            || !r.scopes.is_empty()
            || !r.claims.is_empty()
            || !r.not_claims.is_empty();
        if !needs_identity {
            return true;
        }
        let Some(id) = id else { return false };
        (r.credentials.is_empty() || r.credentials.contains(&id.credential))
            && r.subjects.as_ref().is_none_or(|s| id.subject.as_deref().is_some_and(|x| s.contains(x)))
            && (r.tenants.is_empty() || id.tenant.as_deref().is_some_and(|x| r.tenants.iter().any(|t| **t == *x)))
            && r.roles.as_ref().is_none_or(|set| e.roles.any_in(&id.roles, set))
            && (r.scopes.is_empty() || r.scopes.iter().any(|s| self.engine.granted(id, s)))
            && r.claims.iter().all(|c| c.holds(id))
            && !r.not_claims.iter().any(|c| c.holds(id))
    }

    /// Turns a verdict into the decision: identity headers on allow, response headers always.
    fn render(&self, v: Verdict, f: &Facts<'_>) -> Decision {
        let e = &self.engine;
        let mut d = Decision::deny(v.reason);
        let route = v.route.and_then(|i| e.routes.get(i));
        d.route = route.map(|r| Arc::clone(&r.id));
        d.rule = match v.reason {
            Reason::RateLimited | Reason::LimitsUnavailable => {
                v.rule.and_then(|i| e.rate.limits.get(i)).map(|l| Arc::clone(&l.id))
            }
            _ => v.rule.and_then(|i| e.rules.get(i)).map(|r| Arc::clone(&r.id)),
        };
        if let Some(id) = &v.identity
            && v.reason == Reason::Allowed
        {
            d.headers_to_set = self.identity_headers(id);
        }
        d.identity = v.identity;
        if !matches!(v.rate, edge::RateOutcome::None) || !e.response_headers.is_empty() {
            // CORS (up to 4), rate limits (up to 6) and the policy's, in one allocation.
            d.response_headers.reserve(10 + e.response_headers.len());
        }
        match v.preflight {
            Some(h) => d.response_headers = h,
            None => {
                if let Some(cors) = route.and_then(|r| r.cors.as_deref())
                    && v.reason != Reason::CorsRejected
                    && let Some(origin) = f.req.header("origin").value()
                {
                    cors.actual(origin, &mut d.response_headers);
                }
                e.rate.headers(v.rate, &mut d.response_headers);
            }
        }
        d
    }

    fn identity_headers(&self, id: &Identity) -> Vec<(Arc<str>, String)> {
        let Some(h) = self.engine.headers.of(id.credential) else { return Vec::new() };
        let mut out = Vec::with_capacity(6);
        let mut one = |name: &Option<Arc<str>>, value: Option<&str>| {
            if let (Some(n), Some(v)) = (name, value) {
                out.push((Arc::clone(n), header_value(v, false).into_owned()));
            }
        };
        one(&h.subject, id.subject.as_deref());
        one(&h.email, id.email.as_deref());
        one(&h.tenant, id.tenant.as_deref());
        one(&h.issuer, id.issuer.as_deref());
        one(&h.credential, Some(id.credential.name()));
        if h.highest_role.is_some() {
            one(&h.highest_role, self.engine.roles.highest(&id.roles).map(|r| &**r));
        }
        let list = |items: &mut dyn Iterator<Item = &str>| {
            let mut s = String::new();
            for (i, item) in items.enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&header_value(item, true));
            }
            s
        };
        if let Some(n) = &h.roles
            && !id.roles.is_empty()
        {
            let expanded = self.engine.roles.expand(&id.roles);
            out.push((Arc::clone(n), list(&mut expanded.iter().map(|r| &**r))));
        }
        if let Some(n) = &h.groups
            && !id.groups.is_empty()
        {
            out.push((Arc::clone(n), list(&mut id.groups.iter().map(|g| &**g))));
        }
        if let Some(n) = &h.scopes {
            // Scope tokens cannot contain spaces, so OAuth's space separator is unambiguous.
            let mut s = String::new();
            let mut seen: Vec<&str> = Vec::new();
            for g in id.scopes.iter().chain(self.engine.roles.granted_scopes(&id.roles)) {
                if !seen.contains(&&**g) {
                    if !s.is_empty() {
                        s.push(' ');
                    }
                    s.push_str(g);
                    seen.push(g);
                }
            }
            if !s.is_empty() {
                out.push((Arc::clone(n), s));
            }
        }
        out
    }
}

impl Engine {
    /// Whether the identity is granted `scope`, directly or through its roles, by the same rule
    /// routes apply. Hosts ask this for scopes of their own (the sidecar's admin API) instead of
    /// matching the identity's scopes themselves, which would miss role grants.
    pub(crate) fn grants(&self, id: &Identity, scope: &str) -> bool {
        self.granted(id, scope)
    }

    /// Whether the identity (directly or through its roles) is granted `scope`.
    pub(crate) fn granted(&self, id: &Identity, scope: &str) -> bool {
        let star = self.allow_global_wildcard;
        id.scopes.iter().any(|g| grant_covers(g, scope, star))
            || self.roles.granted_scopes(&id.roles).any(|g| grant_covers(g, scope, star))
    }
}

fn format_tenant(wanted: Option<&str>, have: Option<&str>, cross: bool) -> String {
    let mut s = format!("request tenant {}, identity tenant {}", wanted.unwrap_or("(none)"), have.unwrap_or("(none)"));
    if cross {
        s.push_str(", cross-tenant role");
    }
    s
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod properties;
#[cfg(test)]
mod tests;
