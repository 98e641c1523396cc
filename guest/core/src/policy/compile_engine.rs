//! Compiles routes, roles, rules, identity headers and audit settings.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use super::doc::{
    AcceptDoc, ApiKeyAcceptDoc, CorsDoc, DefaultAction, Effect as EffectDoc, IdentityHeadersDoc, KindHeadersDoc,
    PolicyDocument, RouteDoc, RuleDoc,
};
use super::{PolicyError, compile, compile_edge};
use crate::FastSet;
use crate::credential::api_key::{ApiKeyPolicy, OriginPattern};
use crate::credential::jwt::IssuerPolicy;
use crate::credential::service_token::ServiceTokenPolicy;
use crate::credential::{Accept, KeyAccept};
use crate::engine::audit::AuditConfig;
use crate::engine::matchers::{HostPattern, Methods};
use crate::engine::path::{PathPattern, Segment, Trie};
use crate::engine::roles::{RoleDef, RoleSet, Roles};
use crate::engine::{Default, Effect, Engine, HeaderNames, IdentityHeaders, Route, Rule, TenantBinding, TenantSource};
use crate::identity::{CredentialKind, Names};
use crate::types::{Scope, ScopePattern};

type Result<T> = std::result::Result<T, PolicyError>;

fn invalid<T>(path: impl Into<String>, message: impl std::fmt::Display) -> Result<T> {
    Err(PolicyError::invalid(path, message))
}

fn parse<T: FromStr<Err: std::fmt::Display>>(path: &str, s: &str) -> Result<T> {
    s.parse().map_err(|e| PolicyError::invalid(path, e))
}

/// What the credential sections define, for cross-references.
pub(super) struct Credentials<'a> {
    pub issuers: &'a [IssuerPolicy],
    pub service: Option<&'a ServiceTokenPolicy>,
    pub api_keys: Option<&'a ApiKeyPolicy>,
}

pub(super) fn engine(doc: &PolicyDocument, creds: &Credentials<'_>) -> Result<Engine> {
    let roles = roles(doc, creds)?;
    let policy_cors = doc.cors.as_ref();
    let routes = match &doc.routes {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, r)| route(&format!("routes[{i}]"), r, &roles, creds, policy_cors))
            .collect::<Result<Vec<_>>>()?,
        None => Vec::new(),
    };
    let mut ids = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        if let Some(j) = ids.insert(Arc::clone(&r.id), i) {
            return invalid(format!("routes[{i}].id"), format!("route id `{}` is also used by routes[{j}]", r.id));
        }
    }
    check_ties(&routes)?;
    let mut order: Vec<usize> = (0..routes.len()).collect();
    order.sort_by_key(|&i| routes.get(i).map(Route::rank));
    let mut route_trie = Trie::default();
    for i in order {
        if let Some(r) = routes.get(i) {
            route_trie.insert(&r.path, i);
        }
    }

    let rules = doc
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(&format!("rules[{i}]"), r, &roles, &ids))
        .collect::<Result<Vec<_>>>()?;
    let mut rule_ids = HashMap::new();
    for (i, r) in rules.iter().enumerate() {
        if let Some(j) = rule_ids.insert(Arc::clone(&r.id), i) {
            return invalid(format!("rules[{i}].id"), format!("rule id `{}` is also used by rules[{j}]", r.id));
        }
    }
    let mut by_rank: Vec<usize> = (0..rules.len()).collect();
    by_rank.sort_by_key(|&i| rules.get(i).map(|r| (std::cmp::Reverse(r.priority), r.effect != Effect::Deny, i)));
    let mut rule_rank = vec![0u32; rules.len()];
    for (rank, &i) in by_rank.iter().enumerate() {
        if let Some(slot) = rule_rank.get_mut(i) {
            *slot = u32::try_from(rank).unwrap_or(u32::MAX);
        }
    }
    let mut rule_trie = Trie::default();
    let mut rules_by_route = vec![Vec::new(); routes.len()];
    let mut global_rules = Vec::new();
    let pre_rules: Vec<usize> =
        by_rank.iter().copied().filter(|&i| rules.get(i).is_some_and(|r| r.before_auth)).collect();
    for (i, r) in rules.iter().enumerate() {
        if r.before_auth {
            continue;
        }
        if !r.paths.is_empty() {
            for p in &r.paths {
                rule_trie.insert(p, i);
            }
        } else if let Some(rs) = &r.routes {
            for &route in rs {
                if let Some(list) = rules_by_route.get_mut(route) {
                    list.push(i);
                }
            }
        } else {
            global_rules.push(i);
        }
    }

    let default = match (doc.default, &doc.routes) {
        (Some(DefaultAction::Deny), _) | (None, Some(_)) => Default::Deny,
        (Some(DefaultAction::Authenticated), _) | (None, None) => Default::Authenticated,
    };
    let has_shadow_rules = rules.iter().any(|r| r.shadow);
    let has_shadow = has_shadow_rules || routes.iter().any(|r| r.shadow);
    let api_header = creds.api_keys.map(|a| a.header.as_str());
    let rate = compile_edge::rate_limits(&doc.rate_limits, &ids, &roles)?;
    Ok(Engine {
        routes,
        route_trie,
        default,
        roles,
        allow_global_wildcard: doc.allow_global_scope_wildcard,
        rules,
        rule_rank,
        rule_trie,
        rules_by_route,
        global_rules,
        has_shadow,
        has_shadow_rules,
        headers: identity_headers(doc)?,
        audit: AuditConfig::new(&doc.audit.headers, &doc.audit.query_keys, api_header),
        pre_rules,
        rate,
        response_headers: compile_edge::response_headers(&doc.response_headers)?,
    })
}

