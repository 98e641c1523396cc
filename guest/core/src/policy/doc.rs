//! The policy document exactly as written: YAML or JSON, `deny_unknown_fields` everywhere.
//!
//! These types only describe shape. Meaning (valid algorithms, key sizes, CIDRs, scope syntax,
//! cross-references) is checked by the compiler in `compile.rs`, which reports the path of the
//! offending value. `policies/schema.json` is generated from these types.

use std::collections::BTreeMap;

use serde::Deserialize;

#[cfg(feature = "schema")]
use schemars::JsonSchema;

/// A Portcullis policy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct PolicyDocument {
    /// Format version. Only `1` exists.
    pub version: u32,
    /// Size limits, checked before anything is parsed.
    #[serde(default)]
    pub limits: LimitsDoc,
    /// Trusted JWT issuers. Default: none.
    #[serde(default)]
    pub issuers: Vec<IssuerDoc>,
    /// HMAC service tokens. Default: not accepted.
    #[serde(default)]
    pub service_tokens: Option<ServiceTokensDoc>,
    /// Hashed API keys. Default: not accepted.
    #[serde(default)]
    pub api_keys: Option<ApiKeysDoc>,
    /// Static revocations, checked before the runtime's dynamic store. Default: none.
    #[serde(default)]
    pub revoked: RevokedDoc,
    /// What happens to a request no route matches: `deny` (403 `no_route`) or `authenticated`
    /// (any accepted credential, no further requirements). Default: `deny` when `routes` is
    /// present, `authenticated` when it is absent.
    #[serde(default)]
    pub default: Option<DefaultAction>,
    /// Whether a credential's `*` scope grant is honoured. Default `false`: `*` grants nothing.
    #[serde(default)]
    pub allow_global_scope_wildcard: bool,
    /// Named roles and their hierarchy. Default: none.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleDoc>,
    /// Routes: which requests need which credentials and requirements. Default: none (see
    /// `default`).
    #[serde(default)]
    pub routes: Option<Vec<RouteDoc>>,
    /// Allow and deny rules with priorities, applied after authentication. Default: none.
    #[serde(default)]
    pub rules: Vec<RuleDoc>,
    /// Identity headers set on allowed requests; every configured name is also stripped from
    /// every incoming request.
    #[serde(default)]
    pub identity_headers: IdentityHeadersDoc,
    /// What audit events include.
    #[serde(default)]
    pub audit: AuditDoc,
    /// Token-bucket rate limits, attached to routes and keyed by what you choose. Default: none.
    #[serde(default)]
    pub rate_limits: RateLimitsDoc,
    /// CORS settings for every route that has none of its own. Default: none (no CORS at the
    /// edge; preflights are decided like any other request).
    #[serde(default)]
    pub cors: Option<CorsDoc>,
    /// Headers added to every response at the edge, allowed or denied (for example
    /// `Strict-Transport-Security`, `X-Content-Type-Options: nosniff`,
    /// `Content-Security-Policy`), where the runtime can set response headers. Default: none.
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
}

/// Rate limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct RateLimitsDoc {
    /// Which rate-limit headers responses carry: `x-ratelimit` (`X-RateLimit-Limit`,
    /// `-Remaining`, `-Reset`), `ietf` (the IETF HTTPAPI draft's `RateLimit-Policy` and
    /// `RateLimit`), `both` or `none`. `Retry-After` is always sent with 429. Default
    /// `x-ratelimit`.
    pub headers: RateHeadersDoc,
    /// Whether allowed responses carry the remaining budget too (the same headers). Default
    /// `true`.
    pub on_allowed: Option<bool>,
    /// What happens when a limit applies and the runtime cannot count it: `deny` (503
    /// `limits_unavailable`) or `allow`. Default `deny`.
    pub when_uncounted: UncountedDoc,
    /// The limits. Every limit whose conditions hold spends one request from its bucket; the
    /// first empty bucket denies with 429 `rate_limited`.
    pub limits: Vec<RateLimitDoc>,
}

