//! The admin listener: health, readiness, metrics, and the revocation API and feed.
//!
//! | method | path | scope | what |
//! | --- | --- | --- | --- |
//! | GET | `/healthz` | none | the process is up |
//! | GET | `/readyz` | none | a policy is loaded, revocations synchronised, not draining |
//! | GET | `/metrics` | none | Prometheus text |
//! | GET | `/v1/revocations` | read | list (`kind`, `tenant`, `limit`) |
//! | POST | `/v1/revocations` | write | revoke (JSON body) |
//! | DELETE | `/v1/revocations/{kind}/{id}` | write | undo a revocation |
//! | GET | `/v1/revocations/feed` | read | snapshot, or changes `since` a cursor of a `source` |
//!
//! The revocation endpoints are guarded by the policy itself: each call is decided like any
//! check (same component, same credentials, same revocations), as a request to the pseudo-host
//! `portcullis-admin` with the real method and path, and the identity it yields must also hold
//! the endpoint's scope (default `portcullis:revocations:read` / `:write`; `portcullis:*`
//! covers both), directly or through a role, as the core answers it (`Policy::grants`). Handlers
//! get their caller only through the authorizing extractor `Caller<Read>` / `Caller<Write>`.
//! The client cannot choose the host, so routes written for other hosts do not apply. An identity bound to a tenant manages only its tenant's entries and cannot read the
//! feed (which spans every tenant) or delete entries.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use portcullis_core::{Identity, Reason, RevocationKind};
use serde::Deserialize;

use super::authz::Authorizer;
use crate::revocation::{ListFilter, LiveRevocations, Record, Store, StoreError};

/// The pseudo-host admin calls are decided for.
pub const ADMIN_HOST: &str = "portcullis-admin";

/// The revocation side of the admin API.
#[derive(Clone, Debug)]
pub struct RevocationAdmin {
    /// Where changes are written.
    pub store: Store,
    /// The live set (feed, readiness).
    pub live: Arc<LiveRevocations>,
    /// Scope needed to list and read the feed.
    pub read_scope: String,
    /// Scope needed to revoke and unrevoke.
    pub write_scope: String,
}

/// Default scopes.
pub const READ_SCOPE: &str = "portcullis:revocations:read";
/// See [`READ_SCOPE`].
pub const WRITE_SCOPE: &str = "portcullis:revocations:write";

#[derive(Debug)]
struct AdminState {
    authz: Arc<Authorizer>,
    revocation: Option<RevocationAdmin>,
}

/// The admin router.
pub fn admin_app(authz: Arc<Authorizer>, revocation: Option<RevocationAdmin>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/revocations", get(list).post(revoke))
        .route("/v1/revocations/feed", get(feed))
        .route("/v1/keys", get(keys))
        .route("/v1/revocations/{kind}/{id}", delete(unrevoke))
        .with_state(Arc::new(AdminState { authz, revocation }))
}

async fn readyz(State(s): State<Arc<AdminState>>) -> (StatusCode, String) {
    if !s.authz.ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    if let Some(r) = &s.revocation
        && !r.live.synced()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "revocations not loaded yet\n".into());
    }
    (StatusCode::OK, format!("ready generation={}\n", s.authz.generation().id))
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.authz.metrics().render())
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": code, "message": message }))).into_response()
}

fn store_error(e: &StoreError) -> Response {
    let status = match e {
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        StoreError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.code(), &e.to_string())
}

fn denied(reason: Reason) -> Response {
    let status = StatusCode::from_u16(reason.status()).unwrap_or(StatusCode::FORBIDDEN);
    (status, [(header::CONTENT_TYPE, "application/json")], portcullis_adapter::deny::body(reason)).into_response()
}

/// An early answer (boxed: a `Response` is large).
struct Reject(Box<Response>);

impl From<Response> for Reject {
    fn from(r: Response) -> Reject {
        Reject(Box::new(r))
    }
}

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        *self.0
    }
}

type Answer = Result<Response, Reject>;

/// The scope an endpoint needs.
trait Need: Send + Sync + 'static {
    fn scope(r: &RevocationAdmin) -> &str;
}

/// Reading: list and feed.
struct Read;
/// Writing: revoke and unrevoke.
struct Write;

impl Need for Read {
    fn scope(r: &RevocationAdmin) -> &str {
        &r.read_scope
    }
}

impl Need for Write {
    fn scope(r: &RevocationAdmin) -> &str {
        &r.write_scope
    }
}

