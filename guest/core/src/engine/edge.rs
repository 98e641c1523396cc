//! Edge controls the engine applies around authentication: CORS, rate limits, claim matchers
//! and the response headers they produce.
//!
//! Everything here is compiled once (`policy/compile_edge.rs`) and runs on the request path
//! without compiling, sorting or walking the policy.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::credential::api_key::OriginPattern;
use crate::identity::{CredentialKind, Identity};
use crate::rate::{RateBucket, RateCount, RateParams, Taken};
use crate::request::Request;
use crate::revocation::Revocations;

use super::matchers::{HostPattern, Methods};
use super::roles::{RoleSet, Roles};

/// A route's CORS settings, with the header values precomputed.
#[derive(Debug)]
pub(crate) struct Cors {
    /// Allowed origins.
    pub origins: Vec<OriginPattern>,
    /// Methods a preflight may ask for.
    pub methods: Methods,
    /// `Access-Control-Allow-Methods`.
    pub methods_value: Arc<str>,
    /// Allowed request headers, lower case.
    pub headers: Vec<Box<str>>,
    /// `Access-Control-Allow-Headers` (`None` when empty).
    pub headers_value: Option<Arc<str>>,
    /// `Access-Control-Expose-Headers` (`None` when empty).
    pub expose_value: Option<Arc<str>>,
    /// `Access-Control-Max-Age`.
    pub max_age: Arc<str>,
    /// `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
}

/// Headers a browser may send without asking (the Fetch standard's CORS-safelisted request
/// headers), so a preflight listing them needs no configuration.
const SAFELISTED: [&str; 4] = ["accept", "accept-language", "content-language", "content-type"];

/// A response header: name and value, both shared (static names and configured values are
/// reference-counted, not copied per decision).
pub(crate) type Header = (Arc<str>, Arc<str>);

/// The response header names decisions set, allocated once per process.
#[derive(Clone, Copy)]
pub(crate) enum Name {
    AllowOrigin,
    AllowMethods,
    AllowHeaders,
    AllowCredentials,
    ExposeHeaders,
    MaxAge,
    Vary,
    RetryAfter,
    XLimit,
    XRemaining,
    XReset,
    IetfPolicy,
    IetfLimit,
}

static NAMES: std::sync::LazyLock<[Arc<str>; 13]> = std::sync::LazyLock::new(|| {
    [
        "access-control-allow-origin",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-allow-credentials",
        "access-control-expose-headers",
        "access-control-max-age",
        "vary",
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "ratelimit-policy",
        "ratelimit",
    ]
    .map(Arc::from)
});

