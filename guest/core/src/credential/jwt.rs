//! JWT verification (RFC 7515/7519) with the strict rules in `docs/policy.md`.
//!
//! The order of checks is part of the contract, because it decides which reason a token with
//! several defects gets:
//!
//! 1. size, three segments, canonical base64url, header and payload strict JSON objects,
//!    no `crit`, string `alg`, string `kid` → `malformed`
//! 2. `iss` selects the issuer: absent or unknown → `wrong_issuer` (keys are scoped to their
//!    issuer, so nothing can be verified without one)
//! 3. `alg` outside the issuer's allow-list, or `kid` naming a key of another algorithm
//!    → `alg_not_allowed`; no fitting key → `unknown_kid`
//! 4. signature → `bad_signature`
//! 5. claim types → `malformed`; required claims → `missing_claim`
//! 6. `exp` → `expired`, `nbf` → `not_yet_valid`, `iat` → `issued_in_future`,
//!    lifetime → `lifetime_too_long`, `aud` → `wrong_audience`, `jti`/subject → `revoked`
//!
//! Header parameters that point at keys (`jku`, `x5u`, `x5c`, `jwk`) are never consulted.

use std::sync::Arc;

use crate::identity::{CredentialKind, Identity, Names};
use crate::json::{ClaimPath, Json, Object, parse_object};
use crate::keys::{Alg, AlgSet, KeyChoice, KeySet, TrustedKey};
use crate::reason::Reason;
use crate::revocation::{self, RevocationQuery, RevocationSet, RevocationStatus, Revocations};
use crate::time::UnixTime;
use crate::types::Issuer;
use crate::{b64, claims};

/// Largest signature accepted (RSA-4096).
const MAX_SIGNATURE_BYTES: usize = 512;

/// How identity fields are read from a JWT's claims.
#[derive(Clone, Debug)]
pub struct ClaimMapping {
    /// Subject claim (default `sub`).
    pub subject: ClaimPath,
    /// E-mail claim (default `email`).
    pub email: Option<ClaimPath>,
    /// Scope claims, merged (default `scope` then `scp`).
    pub scopes: Vec<ClaimPath>,
    /// Roles claim (default `roles`).
    pub roles: Option<ClaimPath>,
    /// Groups or entitlements claim (default `groups`).
    pub groups: Option<ClaimPath>,
    /// Tenant claim (default `tenant`).
    pub tenant: Option<ClaimPath>,
}

/// One trusted issuer, compiled.
#[derive(Debug)]
pub struct IssuerPolicy {
    /// The exact `iss` value.
    pub issuer: Issuer,
    /// Accepted audiences (at least one, unless `skip_audience`).
    pub audiences: Vec<Arc<str>>,
    /// `insecure_skip_audience`: `aud` is not checked.
    pub skip_audience: bool,
    /// Allowed algorithms.
    pub algorithms: AlgSet,
    /// Trusted keys, from every source the runtime has supplied.
    pub keys: KeySet,
    /// Key sources in the network (`jwks_uri`, `discovery`).
    pub remote_sources: usize,
    /// Of those, the ones the runtime has not supplied (never fetched).
    pub unfetched: usize,
    /// Clock leeway in seconds.
    pub leeway: f64,
    /// Maximum `exp - iat`, in seconds.
    pub max_lifetime: Option<f64>,
    /// Claims that must be present.
    pub required_claims: Vec<String>,
    /// Where identity fields come from.
    pub claims: ClaimMapping,
    /// Group name -> roles it grants.
    pub group_roles: crate::FastMap<String, Vec<Arc<str>>>,
}

impl IssuerPolicy {
    /// Why no key fits a token: the key may be in a source not fetched yet (or the issuer has
    /// no usable key at all), which the client cannot fix (`keys_unavailable`, 503); or the
    /// token names a key the issuer does not have (`unknown_kid`, 401).
    fn no_key_reason(&self) -> Reason {
        if self.unfetched > 0 || self.keys.is_empty() { Reason::KeysUnavailable } else { Reason::UnknownKid }
    }
}