/// The rate-limit header form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub enum RateHeadersDoc {
    /// `X-RateLimit-Limit` / `X-RateLimit-Remaining` / `X-RateLimit-Reset` (seconds until full).
    #[default]
    XRatelimit,
    /// `RateLimit-Policy: "<id>";q=<burst>;w=<seconds>` and `RateLimit: "<id>";r=<remaining>;t=<seconds>`.
    Ietf,
    /// Both forms.
    Both,
    /// Neither (429 still carries `Retry-After`).
    None,
}

/// When a limit cannot be counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub enum UncountedDoc {
    /// 503 `limits_unavailable`.
    #[default]
    Deny,
    /// Let the request through uncounted.
    Allow,
}

/// One token-bucket limit.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct RateLimitDoc {
    /// Stable id: names the bucket, the `rule` of a `rate_limited` decision and the IETF
    /// header's policy. Required, unique.
    pub id: String,
    /// What one bucket is per: any of `api_key` (the key id), `subject`, `tenant`, `client`
    /// (the client address), `route`, `credential` (the kind), `issuer`. Several make one
    /// bucket per combination. A request lacking a part (no tenant, no API key) is not counted
    /// by this limit. Default `[api_key]`.
    #[serde(default = "default_rate_key")]
    pub key: Vec<String>,
    /// Requests per `per`. Default 20.
    #[serde(default = "default_rate_requests")]
    pub requests: u32,
    /// The period: `second`, `minute`, `hour` or `day`. Default `second`.
    #[serde(default)]
    pub per: PeriodDoc,
    /// Requests admitted at once by a full bucket. Default twice `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Route ids this limit applies to. Default: every route, and requests no route matches.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Credential kinds this limit applies to (`jwt`, `service_token`, `api_key`). Default: all.
    #[serde(default)]
    pub credentials: Vec<String>,
    /// Other rates for some requests: the first override whose conditions all hold replaces
    /// `requests`, `per` and `burst` (the bucket stays the same key).
    #[serde(default)]
    pub overrides: Vec<RateOverrideDoc>,
}

fn default_rate_key() -> Vec<String> {
    vec!["api_key".into()]
}

fn default_rate_requests() -> u32 {
    20
}

/// A limit's period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub enum PeriodDoc {
    /// One second.
    #[default]
    Second,
    /// 60 seconds.
    Minute,
    /// 3600 seconds.
    Hour,
    /// 86400 seconds.
    Day,
}

/// Another rate for the requests it matches. Each present condition must hold.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct RateOverrideDoc {
    /// Route ids.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Tenants of the identity.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Roles (through the hierarchy).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Credential kinds.
    #[serde(default)]
    pub credentials: Vec<String>,
    /// Requests per `per`.
    pub requests: u32,
    /// The period. Default `second`.
    #[serde(default)]
    pub per: PeriodDoc,
    /// Burst. Default twice `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// CORS at the edge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct CorsDoc {
    /// Allowed origins: exact (`https://app.example.com`) or one-label wildcards
    /// (`https://*.example.com`). Required, non-empty.
    pub origins: Vec<String>,
    /// Methods a preflight may ask for. Default: the route's methods, or `GET`, `HEAD`, `POST`
    /// when the route has none.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Request headers a preflight may ask for (case-insensitive). Default: none beyond the
    /// CORS-safelisted ones.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Response headers the browser may show the page (`Access-Control-Expose-Headers`).
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// `Access-Control-Max-Age` in seconds. Default 600.
    #[serde(default = "default_max_age")]
    pub max_age: u32,
    /// `Access-Control-Allow-Credentials: true`. Default `false`.
    #[serde(default)]
    pub credentials: bool,
}

fn default_max_age() -> u32 {
    600
}