static VALUES: std::sync::LazyLock<[Arc<str>; 3]> = std::sync::LazyLock::new(|| {
    ["true", "Origin", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"].map(Arc::from)
});

impl Name {
    fn arc(self) -> Arc<str> {
        NAMES.get(self as usize).cloned().unwrap_or_else(|| Arc::from(""))
    }
}

fn value(i: usize) -> Arc<str> {
    VALUES.get(i).cloned().unwrap_or_else(|| Arc::from(""))
}

fn push(out: &mut Vec<Header>, name: Name, v: Arc<str>) {
    out.push((name.arc(), v));
}

/// Numbers below this are shared, not formatted per decision: a limit's burst, what remains of
/// it and the seconds until it refills are almost always small, and three header values per
/// decision would otherwise be six allocations (half the cost of counting).
const SHARED_NUMBERS: u64 = 256;

static NUMBERS: std::sync::LazyLock<Vec<Arc<str>>> =
    std::sync::LazyLock::new(|| (0..SHARED_NUMBERS).map(|n| Arc::from(n.to_string())).collect());

/// `n` as a header value: shared when small, else its digits written by hand into one
/// allocation (`to_string` goes through the formatting machinery and a second allocation).
fn num(n: u64) -> Arc<str> {
    if let Some(v) = usize::try_from(n).ok().and_then(|i| NUMBERS.get(i)) {
        return Arc::clone(v);
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    loop {
        at -= 1;
        if let Some(d) = digits.get_mut(at) {
            // `rest % 10` is a single digit.
            *d = b'0' + u8::try_from(rest % 10).unwrap_or(0);
        }
        rest /= 10;
        if rest == 0 || at == 0 {
            break;
        }
    }
    Arc::from(std::str::from_utf8(digits.get(at..).unwrap_or_default()).unwrap_or("0"))
}

/// The outcome of a preflight.
pub(crate) enum Preflight {
    /// Allowed: these response headers.
    Allowed(Vec<Header>),
    /// Refused (`cors_rejected`), with no CORS headers.
    Refused,
}

impl Cors {
    /// The allowed origin, if `origin` is one.
    fn allows(&self, origin: &str) -> bool {
        self.origins.iter().any(|p| p.matches(origin))
    }

    /// Answers a preflight for `origin` asking for `method` and `requested` headers.
    pub(crate) fn preflight(&self, origin: &str, method: &str, requested: Option<&str>) -> Preflight {
        if !self.allows(origin) || !self.methods.contains(Methods::bit(method)) {
            return Preflight::Refused;
        }
        let headers_ok = requested.is_none_or(|list| {
            list.split(',').map(str::trim).filter(|h| !h.is_empty()).all(|h| {
                SAFELISTED.iter().any(|s| s.eq_ignore_ascii_case(h))
                    || self.headers.iter().any(|a| a.eq_ignore_ascii_case(h))
            })
        });
        if !headers_ok {
            return Preflight::Refused;
        }
        let mut out = Vec::with_capacity(6);
        push(&mut out, Name::AllowOrigin, Arc::from(origin));
        push(&mut out, Name::AllowMethods, Arc::clone(&self.methods_value));
        if let Some(h) = &self.headers_value {
            push(&mut out, Name::AllowHeaders, Arc::clone(h));
        }
        if self.credentials {
            push(&mut out, Name::AllowCredentials, value(0));
        }
        push(&mut out, Name::MaxAge, Arc::clone(&self.max_age));
        push(&mut out, Name::Vary, value(2));
        Preflight::Allowed(out)
    }

    /// The headers of an actual (non-preflight) response: `Vary: Origin` always, and the
    /// allow headers only for an allowed origin.
    pub(crate) fn actual(&self, origin: &str, out: &mut Vec<Header>) {
        push(out, Name::Vary, value(1));
        if !self.allows(origin) {
            return;
        }
        push(out, Name::AllowOrigin, Arc::from(origin));
        if self.credentials {
            push(out, Name::AllowCredentials, value(0));
        }
        if let Some(e) = &self.expose_value {
            push(out, Name::ExposeHeaders, Arc::clone(e));
        }
    }
}

/// Which identity value a claim matcher reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClaimField {
    Subject,
    Email,
    Tenant,
    Issuer,
    Audience,
    KeyId,
    /// Any of the groups.
    Groups,
}

impl ClaimField {
    /// Parses a field name.
    pub(crate) fn parse(name: &str) -> Option<ClaimField> {
        Some(match name {
            "subject" | "sub" => ClaimField::Subject,
            "email" => ClaimField::Email,
            "tenant" => ClaimField::Tenant,
            "issuer" | "iss" => ClaimField::Issuer,
            "audience" | "aud" => ClaimField::Audience,
            "key_id" => ClaimField::KeyId,
            "groups" => ClaimField::Groups,
            _ => return None,
        })
    }
}

/// A rule's condition on one identity value.
#[derive(Debug)]
pub(crate) struct ClaimMatch {
    pub field: ClaimField,
    pub equals: Vec<Box<str>>,
    pub ends_with: Vec<Box<str>>,
    pub domains: Vec<HostPattern>,
}

impl ClaimMatch {
    /// True when the identity's value (any group, for `groups`) matches an alternative.
    pub(crate) fn holds(&self, id: &Identity) -> bool {
        let one = |v: Option<&str>| v.is_some_and(|v| self.value_matches(v));
        match self.field {
            ClaimField::Subject => one(id.subject.as_deref()),
            ClaimField::Email => one(id.email.as_deref()),
            ClaimField::Tenant => one(id.tenant.as_deref()),
            ClaimField::Issuer => one(id.issuer.as_deref()),
            ClaimField::Audience => one(id.audience.as_deref()),
            ClaimField::KeyId => one(id.key_id.as_deref()),
            ClaimField::Groups => id.groups.iter().any(|g| self.value_matches(g)),
        }
    }

    fn value_matches(&self, v: &str) -> bool {
        self.equals.iter().any(|e| **e == *v)
            || self.ends_with.iter().any(|s| v.ends_with(&**s))
            || (!self.domains.is_empty()
                && v.rsplit_once('@')
                    .is_some_and(|(local, domain)| !local.is_empty() && self.domains.iter().any(|d| d.matches(domain))))
    }
}

/// One part of a rate limit's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyPart {
    ApiKey,
    Subject,
    Tenant,
    Client,
    Route,
    Credential,
    Issuer,
}

impl KeyPart {
    /// Parses a key part name.
    pub(crate) fn parse(name: &str) -> Option<KeyPart> {
        Some(match name {
            "api_key" => KeyPart::ApiKey,
            "subject" => KeyPart::Subject,
            "tenant" => KeyPart::Tenant,
            "client" => KeyPart::Client,
            "route" => KeyPart::Route,
            "credential" => KeyPart::Credential,
            "issuer" => KeyPart::Issuer,
            _ => return None,
        })
    }