/// A caller the policy allowed and the core found granted the endpoint's scope (directly or
/// through a role). The only way a handler gets one is by extracting it, which authorizes: a
/// revocation handler without this argument has no caller to act for.
struct Caller<N> {
    identity: Arc<Identity>,
    need: std::marker::PhantomData<N>,
}

impl<N> Caller<N> {
    fn actor(&self) -> String {
        let i = &self.identity;
        match (&i.subject, &i.token_id) {
            (Some(s), _) => s.to_string(),
            (None, Some(t)) => format!("{}:{t}", i.credential.name()),
            (None, None) => i.credential.name().to_string(),
        }
    }

    fn tenant(&self) -> Option<&str> {
        self.identity.tenant.as_deref()
    }
}

impl<N: Need> axum::extract::FromRequestParts<Arc<AdminState>> for Caller<N> {
    type Rejection = Reject;

    /// Decides the admin call through the policy (as a request to [`ADMIN_HOST`]), then asks
    /// the core whether the identity is granted the endpoint's scope.
    async fn from_request_parts(parts: &mut axum::http::request::Parts, s: &Arc<AdminState>) -> Result<Self, Reject> {
        let r = revocations(s)?;
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let mut req = super::http::to_request(parts.method.as_str(), &parts.uri, &parts.headers, None, s.authz.now());
        req.host = ADMIN_HOST.into();
        req.scheme = "http".into();
        req.client_ip = peer;
        let authz = Arc::clone(&s.authz);
        let (d, generation) = tokio::task::spawn_blocking(move || authz.check_pinned(&req, "admin"))
            .await
            .map_err(|_| denied(Reason::InternalError))?;
        if !d.allowed() {
            return Err(denied(d.reason).into());
        }
        let Some(identity) = d.identity else { return Err(denied(Reason::MissingCredential).into()) };
        // The policy that authenticated the caller is the one asked about the grant.
        if !generation.policy.grants(&identity, N::scope(r)) {
            return Err(denied(Reason::InsufficientScope).into());
        }
        Ok(Caller { identity, need: std::marker::PhantomData })
    }
}

fn revocations(s: &AdminState) -> Result<&RevocationAdmin, Reject> {
    s.revocation.as_ref().ok_or_else(|| {
        error(StatusCode::NOT_FOUND, "revocations_disabled", "this sidecar has no revocation store").into()
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    kind: Option<RevocationKind>,
    tenant: Option<String>,
    limit: Option<usize>,
}

async fn list(
    State(s): State<Arc<AdminState>>,
    caller: Caller<Read>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let r = revocations(&s)?;
    let Ok(Query(q)) = q else {
        return Err(error(StatusCode::BAD_REQUEST, "revocation_invalid", "bad query string").into());
    };
    let tenant = match (caller.tenant(), q.tenant) {
        (Some(mine), Some(asked)) if asked != mine => return Err(denied(Reason::TenantMismatch).into()),
        (Some(mine), _) => Some(mine.to_owned()),
        (None, asked) => asked,
    };
    let filter = ListFilter { kind: q.kind, tenant, limit: Some(q.limit.unwrap_or(1000).min(100_000)) };
    Ok(match r.store.list(&filter).await {
        Ok(records) => Json(serde_json::json!({ "revocations": records })).into_response(),
        Err(e) => store_error(&e),
    })
}

/// The body of `POST /v1/revocations`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    kind: RevocationKind,
    id: String,
    #[serde(default)]
    reason: String,
    tenant: Option<String>,
    issued_before: Option<i64>,
    expires_at: Option<i64>,
}

async fn revoke(
    State(s): State<Arc<AdminState>>,
    caller: Caller<Write>,
    body: Result<Json<RevokeBody>, axum::extract::rejection::JsonRejection>,
) -> Answer {
    let r = revocations(&s)?;
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return Err(error(StatusCode::BAD_REQUEST, "revocation_invalid", &e.body_text()).into()),
    };
    let tenant = match (caller.tenant(), body.tenant) {
        (Some(mine), Some(asked)) if asked != mine => return Err(denied(Reason::TenantMismatch).into()),
        (Some(mine), _) => Some(mine.to_owned()),
        (None, asked) => asked,
    };
    let now = s.authz.now();
    let mut record = Record::new(body.kind, body.id, caller.actor(), now);
    if body.kind == RevocationKind::Subject {
        record.issued_before = Some(body.issued_before.unwrap_or(now));
    } else if body.issued_before.is_some() {
        return Err(
            error(StatusCode::BAD_REQUEST, "revocation_invalid", "issued_before applies to subjects only").into()
        );
    }
    record.tenant = tenant;
    record.reason = body.reason;
    record.expires_at = body.expires_at;
    Ok(match r.store.revoke(&record).await {
        Ok(changed) => {
            audit(&s.authz, "revoke", &record, changed, now);
            let status = if changed { StatusCode::CREATED } else { StatusCode::OK };
            (status, Json(serde_json::json!({ "changed": changed, "revocation": record }))).into_response()
        }
        Err(e) => store_error(&e),
    })
}