/// The action for requests that match no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub enum DefaultAction {
    /// 403 `no_route`, before any credential is examined.
    Deny,
    /// Any credential the policy accepts; no scope, role or tenant requirements.
    Authenticated,
}

/// A role: what it implies and what it grants.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct RoleDoc {
    /// Roles this role implies (`admin` implies `operator`). Cycles are an error. Default: none.
    pub inherits: Vec<String>,
    /// Scope patterns the role grants (`orders:*`). Default: none.
    pub scopes: Vec<String>,
}

/// A route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct RouteDoc {
    /// Stable id, reported in decisions and audit events. Required, unique.
    pub id: String,
    /// Host to match (`api.example.com` or `*.example.com`), case-insensitive, port ignored.
    /// Default: any host.
    #[serde(default)]
    pub host: Option<String>,
    /// Methods to match. Default: any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Path pattern: `/exact`, `/prefix/**`, one-segment `*`, and captures such as
    /// `/v1/orgs/{org}/projects/{project}/**`. `**` only as the last segment. Required.
    pub path: String,
    /// No credential needed (health checks, login). Incompatible with requirements.
    /// Default `false`.
    #[serde(default)]
    pub public: bool,
    /// Which credentials the route accepts. Default: every credential the policy configures.
    /// When present, only what it lists is accepted.
    #[serde(default)]
    pub accept: Option<AcceptDoc>,
    /// Scopes that must all be granted. Default: none.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Alternative scope sets: at least one set must be granted in full. Default: none.
    #[serde(default)]
    pub any_scopes: Vec<Vec<String>>,
    /// Roles, any one of which (directly or through the hierarchy) is required. Default: none.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Binds the request's tenant to the identity's. Default: no tenant check.
    #[serde(default)]
    pub tenant: Option<TenantDoc>,
    /// Dry run: evaluate and report in `shadow`, never enforce. Default `false`.
    #[serde(default)]
    pub shadow: bool,
    /// CORS for this route; replaces the policy's `cors`. Default: the policy's.
    #[serde(default)]
    pub cors: Option<CorsDoc>,
}

/// What a route accepts. Kinds not listed are not accepted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct AcceptDoc {
    /// JWT issuers (their `issuer` values).
    pub issuers: Vec<String>,
    /// Service token audiences.
    pub service_audiences: Vec<String>,
    /// API keys: `true` for all, or a list of key ids.
    pub api_keys: Option<ApiKeyAcceptDoc>,
}

/// `true`/`false`, or specific API key ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub enum ApiKeyAcceptDoc {
    /// All keys (`true`) or none (`false`).
    All(bool),
    /// These key ids.
    Ids(Vec<String>),
}

/// Where a route finds the tenant a request addresses.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct TenantDoc {
    /// A `{param}` of the route's path. Exactly one of `path_param` and `header`.
    #[serde(default)]
    pub path_param: Option<String>,
    /// A request header. Exactly one of `path_param` and `header`.
    #[serde(default)]
    pub header: Option<String>,
    /// Roles that may act in any tenant (`platform-admin`). Default: none.
    #[serde(default)]
    pub cross_tenant_roles: Vec<String>,
}

/// An allow or deny rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct RuleDoc {
    /// Stable id, reported in decisions (`policy_denied`) and audit events. Required, unique.
    pub id: String,
    /// `allow` or `deny`.
    pub effect: Effect,
    /// Higher wins; at equal priority `deny` wins. Default 0.
    #[serde(default)]
    pub priority: i32,
    /// Conditions; all must hold (each lists alternatives). An empty `when` always matches.
    #[serde(default)]
    pub when: WhenDoc,
    /// Dry run: evaluate and report in `shadow`, never enforce. Default `false`.
    #[serde(default)]
    pub shadow: bool,
    /// Decide before any credential is read. Only request conditions (`routes`, `methods`,
    /// `paths`, `hosts`, `client_cidrs`, `not_client_cidrs`, `origins`, `headers`) are allowed.
    /// A winning deny answers 403 `policy_denied` whatever credential the request carries; a
    /// winning allow only lets the request on to authentication. Default `false`.
    #[serde(default)]
    pub before_authentication: bool,
}