/// The configured issuer a token names in `iss`, read without verifying anything: for a
/// runtime deciding which issuer's keys to refetch after `unknown_kid`. Never an input to a
/// decision.
pub(crate) fn named_issuer<'p>(token: &str, issuers: &'p [IssuerPolicy], max: usize) -> Option<&'p IssuerPolicy> {
    let parts = split(token, max).ok()?;
    let claims = parse_object(&parts.payload).ok()?;
    match claims.get("iss") {
        Some(Json::Str(iss)) => issuers.iter().find(|i| i.issuer.as_str() == iss.as_ref()),
        _ => None,
    }
}

/// Where a verification looks things up.
pub(crate) struct JwtContext<'p> {
    pub issuers: &'p [IssuerPolicy],
    pub max_token_bytes: usize,
    pub statics: &'p RevocationSet,
}

struct Parts<'t> {
    signing_input: &'t str,
    signature: &'t str,
    header: Vec<u8>,
    payload: Vec<u8>,
}

fn split(token: &str, max: usize) -> Result<Parts<'_>, Reason> {
    if token.len() > max {
        return Err(Reason::Malformed);
    }
    // `find` is a word-at-a-time memchr; a filter over bytes was a loop turn per byte.
    let d1 = token.find('.').ok_or(Reason::Malformed)?;
    let d2 = token.get(d1 + 1..).and_then(|r| r.find('.')).map(|i| d1 + 1 + i).ok_or(Reason::Malformed)?;
    if token.get(d2 + 1..).is_none_or(|r| r.contains('.')) {
        return Err(Reason::Malformed);
    }
    let header_b64 = token.get(..d1).ok_or(Reason::Malformed)?;
    let payload_b64 = token.get(d1 + 1..d2).ok_or(Reason::Malformed)?;
    let signing_input = token.get(..d2).ok_or(Reason::Malformed)?;
    let signature = token.get(d2 + 1..).ok_or(Reason::Malformed)?;
    let header = b64::decode(header_b64).ok_or(Reason::Malformed)?;
    let payload = b64::decode(payload_b64).ok_or(Reason::Malformed)?;
    Ok(Parts { signing_input, signature, header, payload })
}

/// The checks [`verify`] makes, in the order it makes them, with the reasons each can end in.
/// Verification stops at the first failure, so a failure also says which checks passed (those
/// before it) and which were never reached (those after). Tooling (`portcullis token verify`)
/// reads this list instead of restating the order.
pub const CHECKS: &[(&str, &[Reason])] = &[
    ("structure: three canonical base64url parts, JSON objects, no duplicate members", &[Reason::Malformed]),
    (
        "issuer: `iss` names a configured issuer the route accepts",
        &[Reason::WrongIssuer, Reason::CredentialNotAccepted],
    ),
    (
        "algorithm and key: `alg` is allowed for the issuer and for the trusted key `kid` names",
        &[Reason::AlgNotAllowed, Reason::UnknownKid, Reason::KeysUnavailable],
    ),
    ("signature", &[Reason::BadSignature]),
    ("required claims", &[Reason::MissingClaim]),
    (
        "times: exp, nbf, iat (with leeway), maximum lifetime",
        &[Reason::Expired, Reason::NotYetValid, Reason::IssuedInFuture, Reason::LifetimeTooLong],
    ),
    ("audience: `aud` names an accepted audience", &[Reason::WrongAudience]),
    ("revocation: `jti` and subject", &[Reason::Revoked, Reason::RevocationStale]),
];

/// Verifies a JWT and builds its identity.
/// A JWT that passed every check, as a host's [`TokenCache`](crate::TokenCache) keeps it: what
/// the checks that depend on the request need again, and the identity.
#[derive(Debug)]
pub struct VerifiedToken {
    issuer: usize,
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    jti: Option<Box<str>>,
    sub: Option<Box<str>>,
    identity: Arc<Identity>,
}

pub(crate) fn verify(
    token: &str,
    ctx: &JwtContext<'_>,
    accept: Option<&[usize]>,
    now: UnixTime,
    revocations: &dyn Revocations,
) -> Result<Arc<Identity>, Reason> {
    let checks = Checks { ctx, accept, now, revocations };
    let cache = revocations.verified_tokens();
    if let Some(hit) = cache.and_then(|c| c.get(token)) {
        return recheck(&hit, checks);
    }
    let (identity, verified) = verify_fully(token, checks)?;
    if let Some(c) = cache {
        c.put(token, Arc::new(verified));
    }
    Ok(identity)
}

