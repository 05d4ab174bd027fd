//! The kinds the fake server serves, one line each, and the discovery
//! documents made from them: the kinds the agent watches or writes, no more.

use serde_json::{Value, json};

/// Namespaced (else cluster-scoped).
pub const NAMESPACED: u8 = 1;
/// Has a `/status` subresource: writes to the object leave `.status` alone
/// and writes to `/status` touch nothing else.
pub const STATUS: u8 = 2;

/// One kind of object at one group/version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// Empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
    pub status: bool,
}

impl Resource {
    pub const fn new(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
        flags: u8,
    ) -> Self {
        Self {
            group,
            version,
            kind,
            plural,
            namespaced: flags & NAMESPACED != 0,
            status: flags & STATUS != 0,
        }
    }

    /// `v1` or `group/version`, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `mirrorpolicies.mirror.packets.dev`, as in error messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// The group of the project's own kinds.
pub const MIRROR_GROUP: &str = "mirror.packets.dev";

/// Everything served. Adding a kind is adding a line (and, for the project's
/// own kinds, a CRD in deploy/crds/, which schema.rs checks this against).
/// The agent watches pods, namespaces, secrets and the project's kinds, and
/// its event recorder writes events.k8s.io Events; the other kinds are
/// those of `deploy/`, so that tests can apply it.
#[rustfmt::skip]
pub const RESOURCES: &[Resource] = &[
    Resource::new("", "v1", "Pod", "pods", NAMESPACED | STATUS),
    Resource::new("", "v1", "Namespace", "namespaces", STATUS),
    Resource::new("", "v1", "Secret", "secrets", NAMESPACED),
    Resource::new("events.k8s.io", "v1", "Event", "events", NAMESPACED),
    Resource::new("", "v1", "ServiceAccount", "serviceaccounts", NAMESPACED),
    Resource::new("", "v1", "Service", "services", NAMESPACED | STATUS),
    Resource::new("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", NAMESPACED | STATUS),
    Resource::new("apps", "v1", "DaemonSet", "daemonsets", NAMESPACED | STATUS),
    Resource::new("apps", "v1", "Deployment", "deployments", NAMESPACED | STATUS),
    Resource::new("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", 0),
    Resource::new("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", 0),
    Resource::new("rbac.authorization.k8s.io", "v1", "Role", "roles", NAMESPACED),
    Resource::new("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", NAMESPACED),
    Resource::new("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", STATUS),
    Resource::new("admissionregistration.k8s.io", "v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", 0),
    Resource::new(MIRROR_GROUP, "v1alpha1", "MirrorPolicy", "mirrorpolicies", NAMESPACED | STATUS),
    Resource::new(MIRROR_GROUP, "v1alpha1", "ClusterMirrorPolicy", "clustermirrorpolicies", STATUS),
    Resource::new(MIRROR_GROUP, "v1alpha1", "MirrorCollector", "mirrorcollectors", STATUS),
];

/// The index in [`RESOURCES`] of `plural` at `group/version`.
pub fn by_plural(group: &str, version: &str, plural: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.group == group && r.version == version && r.plural == plural)
}

/// The index in [`RESOURCES`] of an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<usize> {
    RESOURCES
        .iter()
        .position(|r| r.api_version() == api_version && r.kind == kind)
}

/// `GET /api`.
pub fn core_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{ "clientCIDR": "0.0.0.0/0", "serverAddress": server }],
    })
}

fn group_names() -> Vec<&'static str> {
    let mut groups: Vec<&str> = Vec::new();
    for r in RESOURCES {
        if !r.group.is_empty() && !groups.contains(&r.group) {
            groups.push(r.group);
        }
    }
    groups
}

/// `GET /apis/GROUP`, or `None` if no kind is in that group.
pub fn group(name: &str) -> Option<Value> {
    let mut versions: Vec<Value> = Vec::new();
    for r in RESOURCES.iter().filter(|r| r.group == name) {
        let v = json!({ "groupVersion": r.api_version(), "version": r.version });
        if !versions.contains(&v) {
            versions.push(v);
        }
    }
    let preferred = versions.first()?.clone();
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": versions,
        "preferredVersion": preferred,
    }))
}

/// `GET /apis`.
pub fn groups() -> Value {
    let groups: Vec<Value> = group_names().into_iter().filter_map(group).collect();
    json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": groups })
}

/// `GET /api/v1` or `/apis/GROUP/VERSION`, or `None` if nothing is served there.
pub fn resource_list(group: &str, version: &str) -> Option<Value> {
    let verbs = [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    let mut resources = Vec::new();
    for r in RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
    {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.kind.to_lowercase(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs,
        }));
        if r.status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["patch"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}
