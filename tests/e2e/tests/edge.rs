//! Network rules decided before authentication, through Envoy: the sidecar sees the client
//! address Envoy reports, the filter reads Envoy's peer, and a blocked range is refused with
//! 403 whatever it presents, with the policy's security headers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddr;

use portcullis_e2e::{
    AuthzApi, Envoy, TempDir, echo_upstream, envoy_config, filter_envoy_config, headers, live_api_key, plugin_config,
    request, root,
};
use portcullis_host::serve::{Config, Sidecar};

/// `policies/edge.yaml` with loopback (every test client) in its blocked range.
fn blocking_loopback(text: &str) -> String {
    let blocked = text.replace("client_cidrs: [198.51.100.0/24]", "client_cidrs: [127.0.0.0/8]");
    assert_ne!(blocked, text, "the edge example's blocked range moved");
    blocked
}

async fn assert_blocked(addr: SocketAddr) {
    for credential in
        [headers(&[]), headers(&[("Authorization", "Bearer not.a.token")]), headers(&[("X-API-Key", &live_api_key())])]
    {
        let resp = request(addr, "GET", "/v1/orders/1", "api.example.com", &credential).await.unwrap();
        assert_eq!((resp.status, resp.header("x-portcullis-reason")), (403, Some("policy_denied")), "{}", resp.body);
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(resp.header("www-authenticate"), None, "no challenge: authenticating cannot help");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_range_is_403_whatever_it_presents_through_the_sidecar() {
    let dir = TempDir::new("edge");
    let text = std::fs::read_to_string(root().join("policies/edge.yaml")).unwrap();
    std::fs::write(dir.path().join("edge.yaml"), blocking_loopback(&text)).unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    for f in ["jwks.json", "api-keys.yaml"] {
        std::fs::copy(root().join("policies/keys").join(f), dir.path().join("keys").join(f)).unwrap();
    }
    let config =
        Config { client_address_header: Some("x-forwarded-for".into()), ..Config::local(dir.path().join("edge.yaml")) };
    let h = Sidecar::build(config).await.unwrap().serve().unwrap();
    let upstream = echo_upstream().await;
    let envoy = Envoy::start(&envoy_config(AuthzApi::Grpc(h.grpc_addr), upstream)).await;
    assert_blocked(envoy.listener).await;
    drop(envoy);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_range_is_403_whatever_it_presents_in_the_filter() {
    let mut config = plugin_config("policies/edge.yaml", serde_json::json!({}));
    config["policy"] = blocking_loopback(config["policy"].as_str().unwrap()).into();
    let upstream = echo_upstream().await;
    let envoy = Envoy::start(&filter_envoy_config(&config, upstream, "")).await;
    assert_blocked(envoy.listener).await;
}