/// A rule's effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub enum Effect {
    /// Allow, overriding the route's scope, role and tenant requirements.
    Allow,
    /// Deny with 403 `policy_denied`.
    Deny,
}

/// Rule conditions. Each present condition must hold; a list holds when any element does.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct WhenDoc {
    /// Route ids.
    pub routes: Vec<String>,
    /// Methods.
    pub methods: Vec<String>,
    /// Path patterns (same syntax as routes).
    pub paths: Vec<String>,
    /// Hosts (`api.example.com`, `*.example.com`).
    pub hosts: Vec<String>,
    /// Credential kinds: `jwt`, `service_token`, `api_key`.
    pub credentials: Vec<String>,
    /// Subjects.
    pub subjects: Vec<String>,
    /// Tenants.
    pub tenants: Vec<String>,
    /// Roles (through the hierarchy).
    pub roles: Vec<String>,
    /// Scopes the identity is granted.
    pub scopes: Vec<String>,
    /// Client address ranges.
    pub client_cidrs: Vec<String>,
    /// `Origin` values (`https://app.example.com`, `https://*.example.com`).
    pub origins: Vec<String>,
    /// Header name -> accepted values (exact).
    pub headers: BTreeMap<String, Vec<String>>,
    /// Client address ranges the client must be outside of (an unknown address is outside
    /// every range).
    pub not_client_cidrs: Vec<String>,
    /// Identity values: `subject`, `email`, `tenant`, `issuer`, `audience`, `key_id` or
    /// `groups` (any group) -> how it must match.
    pub claims: BTreeMap<String, ClaimMatchDoc>,
    /// Like `claims`, but each must *not* match (an absent value does not match): "only these
    /// e-mail domains" is one deny rule with `not_claims: {email: {domains: [...]}}`.
    pub not_claims: BTreeMap<String, ClaimMatchDoc>,
}

/// How an identity value must match; it holds when any listed alternative does.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ClaimMatchDoc {
    /// Exact values.
    pub equals: Vec<String>,
    /// Suffixes (exact, case-sensitive).
    pub ends_with: Vec<String>,
    /// E-mail domains: the part after the last `@` equals one, ASCII case-insensitively.
    /// `*.example.com` matches any subdomain of `example.com` (not `example.com` itself).
    pub domains: Vec<String>,
}

/// Names of the identity headers sent upstream. `null` turns one off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct IdentityHeadersDoc {
    /// Subject. Default `X-User-Id`.
    pub subject: Option<String>,
    /// E-mail. Default `X-User-Email`.
    pub email: Option<String>,
    /// Roles (after the hierarchy is applied), comma-separated. Default `X-User-Role`.
    pub roles: Option<String>,
    /// Groups, comma-separated. Default `X-User-Groups`.
    pub groups: Option<String>,
    /// Tenant. Default `X-Tenant-Id`.
    pub tenant: Option<String>,
    /// Granted scopes, space-separated. Default `X-Auth-Scopes`.
    pub scopes: Option<String>,
    /// Credential kind (`jwt`, `service_token`, `api_key`). Default: off.
    pub credential: Option<String>,
    /// Issuer. Default: off.
    pub issuer: Option<String>,
    /// The single highest of the identity's roles by the hierarchy (the one implying the most
    /// roles; ties go to the first in name order). Default: off.
    pub highest_role: Option<String>,
    /// More headers to strip from every incoming request. Default: none.
    pub remove: Vec<String>,
    /// Other names per credential kind (`jwt`, `service_token`, `api_key`): a field given
    /// there replaces the one above for that kind (`null` turns it off), for example
    /// `api_key: {subject: X-Api-Key-Id}`. Every name of every kind is stripped from every
    /// request.
    pub by_credential: BTreeMap<String, KindHeadersDoc>,
}

