//! Roles: names interned to indices, the hierarchy closed at load into bitsets, and the scopes
//! each role grants (its own and those of every role it implies).

use std::sync::Arc;

use crate::FastMap;

/// A set of role indices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RoleSet(Vec<u64>);

impl RoleSet {
    fn with_capacity(n: usize) -> RoleSet {
        RoleSet(vec![0; n.div_ceil(64)])
    }

    /// Adds role `i`.
    pub(crate) fn insert(&mut self, i: usize) {
        if let Some(w) = self.0.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    /// True when role `i` is in the set.
    pub(crate) fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn union(&mut self, other: &RoleSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    fn intersects(&self, other: &RoleSet) -> bool {
        self.0.iter().zip(&other.0).any(|(a, b)| a & b != 0)
    }

    /// How many roles the set holds.
    fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Indices in the set.
    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(w, bits)| (0..64).filter(move |b| bits & (1 << b) != 0).map(move |b| w * 64 + b))
    }
}

/// One role, compiled.
#[derive(Debug)]
struct Role {
    name: Arc<str>,
    /// This role and every role it implies, transitively.
    closure: RoleSet,
    /// Scope grants of the whole closure.
    scopes: Vec<Arc<str>>,
}

/// The role hierarchy.
#[derive(Debug, Default)]
pub(crate) struct Roles {
    roles: Vec<Role>,
    index: FastMap<Box<str>, usize>,
}

/// A role definition as given: name, implied roles, granted scopes.
pub(crate) type RoleDef<'a> = (&'a str, &'a [String], &'a [String]);

impl Roles {
    /// Builds the hierarchy. Errors name the role at fault: an unknown implied role or a cycle.
    pub(crate) fn build(defs: &[RoleDef<'_>]) -> Result<Roles, (String, String)> {
        let n = defs.len();
        let mut index = FastMap::default();
        for (i, (name, _, _)) in defs.iter().enumerate() {
            index.insert(Box::<str>::from(*name), i);
        }
        let mut direct = Vec::with_capacity(n);
        for (name, inherits, _) in defs {
            let mut edges = Vec::new();
            for parent in *inherits {
                let &j = index
                    .get(parent.as_str())
                    .ok_or_else(|| (name.to_string(), format!("inherits unknown role `{parent}`")))?;
                edges.push(j);
            }
            direct.push(edges);
        }
        // Depth-first closure with cycle detection (0 = new, 1 = on stack, 2 = done).
        let mut state = vec![0u8; n];
        let mut closures: Vec<RoleSet> = vec![RoleSet::with_capacity(n); n];
        fn visit(
            i: usize,
            direct: &[Vec<usize>],
            state: &mut [u8],
            closures: &mut [RoleSet],
            names: &[RoleDef<'_>],
        ) -> Result<(), (String, String)> {
            match state.get(i) {
                Some(2) => return Ok(()),
                Some(1) => {
                    let name = names.get(i).map_or("?", |d| d.0);
                    return Err((name.to_string(), "is part of an inheritance cycle".into()));
                }
                _ => {}
            }
            if let Some(s) = state.get_mut(i) {
                *s = 1;
            }
            let mut acc = RoleSet::with_capacity(names.len());
            acc.insert(i);
            for &j in direct.get(i).map_or(&[][..], Vec::as_slice) {
                visit(j, direct, state, closures, names)?;
                if let Some(c) = closures.get(j) {
                    acc.union(c);
                }
            }
            if let Some(c) = closures.get_mut(i) {
                *c = acc;
            }
            if let Some(s) = state.get_mut(i) {
                *s = 2;
            }
            Ok(())
        }
        for i in 0..n {
            visit(i, &direct, &mut state, &mut closures, defs)?;
        }
        let roles = defs
            .iter()
            .zip(closures)
            .map(|((name, _, _), closure)| {
                let mut scopes: Vec<Arc<str>> = Vec::new();
                for j in closure.iter() {
                    for s in defs.get(j).map_or(&[][..], |d| d.2) {
                        if !scopes.iter().any(|x| **x == **s) {
                            scopes.push(Arc::from(s.as_str()));
                        }
                    }
                }
                Role { name: Arc::from(*name), closure, scopes }
            })
            .collect();
        Ok(Roles { roles, index })
    }

    /// The index of a role name.
    pub(crate) fn index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// True when no roles are defined.
    pub(crate) fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }

    /// The roles any one of which satisfies a requirement for any of `required`: every role whose
    /// closure contains one of them.
    pub(crate) fn satisfying(&self, required: &[usize]) -> RoleSet {
        let mut want = RoleSet::with_capacity(self.roles.len());
        for &r in required {
            want.insert(r);
        }
        let mut out = RoleSet::with_capacity(self.roles.len());
        for (i, role) in self.roles.iter().enumerate() {
            if role.closure.intersects(&want) {
                out.insert(i);
            }
        }
        out
    }

    /// True when any of the identity's role names is in `set`.
    pub(crate) fn any_in(&self, names: &[Arc<str>], set: &RoleSet) -> bool {
        names.iter().any(|n| self.index(n).is_some_and(|i| set.contains(i)))
    }

    /// Scope grants carried by the identity's roles (through the hierarchy).
    pub(crate) fn granted_scopes<'a>(&'a self, names: &'a [Arc<str>]) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        names.iter().filter_map(|n| self.index(n).and_then(|i| self.roles.get(i))).flat_map(|r| r.scopes.iter())
    }

