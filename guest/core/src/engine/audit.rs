//! Audit events: one structured record per decision, with no credential in it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Engine;
use crate::decision::Decision;
use crate::reason::Reason;
use crate::request::Request;

/// Headers that are never recorded, whatever the allow-list says.
const NEVER_RECORDED: [&str; 5] = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"];

/// Longest header or query value recorded (longer values are cut, marked with `…`).
const MAX_VALUE: usize = 256;

/// What audit events may carry beyond the decision.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditConfig {
    /// Allow-listed request headers, lower case.
    pub headers: Vec<Box<str>>,
    /// Allow-listed query keys.
    pub query_keys: Vec<Box<str>>,
}

impl AuditConfig {
    /// Builds the allow-lists; credential headers (including the API key header) are dropped.
    pub(crate) fn new(headers: &[String], query_keys: &[String], api_key_header: Option<&str>) -> AuditConfig {
        let headers = headers
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| {
                !NEVER_RECORDED.contains(&h.as_str()) && api_key_header.is_none_or(|a| !a.eq_ignore_ascii_case(h))
            })
            .map(String::into_boxed_str)
            .collect();
        AuditConfig { headers, query_keys: query_keys.iter().map(|k| k.as_str().into()).collect() }
    }
}

/// One audit record.
#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    /// Decision time, Unix seconds.
    pub time: i64,
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// HTTP status.
    pub status: u16,
    /// Reason code.
    pub reason: Reason,
    /// Who: the subject, or `<role>:<credential>` without one, or `anonymous`.
    pub actor: String,
    /// Credential kind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<&'static str>,
    /// Subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<&'a str>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<&'a str>,
    /// The key that verified the credential (`kid`, service key id, API key id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<&'a str>,
    /// Token id (`jti`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_id: Option<&'a str>,
    /// Tenant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    /// Route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    /// Rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<&'a str>,
    /// The dry-run verdict, if a shadow route or rule applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shadow_reason: Option<Reason>,
    /// Method.
    pub method: &'a str,
    /// Host.
    pub host: &'a str,
    /// Path (never the query string).
    pub path: &'a str,
    /// Allow-listed headers.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<&'a str, &'a str>,
    /// Allow-listed query parameters.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<&'a str, &'a str>,
}

fn cap(s: &str) -> &str {
    if s.len() <= MAX_VALUE {
        return s;
    }
    let mut end = MAX_VALUE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

impl Engine {
    /// The audit record of a decision.
    pub(crate) fn audit_event<'a>(&'a self, req: &Request<'a>, d: &'a Decision) -> AuditEvent<'a> {
        let cfg = &self.audit;
        let id = d.identity.as_deref();
        let actor = match id {
            Some(i) => match i.subject.as_deref() {
                Some(s) => s.to_owned(),
                None => format!("{}:{}", i.roles.first().map_or("anonymous", |r| &**r), i.credential.name()),
            },
            None => "anonymous".to_owned(),
        };
        let mut headers = BTreeMap::new();
        for (k, v) in req.headers {
            if let Some(name) = cfg.headers.iter().find(|h| h.eq_ignore_ascii_case(k)) {
                headers.insert(&**name, cap(v));
            }
        }
        let mut query = BTreeMap::new();
        if !cfg.query_keys.is_empty() {
            for pair in req.query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if let Some(key) = cfg.query_keys.iter().find(|q| ***q == *k) {
                    query.insert(&**key, cap(v));
                }
            }
        }
        AuditEvent {
            time: req.now.0,
            decision: if d.allowed() { "allow" } else { "deny" },
            status: d.status(),
            reason: d.reason,
            actor,
            credential: id.map(|i| i.credential.name()),
            subject: id.and_then(|i| i.subject.as_deref()),
            issuer: id.and_then(|i| i.issuer.as_deref()),
            key_id: id.and_then(|i| i.key_id.as_deref()),
            token_id: id.and_then(|i| i.token_id.as_deref()),
            tenant: id.and_then(|i| i.tenant.as_deref()),
            route: d.route.as_deref(),
            rule: d.rule.as_deref(),
            shadow_reason: d.shadow.as_ref().map(|s| s.reason),
            method: req.method,
            host: req.host,
            path: req.path,
            headers,
            query,
        }
    }
}
