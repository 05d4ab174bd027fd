//! What the agents report on a policy: conditions with reasons, the pods it
//! matched, and per-node counters. Shared by `MirrorPolicy` and
//! `ClusterMirrorPolicy`.
//!
//! The lists are list-maps (`x-kubernetes-list-type: map`): conditions keyed
//! by `type`, node entries keyed by `node`. With server-side apply, each
//! node's agent then owns its own entry of `nodes` under its own field
//! manager, and agents on different nodes never overwrite each other's
//! counters.

use std::collections::BTreeMap;

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types.
pub mod conditions {
    /// The spec is valid and its collector may be used: True or False.
    pub const ACCEPTED: &str = "Accepted";
    /// Accepted, and mirroring on the nodes where it selects pods.
    pub const READY: &str = "Ready";
}

/// Condition reasons: CamelCase, stable, for machines; the message is for people.
pub mod reasons {
    /// Accepted=True.
    pub const ACCEPTED: &str = "Accepted";
    /// Accepted=True, its `rateLimit` lowered to the collector's `maxRateLimit`.
    pub const RATE_LIMIT_CAPPED: &str = "RateLimitCapped";
    /// The collector's `allowedNamespaces` does not admit the policy's namespace.
    pub const COLLECTOR_NOT_ALLOWED: &str = "CollectorNotAllowed";
    /// No `MirrorCollector` has the name in `collectorRef`.
    pub const COLLECTOR_NOT_FOUND: &str = "CollectorNotFound";
    /// The collector exists but its spec is invalid (its own status says why).
    pub const INVALID_COLLECTOR: &str = "InvalidCollector";
    /// The policy's own spec is invalid (a rule, the filter, a selector).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Ready=True: hooks attached to every selected pod.
    pub const MIRRORING: &str = "Mirroring";
    /// Ready=False: accepted, but no pod is selected (hostNetwork pods are never).
    pub const NO_MATCHING_PODS: &str = "NoMatchingPods";
    /// Ready=False: the policy is not accepted.
    pub const NOT_ACCEPTED: &str = "NotAccepted";
    /// Ready=False: attaching to some selected pod failed.
    pub const ATTACH_FAILED: &str = "AttachFailed";
}

/// The status of a `MirrorPolicy` or `ClusterMirrorPolicy`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// `Accepted` and `Ready`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Pods the policy selects on all nodes: the sum of `nodes[].matchedPods`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_pods: Option<u64>,
    /// One entry per node with selected pods, written by that node's agent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["node"]))]
    pub nodes: Vec<NodeStatus>,
}

/// One node's view of a policy; counters run from the agent's start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// The node's name.
    pub node: String,
    /// Pods on this node the policy selects (hostNetwork pods not included).
    #[serde(default)]
    pub matched_pods: u64,
    /// Selected pods whose hooks are attached.
    #[serde(default)]
    pub attached_pods: u64,
    /// hostNetwork pods the selector matched but that are never mirrored:
    /// their interfaces are the node's own.
    #[serde(default)]
    pub skipped_host_network_pods: u64,
    /// Pods the selector matched that carry the mirror sidecar (`mirror-agent
    /// sidecar`, injected by the webhook): mirrored by it, from inside the
    /// pod, so not by the node agent, and not in `matchedPods`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sidecar_pods: u64,
    /// Of the selected pods, those being deleted (Terminating): mirrored
    /// until their network namespace is gone.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub terminating_pods: u64,
    /// Packets copied to the collector.
    #[serde(default)]
    pub mirrored: u64,
    /// Copies cut to the policy's snaplen.
    #[serde(default)]
    pub truncated: u64,
    /// Copies a tunnel cut to fit its MTU (sent all the same; the
    /// collector's `mtu` or the path is too small for the pods' frames).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mtu_truncated: u64,
    /// Copies lost, by reason (ringFull, queueFull, sendError, rateLimited, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, u64>,
    /// What mirroring this policy costs on this node, to charge it back to
    /// its tenant: rates over the last status interval, and the agent CPU
    /// time spent on it. Absent until the agent has watched one interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<NodeUsage>,
    /// Why selected pods on this node are not mirrored, one line each (at
    /// most 10; the node's Events have them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub problems: Vec<String>,
    /// When the agent wrote this entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
}