    /// The single highest of the identity's roles: the defined role whose closure holds the
    /// most roles (so a role beats every role it implies); ties go to the first in role order
    /// (name order). `None` when no role of the identity is defined.
    pub(crate) fn highest(&self, names: &[Arc<str>]) -> Option<&Arc<str>> {
        let mut best: Option<(usize, usize)> = None;
        for i in names.iter().filter_map(|n| self.index(n)) {
            let size = self.roles.get(i).map_or(0, |r| r.closure.len());
            if best.is_none_or(|(bs, bi)| size > bs || (size == bs && i < bi)) {
                best = Some((size, i));
            }
        }
        best.and_then(|(_, i)| self.roles.get(i)).map(|r| &r.name)
    }

    /// The identity's roles expanded through the hierarchy: its own roles first (as given), then
    /// the roles they imply in role order (a policy's roles are ordered by name), each once. Names the policy does not define are
    /// kept in place.
    pub(crate) fn expand(&self, names: &[Arc<str>]) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::with_capacity(names.len() * 2);
        let mut implied = RoleSet::with_capacity(self.roles.len());
        for n in names {
            if !out.contains(n) {
                out.push(Arc::clone(n));
            }
            if let Some(r) = self.index(n).and_then(|i| self.roles.get(i)) {
                implied.union(&r.closure);
            }
        }
        for r in implied.iter().filter_map(|i| self.roles.get(i)) {
            if !out.contains(&r.name) {
                out.push(Arc::clone(&r.name));
            }
        }
        out
    }
}

