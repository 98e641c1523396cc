//! `policy explain`: the same decision, with every step recorded.
//!
//! The decision code reports to a [`Trace`]. Ordinary decisions pass [`NoTrace`], whose methods
//! do nothing and whose details (closures) are never called, so explaining costs nothing when
//! nobody asks.

use std::sync::Arc;

use serde::Serialize;

use super::{Effect, Route, Rule};
use crate::decision::Decision;
use crate::identity::Identity;
use crate::reason::Reason;
use crate::request::Request;
use crate::revocation::Revocations;

/// Receives the steps of a decision.
pub(crate) trait Trace {
    /// The route chosen (or none).
    fn route(&mut self, route: Option<&Route>, shadow: bool);
    /// The outcome of authentication.
    fn authenticated(&mut self, result: Result<&Arc<Identity>, Reason>);
    /// A requirement and whether it held; `detail` is only called by tracers that record.
    fn check(&mut self, what: &str, detail: &dyn Fn() -> String, held: bool);
    /// A rule considered and whether its conditions held.
    fn rule(&mut self, rule: &Rule, matched: bool);
    /// A remark.
    fn note(&mut self, msg: &str);
}

/// Records nothing.
#[derive(Debug)]
pub(crate) struct NoTrace;

impl Trace for NoTrace {
    fn route(&mut self, _: Option<&Route>, _: bool) {}
    fn authenticated(&mut self, _: Result<&Arc<Identity>, Reason>) {}
    fn check(&mut self, _: &str, _: &dyn Fn() -> String, _: bool) {}
    fn rule(&mut self, _: &Rule, _: bool) {}
    fn note(&mut self, _: &str) {}
}

/// One requirement.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    /// What was required.
    pub requirement: String,
    /// The details.
    pub detail: String,
    /// Whether it held.
    pub held: bool,
}

/// One rule considered.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuleCheck {
    /// Rule id.
    pub id: String,
    /// `allow` or `deny`.
    pub effect: &'static str,
    /// Priority.
    pub priority: i32,
    /// Dry run.
    pub shadow: bool,
    /// Whether every condition held.
    pub matched: bool,
}

/// Everything a decision did, for people.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Explanation {
    /// The route chosen, or `null` (then the policy's default applied).
    pub route: Option<String>,
    /// The route's path pattern.
    pub route_path: Option<String>,
    /// `allowed`, or the reason authentication failed; `null` when not attempted.
    pub authentication: Option<String>,
    /// Subject, when authenticated.
    pub subject: Option<String>,
    /// Requirements in the order they were checked.
    pub requirements: Vec<Check>,
    /// Rules considered (only those indexed for this request).
    pub rules: Vec<RuleCheck>,
    /// Remarks.
    pub notes: Vec<String>,
}

impl Trace for Explanation {
    fn route(&mut self, route: Option<&Route>, _shadow: bool) {
        self.route = route.map(|r| r.id.to_string());
        self.route_path = route.map(|r| r.path.to_string());
        if route.is_none() {
            self.notes.push("no route matched; the policy's default applies".into());
        }
    }
    fn authenticated(&mut self, result: Result<&Arc<Identity>, Reason>) {
        match result {
            Ok(id) => {
                self.authentication = Some(Reason::Allowed.code().into());
                self.subject = id.subject.as_deref().map(str::to_owned);
            }
            Err(r) => self.authentication = Some(r.code().into()),
        }
    }
    fn check(&mut self, what: &str, detail: &dyn Fn() -> String, held: bool) {
        self.requirements.push(Check { requirement: what.into(), detail: detail(), held });
    }
    fn rule(&mut self, rule: &Rule, matched: bool) {
        self.rules.push(RuleCheck {
            id: rule.id.to_string(),
            effect: if rule.effect == Effect::Deny { "deny" } else { "allow" },
            priority: rule.priority,
            shadow: rule.shadow,
            matched,
        });
    }
    fn note(&mut self, msg: &str) {
        self.notes.push(msg.into());
    }
}

impl super::Decider<'_> {
    /// Decides a request and explains every step.
    pub(crate) fn explain(&self, req: &Request<'_>, revocations: &dyn Revocations) -> (Decision, Explanation) {
        let mut x = Explanation::default();
        let d = self.decide_traced(req, super::Auth::Verify(revocations), &mut x);
        (d, x)
    }
}
