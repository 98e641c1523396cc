//! Equivalent policies for Portcullis, Cedar and Rego (regorus), at any size.
//!
//! Rule `i` allows `GET` under `/api/r{i}/` to a principal holding scope `r{i}:read`; one more
//! rule denies the subject `mallory` everywhere. The same request is given to each engine in its
//! own terms, and [`Scenario::agree`] checks that all three decide it the same way.

use std::sync::Arc;

use portcullis_core::{CredentialKind, Identity, Names};
use portcullis_core::{NoFiles, Policy, Request, UnixTime};

/// One request, in engine-neutral terms.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Label.
    pub name: &'static str,
    /// Subject.
    pub subject: &'static str,
    /// Scopes held.
    pub scopes: Vec<String>,
    /// Method.
    pub method: &'static str,
    /// Path.
    pub path: String,
    /// The decision every engine must reach.
    pub allow: bool,
}

/// The three engines loaded with the same `n` rules.
#[allow(missing_debug_implementations)]
pub struct Scenario {
    /// Rules.
    pub n: usize,
    /// Portcullis.
    pub portcullis: Policy,
    /// Cedar.
    pub cedar: cedar_policy::PolicySet,
    /// Rego source (regorus compiles it per engine).
    pub rego: String,
}

impl Scenario {
    /// Builds all three for `n` rules.
    pub fn new(n: usize) -> Scenario {
        let mut yaml = String::from(
            "version: 1\nissuers:\n  - issuer: https://bench.example\n    audiences: [api]\n    algorithms: [HS256]\n    \
             jwks: {keys: [{kty: oct, kid: k, k: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY}]}\n\
             identity_headers: {subject: null, email: null, roles: null, groups: null, tenant: null, scopes: null}\nroutes:\n",
        );
        let mut cedar = String::new();
        let mut rego = String::from(
            "package authz\nimport rego.v1\n\ndefault allow := false\n\nallow if {\n\tpermit\n\tnot deny\n}\n\ndeny if input.subject == \"mallory\"\n\n",
        );
        for i in 0..n {
            yaml.push_str(&format!(
                "  - {{id: r{i}, path: \"/api/r{i}/**\", methods: [GET], scopes: [\"r{i}:read\"]}}\n"
            ));
            cedar.push_str(&format!(
                "permit(principal, action == Action::\"GET\", resource)\n  when {{ context.path like \"/api/r{i}/*\" && principal.scopes.contains(\"r{i}:read\") }};\n"
            ));
            rego.push_str(&format!(
                "permit if {{\n\tinput.method == \"GET\"\n\tstartswith(input.path, \"/api/r{i}/\")\n\t\"r{i}:read\" in input.scopes\n}}\n\n"
            ));
        }
        yaml.push_str("rules:\n  - {id: lockout, effect: deny, when: {subjects: [mallory]}}\n");
        cedar.push_str("forbid(principal == User::\"mallory\", action, resource);\n");
        Scenario {
            n,
            portcullis: Policy::load(&yaml, &NoFiles).expect("portcullis policy"),
            cedar: cedar.parse().expect("cedar policy"),
            rego,
        }
    }

    /// The requests every size is checked and measured with.
    pub fn probes(&self) -> Vec<Probe> {
        let mid = self.n / 2;
        let path = format!("/api/r{mid}/items/42");
        vec![
            Probe {
                name: "allow",
                subject: "alice",
                scopes: vec![format!("r{mid}:read"), "x:y".into()],
                method: "GET",
                path: path.clone(),
                allow: true,
            },
            Probe {
                name: "deny-scope",
                subject: "alice",
                scopes: vec!["x:y".into()],
                method: "GET",
                path: path.clone(),
                allow: false,
            },
            Probe {
                name: "deny-rule",
                subject: "mallory",
                scopes: vec![format!("r{mid}:read")],
                method: "GET",
                path: path.clone(),
                allow: false,
            },
            Probe {
                name: "deny-method",
                subject: "alice",
                scopes: vec![format!("r{mid}:read")],
                method: "POST",
                path,
                allow: false,
            },
            Probe {
                name: "deny-unrouted",
                subject: "alice",
                scopes: vec![format!("r{mid}:read")],
                method: "GET",
                path: "/elsewhere/1".into(),
                allow: false,
            },
        ]
    }
}