/// Identity header names for one credential kind: absent fields keep the general name, `null`
/// turns one off.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct KindHeadersDoc {
    /// Subject.
    #[serde(deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub subject: Option<Option<String>>,
    /// E-mail.
    #[serde(deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub email: Option<Option<String>>,
    /// Roles.
    #[serde(deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub roles: Option<Option<String>>,
    /// Groups.
    #[serde(deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub groups: Option<Option<String>>,
    /// Tenant.
    #[serde(deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub tenant: Option<Option<String>>,
    /// Scopes.
    #[serde(deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub scopes: Option<Option<String>>,
    /// Credential kind.
    #[serde(deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub credential: Option<Option<String>>,
    /// Issuer.
    #[serde(deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub issuer: Option<Option<String>>,
    /// Highest role.
    #[serde(deserialize_with = "present")]
    #[cfg_attr(feature = "schema", schemars(with = "Option<String>"))]
    pub highest_role: Option<Option<String>>,
}

/// A field that was written, even as `null` (absent fields take the `default`, `None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

impl Default for IdentityHeadersDoc {
    fn default() -> Self {
        IdentityHeadersDoc {
            subject: Some("X-User-Id".into()),
            email: Some("X-User-Email".into()),
            roles: Some("X-User-Role".into()),
            groups: Some("X-User-Groups".into()),
            tenant: Some("X-Tenant-Id".into()),
            scopes: Some("X-Auth-Scopes".into()),
            credential: None,
            issuer: None,
            highest_role: None,
            remove: Vec::new(),
            by_credential: BTreeMap::new(),
        }
    }
}

/// What audit events may contain beyond the decision itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct AuditDoc {
    /// Request headers to record (`User-Agent`, `X-Request-Id`). Credential headers are never
    /// recorded, even if listed. Default: none.
    pub headers: Vec<String>,
    /// Query parameters to record. Default: none.
    pub query_keys: Vec<String>,
}

/// Input size limits. A request over a limit is denied `malformed` before parsing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct LimitsDoc {
    /// Longest credential accepted, in bytes. Default 8192; 256 to 65536.
    pub max_token_bytes: usize,
    /// Most request headers accepted. Default 128.
    pub max_headers: usize,
    /// Largest total size of header names and values, in bytes. Default 65536.
    pub max_header_bytes: usize,
    /// Longest path plus query, in bytes. Default 8192.
    pub max_path_bytes: usize,
}

impl Default for LimitsDoc {
    fn default() -> Self {
        LimitsDoc { max_token_bytes: 8192, max_headers: 128, max_header_bytes: 65536, max_path_bytes: 8192 }
    }
}