/// What one request brings to a token's checks.
#[derive(Clone, Copy)]
struct Checks<'a, 'c> {
    ctx: &'a JwtContext<'c>,
    /// The route's accepted issuers (`None`: all).
    accept: Option<&'a [usize]>,
    now: UnixTime,
    revocations: &'a dyn Revocations,
}

/// What the full path checks that can change between two requests with the same token, in the
/// same order: the route's accepted issuers, the times, the revocations.
fn recheck(
    v: &VerifiedToken,
    Checks { ctx, accept, now, revocations }: Checks<'_, '_>,
) -> Result<Arc<Identity>, Reason> {
    let issuer = ctx.issuers.get(v.issuer).ok_or(Reason::InternalError)?;
    accepted(accept, v.issuer)?;
    claims::check_times(now, issuer.leeway, v.exp, v.nbf, v.iat, issuer.max_lifetime)?;
    not_revoked(ctx, revocations, v.jti.as_deref(), v.sub.as_deref(), v.iat)?;
    Ok(Arc::clone(&v.identity))
}

/// Whether the route accepts tokens from the issuer at `index`.
fn accepted(accept: Option<&[usize]>, index: usize) -> Result<(), Reason> {
    if accept.is_some_and(|a| !a.contains(&index)) { Err(Reason::CredentialNotAccepted) } else { Ok(()) }
}

/// The token's id and its subject (as of its issue time) against both revocation sources.
fn not_revoked(
    ctx: &JwtContext<'_>,
    revocations: &dyn Revocations,
    jti: Option<&str>,
    sub: Option<&str>,
    iat: Option<f64>,
) -> Result<(), Reason> {
    if let Some(jti) = jti {
        refuse_if_revoked(ctx.statics, revocations, RevocationQuery::TokenId(jti))?;
    }
    if let Some(sub) = sub {
        refuse_if_revoked(ctx.statics, revocations, RevocationQuery::Subject { subject: sub, issued_at: iat })?;
    }
    Ok(())
}

fn verify_fully(
    token: &str,
    Checks { ctx, accept, now, revocations }: Checks<'_, '_>,
) -> Result<(Arc<Identity>, VerifiedToken), Reason> {
    let parts = split(token, ctx.max_token_bytes)?;
    let mut sig_buf = [0u8; MAX_SIGNATURE_BYTES];
    let signature = b64::decode_into(parts.signature, &mut sig_buf).ok_or(Reason::Malformed)?;

    let header = parse_object(&parts.header).map_err(|_| Reason::Malformed)?;
    if header.get("crit").is_some() {
        return Err(Reason::Malformed);
    }
    let alg = match header.get("alg") {
        Some(Json::Str(a)) => a,
        _ => return Err(Reason::Malformed),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Json::Str(k)) => Some(k.as_ref()),
        Some(_) => return Err(Reason::Malformed),
    };
    let claims = parse_object(&parts.payload).map_err(|_| Reason::Malformed)?;

    // Keys are scoped to the issuer the token names, so find it before touching any key.
    let iss = match claims.get("iss") {
        None => return Err(Reason::WrongIssuer),
        Some(Json::Str(s)) => s.as_ref(),
        Some(_) => return Err(Reason::Malformed),
    };
    let (index, issuer) =
        ctx.issuers.iter().enumerate().find(|(_, i)| i.issuer.as_str() == iss).ok_or(Reason::WrongIssuer)?;
    accepted(accept, index)?;

    let alg = Alg::from_name(alg).filter(|a| issuer.algorithms.contains(*a)).ok_or(Reason::AlgNotAllowed)?;
    let key = match issuer.keys.choose(alg, kid) {
        KeyChoice::One(k) => k.verify_with(revocations, alg, parts.signing_input.as_bytes(), signature).then_some(k),
        KeyChoice::AnyOf(keys) => {
            keys.into_iter().find(|k| k.verify_with(revocations, alg, parts.signing_input.as_bytes(), signature))
        }
        KeyChoice::WrongAlg => return Err(Reason::AlgNotAllowed),
        KeyChoice::Unknown => return Err(issuer.no_key_reason()),
    }
    .ok_or(Reason::BadSignature)?;

    let registered = Registered::read(&claims)?;
    for name in &issuer.required_claims {
        if claims.get(name).is_none() {
            return Err(Reason::MissingClaim);
        }
    }
    if issuer.max_lifetime.is_some() && registered.exp.is_none() {
        // A bounded lifetime cannot be enforced on a token that never expires.
        return Err(Reason::MissingClaim);
    }
    claims::check_times(now, issuer.leeway, registered.exp, registered.nbf, registered.iat, issuer.max_lifetime)?;
    let audience = match &registered.aud {
        Aud::Absent => None,
        Aud::One(a) => issuer.audiences.iter().find(|x| &***x == *a),
        Aud::Many(list) => issuer.audiences.iter().find(|x| list.iter().any(|a| &***x == *a)),
    };
    if audience.is_none() && !issuer.skip_audience {
        return Err(Reason::WrongAudience);
    }

    not_revoked(ctx, revocations, registered.jti, registered.sub, registered.iat)?;

    let identity = Arc::new(build_identity(issuer, key, audience, &registered, &claims)?);
    let verified = VerifiedToken {
        issuer: index,
        exp: registered.exp,
        nbf: registered.nbf,
        iat: registered.iat,
        jti: registered.jti.map(Box::from),
        sub: registered.sub.map(Box::from),
        identity: Arc::clone(&identity),
    };
    Ok((identity, verified))
}

