//! Envoy's external authorization gRPC API (`envoy.service.auth.v3.Authorization/Check`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::envoy::config::core::v3::address;
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use envoy_types::pb::google::rpc;
use portcullis_adapter::deny::{Denial, Forward};
use portcullis_adapter::request::RequestParts;
use portcullis_core::{Decision, OwnedRequest};

use super::authz::Authorizer;

/// gRPC status codes used in `CheckResponse.status`.
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;
const UNAVAILABLE: i32 = 14;
const RESOURCE_EXHAUSTED: i32 = 8;
const UNAUTHENTICATED: i32 = 16;

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct GrpcService {
    authz: Arc<Authorizer>,
}

impl GrpcService {
    /// A service deciding with `authz`.
    pub fn new(authz: Arc<Authorizer>) -> GrpcService {
        GrpcService { authz }
    }
}

#[tonic::async_trait]
impl Authorization for GrpcService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let req = from_check_request(request.get_ref(), self.authz.now());
        let decision = crate::remote_keys::check(&self.authz, &req, "grpc").await;
        Ok(tonic::Response::new(to_check_response(&decision)))
    }
}

/// The request Envoy asks about. Pseudo-headers are dropped (method, host and path are fields);
/// the client address is the peer Envoy saw, never a header.
pub fn from_check_request(c: &CheckRequest, now: i64) -> OwnedRequest {
    let attrs = c.attributes.as_ref();
    let http = attrs.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
    let client_ip = attrs
        .and_then(|a| a.source.as_ref())
        .and_then(|p| p.address.as_ref())
        .and_then(|a| a.address.as_ref())
        .and_then(|a| match a {
            address::Address::SocketAddress(s) => s.address.parse::<IpAddr>().ok(),
            _ => None,
        });
    let Some(http) = http else {
        return OwnedRequest { client_ip, now, ..OwnedRequest::default() };
    };
    let parts = RequestParts::new(&http.method, &http.path, &http.host).scheme(&http.scheme).query(&http.query);
    // `header_map` (Envoy's encode_raw_headers) keeps repeated headers apart; `headers` joins them.
    let parts = match &http.header_map {
        Some(map) if !map.headers.is_empty() => parts.headers(map.headers.iter().map(|h| {
            let value: &[u8] = if h.value.is_empty() { &h.raw_value } else { h.value.as_bytes() };
            (h.key.as_str(), value)
        })),
        _ => parts.headers(http.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()))),
    };
    parts.peer(client_ip).build(now)
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), value: value.into(), ..HeaderValue::default() }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        ..HeaderValueOption::default()
    }
}

/// A header for the upstream's response: replaces the upstream's, except `vary`, which is added
/// to (the upstream's own reasons to vary still hold).
fn response_header(key: &str, value: &str) -> HeaderValueOption {
    let mut h = header(key, value);
    if key == "vary" {
        h.append_action = HeaderAppendAction::AppendIfExistsOrAdd.into();
    }
    h
}

fn string(s: &str) -> Value {
    Value { kind: Some(value::Kind::StringValue(s.to_owned())) }
}

/// Decision facts for Envoy's access logs (`%DYNAMIC_METADATA(envoy.filters.http.ext_authz:reason)%`).
fn metadata(d: &Decision) -> Struct {
    let mut fields = BTreeMap::new();
    fields.insert("reason".to_string(), string(d.reason.code()));
    if let Some(r) = &d.route {
        fields.insert("route".into(), string(r));
    }
    if let Some(r) = &d.rule {
        fields.insert("rule".into(), string(r));
    }
    if let Some(id) = &d.identity {
        fields.insert("credential".into(), string(id.credential.name()));
        if let Some(s) = &id.subject {
            fields.insert("subject".into(), string(s));
        }
    }
    if let Some(s) = &d.shadow {
        fields.insert("shadow_reason".into(), string(s.reason.code()));
    }
    Struct { fields: fields.into_iter().collect() }
}

