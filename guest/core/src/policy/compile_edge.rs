//! Compiles the edge controls: CORS, rate limits, claim matchers and response headers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::doc::{ClaimMatchDoc, CorsDoc, PeriodDoc, RateHeadersDoc, RateLimitsDoc, RateOverrideDoc, UncountedDoc};
use super::{PolicyError, compile};
use crate::credential::api_key::OriginPattern;
use crate::engine::edge::{
    ClaimField, ClaimMatch, Cors, Header, HeaderForm, KeyPart, RateLimit, RateLimits, RateOverride,
};
use crate::engine::matchers::{HostPattern, Methods};
use crate::engine::roles::Roles;
use crate::identity::CredentialKind;
use crate::rate::RateParams;

type Result<T> = std::result::Result<T, PolicyError>;

fn invalid<T>(path: impl Into<String>, message: impl std::fmt::Display) -> Result<T> {
    Err(PolicyError::invalid(path, message))
}

/// Response header names the engine sets itself; the policy's `response_headers` cannot.
fn reserved_response_header(lower: &str) -> bool {
    lower.starts_with("access-control-")
        || lower.starts_with("x-ratelimit-")
        || lower.starts_with("ratelimit")
        || lower.starts_with(':')
        || matches!(
            lower,
            "vary"
                | "retry-after"
                | "www-authenticate"
                | "x-portcullis-reason"
                | "content-type"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "set-cookie"
        )
}

/// A header value a proxy can send as is: visible ASCII and spaces, no CR, LF or NUL.
fn header_text(path: &str, v: &str) -> Result<Arc<str>> {
    if v.is_empty() || v.len() > 4096 || !v.bytes().all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b)) {
        return invalid(path, "a header value is 1 to 4096 visible ASCII characters (no line breaks)");
    }
    Ok(Arc::from(v))
}

pub(super) fn response_headers(doc: &BTreeMap<String, String>) -> Result<Vec<Header>> {
    let mut out: Vec<Header> = Vec::with_capacity(doc.len());
    for (name, value) in doc {
        let path = format!("response_headers.{name}");
        let n = compile::header_name(&path, name)?.to_ascii_lowercase();
        if reserved_response_header(&n) {
            return invalid(path, format!("`{name}` is set by Portcullis itself (CORS, rate limits, denials)"));
        }
        if out.iter().any(|(x, _)| **x == *n) {
            return invalid(path, format!("`{name}` is listed twice (names are case-insensitive)"));
        }
        out.push((Arc::from(n.as_str()), header_text(&path, value)?));
    }
    Ok(out)
}

pub(super) fn cors(path: &str, d: &CorsDoc, route_methods: Option<Methods>) -> Result<Cors> {
    if d.origins.is_empty() {
        return invalid(format!("{path}.origins"), "list at least one origin");
    }
    let origins = d
        .origins
        .iter()
        .enumerate()
        .map(|(i, o)| {
            if o == "*" {
                return invalid(
                    format!("{path}.origins[{i}]"),
                    "`*` is not accepted: name the origins (or `https://*.example.com`)",
                );
            }
            o.parse::<OriginPattern>().map_err(|e| PolicyError::invalid(format!("{path}.origins[{i}]"), e))
        })
        .collect::<Result<Vec<_>>>()?;
    let (methods, names): (Methods, Vec<String>) = if d.methods.is_empty() {
        match route_methods {
            Some(m) => (m, m.names().map(str::to_owned).collect()),
            None => {
                let names = vec!["GET".to_owned(), "HEAD".to_owned(), "POST".to_owned()];
                (Methods::parse(&names).map_err(|m| PolicyError::invalid(format!("{path}.methods"), m))?, names)
            }
        }
    } else {
        (Methods::parse(&d.methods).map_err(|m| PolicyError::invalid(format!("{path}.methods"), m))?, d.methods.clone())
    };
    let header_list = |field: &str, list: &[String]| -> Result<Vec<String>> {
        list.iter()
            .enumerate()
            .map(|(i, h)| compile::header_name(&format!("{path}.{field}[{i}]"), h).map(|h| h.to_ascii_lowercase()))
            .collect()
    };
    let headers = header_list("headers", &d.headers)?;
    let expose = header_list("expose_headers", &d.expose_headers)?;
    let joined = |v: &[String]| (!v.is_empty()).then(|| Arc::<str>::from(v.join(", ")));
    Ok(Cors {
        origins,
        methods,
        methods_value: Arc::from(names.join(", ")),
        headers_value: joined(&headers),
        headers: headers.into_iter().map(String::into_boxed_str).collect(),
        expose_value: joined(&expose),
        max_age: Arc::from(d.max_age.to_string()),
        credentials: d.credentials,
    })
}