pub(crate) fn refuse_if_revoked(
    statics: &RevocationSet,
    dynamic: &dyn Revocations,
    q: RevocationQuery<'_>,
) -> Result<(), Reason> {
    match revocation::check(statics, dynamic, q) {
        RevocationStatus::Active => Ok(()),
        RevocationStatus::Revoked => Err(Reason::Revoked),
        RevocationStatus::Unavailable => Err(Reason::RevocationStale),
    }
}

enum Aud<'a> {
    Absent,
    One(&'a str),
    Many(Vec<&'a str>),
}

/// The registered claims, type-checked.
struct Registered<'a> {
    exp: Option<f64>,
    nbf: Option<f64>,
    iat: Option<f64>,
    sub: Option<&'a str>,
    jti: Option<&'a str>,
    aud: Aud<'a>,
}

impl<'a> Registered<'a> {
    fn read(claims: &'a Object<'a>) -> Result<Self, Reason> {
        let mut r = Registered { exp: None, nbf: None, iat: None, sub: None, jti: None, aud: Aud::Absent };
        for (name, value) in claims.iter() {
            match name {
                "exp" => r.exp = Some(value.as_f64().ok_or(Reason::Malformed)?),
                "nbf" => r.nbf = Some(value.as_f64().ok_or(Reason::Malformed)?),
                "iat" => r.iat = Some(value.as_f64().ok_or(Reason::Malformed)?),
                "sub" => r.sub = Some(value.as_str().ok_or(Reason::Malformed)?),
                "jti" => r.jti = Some(value.as_str().ok_or(Reason::Malformed)?),
                "aud" => {
                    r.aud = match value {
                        Json::Str(s) => Aud::One(s),
                        Json::Arr(items) => Aud::Many(
                            items.iter().map(|i| i.as_str().ok_or(Reason::Malformed)).collect::<Result<_, _>>()?,
                        ),
                        _ => return Err(Reason::Malformed),
                    }
                }
                _ => {}
            }
        }
        Ok(r)
    }
}

