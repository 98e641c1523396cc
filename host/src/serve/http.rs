//! Envoy's HTTP external authorization service, and the admin endpoints.
//!
//! In HTTP mode Envoy forwards the original method, path and the headers its
//! `authorization_request.allowed_headers` lets through. A 200 allows: headers matching
//! `authorization_response.allowed_upstream_headers` are set upstream, and
//! `x-envoy-auth-headers-to-remove` lists headers Envoy strips. Any other status denies, with
//! that status and body sent to the client.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_adapter::deny::{Denial, Forward};
use portcullis_adapter::request::RequestParts;
use portcullis_core::{Decision, OwnedRequest};

use super::authz::Authorizer;

/// The header Envoy reads to strip headers from the upstream request (HTTP mode).
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

/// State of the HTTP ext_authz service.
#[derive(Debug)]
pub struct HttpState {
    /// The decision service.
    pub authz: Arc<Authorizer>,
    /// Header whose last entry is the client address Envoy saw (`x-forwarded-for` when Envoy
    /// runs with `use_remote_address`). Only safe because this service is reachable only from
    /// Envoy; `None` treats the client address as unknown.
    pub client_address_header: Option<HeaderName>,
}

/// The HTTP ext_authz service: every method and path is a check.
pub fn ext_authz_app(state: Arc<HttpState>) -> Router {
    Router::new().fallback(ext_authz).with_state(state)
}

async fn ext_authz(State(s): State<Arc<HttpState>>, req: axum::extract::Request) -> Response {
    let request =
        to_request(req.method().as_str(), req.uri(), req.headers(), s.client_address_header.as_ref(), s.authz.now());
    let decision = crate::remote_keys::check(&s.authz, &request, "http").await;
    to_response(&decision)
}

/// The request Envoy forwarded, as Portcullis sees it.
pub fn to_request(
    method: &str,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    client_address_header: Option<&HeaderName>,
    now: i64,
) -> OwnedRequest {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or("", axum::http::uri::Authority::as_str);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or(authority);
    let parts = RequestParts::new(method, target, host)
        .scheme(uri.scheme_str().unwrap_or("http"))
        .headers(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())));
    match client_address_header {
        Some(name) => parts.client_address_from(name.as_str()),
        None => parts,
    }
    .build(now)
}

/// The decision's response headers (CORS, rate limits, the policy's): Envoy passes them to the
/// client on a denial, and on success those `allowed_client_headers_on_success` names
/// (docs/envoy.md).
fn append_response_headers(d: &Decision, headers: &mut HeaderMap) {
    for (k, v) in &d.response_headers {
        match (HeaderName::try_from(&**k), HeaderValue::from_str(v)) {
            (Ok(k), Ok(v)) => {
                headers.insert(k, v);
            }
            // The core checks names and values when it compiles the policy.
            _ => tracing::error!(header = &**k, "response header is not a valid HTTP header; not set"),
        }
    }
}

/// The response Envoy acts on.
pub fn to_response(d: &Decision) -> Response {
    let mut headers = HeaderMap::new();
    let forward = Forward::of(d);
    if !forward.remove.is_empty()
        && let Ok(v) = HeaderValue::from_str(&forward.remove.join(", "))
    {
        headers.insert(HEADERS_TO_REMOVE, v);
    }
    let Some(denial) = Denial::of(d.reason) else {
        for (k, v) in forward.set {
            match (HeaderName::try_from(k), HeaderValue::from_str(v)) {
                (Ok(k), Ok(v)) => {
                    headers.insert(k, v);
                }
                // Values are encoded by the core, so this cannot happen; leave the header unset
                // (less privilege upstream), and say so.
                _ => tracing::error!(header = k, "identity header value is not a valid HTTP value; not set"),
            }
        }
        append_response_headers(d, &mut headers);
        return (StatusCode::OK, headers).into_response();
    };
    for (k, v) in denial.headers {
        headers.insert(k, HeaderValue::from_static(v));
    }
    append_response_headers(d, &mut headers);
    let status = StatusCode::from_u16(denial.status).unwrap_or(StatusCode::FORBIDDEN);
    (status, headers, Body::from(denial.body)).into_response()
}