fn roles(doc: &PolicyDocument, creds: &Credentials<'_>) -> Result<Roles> {
    for (name, r) in &doc.roles {
        compile::role_name(&format!("roles.{name}"), name)?;
        for (i, s) in r.scopes.iter().enumerate() {
            parse::<ScopePattern>(&format!("roles.{name}.scopes[{i}]"), s)?;
        }
    }
    let defs: Vec<RoleDef<'_>> =
        doc.roles.iter().map(|(n, r)| (n.as_str(), r.inherits.as_slice(), r.scopes.as_slice())).collect();
    let roles = Roles::build(&defs).map_err(|(name, m)| PolicyError::invalid(format!("roles.{name}"), m))?;
    // Once a hierarchy exists, every role name a credential can carry must be part of it.
    if !roles.is_empty() {
        for (i, iss) in creds.issuers.iter().enumerate() {
            for (group, mapped) in &iss.group_roles {
                for r in mapped {
                    if roles.index(r).is_none() {
                        return invalid(format!("issuers[{i}].group_roles.{group}"), format!("unknown role `{r}`"));
                    }
                }
            }
        }
        if let Some(api) = creds.api_keys {
            for e in api.entries() {
                for r in e.identity.roles.iter() {
                    if roles.index(r).is_none() {
                        return invalid(format!("api_keys (key `{}`).roles", e.id), format!("unknown role `{r}`"));
                    }
                }
            }
        }
    }
    Ok(roles)
}

pub(super) fn role_set(path: &str, names: &[String], roles: &Roles) -> Result<RoleSet> {
    let mut idx = Vec::with_capacity(names.len());
    for (i, n) in names.iter().enumerate() {
        match roles.index(n) {
            Some(x) => idx.push(x),
            None => {
                return invalid(format!("{path}[{i}]"), format!("unknown role `{n}` (define it under `roles`)"));
            }
        }
    }
    Ok(roles.satisfying(&idx))
}

fn scopes(path: &str, list: &[String]) -> Result<Vec<Box<str>>> {
    list.iter()
        .enumerate()
        .map(|(i, s)| parse::<Scope>(&format!("{path}[{i}]"), s).map(|_| Box::from(s.as_str())))
        .collect()
}