/// A trusted JWT issuer and its keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct IssuerDoc {
    /// The exact `iss` value (compared byte for byte; no trailing-slash normalisation).
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one. Required, non-empty (unless
    /// `insecure_skip_audience`).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allowed `alg` values (case-sensitive): HS256, HS384, HS512, RS256, RS384, RS512, PS256,
    /// PS384, PS512, ES256, ES384, EdDSA. Required, non-empty.
    pub algorithms: Vec<String>,
    /// A JWKS file, relative to the policy file. Key sources (`jwks_file`, `jwks`, `jwks_uri`,
    /// `discovery`) combine: at least one is required, and every key they hold is trusted.
    #[serde(default)]
    pub jwks_file: Option<String>,
    /// An inline JWKS. HMAC (`oct`) keys inline are secrets in the policy: use `jwks_file`
    /// in production (`policy lint --production` flags this).
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(with = "Option<serde_json::Map<String, serde_json::Value>>"))]
    pub jwks: Option<serde_json::Value>,
    /// The identity provider's JWKS endpoint (`https://` only), fetched and kept current by the
    /// runtime (the sidecar fetches it at start, on its cache lifetime and on an unknown `kid`).
    /// Keys from the network are public keys only: `oct` keys there are skipped.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Read `jwks_uri` from `<issuer>/.well-known/openid-configuration` (OpenID Connect
    /// Discovery), whose `issuer` must equal this one exactly. The issuer must be `https://`.
    /// Default `false`.
    #[serde(default)]
    pub discovery: bool,
    /// DANGEROUS: accept tokens whatever their `aud` (for identity providers that cannot set
    /// one). A token minted for any other service is then accepted here. Default `false`.
    #[serde(default)]
    pub insecure_skip_audience: bool,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds. Default 60.
    #[serde(default = "default_jwt_leeway")]
    pub leeway_seconds: u32,
    /// Longest `exp - iat` accepted, in seconds. When set, `exp` is required. Default: unbounded.
    #[serde(default)]
    pub max_lifetime_seconds: Option<u32>,
    /// Claims that must be present. Default `[exp]`. (`iss` and `aud` are always required.)
    #[serde(default = "default_required_claims")]
    pub required_claims: Vec<String>,
    /// Where identity fields come from.
    #[serde(default)]
    pub claims: ClaimsDoc,
    /// Group (or entitlement) name -> roles it grants. Default: none.
    #[serde(default)]
    pub group_roles: BTreeMap<String, Vec<String>>,
}

fn default_jwt_leeway() -> u32 {
    60
}

fn default_required_claims() -> Vec<String> {
    vec!["exp".into()]
}

/// Claim paths for identity fields. A path is dotted (`realm_access.roles`); a claim whose name
/// contains dots is written in brackets (`[https://example.com/roles]`). `null` turns a field off.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ClaimsDoc {
    /// Subject. Default `sub`.
    pub subject: String,
    /// E-mail. Default `email`.
    pub email: Option<String>,
    /// Scope claims, merged: a space-separated string or an array. Default `[scope, scp]`.
    pub scopes: Vec<String>,
    /// Roles: a string or an array. Default `roles`.
    pub roles: Option<String>,
    /// Groups or entitlements: a string or an array. Default `groups`.
    pub groups: Option<String>,
    /// Tenant. Default `tenant`.
    pub tenant: Option<String>,
}

impl Default for ClaimsDoc {
    fn default() -> Self {
        ClaimsDoc {
            subject: "sub".into(),
            email: Some("email".into()),
            scopes: vec!["scope".into(), "scp".into()],
            roles: Some("roles".into()),
            groups: Some("groups".into()),
            tenant: Some("tenant".into()),
        }
    }
}

/// HMAC-signed service tokens, `<prefix>-v1.<payload>.<signature>`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ServiceTokensDoc {
    /// Token prefix, 1 to 16 of `[A-Za-z0-9_]` (tokens start with `<prefix>-v1.`). Required.
    pub prefix: String,
    /// Signing keys: the first is active (used by `portcullis token service`), all verify.
    /// Required, non-empty.
    pub keys: Vec<SecretDoc>,
    /// Audiences this deployment accepts. Required, non-empty.
    pub audiences: Vec<String>,
    /// Request header that must equal the token's `worker_id`. Default `X-Worker-ID`.
    #[serde(default = "default_worker_header")]
    pub worker_header: String,
    /// Clock skew tolerated, in seconds. Default 30.
    #[serde(default = "default_service_leeway")]
    pub leeway_seconds: u32,
    /// Longest `exp - iat` accepted, in seconds. Default 900 (15 minutes).
    #[serde(default = "default_service_lifetime")]
    pub max_lifetime_seconds: u32,
    /// Scope patterns a service token may never grant (`admin:*`, `*`). Matching grants are
    /// dropped, never honoured. Default: none.
    #[serde(default)]
    pub denied_scopes: Vec<String>,
}