/// Portcullis' inputs: a verified identity and the request.
pub fn portcullis_input(p: &Probe) -> (Arc<Identity>, String) {
    let mut id = Identity::new(CredentialKind::Jwt);
    id.subject = Some(Arc::from(p.subject));
    id.issuer = Some(Arc::from("https://bench.example"));
    id.scopes = Names::from(p.scopes.iter().map(|s| Arc::from(s.as_str())).collect::<Vec<_>>());
    (Arc::new(id), p.path.clone())
}

/// Decides with Portcullis.
pub fn portcullis_decide(policy: &Policy, id: &Arc<Identity>, method: &str, path: &str) -> bool {
    let req = Request::new(method, path, UnixTime(1_800_000_000));
    policy.decide_for(&req, id).allowed()
}

/// Cedar's inputs, built once: the principal entity (with its scopes) and the request.
pub fn cedar_input(p: &Probe) -> (cedar_policy::Request, cedar_policy::Entities) {
    let entities = cedar_policy::Entities::from_json_value(
        serde_json::json!([{ "uid": {"type": "User", "id": p.subject}, "attrs": {"scopes": p.scopes}, "parents": [] }]),
        None,
    )
    .expect("entities");
    let context = cedar_policy::Context::from_json_value(serde_json::json!({ "path": p.path }), None).expect("context");
    let principal = format!("User::\"{}\"", p.subject).parse().expect("principal");
    let action = format!("Action::\"{}\"", p.method).parse().expect("action");
    let resource = "Api::\"edge\"".parse().expect("resource");
    let request = cedar_policy::Request::new(principal, action, resource, context, None).expect("request");
    (request, entities)
}

/// Decides with Cedar.
pub fn cedar_decide(
    authorizer: &cedar_policy::Authorizer,
    policies: &cedar_policy::PolicySet,
    req: &cedar_policy::Request,
    entities: &cedar_policy::Entities,
) -> bool {
    authorizer.is_authorized(req, policies, entities).decision() == cedar_policy::Decision::Allow
}

/// Rego's input document for a probe, built once.
pub fn rego_input(p: &Probe) -> regorus::Value {
    let json = serde_json::json!({ "subject": p.subject, "scopes": p.scopes, "method": p.method, "path": p.path });
    regorus::Value::from_json_str(&json.to_string()).expect("input")
}

/// A regorus engine with the policy loaded (and prepared by one evaluation).
pub fn rego_engine(src: &str) -> regorus::Engine {
    let mut e = regorus::Engine::new();
    e.add_policy("authz.rego".into(), src.into()).expect("rego policy");
    e
}

/// Decides with regorus.
pub fn rego_decide(engine: &mut regorus::Engine, input: &regorus::Value) -> bool {
    engine.set_input(input.clone());
    engine.eval_rule("data.authz.allow".into()).expect("eval") == regorus::Value::from(true)
}

impl Scenario {
    /// Checks every probe against every engine; returns the disagreements.
    pub fn agree(&self) -> Vec<String> {
        let authorizer = cedar_policy::Authorizer::new();
        let mut engine = rego_engine(&self.rego);
        let mut out = Vec::new();
        for p in self.probes() {
            let (id, path) = portcullis_input(&p);
            let ours = portcullis_decide(&self.portcullis, &id, p.method, &path);
            let (req, ents) = cedar_input(&p);
            let cedar = cedar_decide(&authorizer, &self.cedar, &req, &ents);
            let rego = rego_decide(&mut engine, &rego_input(&p));
            if ours != p.allow || cedar != p.allow || rego != p.allow {
                out.push(format!(
                    "n={} {}: expected {}, portcullis {ours}, cedar {cedar}, regorus {rego}",
                    self.n, p.name, p.allow
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_three_engines_agree_at_every_size() {
        for n in [1, 10, 100] {
            let s = Scenario::new(n);
            assert_eq!(s.agree(), Vec::<String>::new());
        }
    }
}