fn route(
    path: &str,
    d: &RouteDoc,
    roles: &Roles,
    creds: &Credentials<'_>,
    policy_cors: Option<&CorsDoc>,
) -> Result<Route> {
    if d.id.is_empty() || d.id.chars().any(char::is_control) {
        return invalid(format!("{path}.id"), "route ids are non-empty text");
    }
    let host = d.host.as_deref().map(|h| parse::<HostPattern>(&format!("{path}.host"), h)).transpose()?;
    let methods = if d.methods.is_empty() {
        None
    } else {
        Some(Methods::parse(&d.methods).map_err(|m| PolicyError::invalid(format!("{path}.methods"), m))?)
    };
    let pattern: PathPattern = parse(&format!("{path}.path"), &d.path)?;
    let has_requirements = !d.scopes.is_empty()
        || !d.any_scopes.is_empty()
        || !d.roles.is_empty()
        || d.tenant.is_some()
        || d.accept.is_some();
    if d.public && has_requirements {
        return invalid(path, "a public route takes no credential, so it cannot have accept, scopes, roles or tenant");
    }
    let accept = match &d.accept {
        None => Accept::ANY,
        Some(a) => accept(&format!("{path}.accept"), a, creds)?,
    };
    for (i, set) in d.any_scopes.iter().enumerate() {
        if set.is_empty() {
            return invalid(format!("{path}.any_scopes[{i}]"), "an empty scope set would always hold");
        }
    }
    let any_scopes = d
        .any_scopes
        .iter()
        .enumerate()
        .map(|(i, set)| scopes(&format!("{path}.any_scopes[{i}]"), set))
        .collect::<Result<Vec<_>>>()?;
    let roles_req = if d.roles.is_empty() { None } else { Some(role_set(&format!("{path}.roles"), &d.roles, roles)?) };
    let tenant = match &d.tenant {
        None => None,
        Some(t) => {
            let tp = format!("{path}.tenant");
            let source = match (&t.path_param, &t.header) {
                (Some(p), None) => TenantSource::PathSegment(pattern.param_index(p).ok_or_else(|| {
                    PolicyError::invalid(
                        format!("{tp}.path_param"),
                        format!("`{{{p}}}` is not a parameter of `{}`", d.path),
                    )
                })?),
                (None, Some(h)) => TenantSource::Header(compile::header_name(&format!("{tp}.header"), h)?.into()),
                _ => return invalid(tp, "exactly one of `path_param` and `header` is required"),
            };
            let cross_tenant = role_set(&format!("{tp}.cross_tenant_roles"), &t.cross_tenant_roles, roles)?;
            Some(TenantBinding { source, cross_tenant })
        }
    };
    Ok(Route {
        id: Arc::from(d.id.as_str()),
        host,
        methods,
        path: pattern,
        public: d.public,
        accept,
        scopes: scopes(&format!("{path}.scopes"), &d.scopes)?,
        any_scopes,
        roles: roles_req,
        role_names: d.roles.iter().map(|r| Box::from(r.as_str())).collect(),
        tenant,
        shadow: d.shadow,
        cors: match (&d.cors, policy_cors) {
            (Some(c), _) => Some(Arc::new(compile_edge::cors(&format!("{path}.cors"), c, methods)?)),
            (None, Some(c)) => Some(Arc::new(compile_edge::cors("cors", c, methods)?)),
            (None, None) => None,
        },
    })
}