fn default_worker_header() -> String {
    "X-Worker-ID".into()
}
fn default_service_leeway() -> u32 {
    30
}
fn default_service_lifetime() -> u32 {
    900
}

/// A named secret, inline or (preferably) from a file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct SecretDoc {
    /// Key id, shown in identities and logs (never the secret). Required.
    pub id: String,
    /// The secret, inline (at least 32 bytes). Exactly one of `secret` and `secret_file`.
    #[serde(default)]
    pub secret: Option<String>,
    /// A file holding the secret, relative to the policy file. One trailing newline is removed.
    #[serde(default)]
    pub secret_file: Option<String>,
}

impl std::fmt::Debug for SecretDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretDoc")
            .field("id", &self.id)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .finish()
    }
}

/// Hashed API keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ApiKeysDoc {
    /// Type prefix every key starts with (`ask_`): 2 to 16 of `[A-Za-z0-9_-]`. Required.
    pub prefix: String,
    /// Characters (including `prefix`) used to look a key up. Default 12.
    #[serde(default = "default_prefix_length")]
    pub prefix_length: usize,
    /// Header carrying a key, besides `Authorization: Bearer`. Default `X-API-Key`.
    #[serde(default = "default_api_key_header")]
    pub header: String,
    /// Keys. Default: none.
    #[serde(default)]
    pub keys: Vec<ApiKeyDoc>,
    /// A YAML or JSON file holding more keys (`keys: [...]`), relative to the policy file.
    #[serde(default)]
    pub keys_file: Option<String>,
}

fn default_prefix_length() -> usize {
    12
}
fn default_api_key_header() -> String {
    "X-API-Key".into()
}

/// The file named by `api_keys.keys_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub(crate) struct ApiKeysFileDoc {
    /// Keys.
    pub keys: Vec<ApiKeyDoc>,
}

/// One API key, stored as its hash.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct ApiKeyDoc {
    /// Stable id: used for revocation, audit, and as the default subject. Required.
    pub id: String,
    /// The key's first `prefix_length` characters, as shown to its owner. Required.
    pub prefix: String,
    /// Hex SHA-256 of the whole key. Required.
    pub sha256: String,
    /// Subject of the identity. Default: `id`.
    #[serde(default)]
    pub subject: Option<String>,
    /// When the key stops working: Unix seconds or RFC 3339. Default: never.
    #[serde(default)]
    pub expires_at: Option<TimeDoc>,
    /// When the key was issued (used by subject revocations). Default: unknown.
    #[serde(default)]
    pub created_at: Option<TimeDoc>,
    /// Client address ranges (CIDR) allowed to use the key. Default: any.
    #[serde(default)]
    pub allowed_cidrs: Vec<String>,
    /// `Origin` values allowed (`https://app.example.com`, `https://*.example.com`). When set,
    /// a request without a matching `Origin` is refused. Default: any.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Scopes granted (patterns such as `orders:*` allowed). Default: none.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Roles granted. Default: none.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Tenant of the key. Default: none.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A point in time: Unix seconds or an RFC 3339 timestamp.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub enum TimeDoc {
    /// Unix seconds.
    Seconds(i64),
    /// RFC 3339, e.g. `2027-01-01T00:00:00Z`.
    Text(String),
}

/// Static revocations.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct RevokedDoc {
    /// Revoked JWT `jti` values (any issuer).
    pub jti: Vec<String>,
    /// Revoked service token `jti` values.
    pub service_token_jti: Vec<String>,
    /// Revoked API key ids.
    pub api_keys: Vec<String>,
    /// Subjects whose credentials issued at or before `before` are revoked.
    pub subjects: Vec<SubjectRevocationDoc>,
}

/// A subject revocation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "schema", derive(JsonSchema))]
pub struct SubjectRevocationDoc {
    /// The subject.
    pub subject: String,
    /// Credentials issued at or before this time are revoked.
    pub before: TimeDoc,
}