pub(super) fn claims(path: &str, d: &BTreeMap<String, ClaimMatchDoc>) -> Result<Vec<ClaimMatch>> {
    let mut out = Vec::with_capacity(d.len());
    for (name, m) in d {
        let p = format!("{path}.{name}");
        let Some(field) = ClaimField::parse(name) else {
            return invalid(p, "claims match `subject`, `email`, `tenant`, `issuer`, `audience`, `key_id` or `groups`");
        };
        if m.equals.is_empty() && m.ends_with.is_empty() && m.domains.is_empty() {
            return invalid(p, "give at least one of `equals`, `ends_with`, `domains`");
        }
        for (field_name, list) in [("equals", &m.equals), ("ends_with", &m.ends_with)] {
            if let Some(i) = list.iter().position(String::is_empty) {
                return invalid(format!("{p}.{field_name}[{i}]"), "empty value");
            }
        }
        let domains = m
            .domains
            .iter()
            .enumerate()
            .map(|(i, dom)| {
                let dom = dom.strip_prefix('@').unwrap_or(dom);
                dom.parse::<HostPattern>().map_err(|e| PolicyError::invalid(format!("{p}.domains[{i}]"), e))
            })
            .collect::<Result<Vec<_>>>()?;
        out.push(ClaimMatch {
            field,
            equals: m.equals.iter().map(|s| Box::from(s.as_str())).collect(),
            ends_with: m.ends_with.iter().map(|s| Box::from(s.as_str())).collect(),
            domains,
        });
    }
    Ok(out)
}

fn kinds(path: &str, list: &[String]) -> Result<Vec<CredentialKind>> {
    list.iter()
        .enumerate()
        .map(|(i, c)| {
            super::compile_engine::credential_kind(c).ok_or_else(|| {
                PolicyError::invalid(format!("{path}[{i}]"), format!("`{c}` is not jwt, service_token or api_key"))
            })
        })
        .collect()
}