async fn unrevoke(
    State(s): State<Arc<AdminState>>,
    caller: Caller<Write>,
    Path((kind, id)): Path<(String, String)>,
) -> Answer {
    let r = revocations(&s)?;
    if caller.tenant().is_some() {
        return Err(denied(Reason::TenantMismatch).into());
    }
    let Some(kind) = RevocationKind::from_code(&kind) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "revocation_invalid",
            "unknown kind (jti, service-token, api-key, subject)",
        )
        .into());
    };
    let now = s.authz.now();
    Ok(match r.store.unrevoke(kind, &id).await {
        Ok(changed) => {
            let record = Record::new(kind, id, caller.actor(), now);
            audit(&s.authz, "unrevoke", &record, changed, now);
            let status = if changed { StatusCode::OK } else { StatusCode::NOT_FOUND };
            (status, Json(serde_json::json!({ "changed": changed }))).into_response()
        }
        Err(e) => store_error(&e),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    since: Option<i64>,
    source: Option<String>,
}

async fn feed(
    State(s): State<Arc<AdminState>>,
    caller: Caller<Read>,
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let r = revocations(&s)?;
    if caller.tenant().is_some() {
        return Err(denied(Reason::TenantMismatch).into());
    }
    let Ok(Query(q)) = q else {
        return Err(error(StatusCode::BAD_REQUEST, "revocation_invalid", "bad query string").into());
    };
    let since = q.source.zip(q.since);
    let live = Arc::clone(&r.live);
    // A snapshot of a large set is built off the async workers.
    let built = tokio::task::spawn_blocking(move || live.feed(since.as_ref().map(|(s, n)| (s.as_str(), *n)))).await;
    Ok(match built {
        Ok(Some(f)) => Json(f).into_response(),
        Ok(None) => error(StatusCode::SERVICE_UNAVAILABLE, "revocation_stale", "revocations not loaded yet"),
        Err(_) => denied(Reason::InternalError),
    })
}

/// The key sets from the network in force (`{"generation", "sets": {url: jwks}}`), for the
/// Envoy filter and the Spin component to follow. Public keys an identity provider publishes
/// to anyone, so no credential is asked; `ETag` is the generation, and `If-None-Match` with it
/// answers 304.
async fn keys(State(s): State<Arc<AdminState>>, headers: axum::http::HeaderMap) -> Response {
    let generation = s.authz.generation();
    let etag = format!("\"{}\"", generation.id);
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == etag.as_bytes()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    let mut sets = serde_json::Map::new();
    for source in generation.bundle.remote_key_sources().unwrap_or_default() {
        if let Some(doc) = generation.bundle.files.get(&source.url).and_then(|b| serde_json::from_slice(b).ok()) {
            sets.insert(source.url, doc);
        }
    }
    let body = serde_json::json!({ "generation": generation.id, "sets": sets });
    ([(header::ETAG, etag)], Json(body)).into_response()
}

/// One audit event per change made through the API (and a log line).
fn audit(authz: &Authorizer, op: &str, r: &Record, changed: bool, now: i64) {
    tracing::info!(
        op,
        kind = %r.kind,
        id = %r.id,
        tenant = r.tenant.as_deref().unwrap_or(""),
        actor = %r.actor,
        changed,
        "revocation change via the admin API"
    );
    let event = serde_json::json!({
        "type": "revocation",
        "time": now,
        "op": op,
        "changed": changed,
        "kind": r.kind,
        "id": r.id,
        "issued_before": r.issued_before,
        "tenant": r.tenant,
        "reason": r.reason,
        "actor": r.actor,
        "expires_at": r.expires_at,
    });
    authz.audit(event.to_string());
}
