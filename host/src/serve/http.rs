//! Envoy's HTTP external authorization service, and the admin endpoints.
//!
//! In HTTP mode Envoy forwards the original method, path and the headers its
//! `authorization_request.allowed_headers` lets through. A 200 allows: headers matching
//! `authorization_response.allowed_upstream_headers` are set upstream, and
//! `x-envoy-auth-headers-to-remove` lists headers Envoy strips. Any other status denies, with
//! that status and body sent to the client.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use portcullis_core::request::split_path_and_query;
use portcullis_core::{Decision, OwnedRequest};

use super::authz::Authorizer;
use super::grpc::{deny_body, www_authenticate};

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
    let decision = s.authz.check(&request, "http");
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
    let (path, query) = split_path_and_query(target);
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(axum::http::uri::Authority::as_str))
        .unwrap_or("");
    let client_ip = client_address_header
        .and_then(|name| headers.get_all(name).iter().next_back())
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    let headers = headers
        .iter()
        .filter(|(k, _)| *k != header::HOST)
        .map(|(k, v)| (k.as_str().to_owned(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .collect();
    OwnedRequest {
        method: method.to_owned(),
        scheme: uri.scheme_str().unwrap_or("http").to_owned(),
        host: host.to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        client_ip,
        now,
    }
}

/// The response Envoy acts on.
pub fn to_response(d: &Decision) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(remove) = d.headers_to_remove.as_deref().filter(|r| !r.is_empty()) {
        let list = remove.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", ");
        if let Ok(v) = HeaderValue::from_str(&list) {
            headers.insert(HEADERS_TO_REMOVE, v);
        }
    }
    if d.allowed() {
        for (k, v) in &d.headers_to_set {
            match (HeaderName::try_from(&**k), HeaderValue::from_str(v)) {
                (Ok(k), Ok(v)) => {
                    headers.insert(k, v);
                }
                // Values are encoded by the core, so this cannot happen; leave the header unset
                // (less privilege upstream), and say so.
                _ => tracing::error!(header = &**k, "identity header value is not a valid HTTP value; not set"),
            }
        }
        return (StatusCode::OK, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-portcullis-reason", HeaderValue::from_static(d.reason.code()));
    if let Some(w) = www_authenticate(d.reason) {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(w));
    }
    let status = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::FORBIDDEN);
    (status, headers, Body::from(deny_body(d.reason))).into_response()
}
