//! RBAC as kube-apiserver's authorizer applies it, for one user: the rules
//! that the bindings in a manifest file (`deploy/rbac.yaml`) give one
//! ServiceAccount. A request is allowed when some rule names its API group,
//! its resource (`plural`, or `plural/status` for the subresource) and its
//! verb, `*` matching anything; a Role's rules hold only in the Role's
//! namespace, a ClusterRole's bound by a ClusterRoleBinding everywhere.
//! Aggregation and resourceNames are not modelled: `deploy/` binds the
//! agent to neither (a rule with resourceNames is refused, so one added
//! there is noticed).

use anyhow::{Context, Result, bail};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Rbac {
    /// The user as the authorizer names it in a 403.
    pub user: String,
    grants: Vec<Grant>,
}

#[derive(Debug, Clone)]
struct Grant {
    /// None: every namespace and the cluster scope.
    namespace: Option<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
}

fn matches(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == "*" || x == item)
}

impl Rbac {
    /// The agent's grants in this repository's `deploy/rbac.yaml`.
    pub fn deploy() -> Result<Self> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/rbac.yaml");
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        Self::from_manifests(&text, "mirror-system", "mirror-agent")
    }

    /// The grants the bindings in `text` (YAML documents) give the
    /// ServiceAccount `namespace/name`.
    pub fn from_manifests(text: &str, namespace: &str, name: &str) -> Result<Self> {
        let mut docs = Vec::new();
        // Documents are separated by `---` lines (as in deploy/).
        for doc in text.split("\n---") {
            let v: Value = serde_norway::from_str(doc).context("a YAML document")?;
            if !v.is_null() {
                docs.push(v);
            }
        }
        let binds_us = |b: &Value| {
            b["subjects"].as_array().is_some_and(|s| {
                s.iter().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == name
                        && s["namespace"] == namespace
                })
            })
        };
        let mut grants = Vec::new();
        for binding in docs.iter().filter(|d| binds_us(d)) {
            let (role_kind, scope) = match binding["kind"].as_str() {
                Some("ClusterRoleBinding") => ("ClusterRole", None),
                Some("RoleBinding") => (
                    binding["roleRef"]["kind"].as_str().unwrap_or("Role"),
                    binding["metadata"]["namespace"].as_str().map(str::to_owned),
                ),
                _ => continue,
            };
            let role_name = &binding["roleRef"]["name"];
            let role = docs
                .iter()
                .find(|d| {
                    d["kind"] == role_kind
                        && &d["metadata"]["name"] == role_name
                        && (role_kind == "ClusterRole"
                            || d["metadata"]["namespace"].as_str() == scope.as_deref())
                })
                .with_context(|| format!("no {role_kind} {role_name} for a binding"))?;
            for rule in role["rules"].as_array().into_iter().flatten() {
                if rule.get("resourceNames").is_some() {
                    bail!("rules with resourceNames are not modelled: {rule}");
                }
                let strings = |key: &str| -> Vec<String> {
                    rule[key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                };
                grants.push(Grant {
                    namespace: scope.clone(),
                    groups: strings("apiGroups"),
                    resources: strings("resources"),
                    verbs: strings("verbs"),
                });
            }
        }
        if grants.is_empty() {
            bail!("no binding gives ServiceAccount {namespace}/{name} any rule");
        }
        Ok(Self {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            grants,
        })
    }

    /// The same grants less one verb on one resource (a partial grant, as
    /// an operator's edited manifest might leave it).
    pub fn without(mut self, group: &str, resource: &str, verb: &str) -> Self {
        let mut grants = Vec::with_capacity(self.grants.len());
        for g in self.grants {
            if !(g.groups.iter().any(|x| x == group) && g.resources.iter().any(|x| x == resource)) {
                grants.push(g);
                continue;
            }
            // A rule names several resources: split it, so that only this
            // one loses the verb.
            for each_group in &g.groups {
                for each_resource in &g.resources {
                    let mut verbs = g.verbs.clone();
                    if each_group == group && each_resource == resource {
                        verbs.retain(|v| v != verb);
                    }
                    grants.push(Grant {
                        namespace: g.namespace.clone(),
                        groups: vec![each_group.clone()],
                        resources: vec![each_resource.clone()],
                        verbs,
                    });
                }
            }
        }
        self.grants = grants;
        self
    }

    /// Whether `verb` on `resource` (with `/status` for the subresource) of
    /// `group`, in `namespace` (None: cluster scope, or all namespaces) is
    /// allowed.
    pub fn allows(&self, verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> bool {
        self.grants.iter().any(|g| {
            let in_scope = match (&g.namespace, namespace) {
                (None, _) => true,
                (Some(ours), Some(asked)) => ours == asked,
                (Some(_), None) => false,
            };
            in_scope
                && matches(&g.groups, group)
                && matches(&g.resources, resource)
                && matches(&g.verbs, verb)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_s_grants_in_deploy() {
        let rbac = Rbac::deploy().expect("deploy/rbac.yaml");
        assert_eq!(
            rbac.user,
            "system:serviceaccount:mirror-system:mirror-agent"
        );
        assert!(rbac.allows("watch", "", "pods", None));
        assert!(rbac.allows("list", "", "namespaces", None));
        assert!(rbac.allows(
            "patch",
            "mirror.packets.dev",
            "mirrorpolicies/status",
            Some("shop")
        ));
        assert!(!rbac.allows(
            "patch",
            "mirror.packets.dev",
            "mirrorpolicies",
            Some("shop")
        ));
        assert!(rbac.allows("create", "events.k8s.io", "events", Some("shop")));
        assert!(rbac.allows("watch", "", "secrets", Some("mirror-system")));
        assert!(!rbac.allows("watch", "", "secrets", Some("shop")));
        assert!(
            !rbac.allows("list", "", "secrets", None),
            "secrets only in mirror-system"
        );
        assert!(!rbac.allows("delete", "", "pods", Some("shop")));
        let no_namespaces = rbac.clone().without("", "namespaces", "list");
        assert!(!no_namespaces.allows("list", "", "namespaces", None));
        assert!(no_namespaces.allows("watch", "", "namespaces", None));
        assert!(
            no_namespaces.allows("list", "", "pods", None),
            "the rule's other resource keeps it"
        );
        let partial = rbac.without("events.k8s.io", "events", "create");
        assert!(!partial.allows("create", "events.k8s.io", "events", Some("shop")));
        assert!(partial.allows("patch", "events.k8s.io", "events", Some("shop")));
        assert!(
            partial.allows("create", "", "events", Some("shop")),
            "the core group's stay"
        );
    }
}