/// Whether a granted scope (possibly `prefix:*` or `*`) covers a concrete required scope.
pub(crate) fn grant_covers(grant: &str, required: &str, allow_global_wildcard: bool) -> bool {
    if grant == required {
        return true;
    }
    if grant == "*" {
        return allow_global_wildcard;
    }
    match grant.strip_suffix('*') {
        Some(prefix) => {
            prefix.ends_with(':')
                && prefix.len() > 1
                && !prefix.contains('*')
                && required.len() > prefix.len()
                && required.starts_with(prefix)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn hierarchy() -> Roles {
        let owner = (s(&["admin"]), s(&["billing:*"]));
        let admin = (s(&["dev", "operator"]), s(&["admin:*"]));
        let dev = (s(&["billing"]), s(&["deploy:write"]));
        let billing = (s(&["viewer"]), s(&["billing:read"]));
        let operator = (s(&["viewer"]), s(&[]));
        let viewer = (s(&[]), s(&["orders:read"]));
        let defs: Vec<RoleDef<'_>> = vec![
            ("owner", &owner.0, &owner.1),
            ("admin", &admin.0, &admin.1),
            ("dev", &dev.0, &dev.1),
            ("billing", &billing.0, &billing.1),
            ("operator", &operator.0, &operator.1),
            ("viewer", &viewer.0, &viewer.1),
        ];
        Roles::build(&defs).unwrap()
    }

    fn names(v: &[&str]) -> Vec<Arc<str>> {
        v.iter().map(|x| Arc::from(*x)).collect()
    }

    #[test]
    fn the_highest_role_is_the_one_implying_most() {
        let h = hierarchy();
        assert_eq!(h.highest(&names(&["viewer", "admin", "dev"])).map(|r| &**r), Some("admin"));
        assert_eq!(h.highest(&names(&["billing", "operator"])).map(|r| &**r), Some("billing"), "tie: role order");
        assert_eq!(h.highest(&names(&["owner", "unknown"])).map(|r| &**r), Some("owner"));
        assert_eq!(h.highest(&names(&["unknown"])), None);
        assert_eq!(h.highest(&[]), None);
    }

    #[test]
    fn higher_roles_satisfy_lower_requirements_but_not_the_reverse() {
        let r = hierarchy();
        let need_viewer = r.satisfying(&[r.index("viewer").unwrap()]);
        let need_admin = r.satisfying(&[r.index("admin").unwrap()]);
        assert!(r.any_in(&names(&["owner"]), &need_viewer));
        assert!(r.any_in(&names(&["operator"]), &need_viewer));
        assert!(r.any_in(&names(&["owner"]), &need_admin));
        assert!(!r.any_in(&names(&["dev"]), &need_admin));
        assert!(!r.any_in(&names(&["viewer", "stranger"]), &need_admin));
    }

    #[test]
    fn roles_grant_the_scopes_of_everything_they_imply() {
        let r = hierarchy();
        let granted: Vec<String> = r.granted_scopes(&names(&["dev"])).map(|s| s.to_string()).collect();
        assert_eq!(granted, ["deploy:write", "billing:read", "orders:read"]);
    }

    #[test]
    fn expansion_lists_implied_roles_and_keeps_unknown_ones() {
        let r = hierarchy();
        let got: Vec<String> = r.expand(&names(&["admin", "x-team"])).iter().map(|s| s.to_string()).collect();
        assert_eq!(got, ["admin", "x-team", "dev", "billing", "operator", "viewer"]);
    }

    #[test]
    fn cycles_and_unknown_parents_are_errors() {
        let a = (s(&["b"]), s(&[]));
        let b = (s(&["a"]), s(&[]));
        let err = Roles::build(&[("a", &a.0, &a.1), ("b", &b.0, &b.1)]).unwrap_err();
        assert!(err.1.contains("cycle"), "{err:?}");
        let c = (s(&["nope"]), s(&[]));
        assert!(Roles::build(&[("c", &c.0, &c.1)]).unwrap_err().1.contains("unknown role"));
        let selfish = (s(&["me"]), s(&[]));
        assert!(Roles::build(&[("me", &selfish.0, &selfish.1)]).is_err());
    }

    #[test]
    fn wildcard_grants_cover_only_their_prefix_and_star_only_when_allowed() {
        assert!(grant_covers("admin:*", "admin:read", false));
        assert!(grant_covers("admin:*", "admin:users:write", false));
        assert!(!grant_covers("admin:*", "admin:", false));
        assert!(!grant_covers("admin:*", "administrator:read", false));
        assert!(!grant_covers("admin*", "admin:read", false), "not a valid wildcard");
        assert!(!grant_covers(":*", ":x", false));
        assert!(!grant_covers("*", "anything", false));
        assert!(grant_covers("*", "anything", true));
        assert!(grant_covers("read", "read", false));
        assert!(!grant_covers("read", "read:all", false));
    }

    #[test]
    fn more_than_64_roles_work() {
        let empty: Vec<String> = Vec::new();
        let owned: Vec<String> = (0..130).map(|i| format!("r{i}")).collect();
        let parents: Vec<Vec<String>> =
            (0..130).map(|i| if i > 0 { vec![format!("r{}", i - 1)] } else { vec![] }).collect();
        let defs: Vec<RoleDef<'_>> =
            owned.iter().zip(&parents).map(|(n, p)| (n.as_str(), p.as_slice(), empty.as_slice())).collect();
        let r = Roles::build(&defs).unwrap();
        let need_r0 = r.satisfying(&[0]);
        assert!(r.any_in(&names(&["r129"]), &need_r0), "the chain implies r0");
        assert!(!r.any_in(&names(&["r0"]), &r.satisfying(&[129])));
    }
}