    /// True for parts known before any credential is read.
    pub(crate) fn is_request_part(self) -> bool {
        matches!(self, KeyPart::Client | KeyPart::Route)
    }
}

/// Another rate for some requests.
#[derive(Debug)]
pub(crate) struct RateOverride {
    pub routes: Option<Vec<usize>>,
    pub tenants: Vec<Box<str>>,
    pub roles: Option<RoleSet>,
    pub credentials: Vec<CredentialKind>,
    pub params: RateParams,
}

/// A compiled limit.
#[derive(Debug)]
pub(crate) struct RateLimit {
    pub id: Arc<str>,
    pub key: Vec<KeyPart>,
    pub params: RateParams,
    pub routes: Option<Vec<usize>>,
    pub credentials: Vec<CredentialKind>,
    pub overrides: Vec<RateOverride>,
    /// Counted before authentication: its key and conditions need no identity.
    pub before_auth: bool,
}

/// The header form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HeaderForm {
    pub x_ratelimit: bool,
    pub ietf: bool,
}

/// The compiled rate-limit section.
#[derive(Debug)]
pub(crate) struct RateLimits {
    pub limits: Vec<RateLimit>,
    pub form: HeaderForm,
    pub on_allowed: bool,
    pub deny_uncounted: bool,
    /// Whether any limit is counted before / after authentication (skips the loops).
    pub any_before: bool,
    pub any_after: bool,
}

/// What the limits said about a request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RateOutcome {
    /// Nothing applied (or every applicable limit was uncounted and allowed through).
    None,
    /// Every bucket admitted the request; the tightest one, for the headers.
    Admitted { limit: usize, params: RateParams, taken: Taken },
    /// A bucket refused it.
    Limited { limit: usize, params: RateParams, taken: Taken },
    /// A limit applied and could not be counted, and the policy denies then.
    Uncounted { limit: usize },
}

/// The request facts a limit's key and conditions read.
pub(crate) struct RateInput<'a> {
    pub req: &'a Request<'a>,
    pub route: Option<(usize, &'a str)>,
    pub identity: Option<&'a Identity>,
}

impl RateLimits {
    /// Spends from every applicable bucket of the stage (`before_auth` or after), in order;
    /// the first refusal decides.
    pub(crate) fn run(
        &self,
        before_auth: bool,
        input: &RateInput<'_>,
        roles: &Roles,
        host: &dyn Revocations,
        prior: RateOutcome,
    ) -> RateOutcome {
        let mut best = prior;
        // One buffer for every key of the request (ids and key parts are short).
        let mut key = String::with_capacity(128);
        for (i, limit) in self.limits.iter().enumerate() {
            if limit.before_auth != before_auth {
                continue;
            }
            let Some(params) = limit.applies(input, roles) else { continue };
            if !limit.build_key(input, &mut key) {
                continue;
            }
            match host.rate_limit(&RateBucket { key: &key, params }) {
                RateCount::Counted(taken) if !taken.allowed => {
                    return RateOutcome::Limited { limit: i, params, taken };
                }
                RateCount::Counted(taken) => {
                    let tighter = match best {
                        RateOutcome::Admitted { params: p, taken: t, .. } => {
                            // Compare remaining fractions without division.
                            u64::from(taken.remaining) * u64::from(p.burst)
                                < u64::from(t.remaining) * u64::from(params.burst)
                        }
                        _ => true,
                    };
                    if tighter {
                        best = RateOutcome::Admitted { limit: i, params, taken };
                    }
                }
                RateCount::Unavailable if self.deny_uncounted => return RateOutcome::Uncounted { limit: i },
                RateCount::Unavailable => {}
            }
        }
        best
    }

    /// The rate-limit response headers of an outcome (`Retry-After` only on refusal).
    pub(crate) fn headers(&self, outcome: RateOutcome, out: &mut Vec<Header>) {
        let (limit, params, taken, refused) = match outcome {
            RateOutcome::Limited { limit, params, taken } => (limit, params, taken, true),
            RateOutcome::Admitted { limit, params, taken } if self.on_allowed => (limit, params, taken, false),
            _ => return,
        };
        let secs = |ns: u64| ns.div_ceil(1_000_000_000);
        out.reserve(if self.form.ietf { 6 } else { 4 });
        if refused {
            push(out, Name::RetryAfter, num(secs(taken.retry_after_ns).max(1)));
        }
        if self.form.x_ratelimit {
            push(out, Name::XLimit, num(u64::from(params.burst)));
            push(out, Name::XRemaining, num(u64::from(taken.remaining)));
            push(out, Name::XReset, num(secs(taken.reset_ns)));
        }
        if self.form.ietf
            && let Some(l) = self.limits.get(limit)
        {
            let mut policy = String::new();
            let _ = write!(policy, "\"{}\";q={};w={}", l.id, params.burst, secs(params.window_ns()).max(1));
            push(out, Name::IetfPolicy, Arc::from(policy));
            let mut now = String::new();
            let _ = write!(now, "\"{}\";r={};t={}", l.id, taken.remaining, secs(taken.reset_ns));
            push(out, Name::IetfLimit, Arc::from(now));
        }
    }
}