fn accept(path: &str, a: &AcceptDoc, creds: &Credentials<'_>) -> Result<Accept> {
    let mut issuers = Vec::new();
    for (i, iss) in a.issuers.iter().enumerate() {
        match creds.issuers.iter().position(|x| x.issuer.as_str() == iss) {
            Some(ix) => issuers.push(ix),
            None => {
                return invalid(format!("{path}.issuers[{i}]"), format!("`{iss}` is not a configured issuer"));
            }
        }
    }
    let mut audiences = Vec::new();
    for (i, aud) in a.service_audiences.iter().enumerate() {
        match creds.service.and_then(|s| s.audiences.iter().find(|x| ***x == **aud)) {
            Some(x) => audiences.push(Arc::clone(x)),
            None => {
                return invalid(
                    format!("{path}.service_audiences[{i}]"),
                    format!("`{aud}` is not one of service_tokens.audiences"),
                );
            }
        }
    }
    let api_keys = match &a.api_keys {
        None | Some(ApiKeyAcceptDoc::All(false)) => KeyAccept::Nothing,
        Some(ApiKeyAcceptDoc::All(true)) => {
            if creds.api_keys.is_none() {
                return invalid(format!("{path}.api_keys"), "the policy has no api_keys section");
            }
            KeyAccept::All
        }
        Some(ApiKeyAcceptDoc::Ids(ids)) => {
            let mut out = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                match creds.api_keys.and_then(|k| k.entries().iter().find(|e| *e.id == **id)) {
                    Some(e) => out.push(Arc::clone(&e.id)),
                    None => {
                        return invalid(format!("{path}.api_keys[{i}]"), format!("no API key has id `{id}`"));
                    }
                }
            }
            KeyAccept::Ids(out)
        }
    };
    let accept = Accept { issuers: Some(issuers), service_audiences: Some(audiences), api_keys };
    if accept.issuers.as_ref().is_some_and(Vec::is_empty)
        && accept.service_audiences.as_ref().is_some_and(Vec::is_empty)
        && accept.api_keys == KeyAccept::Nothing
    {
        return invalid(path, "accepts no credential at all (use `public: true` for routes without one)");
    }
    Ok(accept)
}

/// The path shape two routes share when they match exactly the same paths (parameter names do
/// not matter).
fn shape(p: &PathPattern) -> Vec<Option<&str>> {
    p.segments()
        .iter()
        .map(|s| match s {
            Segment::Literal(l) => Some(&**l),
            Segment::Param(_) => None,
            Segment::Rest => Some("**"),
        })
        .collect()
}

/// Two enforced routes (or two shadow routes) with the same path shape and rank whose hosts and
/// methods overlap would need a guess: a load error.
fn check_ties(routes: &[Route]) -> Result<()> {
    let mut groups: HashMap<Vec<Option<&str>>, Vec<usize>> = HashMap::new();
    for (i, r) in routes.iter().enumerate() {
        groups.entry(shape(&r.path)).or_default().push(i);
    }
    for members in groups.values() {
        for (x, &i) in members.iter().enumerate() {
            for &j in members.iter().skip(x + 1) {
                let (Some(a), Some(b)) = (routes.get(i), routes.get(j)) else {
                    continue;
                };
                let hosts = match (&a.host, &b.host) {
                    (None, None) => true,
                    (Some(h), Some(k)) => h.overlaps(k),
                    _ => false,
                };
                let methods = match (a.methods, b.methods) {
                    (None, None) => true,
                    (Some(m), Some(n)) => m.intersects(n),
                    _ => false,
                };
                if a.shadow == b.shadow && a.rank() == b.rank() && hosts && methods {
                    return invalid(
                        format!("routes[{j}]"),
                        format!(
                            "route `{}` and route `{}` (routes[{i}]) match the same requests with equal specificity; \
                             narrow one by host or methods, or merge them",
                            b.id, a.id
                        ),
                    );
                }
            }
        }
    }
    Ok(())
}