/// The answer Envoy acts on.
pub fn to_check_response(d: &Decision) -> CheckResponse {
    if d.allowed() {
        let forward = Forward::of(d);
        return CheckResponse {
            status: Some(rpc::Status { code: OK, ..rpc::Status::default() }),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: forward.set.iter().map(|(k, v)| header(k, v)).collect(),
                headers_to_remove: forward.remove.iter().map(|h| (*h).to_owned()).collect(),
                // CORS, rate-limit and security headers, on the response Envoy returns.
                response_headers_to_add: d.response_headers.iter().map(|(k, v)| response_header(k, v)).collect(),
                ..OkHttpResponse::default()
            })),
            dynamic_metadata: Some(metadata(d)),
        };
    }
    let code = match d.status() {
        401 => UNAUTHENTICATED,
        503 => UNAVAILABLE,
        429 => RESOURCE_EXHAUSTED,
        _ => PERMISSION_DENIED,
    };
    let denial = Denial::of(d.reason);
    let (status, body, headers) = match denial {
        Some(Denial { status, body, headers }) => (status, body, headers),
        None => (d.status(), String::new(), Vec::new()),
    };
    CheckResponse {
        status: Some(rpc::Status { code, message: d.reason.code().into(), ..rpc::Status::default() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: i32::from(status) }),
            headers: headers
                .into_iter()
                .map(|(k, v)| header(k, v))
                .chain(d.response_headers.iter().map(|(k, v)| header(k, v)))
                .collect(),
            body,
        })),
        dynamic_metadata: Some(metadata(d)),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};

    use portcullis_core::Reason;

    use super::*;

    fn check_request(path: &str, headers: &[(&str, &str)], peer: &str) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: Some(Address {
                        address: Some(address::Address::SocketAddress(SocketAddress {
                            address: peer.into(),
                            ..SocketAddress::default()
                        })),
                    }),
                    ..Peer::default()
                }),
                request: Some(Request {
                    http: Some(HttpRequest {
                        method: "GET".into(),
                        path: path.into(),
                        host: "api.example.com".into(),
                        scheme: "https".into(),
                        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
                        ..HttpRequest::default()
                    }),
                    ..Request::default()
                }),
                ..AttributeContext::default()
            }),
        }
    }

    #[test]
    fn check_requests_become_requests_without_pseudo_headers() {
        let c = check_request("/v1/orders?page=2", &[(":path", "/x"), ("authorization", "Bearer t")], "203.0.113.9");
        let r = from_check_request(&c, 7);
        assert_eq!((r.method.as_str(), r.path.as_str(), r.query.as_str()), ("GET", "/v1/orders", "page=2"));
        assert_eq!(r.headers, vec![("authorization".to_string(), "Bearer t".to_string())]);
        assert_eq!(r.client_ip, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(r.now, 7);
    }

    #[test]
    fn an_empty_check_request_is_an_empty_request_not_a_panic() {
        let r = from_check_request(&CheckRequest::default(), 1);
        assert!(r.path.is_empty() && r.client_ip.is_none());
    }

    #[test]
    fn denials_carry_status_reason_and_challenge() {
        let resp = to_check_response(&Decision::deny(Reason::Expired));
        assert_eq!(resp.status.as_ref().unwrap().code, UNAUTHENTICATED);
        let Some(HttpResponse::DeniedResponse(d)) = resp.http_response else { panic!() };
        assert_eq!(d.status.unwrap().code, 401);
        assert_eq!(d.body, r#"{"error":"expired","status":401}"#);
        let names: Vec<_> = d.headers.iter().map(|h| h.header.as_ref().unwrap().key.as_str()).collect();
        assert_eq!(names, ["content-type", "x-portcullis-reason", "www-authenticate"]);
        let resp = to_check_response(&Decision::deny(Reason::InternalError));
        assert_eq!(resp.status.unwrap().code, UNAVAILABLE);
        assert_eq!(portcullis_adapter::deny::www_authenticate(Reason::TenantMismatch), None);
    }
}
