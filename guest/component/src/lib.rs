//! # Portcullis component
//!
//! A thin adapter: it converts the WIT types of `wit/portcullis.wit` to the core's and back,
//! and implements the core's [`Revocations`] over the host's `revocations`, `signatures` and
//! `rate-limits` imports. Every decision
//! is made by [`portcullis_core`].
//!
//! Build: `cargo build -p portcullis-component --target wasm32-wasip2 --profile guest`
//! (the host's build script does this and embeds the result).

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use portcullis_core::Alg;
use portcullis_core::rate::{RateBucket, RateCount, Taken};
use portcullis_core::{
    CredentialKind, Decision as CoreDecision, FileSource, Policy as CorePolicy, PolicyError, Reason,
    Request as CoreRequest, RevocationQuery, RevocationStatus, Revocations, UnixTime,
};
use portcullis_core::{PublicKeyRef, SignatureCheck, SignatureVerdict};

#[allow(unsafe_code, missing_docs, missing_debug_implementations, clippy::all, clippy::pedantic)]
mod bindings {
    wit_bindgen::generate!({
        world: "authz",
        path: "../../wit",
    });

    use super::Component;
    export!(Component with_types_in self);
}

use bindings::exports::portcullis::authz::authorizer::{self as wit, Guest, GuestPolicy};
use bindings::portcullis::authz::rate_limits as rl;
use bindings::portcullis::authz::revocations as host;
use bindings::portcullis::authz::signatures as sig;
use bindings::portcullis::authz::types as t;

struct Component;

#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
mod arena;

// std's wasm allocator is dlmalloc, which led the guest's profile (allocation is a chain of four
// calls there). talc, built for wasm, holds what outlives a call; a bump arena the rest.
#[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
#[global_allocator]
static ALLOC: arena::Arena = arena::Arena::new();

/// Runs `f` with every allocation on the long-lived heap (a loaded policy lives as long as its
/// handle or the instance).
fn persistent<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
    return ALLOC.persistent(|| {
        let r = f();
        ALLOC.reserve();
        r
    });
    #[cfg(not(all(target_family = "wasm", not(target_feature = "atomics"))))]
    f()
}

/// Marks the start of a decision: see `arena::Arena::call_starts`.
fn call_starts() {
    #[cfg(all(target_family = "wasm", not(target_feature = "atomics")))]
    ALLOC.call_starts();
}

/// The host's revocation store, reached through the import.
struct HostRevocations;

impl Revocations for HostRevocations {
    fn status(&self, query: RevocationQuery<'_>) -> RevocationStatus {
        let (kind, id, issued_at) = match query {
            RevocationQuery::TokenId(id) => (host::Kind::TokenId, id, None),
            RevocationQuery::ServiceTokenId(id) => (host::Kind::ServiceTokenId, id, None),
            RevocationQuery::ApiKey(id) => (host::Kind::ApiKey, id, None),
            RevocationQuery::Subject { subject, issued_at } => (host::Kind::Subject, subject, issued_at),
        };
        match host::check(kind, id, issued_at) {
            host::Status::Active => RevocationStatus::Active,
            host::Status::Revoked => RevocationStatus::Revoked,
            host::Status::Unavailable => RevocationStatus::Unavailable,
        }
    }

    /// Asks the host to verify an asymmetric signature (natively, where it can).
    fn verify_signature(&self, check: &SignatureCheck<'_>) -> SignatureVerdict {
        let alg = match check.alg {
            Alg::RS256 => sig::Algorithm::Rs256,
            Alg::RS384 => sig::Algorithm::Rs384,
            Alg::RS512 => sig::Algorithm::Rs512,
            Alg::PS256 => sig::Algorithm::Ps256,
            Alg::PS384 => sig::Algorithm::Ps384,
            Alg::PS512 => sig::Algorithm::Ps512,
            Alg::ES256 => sig::Algorithm::Es256,
            Alg::ES384 => sig::Algorithm::Es384,
            _ => return SignatureVerdict::Unsupported,
        };
        let key = match check.key {
            PublicKeyRef::Rsa { n, e } => sig::PublicKey::Rsa((n.to_vec(), e.to_vec())),
            PublicKeyRef::Ec { point } => sig::PublicKey::Ec(point.to_vec()),
        };
        match sig::verify(alg, &key, check.message, check.signature) {
            sig::Verdict::Valid => SignatureVerdict::Valid,
            sig::Verdict::Invalid => SignatureVerdict::Invalid,
            sig::Verdict::Unsupported => SignatureVerdict::Unsupported,
        }
    }

    /// Asks the host's buckets (shared by every instance).
    fn rate_limit(&self, bucket: &RateBucket<'_>) -> RateCount {
        match rl::take(bucket.key, bucket.params.interval_ns, bucket.params.burst) {
            Some(t) => RateCount::Counted(Taken {
                allowed: t.allowed,
                remaining: t.remaining,
                retry_after_ns: t.retry_after_ns,
                reset_ns: t.reset_ns,
            }),
            None => RateCount::Unavailable,
        }
    }
}

/// Files handed over by the host.
struct Files(Vec<t::PolicyFile>);