fn rule(path: &str, d: &RuleDoc, roles: &Roles, route_ids: &HashMap<Arc<str>, usize>) -> Result<Rule> {
    if d.id.is_empty() || d.id.chars().any(char::is_control) {
        return invalid(format!("{path}.id"), "rule ids are non-empty text");
    }
    let w = &d.when;
    let wp = format!("{path}.when");
    let routes = if w.routes.is_empty() {
        None
    } else {
        let mut out = Vec::new();
        for (i, id) in w.routes.iter().enumerate() {
            match route_ids.get(id.as_str()) {
                Some(&x) => out.push(x),
                None => {
                    return invalid(format!("{wp}.routes[{i}]"), format!("no route has id `{id}`"));
                }
            }
        }
        Some(out)
    };
    let methods = if w.methods.is_empty() {
        None
    } else {
        Some(Methods::parse(&w.methods).map_err(|m| PolicyError::invalid(format!("{wp}.methods"), m))?)
    };
    let list = |field: &str, items: &[String]| -> Result<Vec<Box<str>>> {
        for (i, s) in items.iter().enumerate() {
            if s.is_empty() {
                return invalid(format!("{wp}.{field}[{i}]"), "empty value");
            }
        }
        Ok(items.iter().map(|s| Box::from(s.as_str())).collect())
    };
    let credentials = w
        .credentials
        .iter()
        .enumerate()
        .map(|(i, c)| {
            credential_kind(c).ok_or_else(|| {
                PolicyError::invalid(
                    format!("{wp}.credentials[{i}]"),
                    format!("`{c}` is not jwt, service_token or api_key"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let claims = compile_edge::claims(&format!("{wp}.claims"), &w.claims)?;
    let not_claims = compile_edge::claims(&format!("{wp}.not_claims"), &w.not_claims)?;
    if d.before_authentication {
        let identity_conditions = !w.credentials.is_empty()
            || !w.subjects.is_empty()
            || !w.tenants.is_empty()
            || !w.roles.is_empty()
            || !w.scopes.is_empty()
            || !claims.is_empty()
            || !not_claims.is_empty();
        if identity_conditions {
            return invalid(
                wp,
                "a rule decided before authentication can only match the request (routes, methods, paths, hosts, \
                 client_cidrs, not_client_cidrs, origins, headers), not credentials, subjects, tenants, roles, scopes \
                 or claims",
            );
        }
        if d.shadow {
            return invalid(format!("{path}.shadow"), "a rule decided before authentication cannot be a dry run");
        }
    }
    let mut headers = Vec::new();
    for (name, values) in &w.headers {
        let n = compile::header_name(&format!("{wp}.headers"), name)?;
        if values.is_empty() {
            return invalid(format!("{wp}.headers.{name}"), "list at least one value");
        }
        headers.push((Box::from(n.as_str()), values.iter().map(|v| Box::from(v.as_str())).collect()));
    }
    Ok(Rule {
        id: Arc::from(d.id.as_str()),
        effect: match d.effect {
            EffectDoc::Allow => Effect::Allow,
            EffectDoc::Deny => Effect::Deny,
        },
        priority: d.priority,
        shadow: d.shadow,
        routes,
        methods,
        paths: w.paths.iter().enumerate().map(|(i, p)| parse(&format!("{wp}.paths[{i}]"), p)).collect::<Result<_>>()?,
        hosts: w.hosts.iter().enumerate().map(|(i, h)| parse(&format!("{wp}.hosts[{i}]"), h)).collect::<Result<_>>()?,
        credentials,
        subjects: if w.subjects.is_empty() {
            None
        } else {
            Some(list("subjects", &w.subjects)?.into_iter().collect::<FastSet<_>>())
        },
        tenants: list("tenants", &w.tenants)?,
        roles: if w.roles.is_empty() { None } else { Some(role_set(&format!("{wp}.roles"), &w.roles, roles)?) },
        scopes: scopes(&format!("{wp}.scopes"), &w.scopes)?,
        client_cidrs: w
            .client_cidrs
            .iter()
            .enumerate()
            .map(|(i, c)| compile::cidr(&format!("{wp}.client_cidrs[{i}]"), c))
            .collect::<Result<_>>()?,
        origins: w
            .origins
            .iter()
            .enumerate()
            .map(|(i, o)| parse::<OriginPattern>(&format!("{wp}.origins[{i}]"), o))
            .collect::<Result<_>>()?,
        headers,
        not_client_cidrs: w
            .not_client_cidrs
            .iter()
            .enumerate()
            .map(|(i, c)| compile::cidr(&format!("{wp}.not_client_cidrs[{i}]"), c))
            .collect::<Result<_>>()?,
        claims,
        not_claims,
        before_auth: d.before_authentication,
    })
}

/// A credential kind by its stable name.
pub(super) fn credential_kind(name: &str) -> Option<CredentialKind> {
    match name {
        "jwt" => Some(CredentialKind::Jwt),
        "service_token" => Some(CredentialKind::ServiceToken),
        "api_key" => Some(CredentialKind::ApiKey),
        _ => None,
    }
}

fn identity_headers(doc: &PolicyDocument) -> Result<IdentityHeaders> {
    let h: &IdentityHeadersDoc = &doc.identity_headers;
    // Each kind's names are checked on their own (a name may repeat across kinds: that is the
    // point of `by_credential`); `remove` gets the union.
    let base = header_names("identity_headers", h, None)?;
    let mut kinds = [base.clone(), base.clone(), base];
    for (kind_name, k) in &h.by_credential {
        let path = format!("identity_headers.by_credential.{kind_name}");
        let Some(kind) = credential_kind(kind_name) else {
            return invalid(path, "credential kinds are jwt, service_token and api_key");
        };
        if let Some(slot) = kinds.get_mut(kind as usize) {
            *slot = header_names(&path, h, Some(k))?;
        }
    }
    let mut remove: Vec<Arc<str>> = Vec::new();
    let mut add = |n: &Arc<str>| {
        if !remove.iter().any(|x| x.eq_ignore_ascii_case(n)) {
            remove.push(Arc::clone(n));
        }
    };
    for k in &kinds {
        for n in
            [&k.subject, &k.email, &k.roles, &k.groups, &k.tenant, &k.scopes, &k.credential, &k.issuer, &k.highest_role]
                .into_iter()
                .flatten()
        {
            add(n);
        }
    }
    for (i, r) in h.remove.iter().enumerate() {
        let n = compile::header_name(&format!("identity_headers.remove[{i}]"), r)?;
        add(&Arc::from(n.as_str()));
    }
    Ok(IdentityHeaders { kinds, remove: Names::from(remove) })
}

/// The names for one kind: the general ones, replaced field by field by `kind`'s.
fn header_names(path: &str, h: &IdentityHeadersDoc, kind: Option<&KindHeadersDoc>) -> Result<HeaderNames> {
    let mut seen: Vec<String> = Vec::new();
    let mut name = |field: &str, general: &Option<String>, own: Option<&Option<Option<String>>>| {
        let v = match own {
            Some(Some(v)) => v,
            _ => general,
        };
        let Some(v) = v else { return Ok(None) };
        let n = compile::header_name(&format!("{path}.{field}"), v)?;
        let lower = n.to_ascii_lowercase();
        if matches!(lower.as_str(), "authorization" | "host" | "cookie" | "content-length" | "transfer-encoding")
            || lower.starts_with(':')
        {
            return invalid(format!("{path}.{field}"), format!("`{n}` cannot carry identity"));
        }
        if seen.contains(&lower) {
            return invalid(format!("{path}.{field}"), format!("`{n}` is used twice"));
        }
        seen.push(lower);
        Ok(Some(Arc::from(n.as_str())))
    };
    Ok(HeaderNames {
        subject: name("subject", &h.subject, kind.map(|k| &k.subject))?,
        email: name("email", &h.email, kind.map(|k| &k.email))?,
        roles: name("roles", &h.roles, kind.map(|k| &k.roles))?,
        groups: name("groups", &h.groups, kind.map(|k| &k.groups))?,
        tenant: name("tenant", &h.tenant, kind.map(|k| &k.tenant))?,
        scopes: name("scopes", &h.scopes, kind.map(|k| &k.scopes))?,
        credential: name("credential", &h.credential, kind.map(|k| &k.credential))?,
        issuer: name("issuer", &h.issuer, kind.map(|k| &k.issuer))?,
        highest_role: name("highest_role", &h.highest_role, kind.map(|k| &k.highest_role))?,
    })
}
