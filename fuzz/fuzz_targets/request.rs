//! Any request as a host hands it over (method, host, path and query, headers, client
//! address): path normalisation, header limits, credential selection, routes and rules.
#![no_main]

use arbitrary::Arbitrary;
use portcullis_core::OwnedRequest;
use portcullis_core::split_path_and_query;

#[derive(Debug, Arbitrary)]
struct Input {
    method: String,
    host: String,
    target: String,
    headers: Vec<(String, String)>,
    client_ip: Option<[u8; 16]>,
    v4: bool,
    now: i64,
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let (path, query) = split_path_and_query(&input.target);
    let client_ip = input.client_ip.map(|b| {
        if input.v4 {
            std::net::IpAddr::from([b[0], b[1], b[2], b[3]])
        } else {
            std::net::IpAddr::from(b)
        }
    });
    let req = OwnedRequest {
        method: input.method,
        scheme: "https".into(),
        host: input.host,
        path: path.to_owned(),
        query: query.to_owned(),
        headers: input.headers,
        client_ip,
        now: input.now,
    };
    portcullis_fuzz::decide(&req);
});
