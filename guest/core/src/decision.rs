//! The outcome of a request: a value, never an error.

use std::sync::Arc;

use serde::Serialize;
use serde::ser::SerializeMap;

use crate::identity::{Identity, Names};
use crate::reason::Reason;

/// Allow or deny, why, and what to tell upstream.
///
/// `allow` and `status` are derived from `reason`, so they can never disagree with it.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Why. [`Reason::Allowed`] exactly when the request is allowed.
    pub reason: Reason,
    /// The verified identity: on allow, and on authorization denials (403), where the
    /// credential itself was valid.
    pub identity: Option<Arc<Identity>>,
    /// The route that matched, if any.
    pub route: Option<Arc<str>>,
    /// The rule that decided, if a rule did.
    pub rule: Option<Arc<str>>,
    /// Headers to set on the upstream request (allow only).
    pub headers_to_set: Vec<(Arc<str>, String)>,
    /// Headers to strip from the upstream request, on every decision, so clients cannot forge
    /// identity. Never names a header in `headers_to_set` (that one is overwritten instead).
    /// `None` when the policy names none.
    pub headers_to_remove: Option<Names>,
    /// What shadow (dry-run) routes or rules would have decided, without enforcing it.
    pub shadow: Option<Box<Shadow>>,
    /// Headers for the response to the client, allowed or denied: CORS, rate-limit
    /// (`Retry-After` on 429) and the policy's `response_headers`. Names are lower case and
    /// occur once.
    pub response_headers: Vec<(Arc<str>, Arc<str>)>,
}

/// A dry-run verdict reported beside the enforced one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Shadow {
    /// The reason the shadow route or rule would have given.
    pub reason: Reason,
    /// The shadow rule, if a rule decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<Arc<str>>,
    /// The shadow route, if a route decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Arc<str>>,
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl Decision {
    /// A denial with no identity.
    pub fn deny(reason: Reason) -> Decision {
        Decision {
            reason,
            identity: None,
            route: None,
            rule: None,
            headers_to_set: Vec::new(),
            headers_to_remove: None,
            shadow: None,
            response_headers: Vec::new(),
        }
    }

    /// An allow for `identity`.
    pub fn allow(identity: Arc<Identity>) -> Decision {
        Decision { identity: Some(identity), ..Decision::deny(Reason::Allowed) }
    }

    /// True when allowed.
    pub fn allowed(&self) -> bool {
        self.reason == Reason::Allowed
    }

    /// The HTTP status to return.
    pub fn status(&self) -> u16 {
        self.reason.status()
    }
}

/// One flat JSON object: `allow`, `status`, `reason`, then the identity's fields, then route,
/// rule and headers. This is the CLI's output and the shape of every decision log line.
impl Serialize for Decision {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        self.serialize_fields(&mut m)?;
        m.end()
    }
}

/// A decision labelled with the caller's request id, serialised with `id` first.
#[derive(Debug)]
pub struct Labeled<'a> {
    /// The id to echo (any JSON value; `null` when the request had none).
    pub id: Option<&'a serde_json::Value>,
    /// The decision.
    pub decision: &'a Decision,
}

impl Serialize for Labeled<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("id", &self.id)?;
        self.decision.serialize_fields(&mut m)?;
        m.end()
    }
}

impl Decision {
    fn serialize_fields<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        m.serialize_entry("allow", &self.allowed())?;
        m.serialize_entry("status", &self.status())?;
        m.serialize_entry("reason", &self.reason)?;
        if let Some(id) = &self.identity {
            id.serialize_fields(m)?;
        }
        if let Some(r) = &self.route {
            m.serialize_entry("route", r)?;
        }
        if let Some(r) = &self.rule {
            m.serialize_entry("rule", r)?;
        }
        if !self.headers_to_set.is_empty() {
            m.serialize_entry("headers_to_set", &header_map(self.headers_to_set.iter().map(|(k, v)| (k, v.as_str()))))?;
        }
        if let Some(h) = self.headers_to_remove.as_ref().filter(|h| !h.is_empty()) {
            m.serialize_entry("headers_to_remove", h)?;
        }
        if let Some(sh) = &self.shadow {
            m.serialize_entry("shadow", sh)?;
        }
        if !self.response_headers.is_empty() {
            m.serialize_entry("response_headers", &header_map(self.response_headers.iter().map(|(k, v)| (k, &**v))))?;
        }
        Ok(())
    }
}

/// Headers as one JSON object, name to value.
fn header_map<'a>(
    headers: impl Iterator<Item = (&'a Arc<str>, &'a str)>,
) -> serde_json::Map<String, serde_json::Value> {
    headers.map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_owned()))).collect()
}
