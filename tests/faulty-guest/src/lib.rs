//! A misbehaving guest for the host's fault tests. It implements `portcullis:authz` and, by
//! request path, loops forever, traps, exhausts memory, or answers inconsistently. It exists so
//! the host's fail-closed handling is tested against real faults; it is never shipped.

#[allow(unsafe_code, missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
mod bindings {
    wit_bindgen::generate!({ world: "authz", path: "../../wit" });
    use super::Faulty;
    export!(Faulty with_types_in self);
}

use bindings::exports::portcullis::authz::authorizer::{self as wit, Guest, GuestPolicy};
use bindings::portcullis::authz::types as t;

struct Faulty;

/// A policy that ignores its text.
#[derive(Debug)]
pub struct Nothing;

fn decision(allow: bool, status: u16, reason: &str) -> t::Decision {
    t::Decision {
        allow,
        status,
        reason: reason.into(),
        identity: None,
        route: None,
        rule: None,
        headers_to_set: Vec::new(),
        headers_to_remove: Vec::new(),
        shadow: None,
        audit: None,
        response_headers: Vec::new(),
    }
}

fn misbehave(req: &t::Request) -> t::Decision {
    match req.path.as_str() {
        "/loop" => loop {
            std::hint::black_box(());
        },
        "/trap" => std::process::abort(),
        "/memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 16 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        // Reaching for IO the host never grants: each is a trap, never output.
        "/print" => {
            println!("a guest has no stdout");
            decision(true, 200, "allowed")
        }
        "/env" => decision(std::env::vars().count() == usize::MAX, 401, "missing_credential"),
        "/exit" => std::process::exit(0),
        "/allow-with-deny-reason" => decision(true, 200, "expired"),
        "/unknown-reason" => decision(false, 403, "a_reason_from_the_future"),
        "/wrong-status" => decision(false, 200, "expired"),
        "/smuggled-response-header" => t::Decision {
            response_headers: vec![("x-ok".into(), "a\r\nset-cookie: session=stolen".into())],
            ..decision(true, 200, "allowed")
        },
        "/bad-response-header-name" => {
            t::Decision { response_headers: vec![("bad name".into(), "v".into())], ..decision(true, 200, "allowed") }
        }
        _ => decision(false, 401, "missing_credential"),
    }
}

impl GuestPolicy for Nothing {
    fn decide(&self, req: t::Request, _: bool) -> t::Decision {
        misbehave(&req)
    }
}

impl Guest for Faulty {
    type Policy = Nothing;
    fn referenced_files(_: String) -> Result<Vec<String>, t::LoadError> {
        Ok(Vec::new())
    }
    fn load(_: String, _: Vec<t::PolicyFile>) -> Result<wit::Policy, t::LoadError> {
        Ok(wit::Policy::new(Nothing))
    }
    fn install(_: String, _: Vec<t::PolicyFile>) -> Result<(), t::LoadError> {
        Ok(())
    }
    fn decide_installed(req: t::Request, _: bool) -> t::Decision {
        misbehave(&req)
    }
}