impl RateLimit {
    /// The parameters that apply to this request, or `None` when the limit does not apply.
    fn applies(&self, input: &RateInput<'_>, roles: &Roles) -> Option<RateParams> {
        let route = input.route.map(|(i, _)| i);
        if self.routes.as_ref().is_some_and(|rs| !route.is_some_and(|r| rs.contains(&r))) {
            return None;
        }
        if !self.credentials.is_empty() && !input.identity.is_some_and(|id| self.credentials.contains(&id.credential)) {
            return None;
        }
        let over = self.overrides.iter().find(|o| {
            o.routes.as_ref().is_none_or(|rs| route.is_some_and(|r| rs.contains(&r)))
                && (o.credentials.is_empty() || input.identity.is_some_and(|id| o.credentials.contains(&id.credential)))
                && (o.tenants.is_empty()
                    || input
                        .identity
                        .and_then(|id| id.tenant.as_deref())
                        .is_some_and(|t| o.tenants.iter().any(|x| **x == *t)))
                && o.roles.as_ref().is_none_or(|set| input.identity.is_some_and(|id| roles.any_in(&id.roles, set)))
        });
        Some(over.map_or(self.params, |o| o.params))
    }

    /// Writes the bucket key into `key`; false when the request lacks a part.
    fn build_key(&self, input: &RateInput<'_>, key: &mut String) -> bool {
        key.clear();
        key.push_str(&self.id);
        let id = input.identity;
        for part in &self.key {
            key.push('\x1f');
            let value = match part {
                KeyPart::ApiKey => {
                    id.filter(|i| i.credential == CredentialKind::ApiKey).and_then(|i| i.key_id.as_deref())
                }
                KeyPart::Subject => id.and_then(|i| i.subject.as_deref()),
                KeyPart::Tenant => id.and_then(|i| i.tenant.as_deref()),
                KeyPart::Issuer => id.and_then(|i| i.issuer.as_deref()),
                KeyPart::Credential => id.map(|i| i.credential.name()),
                KeyPart::Route => input.route.map(|(_, r)| r),
                KeyPart::Client => match input.req.client_ip.map(client_bucket) {
                    Some(ip) => {
                        push_address(key, ip);
                        continue;
                    }
                    None => None,
                },
            };
            match value {
                Some(v) => key.push_str(v),
                None => return false,
            }
        }
        true
    }
}

/// Writes an address into a bucket key: IPv4 dotted, IPv6 as its 32 hex digits (the key only
/// has to be unique). By hand because `Display` for addresses goes through the formatting
/// machinery and cost about 100 ns per decision.
fn push_address(key: &mut String, ip: std::net::IpAddr) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    key.push('.');
                }
                if octet >= 100 {
                    key.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    key.push(char::from(b'0' + octet / 10 % 10));
                }
                key.push(char::from(b'0' + octet % 10));
            }
        }
        std::net::IpAddr::V6(v6) => {
            for byte in v6.octets() {
                for nibble in [byte >> 4, byte & 0xf] {
                    key.push(char::from(HEX.get(usize::from(nibble)).copied().unwrap_or(b'0')));
                }
            }
        }
    }
}

/// The address a client's bucket is keyed by: IPv4 (also when mapped into IPv6) as is, IPv6 by
/// its /64, the smallest block one subscriber is routinely given, so one host cannot mint a
/// fresh bucket per address.
fn client_bucket(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn numbers_render_as_decimal_shared_or_not() {
        for n in [0, 9, 10, 255, 256, 1000, 999_999, u64::MAX] {
            assert_eq!(&*num(n), n.to_string(), "{n}");
        }
        assert!(Arc::ptr_eq(&num(40), &num(40)), "small numbers are shared");
    }

    #[test]
    fn addresses_in_keys_are_unique_and_ipv6_clients_share_their_64() {
        let key = |ip: &str| {
            let mut k = String::new();
            push_address(&mut k, client_bucket(ip.parse().unwrap()));
            k
        };
        assert_eq!(key("192.0.2.7"), "192.0.2.7");
        assert_eq!(key("10.0.100.255"), "10.0.100.255");
        assert_eq!(key("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("2001:db8::1"), "20010db8000000000000000000000000");
    }
}