/// A policy's usage on one node (`nodes[].usage`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeUsage {
    /// The window the rates are over: the agent's `--status-interval`, or
    /// longer when its writes were held up.
    pub interval_seconds: u64,
    /// Copies sent (to every output of the policy) per second.
    pub packets_per_second: u64,
    /// Bytes sent per second, the outputs' own headers (tunnel, pcapng)
    /// included.
    pub bytes_per_second: u64,
    /// Agent CPU time spent on the policy over the window, in thousandths
    /// of a CPU (as a container's CPU request).
    pub cpu_millicores: u64,
    /// Agent CPU time spent on the policy since the agent started, in
    /// seconds: its rules and pcap-filter, encoding, segmenting and sending
    /// its copies.
    pub cpu_seconds: f64,
}

impl PolicyStatus {
    /// The condition of type `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        find(&self.conditions, type_)
    }
}

/// A condition, `status` True or False, for `generation` of the object.
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: now,
    }
}

/// The condition of type `type_` in `list`.
pub fn find<'a>(list: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    list.iter().find(|c| c.type_ == type_)
}

/// Sets `new` in `list` as Kubernetes' `meta.SetStatusCondition` does: the
/// transition time moves only when the status changes, so it says since
/// when the condition holds. Returns whether anything changed, so a caller
/// can skip a write that would change nothing.
pub fn set_condition(list: &mut Vec<Condition>, new: Condition) -> bool {
    let Some(old) = list.iter_mut().find(|c| c.type_ == new.type_) else {
        list.push(new);
        return true;
    };
    if old.status != new.status {
        *old = new;
        return true;
    }
    let changed = old.reason != new.reason
        || old.message != new.message
        || old.observed_generation != new.observed_generation;
    old.reason = new.reason;
    old.message = new.message;
    old.observed_generation = new.observed_generation;
    changed
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("in range"))
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let mut list = Vec::new();
        let accepted = |status, reason, message, t| {
            condition(
                conditions::ACCEPTED,
                status,
                reason,
                message,
                Some(1),
                at(t),
            )
        };
        assert!(set_condition(
            &mut list,
            accepted(true, reasons::ACCEPTED, "ok", 10)
        ));
        assert!(!set_condition(
            &mut list,
            accepted(true, reasons::ACCEPTED, "ok", 20)
        ));
        assert_eq!(list[0].last_transition_time, at(10));
        assert!(set_condition(
            &mut list,
            accepted(true, reasons::ACCEPTED, "fine", 30)
        ));
        assert_eq!(
            (list[0].message.as_str(), &list[0].last_transition_time),
            ("fine", &at(10))
        );
        assert!(set_condition(
            &mut list,
            accepted(false, reasons::COLLECTOR_NOT_FOUND, "no", 40)
        ));
        assert_eq!(list.len(), 1);
        assert_eq!(
            (
                list[0].status.as_str(),
                list[0].reason.as_str(),
                &list[0].last_transition_time
            ),
            ("False", reasons::COLLECTOR_NOT_FOUND, &at(40))
        );
        let ready = condition(
            conditions::READY,
            false,
            reasons::NOT_ACCEPTED,
            "",
            Some(1),
            at(40),
        );
        assert!(set_condition(&mut list, ready));
        assert_eq!(list.len(), 2);
        assert_eq!(
            find(&list, conditions::READY).map(|c| c.status.as_str()),
            Some("False")
        );
    }

    #[test]
    fn status_yaml_round_trip() {
        let yaml = "\
conditions:
  - type: Accepted
    status: 'False'
    reason: CollectorNotAllowed
    message: collector \"lab\" does not admit namespace \"team-a\"
    lastTransitionTime: '2026-01-02T03:04:05Z'
    observedGeneration: 3
matchedPods: 2
nodes:
  - node: node-1
    matchedPods: 2
    attachedPods: 2
    skippedHostNetworkPods: 1
    mirrored: 1000
    truncated: 7
    mtuTruncated: 5
    dropped: {ringFull: 3, queueFull: 1}
";
        let status: PolicyStatus = serde_norway::from_str(yaml).expect("status");
        assert_eq!(
            status
                .condition(conditions::ACCEPTED)
                .map(|c| c.reason.as_str()),
            Some(reasons::COLLECTOR_NOT_ALLOWED)
        );
        assert_eq!(status.nodes[0].dropped.get("ringFull"), Some(&3));
        let again: PolicyStatus =
            serde_json::from_value(serde_json::to_value(&status).expect("to json"))
                .expect("from json");
        assert_eq!(again, status);
    }
}