fn build_identity(
    issuer: &IssuerPolicy,
    key: &TrustedKey,
    audience: Option<&Arc<str>>,
    registered: &Registered<'_>,
    claims: &Object<'_>,
) -> Result<Identity, Reason> {
    let map = &issuer.claims;
    let mut id = Identity::new(CredentialKind::Jwt);
    id.issuer = Some(issuer.issuer.shared());
    id.key_id = key.kid().map(|k| k.shared());
    id.audience = audience.cloned();
    id.expires_at = registered.exp;
    id.token_id = registered.jti.map(claims::header_safe).transpose()?;
    id.subject = optional_string(claims, &map.subject)?;
    if let Some(p) = &map.email {
        id.email = optional_string(claims, p)?;
    }
    if let Some(p) = &map.tenant {
        id.tenant = optional_string(claims, p)?;
    }

    let mut scopes: Vec<Arc<str>> = Vec::new();
    for path in &map.scopes {
        match claims.path(path) {
            None => {}
            Some(Json::Str(s)) => {
                for scope in s.split(' ').filter(|s| !s.is_empty()) {
                    scopes.push(claims::scope_grant(scope)?);
                }
            }
            Some(Json::Arr(items)) => {
                for item in items {
                    scopes.push(claims::scope_grant(item.as_str().ok_or(Reason::Malformed)?)?);
                }
            }
            Some(_) => return Err(Reason::Malformed),
        }
    }
    id.scopes = dedup(scopes);

    let groups = match &map.groups {
        Some(p) => string_list(claims, p)?,
        None => Vec::new(),
    };
    let mut roles = match &map.roles {
        Some(p) => string_list(claims, p)?,
        None => Vec::new(),
    };
    for g in &groups {
        if let Some(mapped) = issuer.group_roles.get(&**g) {
            roles.extend(mapped.iter().cloned());
        }
    }
    id.roles = dedup(roles);
    id.groups = Names::from(groups);
    Ok(id)
}

fn optional_string(claims: &Object<'_>, path: &ClaimPath) -> Result<Option<Arc<str>>, Reason> {
    match claims.path(path) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Str(s)) => claims::header_safe(s).map(Some),
        Some(Json::Num(n)) => claims::header_safe(&n.to_string()).map(Some),
        Some(_) => Err(Reason::Malformed),
    }
}

fn string_list(claims: &Object<'_>, path: &ClaimPath) -> Result<Vec<Arc<str>>, Reason> {
    match claims.path(path) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Str(s)) => Ok(vec![claims::header_safe(s)?]),
        Some(Json::Arr(items)) => {
            items.iter().map(|i| i.as_str().ok_or(Reason::Malformed).and_then(claims::header_safe)).collect()
        }
        Some(_) => Err(Reason::Malformed),
    }
}

/// Drops repeated names, keeping the first of each.
fn dedup(mut v: Vec<Arc<str>>) -> Names {
    if v.len() <= 32 {
        // The usual handful: a scan beats hashing (SipHash showed in the guest's profile).
        let mut kept = 0;
        for i in 0..v.len() {
            let (head, tail) = v.split_at(i);
            let unique = match (head.get(..kept), tail.first()) {
                (Some(seen), Some(s)) => !seen.contains(s),
                _ => false,
            };
            if unique {
                v.swap(kept, i);
                kept += 1;
            }
        }
        v.truncate(kept);
    } else {
        // A token can carry thousands: keep it linear (and the hasher keyed per process).
        let mut seen = std::collections::HashSet::with_capacity(v.len());
        v.retain(|s| seen.insert(Arc::clone(s)));
    }
    Names::from(v)
}

#[cfg(test)]
mod tests {
    use crate::reason::Reason;
    use crate::revocation::RevocationSet;
    use crate::testutil::{NOW, SECRET, claims, decide_token, decide_with, hs_policy, hs256};
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const H: &str = r#"{"alg":"HS256","kid":"k1"}"#;

    #[test]
    fn dedup_keeps_the_first_of_each_name_in_order_on_both_paths() {
        use std::sync::Arc;
        for n in [0usize, 1, 5, 32, 33, 500] {
            // Every third name repeats an earlier one.
            let names: Vec<Arc<str>> =
                (0..n).map(|i| Arc::from(format!("s{}", if i % 3 == 2 { i / 2 } else { i }))).collect();
            let mut expected: Vec<Arc<str>> = Vec::new();
            for s in &names {
                if !expected.contains(s) {
                    expected.push(Arc::clone(s));
                }
            }
            assert_eq!(&*super::dedup(names), &expected[..], "{n} names");
        }
    }

    fn reason(extra_policy: &str, header: &str, payload: &str) -> Reason {
        decide_token(&hs_policy(extra_policy), &hs256(SECRET, header, payload)).reason
    }

