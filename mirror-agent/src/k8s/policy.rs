//! `MirrorPolicy` (namespaced) and `ClusterMirrorPolicy` (cluster-scoped):
//! which pods, the policy body, and the collector the copies go to.
//!
//! The body is [`BodySpec`] flattened into the spec, so a policy reads as
//! a policy file writes it (README.md, "Policy files": `spec.direction`,
//! `spec.rules`, ...) and moves between a file and a resource unchanged.
//! serde cannot refuse unknown fields through `flatten`; the API server
//! does, from the CRD schema (strict field validation refuses them,
//! otherwise they are pruned).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, ResourceExt, core::Selector, core::SelectorExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    selector::{self, SelectorError},
    status::PolicyStatus,
};
use crate::policy::{PolicyBody, PolicyError, PrefixTables, Problem, RateLimit, spec::BodySpec};

/// A tenant's mirror: pods of its own namespace, to an approved collector.
// Each printcolumn(...) repeats `type_ = "string"`, which clippy takes for
// a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mirror.packets.dev",
    version = "v1alpha1",
    kind = "MirrorPolicy",
    namespaced,
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "mp",
    category = "mirror",
    doc = "Mirrors the traffic of pods in its own namespace to a MirrorCollector that admits the namespace.",
    printcolumn(
        name = "Collector",
        type_ = "string",
        json_path = ".spec.collectorRef.name"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.matchedPods"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MirrorPolicySpec {
    /// Which pods of the policy's namespace; `{}` selects them all. Pods of
    /// other namespaces are never selected, and hostNetwork pods never mirrored.
    pub pod_selector: LabelSelector,
    /// The MirrorCollector the copies go to; its allowedNamespaces must admit
    /// this namespace.
    pub collector_ref: CollectorRef,
    #[serde(flatten)]
    pub body: BodySpec,
}

/// An administrator's mirror across namespaces.
// Each printcolumn(...) repeats `type_ = "string"`, which clippy takes for
// a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "mirror.packets.dev",
    version = "v1alpha1",
    kind = "ClusterMirrorPolicy",
    status = "PolicyStatus",
    derive = "PartialEq",
    shortname = "cmp",
    category = "mirror",
    doc = "Mirrors the traffic of pods in the namespaces a selector chooses to a MirrorCollector.",
    printcolumn(
        name = "Collector",
        type_ = "string",
        json_path = ".spec.collectorRef.name"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Pods", type_ = "integer", json_path = ".status.matchedPods"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterMirrorPolicySpec {
    /// Which namespaces, by their labels (`kubernetes.io/metadata.name` names
    /// one); `{}` selects all.
    pub namespace_selector: LabelSelector,
    /// Which pods of those namespaces; `{}` selects them all.
    pub pod_selector: LabelSelector,
    /// The MirrorCollector the copies go to.
    pub collector_ref: CollectorRef,
    #[serde(flatten)]
    pub body: BodySpec,
}

/// A `MirrorCollector`, by name (collectors are cluster-scoped).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CollectorRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Why a policy's spec cannot be used; the text starts with the field path
/// under `spec`, for the `InvalidSpec` condition's message.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{field}.{source}")]
    Selector {
        field: &'static str,
        source: SelectorError,
    },
    /// A field of the policy body, `rules[1].destinationPorts[0]` say.
    #[error("{field}: {problem}")]
    Body { field: String, problem: Problem },
    /// What the body's validation reports otherwise (nothing, for a spec
    /// that serde already read; kept rather than lost).
    #[error(transparent)]
    Policy(PolicyError),
}

impl From<PolicyError> for SpecError {
    /// Drops the `policy "NAME": ` prefix of the policy file's messages: a
    /// condition already belongs to its policy.
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Invalid { field, problem, .. } => Self::Body { field, problem },
            other => Self::Policy(other),
        }
    }
}

/// Where a validated policy selects pods.
#[derive(Clone, Debug, PartialEq)]
pub enum Scope {
    /// One namespace: a `MirrorPolicy`'s own.
    Namespace(String),
    /// The namespaces whose labels match: a `ClusterMirrorPolicy`.
    Namespaces(Selector),
}

/// A policy of either kind, checked: what the node agent acts on.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidPolicy {
    pub scope: Scope,
    pub pod_selector: Selector,
    /// The `MirrorCollector`'s name.
    pub collector: String,
    /// Its `rateLimit` already lowered to the collector's ceiling, once
    /// accepted (`tenancy::accept_policy`).
    pub body: PolicyBody,
    /// Whether that ceiling lowered it, and to what.
    pub capped: Option<Capping>,
}

/// A tenant's `rateLimit` lowered to its collector's `maxRateLimit`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capping {
    pub collector: String,
    /// What the spec asked for.
    pub asked: RateLimit,
    /// What the hook enforces.
    pub limit: RateLimit,
}

impl std::fmt::Display for Capping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spec.rateLimit ({}) is above MirrorCollector \"{}\"'s maxRateLimit: this policy \
             gets {}",
            self.asked, self.collector, self.limit
        )
    }
}

impl ValidPolicy {
    /// Whether the policy selects a pod of `namespace` (whose labels are
    /// `namespace_labels`) with `pod_labels`. hostNetwork pods are the
    /// caller's to leave out: selecting them is not an error, mirroring is.
    pub fn selects(
        &self,
        namespace: &str,
        namespace_labels: &BTreeMap<String, String>,
        pod_labels: &BTreeMap<String, String>,
    ) -> bool {
        let in_scope = match &self.scope {
            Scope::Namespace(own) => own == namespace,
            Scope::Namespaces(selector) => selector.matches(namespace_labels),
        };
        in_scope && self.pod_selector.matches(pod_labels)
    }
}

fn parse_selector(field: &'static str, s: &LabelSelector) -> Result<Selector, SpecError> {
    selector::parse(s).map_err(|source| SpecError::Selector { field, source })
}

/// The body, validated as a policy file's, and refused if its CIDRs alone
/// overflow one of the kernel's prefix tables: no node could load it.
/// (Whether it fits beside the other policies of a node is the node's
/// question: `controller::desired`.)
fn body(name: &str, spec: &BodySpec) -> Result<PolicyBody, SpecError> {
    let body = PolicyBody::from_spec(name, spec)?;
    PrefixTables::default()
        .add(&body)
        .map_err(|full| SpecError::Body {
            field: full.field.to_owned(),
            problem: full.problem,
        })?;
    Ok(body)
}

impl MirrorPolicy {
    /// Checks the spec with the policy file's own validation.
    pub fn validate(&self) -> Result<ValidPolicy, SpecError> {
        let namespace = self.namespace().unwrap_or_default();
        Ok(ValidPolicy {
            scope: Scope::Namespace(namespace),
            pod_selector: parse_selector("podSelector", &self.spec.pod_selector)?,
            collector: self.spec.collector_ref.name.clone(),
            body: body(&self.name_any(), &self.spec.body)?,
            capped: None,
        })
    }
}

impl ClusterMirrorPolicy {
    /// Checks the spec with the policy file's own validation.
    pub fn validate(&self) -> Result<ValidPolicy, SpecError> {
        Ok(ValidPolicy {
            scope: Scope::Namespaces(parse_selector(
                "namespaceSelector",
                &self.spec.namespace_selector,
            )?),
            pod_selector: parse_selector("podSelector", &self.spec.pod_selector)?,
            collector: self.spec.collector_ref.name.clone(),
            body: body(&self.name_any(), &self.spec.body)?,
            capped: None,
        })
    }
}