impl FileSource for Files {
    fn read(&self, path: &str) -> Result<Vec<u8>, String> {
        self.0
            .iter()
            .find(|f| f.path == path)
            .map(|f| f.contents.clone())
            .ok_or_else(|| "not provided by the host".into())
    }
}

fn load_error(e: &PolicyError) -> t::LoadError {
    let code = match e {
        PolicyError::Syntax(_) => t::LoadErrorCode::PolicySyntax,
        PolicyError::File { .. } => t::LoadErrorCode::PolicyFile,
        // `Invalid`, and any kind a later core adds: a value in the policy is wrong.
        _ => t::LoadErrorCode::PolicyInvalid,
    };
    t::LoadError { code, message: e.to_string() }
}

fn decide(policy: &CorePolicy, req: &t::Request, with_audit: bool) -> t::Decision {
    call_starts();
    let headers: Vec<(&str, &str)> = req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let core = CoreRequest {
        method: &req.method,
        scheme: &req.scheme,
        host: &req.host,
        path: &req.path,
        query: &req.query,
        headers: &headers,
        // An address the host could not format is treated as unknown (never as trusted).
        client_ip: req.client_address.as_deref().and_then(|a| a.parse::<IpAddr>().ok()),
        now: UnixTime(req.now),
    };
    let d = policy.decide(&core, &HostRevocations);
    let audit = with_audit.then(|| serde_json::to_string(&policy.audit_event(&core, &d)).unwrap_or_default());
    to_wit(&d, audit)
}

// `String::from(&str)` copies; `to_string()` on `Arc<str>` would go through `fmt` (measurably
// slower in the guest, where it showed in profiles).
fn names(n: &[Arc<str>]) -> Vec<String> {
    n.iter().map(|s| String::from(&**s)).collect()
}

fn opt(s: Option<&Arc<str>>) -> Option<String> {
    s.map(|s| String::from(&**s))
}

fn to_wit(d: &CoreDecision, audit: Option<String>) -> t::Decision {
    t::Decision {
        allow: d.allowed(),
        status: d.status(),
        reason: d.reason.code().into(),
        identity: d.identity.as_deref().map(|i| t::Identity {
            credential: match i.credential {
                CredentialKind::Jwt => t::CredentialKind::Jwt,
                CredentialKind::ServiceToken => t::CredentialKind::ServiceToken,
                CredentialKind::ApiKey => t::CredentialKind::ApiKey,
            },
            subject: opt(i.subject.as_ref()),
            issuer: opt(i.issuer.as_ref()),
            key_id: opt(i.key_id.as_ref()),
            token_id: opt(i.token_id.as_ref()),
            audience: opt(i.audience.as_ref()),
            tenant: opt(i.tenant.as_ref()),
            email: opt(i.email.as_ref()),
            scopes: names(&i.scopes),
            roles: names(&i.roles),
            groups: names(&i.groups),
            expires_at: i.expires_at,
        }),
        route: opt(d.route.as_ref()),
        rule: opt(d.rule.as_ref()),
        headers_to_set: d.headers_to_set.iter().map(|(k, v)| (String::from(&**k), v.clone())).collect(),
        headers_to_remove: d.headers_to_remove.as_deref().map(names).unwrap_or_default(),
        shadow: d.shadow.as_deref().map(|s| t::Shadow {
            reason: s.reason.code().into(),
            route: opt(s.route.as_ref()),
            rule: opt(s.rule.as_ref()),
        }),
        audit,
        response_headers: d.response_headers.iter().map(|(k, v)| (String::from(&**k), String::from(&**v))).collect(),
    }
}

/// A policy handle.
#[derive(Debug)]
pub struct PolicyResource(Arc<CorePolicy>);

impl GuestPolicy for PolicyResource {
    fn decide(&self, req: t::Request, with_audit: bool) -> t::Decision {
        decide(&self.0, &req, with_audit)
    }
}

/// The policy compiled into this instance's memory by `install` (for pre-initialised snapshots).
static INSTALLED: Mutex<Option<Arc<CorePolicy>>> = Mutex::new(None);

impl Guest for Component {
    type Policy = PolicyResource;

    fn referenced_files(text: String) -> Result<Vec<String>, t::LoadError> {
        CorePolicy::referenced_files(&text).map_err(|e| load_error(&e))
    }

    fn load(text: String, files: Vec<t::PolicyFile>) -> Result<wit::Policy, t::LoadError> {
        persistent(|| {
            let p = CorePolicy::load(&text, &Files(files)).map_err(|e| load_error(&e))?;
            Ok(wit::Policy::new(PolicyResource(Arc::new(p))))
        })
    }

    fn install(text: String, files: Vec<t::PolicyFile>) -> Result<(), t::LoadError> {
        persistent(|| {
            let p = CorePolicy::load(&text, &Files(files)).map_err(|e| load_error(&e))?;
            *INSTALLED.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(p));
            Ok(())
        })
    }

    fn decide_installed(req: t::Request, with_audit: bool) -> t::Decision {
        let installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner).clone();
        match installed {
            Some(p) => decide(&p, &req, with_audit),
            None => to_wit(&CoreDecision::deny(Reason::InternalError), None),
        }
    }
}
