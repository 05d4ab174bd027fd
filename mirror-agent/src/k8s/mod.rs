//! The Kubernetes API of the mirror: the custom resources `MirrorPolicy`,
//! `ClusterMirrorPolicy` and `MirrorCollector` (group [`GROUP`], version
//! [`VERSION`]), their status, and the pure decisions the node agent makes
//! about them (which pods a policy selects, whether a tenant may use a
//! collector), kept free of any client so they are tested without a cluster.
//!
//! The policy body is [`crate::policy::spec::BodySpec`], the very type the
//! policy file of `mirror-agent attach --policy` is read into, and it is
//! validated by the same [`crate::policy::PolicyBody`]; a collector becomes
//! the same [`crate::export::output::Output`] a `--output` URI does. The CRD YAML in
//! `deploy/crds/` is generated from these types (`cargo xtask crds`).
//!
//! - [`policy`]: `MirrorPolicy`, `ClusterMirrorPolicy` and their specs.
//! - [`collector`]: `MirrorCollector`, and its conversion to an output.
//! - [`status`]: conditions and per-node counters, shared by both policies.
//! - [`selector`]: label selectors, checked and matched.
//! - [`tenancy`]: which namespaces may send to which collector.

pub mod collector;
pub mod inject;
pub mod policy;
pub mod selector;
pub mod status;
pub mod tenancy;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceConversion, CustomResourceDefinition,
};
use kube::CustomResourceExt;

pub use collector::{
    CollectorError, CollectorProtocol, CollectorTls, MirrorCollector, MirrorCollectorSpec,
    MirrorCollectorStatus, TLS_CA_KEY, TLS_CERT_KEY, TLS_KEY_KEY,
};
pub use policy::{
    Capping, ClusterMirrorPolicy, ClusterMirrorPolicySpec, CollectorRef, MirrorPolicy,
    MirrorPolicySpec, Scope, SpecError, ValidPolicy,
};
pub use selector::SelectorError;
pub use status::{
    Condition, NodeStatus, NodeUsage, PolicyStatus, conditions, reasons, set_condition,
};
pub use tenancy::{
    Acceptance, Refusal, accept_cluster_policy, accept_policy, accepted_condition, apply_ceiling,
    check_collector,
};

/// The API group of every kind here.
pub const GROUP: &str = "mirror.packets.dev";
/// The one API version so far.
pub const VERSION: &str = "v1alpha1";

/// Every CRD, with the file name it has under `deploy/crds/`, in a fixed
/// order (the generator and its drift check depend on it).
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("mirrorcollectors.yaml", MirrorCollector::crd()),
        ("mirrorpolicies.yaml", MirrorPolicy::crd()),
        ("clustermirrorpolicies.yaml", ClusterMirrorPolicy::crd()),
    ]
    .into_iter()
    .map(|(file, crd)| (file, with_defaults(crd)))
    .collect()
}

/// States what the API server would fill in (`listKind`, no conversion),
/// so `kubectl apply --server-side` after a client-side apply has nothing
/// to disagree on (xtask/src/manifests/defaults.rs checks it).
fn with_defaults(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let names = &mut crd.spec.names;
    if names.list_kind.is_none() {
        names.list_kind = Some(format!("{}List", names.kind));
    }
    if crd.spec.conversion.is_none() {
        crd.spec.conversion = Some(CustomResourceConversion {
            strategy: "None".into(),
            webhook: None,
        });
    }
    crd
}

#[cfg(test)]
mod tests;