fn route_list(path: &str, ids: &[String], routes: &HashMap<Arc<str>, usize>) -> Result<Option<Vec<usize>>> {
    if ids.is_empty() {
        return Ok(None);
    }
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            routes
                .get(id.as_str())
                .copied()
                .ok_or_else(|| PolicyError::invalid(format!("{path}[{i}]"), format!("no route has id `{id}`")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

fn params(path: &str, requests: u32, per: PeriodDoc, burst: Option<u32>) -> Result<RateParams> {
    if requests == 0 || requests > 1_000_000 {
        return invalid(format!("{path}.requests"), "1 to 1000000 (to block, use a deny rule)");
    }
    let burst = burst.unwrap_or_else(|| requests.saturating_mul(2));
    if burst == 0 || burst > 1_000_000 {
        return invalid(format!("{path}.burst"), "1 to 1000000");
    }
    let period_ns: u64 = match per {
        PeriodDoc::Second => 1,
        PeriodDoc::Minute => 60,
        PeriodDoc::Hour => 3600,
        PeriodDoc::Day => 86_400,
    } * 1_000_000_000;
    let interval_ns = (period_ns / u64::from(requests)).max(1);
    if interval_ns.checked_mul(u64::from(burst)).is_none_or(|w| w > 1 << 62) {
        return invalid(format!("{path}.burst"), "the bucket would take over 146 years to fill");
    }
    Ok(RateParams { interval_ns, burst })
}

pub(super) fn rate_limits(
    d: &RateLimitsDoc,
    route_ids: &HashMap<Arc<str>, usize>,
    roles: &Roles,
) -> Result<RateLimits> {
    let mut limits: Vec<RateLimit> = Vec::with_capacity(d.limits.len());
    for (i, l) in d.limits.iter().enumerate() {
        let path = format!("rate_limits.limits[{i}]");
        if l.id.is_empty()
            || !l.id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            || l.id.len() > 64
        {
            return invalid(format!("{path}.id"), "limit ids are 1 to 64 letters, digits, `-`, `_`, `.` or `:`");
        }
        if let Some(j) = limits.iter().position(|x| *x.id == *l.id) {
            return invalid(
                format!("{path}.id"),
                format!("limit id `{}` is also used by rate_limits.limits[{j}]", l.id),
            );
        }
        if l.key.is_empty() {
            return invalid(format!("{path}.key"), "name at least one key part");
        }
        let mut key = Vec::with_capacity(l.key.len());
        for (k, name) in l.key.iter().enumerate() {
            let part = KeyPart::parse(name).ok_or_else(|| {
                PolicyError::invalid(
                    format!("{path}.key[{k}]"),
                    format!("`{name}` is not api_key, subject, tenant, client, route, credential or issuer"),
                )
            })?;
            if key.contains(&part) {
                return invalid(format!("{path}.key[{k}]"), format!("`{name}` is listed twice"));
            }
            key.push(part);
        }
        let overrides = l
            .overrides
            .iter()
            .enumerate()
            .map(|(j, o)| rate_override(&format!("{path}.overrides[{j}]"), o, route_ids, roles))
            .collect::<Result<Vec<_>>>()?;
        let credentials = kinds(&format!("{path}.credentials"), &l.credentials)?;
        let before_auth = key.iter().all(|p| p.is_request_part())
            && credentials.is_empty()
            && overrides.iter().all(|o| o.credentials.is_empty() && o.tenants.is_empty() && o.roles.is_none());
        limits.push(RateLimit {
            id: Arc::from(l.id.as_str()),
            key,
            params: params(&path, l.requests, l.per, l.burst)?,
            routes: route_list(&format!("{path}.routes"), &l.routes, route_ids)?,
            credentials,
            overrides,
            before_auth,
        });
    }
    let form = match d.headers {
        RateHeadersDoc::XRatelimit => HeaderForm { x_ratelimit: true, ietf: false },
        RateHeadersDoc::Ietf => HeaderForm { x_ratelimit: false, ietf: true },
        RateHeadersDoc::Both => HeaderForm { x_ratelimit: true, ietf: true },
        RateHeadersDoc::None => HeaderForm { x_ratelimit: false, ietf: false },
    };
    Ok(RateLimits {
        any_before: limits.iter().any(|l| l.before_auth),
        any_after: limits.iter().any(|l| !l.before_auth),
        limits,
        form,
        on_allowed: d.on_allowed.unwrap_or(true),
        deny_uncounted: d.when_uncounted == UncountedDoc::Deny,
    })
}

fn rate_override(
    path: &str,
    o: &RateOverrideDoc,
    route_ids: &HashMap<Arc<str>, usize>,
    roles: &Roles,
) -> Result<RateOverride> {
    let role_set = if o.roles.is_empty() {
        None
    } else {
        Some(super::compile_engine::role_set(&format!("{path}.roles"), &o.roles, roles)?)
    };
    if let Some(i) = o.tenants.iter().position(String::is_empty) {
        return invalid(format!("{path}.tenants[{i}]"), "empty value");
    }
    Ok(RateOverride {
        routes: route_list(&format!("{path}.routes"), &o.routes, route_ids)?,
        tenants: o.tenants.iter().map(|t| Box::from(t.as_str())).collect(),
        roles: role_set,
        credentials: kinds(&format!("{path}.credentials"), &o.credentials)?,
        params: params(path, o.requests, o.per, o.burst)?,
    })
}