    #[test]
    fn a_valid_token_yields_its_identity() {
        let d =
            decide_token(&hs_policy(""), &hs256(SECRET, H, &claims(r#""jti":"t1","email":"a@x.io","tenant":"acme""#)));
        assert!(d.allowed(), "{d:?}");
        let id = d.identity.unwrap();
        assert_eq!(id.subject.as_deref(), Some("alice"));
        assert_eq!(id.issuer.as_deref(), Some("https://t.example"));
        assert_eq!(id.key_id.as_deref(), Some("k1"));
        assert_eq!(id.token_id.as_deref(), Some("t1"));
        assert_eq!(id.email.as_deref(), Some("a@x.io"));
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert_eq!(id.audience.as_deref(), Some("api"));
    }

    #[test]
    fn oversized_tokens_are_malformed_before_parsing() {
        let pad = "x".repeat(9000);
        assert_eq!(reason("", H, &claims(&format!(r#""pad":"{pad}""#))), Reason::Malformed);
    }

    #[test]
    fn a_raised_token_limit_admits_larger_tokens() {
        let pad = "x".repeat(9000);
        let k = base64::Engine::encode(&crate::b64::URL_SAFE_STRICT, SECRET);
        let text = format!(
            "version: 1\nlimits: {{max_token_bytes: 16384}}\nissuers:\n  - issuer: https://t.example\n    audiences: [api]\n    algorithms: [HS256]\n    jwks: {{keys: [{{kty: oct, kid: k1, k: {k}}}]}}\n"
        );
        let p = crate::Policy::load(&text, &crate::NoFiles).unwrap();
        assert!(decide_token(&p, &hs256(SECRET, H, &claims(&format!(r#""pad":"{pad}""#)))).allowed());
    }

    #[test]
    fn crit_is_malformed_even_when_empty() {
        assert_eq!(reason("", r#"{"alg":"HS256","kid":"k1","crit":[]}"#, &claims("")), Reason::Malformed);
    }

    #[test]
    fn unknown_header_parameters_are_ignored() {
        let h = r#"{"alg":"HS256","kid":"k1","typ":"at+jwt","x5t":"abc","jku":"https://evil/jwks"}"#;
        assert_eq!(reason("", h, &claims("")), Reason::Allowed);
    }

    #[test]
    fn kid_of_another_issuer_is_unknown() {
        assert_eq!(reason("", r#"{"alg":"HS256","kid":"k2"}"#, &claims("")), Reason::UnknownKid);
    }

    #[test]
    fn missing_kid_tries_hmac_keys() {
        assert_eq!(reason("", r#"{"alg":"HS256"}"#, &claims("")), Reason::Allowed);
    }

    #[test]
    fn required_custom_claims_are_enforced() {
        let p = "    required_claims: [exp, email]\n";
        assert_eq!(reason(p, H, &claims("")), Reason::MissingClaim);
        assert_eq!(reason(p, H, &claims(r#""email":"a@x.io""#)), Reason::Allowed);
    }

    #[test]
    fn exp_is_not_required_when_the_policy_says_so() {
        let p = "    required_claims: []\n";
        let no_exp = format!(r#"{{"iss":"https://t.example","aud":"api","sub":"a","iat":{}}}"#, NOW);
        assert_eq!(reason(p, H, &no_exp), Reason::Allowed);
    }

    #[test]
    fn a_lifetime_bound_requires_exp() {
        let p = "    required_claims: []\n    max_lifetime_seconds: 600\n";
        let no_exp = format!(r#"{{"iss":"https://t.example","aud":"api","sub":"a","iat":{}}}"#, NOW);
        assert_eq!(reason(p, H, &no_exp), Reason::MissingClaim);
    }

    #[test]
    fn null_claims_have_the_wrong_type() {
        assert_eq!(reason("", H, &claims(r#""nbf":null"#)), Reason::Malformed);
        let c = claims("").replace(r#""sub":"alice""#, r#""sub":null"#);
        assert_eq!(reason("", H, &c), Reason::Malformed);
    }

    #[test]
    fn scope_and_scp_are_merged_without_duplicates() {
        let d = decide_token(&hs_policy(""), &hs256(SECRET, H, &claims(r#""scope":"a b  a","scp":["b","c"]"#)));
        let scopes: Vec<_> = d.identity.unwrap().scopes.iter().map(|s| s.to_string()).collect();
        assert_eq!(scopes, ["a", "b", "c"]);
    }

    #[test]
    fn scope_claim_of_the_wrong_type_is_malformed() {
        assert_eq!(reason("", H, &claims(r#""scope":["a",1]"#)), Reason::Malformed);
        assert_eq!(reason("", H, &claims(r#""scp":{"a":1}"#)), Reason::Malformed);
    }

    #[test]
    fn roles_come_from_a_nested_claim_path_and_from_groups() {
        let p = "    claims: {roles: realm_access.roles, groups: groups}\n    group_roles: {\"/eng/admins\": [admin, operator]}\n";
        let c = claims(r#""realm_access":{"roles":["viewer"]},"groups":["/eng/admins","/other"]"#);
        let d = decide_token(&hs_policy(p), &hs256(SECRET, H, &c));
        let id = d.identity.unwrap();
        let roles: Vec<_> = id.roles.iter().map(|s| s.to_string()).collect();
        assert_eq!(roles, ["viewer", "admin", "operator"]);
        assert_eq!(id.groups.len(), 2);
    }

    #[test]
    fn a_single_string_role_is_a_one_element_list() {
        let d = decide_token(&hs_policy(""), &hs256(SECRET, H, &claims(r#""roles":"admin""#)));
        assert_eq!(d.identity.unwrap().roles.len(), 1);
    }

    #[test]
    fn numeric_tenant_claims_are_rendered_exactly() {
        let d = decide_token(&hs_policy(""), &hs256(SECRET, H, &claims(r#""tenant":12345678901234"#)));
        assert_eq!(d.identity.unwrap().tenant.as_deref(), Some("12345678901234"));
    }

    #[test]
    fn turning_a_mapping_off_ignores_the_claim() {
        let d =
            decide_token(&hs_policy("    claims: {tenant: null}\n"), &hs256(SECRET, H, &claims(r#""tenant":{"x":1}"#)));
        assert!(d.allowed());
        assert_eq!(d.identity.unwrap().tenant, None);
    }

    #[test]
    fn revocation_of_the_jti_or_subject_denies() {
        let p = hs_policy("");
        let t = hs256(SECRET, H, &claims(r#""jti":"j1""#));
        let mut revs = RevocationSet::default();
        assert!(decide_with(&p, &t, &revs).allowed());
        revs.revoke_token_id("j1");
        assert_eq!(decide_with(&p, &t, &revs).reason, Reason::Revoked);
        let mut revs = RevocationSet::default();
        revs.revoke_subject("alice", NOW);
        assert_eq!(decide_with(&p, &t, &revs).reason, Reason::Revoked);
    }

    #[test]
    fn an_unavailable_revocation_store_fails_closed() {
        struct Down;
        impl crate::Revocations for Down {
            fn status(&self, _: crate::RevocationQuery<'_>) -> crate::RevocationStatus {
                crate::RevocationStatus::Unavailable
            }
        }
        let d = decide_with(&hs_policy(""), &hs256(SECRET, H, &claims("")), &Down);
        assert_eq!((d.reason, d.status()), (Reason::RevocationStale, 503));
    }

    #[test]
    fn identity_never_appears_on_a_denial() {
        let d =
            decide_token(&hs_policy(""), &hs256(SECRET, H, &claims(r#""aud":"nope""#).replace(r#""aud":"api","#, "")));
        assert_eq!(d.reason, Reason::WrongAudience);
        assert!(d.identity.is_none());
    }

    #[test]
    fn each_reason_belongs_to_one_check() {
        let mut seen: Vec<Reason> = Vec::new();
        for (_, reasons) in crate::credential::jwt::CHECKS {
            for r in *reasons {
                assert!(!seen.contains(r), "{r:?} is listed twice");
                seen.push(*r);
            }
        }
    }

    /// A host with a token cache and a revocation set it can change, counting what the core
    /// asks of the cache.
    #[derive(Default)]
    struct Caching {
        tokens: std::cell::RefCell<std::collections::HashMap<String, std::sync::Arc<super::VerifiedToken>>>,
        hits: std::cell::Cell<u32>,
        revoked: std::cell::RefCell<RevocationSet>,
    }

    impl crate::Revocations for Caching {
        fn status(&self, q: crate::RevocationQuery<'_>) -> crate::RevocationStatus {
            self.revoked.borrow().status(q)
        }
        fn verified_tokens(&self) -> Option<&dyn crate::TokenCache> {
            Some(self)
        }
    }

    impl crate::TokenCache for Caching {
        fn get(&self, token: &str) -> Option<std::sync::Arc<super::VerifiedToken>> {
            let hit = self.tokens.borrow().get(token).cloned();
            self.hits.set(self.hits.get() + u32::from(hit.is_some()));
            hit
        }
        fn put(&self, token: &str, verified: std::sync::Arc<super::VerifiedToken>) {
            self.tokens.borrow_mut().insert(token.to_owned(), verified);
        }
    }

    fn at(policy: &crate::Policy, token: &str, now: i64, host: &Caching) -> crate::Decision {
        let auth = format!("Bearer {token}");
        let headers = [("Authorization", auth.as_str())];
        policy.decide(
            &crate::Request { headers: &headers, ..crate::Request::new("GET", "/", crate::UnixTime(now)) },
            host,
        )
    }

    #[test]
    fn a_cached_token_decides_exactly_as_the_full_path_every_time() {
        let p = hs_policy("");
        let host = Caching::default();
        let t = hs256(SECRET, H, &claims(r#""jti":"j1","scope":"a b""#));
        let first = at(&p, &t, NOW, &host);
        assert!(first.allowed());
        assert_eq!((host.tokens.borrow().len(), host.hits.get()), (1, 0));
        let again = at(&p, &t, NOW, &host);
        assert_eq!(host.hits.get(), 1, "the second decision is a hit");
        assert_eq!(serde_json::to_value(&again).unwrap(), serde_json::to_value(&first).unwrap());

        // What depends on the request is checked on every hit, with the full path's reasons.
        for (now, want) in [(NOW + 300 + 10, Reason::Expired), (NOW - 10 - 11, Reason::IssuedInFuture)] {
            assert_eq!(at(&p, &t, now, &host).reason, want, "at {now}");
            assert_eq!(decide_with(&p, &t, &crate::NoRevocations).reason, Reason::Allowed);
            let uncached = {
                let auth = format!("Bearer {t}");
                let headers = [("Authorization", auth.as_str())];
                p.decide(
                    &crate::Request { headers: &headers, ..crate::Request::new("GET", "/", crate::UnixTime(now)) },
                    &crate::NoRevocations,
                )
            };
            assert_eq!(uncached.reason, want, "the full path agrees at {now}");
        }
        host.revoked.borrow_mut().revoke_token_id("j1");
        assert_eq!(at(&p, &t, NOW, &host).reason, Reason::Revoked);
        *host.revoked.borrow_mut() = RevocationSet::default();
        host.revoked.borrow_mut().revoke_subject("alice", NOW);
        assert_eq!(at(&p, &t, NOW, &host).reason, Reason::Revoked, "a subject revoked after issue");
        assert!(host.hits.get() >= 5);
    }

    #[test]
    fn only_tokens_that_passed_everything_are_kept() {
        let p = hs_policy("");
        let host = Caching::default();
        let forged = hs256(b"another-secret-another-secret-xx", H, &claims(""));
        let expired = hs256(SECRET, H, &claims("").replace(&format!(r#""exp":{}"#, NOW + 300), r#""exp":1"#));
        assert_eq!(at(&p, &expired, NOW, &host).reason, Reason::Expired);
        host.revoked.borrow_mut().revoke_token_id("gone");
        let revoked = hs256(SECRET, H, &claims(r#""jti":"gone""#));
        for t in [&forged, &expired, &revoked] {
            assert!(!at(&p, t, NOW, &host).allowed());
            assert!(!at(&p, t, NOW, &host).allowed());
        }
        assert_eq!((host.tokens.borrow().len(), host.hits.get()), (0, 0));
    }
}
