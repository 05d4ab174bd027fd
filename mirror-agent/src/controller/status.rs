//! Each policy's status on this node, written by server-side apply under a
//! field manager of this node's own (so nodes never overwrite each other's
//! entries), at most once per interval per policy, and only when it says
//! something new. Refusals and attach problems also become Events.
//!
//! The top level (`Ready`, `matchedPods`) speaks for every node, with no
//! controller to add the nodes up: each agent sums the node entries it
//! sees in its watch cache of the policy (the others' and its own fresh
//! one), so all agents write the same values and the last writer changes
//! nothing.
//!
//! Each agent renews its own entries (a write even when nothing changed,
//! moving `lastUpdateTime`) every third of `--status-stale-after`; an
//! entry of another node not renewed within `--status-stale-after` is left
//! out of the sum and removed by whichever live agent writes the policy
//! next: a merge patch of the remaining list, conditional on the
//! resourceVersion it saw, so an entry renewed meanwhile is never lost.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::{
    controller::{desired::Outcome, snapshot::PolicyRef, usage::Windows},
    datapath::mirror::{Loss, PolicyTotals},
    k8s::{
        ClusterMirrorPolicy, GROUP, MirrorPolicy, NodeStatus, PolicyStatus, VERSION,
        accepted_condition, conditions, reasons,
        status::{condition, find, set_condition},
    },
};

/// One status to write: the policy, and its status object.
pub struct Pending {
    policy: PolicyRef,
    body: Value,
    /// A problem to report as an Event, if new.
    warning: Option<(String, String)>,
    /// A merge patch that removes other nodes' stale entries, if any.
    prune: Option<Value>,
}

pub struct StatusWriter {
    node: String,
    interval: Duration,
    /// Another node's entry older than this is stale; ours is renewed at a
    /// third of it.
    stale_after: Duration,
    /// What was last written per policy (without times), and when.
    last: HashMap<PolicyRef, (Value, Instant)>,
    warned: HashMap<PolicyRef, String>,
    usage: Windows,
}

impl StatusWriter {
    pub fn new(node: &str, interval: Duration, stale_after: Duration) -> Self {
        Self {
            node: node.to_owned(),
            interval,
            stale_after,
            last: HashMap::new(),
            warned: HashMap::new(),
            usage: Windows::default(),
        }
    }

    /// The statuses due now: changed since last written, and not written
    /// within the interval, or due for renewal. `reported`: a policy's
    /// status as the watch cache has it (every node's entry), and the
    /// policy's resourceVersion.
    pub fn due(
        &mut self,
        outcomes: &[Outcome],
        totals: impl Fn(&str) -> PolicyTotals,
        reported: impl Fn(&PolicyRef) -> (PolicyStatus, Option<String>),
    ) -> Vec<Pending> {
        let now = Instant::now();
        let wall = Timestamp::now();
        let stamp = Time(wall);
        let renew = (self.stale_after / 3).max(self.interval);
        let mut due = Vec::new();
        for o in outcomes {
            let t = totals(&o.policy.plan_name());
            let mut own = NodeStatus {
                node: self.node.clone(),
                matched_pods: o.matched,
                // Hooked by now, not only planned.
                attached_pods: o.attached.saturating_sub(t.queued),
                skipped_host_network_pods: o.skipped_host_network,
                sidecar_pods: o.sidecar,
                terminating_pods: o.terminating,
                mirrored: t.mirrored,
                truncated: t.truncated,
                mtu_truncated: t.mtu_truncated,
                dropped: dropped(&t.lost),
                usage: self.usage.usage(&o.policy, &t, self.interval, now),
                problems: o
                    .problems
                    .iter()
                    .take(MAX_PROBLEMS)
                    .map(|p| p.chars().take(MAX_PROBLEM_CHARS).collect())
                    .collect(),
                last_update_time: None,
            };
            let (mut cached, version) = reported(&o.policy);
            let stale = stale_nodes(&cached.nodes, &self.node, wall, self.stale_after);
            let mut nodes: Vec<&NodeStatus> = cached
                .nodes
                .iter()
                .filter(|n| n.node != self.node && !stale.contains(&n.node))
                .collect();
            nodes.push(&own);
            let summary = summarize(o.accepted.is_ok(), &nodes);
            let content = json!({
                "accepted": o.accepted.as_ref().err().map(|r| (r.reason, r.message.clone())),
                "capped": o.accepted.as_ref().ok().and_then(|a| a.capped.as_ref().map(ToString::to_string)),
                "ready": (summary.ready, summary.reason, &summary.message),
                "matched": summary.matched,
                "own": &own,
                "generation": o.generation,
                "stale": &stale,
            });
            if let Some((last, at)) = self.last.get(&o.policy) {
                let age = now.duration_since(*at);
                if age < self.interval || (*last == content && stale.is_empty() && age < renew) {
                    continue;
                }
            }
            // Without a version the removal could undo a renewal it never saw.
            let prune = version.filter(|_| !stale.is_empty()).map(|v| {
                let kept: Vec<&NodeStatus> = cached
                    .nodes
                    .iter()
                    .filter(|n| !stale.contains(&n.node))
                    .collect();
                json!({"metadata": {"resourceVersion": v}, "status": {"nodes": kept}})
            });
            own.last_update_time = Some(stamp.clone());
            // Transition times move only when a condition's status does.
            let list = &mut cached.conditions;
            set_condition(
                list,
                accepted_condition(&o.accepted, o.generation, stamp.clone()),
            );
            set_condition(
                list,
                condition(
                    conditions::READY,
                    summary.ready,
                    summary.reason,
                    summary.message,
                    o.generation,
                    stamp.clone(),
                ),
            );
            let written: Vec<_> = [conditions::ACCEPTED, conditions::READY]
                .iter()
                .filter_map(|t| find(list, t))
                .collect();
            let body = json!({
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": kind(&o.policy),
                "status": {
                    "conditions": written,
                    "matchedPods": summary.matched,
                    "nodes": [own],
                },
            });
            let warning = match (&o.accepted, o.problems.is_empty()) {
                (Err(r), _) => Some((r.reason.to_owned(), r.message.clone())),
                (Ok(_), false) => Some((
                    reasons::ATTACH_FAILED.to_owned(),
                    format!("on node {}: {}", self.node, o.problems.join("; ")),
                )),
                _ => None,
            }
            .filter(|(_, m)| self.warned.get(&o.policy) != Some(m));
            if let Some((_, m)) = &warning {
                self.warned.insert(o.policy.clone(), m.clone());
            }
            self.last.insert(o.policy.clone(), (content, now));
            due.push(Pending {
                policy: o.policy.clone(),
                body,
                warning,
                prune,
            });
        }
        // Policies gone: forget them, so a new one of the same name starts afresh.
        self.last
            .retain(|p, _| outcomes.iter().any(|o| &o.policy == p));
        self.usage
            .retain(|p| outcomes.iter().any(|o| &o.policy == p));
        due
    }
}

/// Writes the statuses and events. Failures are logged: the next change
/// (or the next interval) tries again, and mirroring never waits for it.
pub async fn write(client: Client, node: String, pending: Vec<Pending>) {
    let manager = format!("mirror-agent.{node}");
    let params = PatchParams::apply(&manager).force();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "mirror-agent".into(),
            instance: Some(node.clone()),
        },
    );
    for p in pending {
        let name = p.policy.name.as_str();
        if let Some(prune) = &p.prune {
            let params = PatchParams {
                field_manager: Some(manager.clone()),
                ..PatchParams::default()
            };
            let patch = Patch::Merge(prune);
            let removed = if p.policy.cluster {
                Api::<ClusterMirrorPolicy>::all(client.clone())
                    .patch_status(name, &params, &patch)
                    .await
                    .map(drop)
            } else {
                Api::<MirrorPolicy>::namespaced(client.clone(), &p.policy.namespace)
                    .patch_status(name, &params, &patch)
                    .await
                    .map(drop)
            };
            match removed {
                Ok(()) => {
                    info!(policy = %p.policy.plan_name(), "removed the status entries of nodes whose agents stopped renewing them")
                }
                // Another agent removed them first, or one was renewed: the
                // next write looks again.
                Err(error) => {
                    debug!(policy = %p.policy.plan_name(), %error, "removing stale status entries")
                }
            }
        }
        let result = if p.policy.cluster {
            Api::<ClusterMirrorPolicy>::all(client.clone())
                .patch_status(name, &params, &Patch::Apply(&p.body))
                .await
                .map(drop)
        } else {
            Api::<MirrorPolicy>::namespaced(client.clone(), &p.policy.namespace)
                .patch_status(name, &params, &Patch::Apply(&p.body))
                .await
                .map(drop)
        };
        match result {
            Ok(()) => debug!(policy = %p.policy.plan_name(), "status written"),
            Err(error) => {
                let permission = format!("patch {}/status", plural(&p.policy));
                let error = explain(&error, &permission);
                warn!(policy = %p.policy.plan_name(), %error, "writing the status failed")
            }
        }
        if let Some((reason, note)) = p.warning {
            let event = Event {
                type_: EventType::Warning,
                reason,
                note: Some(note.chars().take(1000).collect()),
                action: "Mirror".into(),
                secondary: None,
            };
            let reference = ObjectReference {
                api_version: Some(format!("{GROUP}/{VERSION}")),
                kind: Some(kind(&p.policy).into()),
                name: Some(p.policy.name.clone()),
                namespace: (!p.policy.cluster).then(|| p.policy.namespace.clone()),
                ..ObjectReference::default()
            };
            if let Err(error) = recorder.publish(&event, &reference).await {
                let error = explain(&error, "create events.k8s.io events");
                warn!(policy = %p.policy.plan_name(), %error, "publishing an event failed");
            }
        }
    }
}

/// A node entry's `dropped`: the datapath's losses under the status's
/// names for them (those its CRD documents).
fn dropped(lost: &BTreeMap<Loss, u64>) -> BTreeMap<String, u64> {
    lost.iter()
        .map(|(loss, n)| (loss_reason(*loss).to_owned(), *n))
        .collect()
}

fn loss_reason(loss: Loss) -> &'static str {
    match loss {
        Loss::RingFull => "ringFull",
        Loss::CopyFailed => "copyFailed",
        Loss::RateLimited => "rateLimited",
        Loss::QueueFull => "queueFull",
        Loss::SendError => "sendError",
    }
}

/// A 403 names the permission the agent lacks (as `deploy/rbac.yaml`
/// grants it), and says the rest goes on.
fn explain(error: &kube::Error, permission: &str) -> String {
    match error {
        kube::Error::Api(s) if s.code == 403 => format!(
            "forbidden: this agent's ServiceAccount lacks the permission to {permission} \
             (deploy/rbac.yaml grants it); mirroring goes on without it: {}",
            s.message
        ),
        other => other.to_string(),
    }
}

fn plural(p: &PolicyRef) -> &'static str {
    if p.cluster {
        "clustermirrorpolicies"
    } else {
        "mirrorpolicies"
    }
}

fn kind(p: &PolicyRef) -> &'static str {
    if p.cluster {
        "ClusterMirrorPolicy"
    } else {
        "MirrorPolicy"
    }
}

/// Other nodes' entries last written more than `after` ago (by their own
/// clocks' stamps: clocks must agree to well within `after`). An entry with
/// no time is never judged stale.
fn stale_nodes(nodes: &[NodeStatus], own: &str, now: Timestamp, after: Duration) -> Vec<String> {
    let after = i64::try_from(after.as_secs()).unwrap_or(i64::MAX);
    nodes
        .iter()
        .filter(|n| n.node != own)
        .filter(|n| {
            n.last_update_time
                .as_ref()
                .is_some_and(|t| now.as_second().saturating_sub(t.0.as_second()) > after)
        })
        .map(|n| n.node.clone())
        .collect()
}

/// A node entry lists at most this many problems, each cut to this length.
const MAX_PROBLEMS: usize = 10;
const MAX_PROBLEM_CHARS: usize = 200;

/// The top level of a policy's status, from every node's entry.
#[derive(Debug, PartialEq)]
struct Summary {
    ready: bool,
    reason: &'static str,
    message: String,
    matched: u64,
}

fn summarize(accepted: bool, nodes: &[&NodeStatus]) -> Summary {
    let sum = |f: fn(&NodeStatus) -> u64| nodes.iter().map(|n| f(n)).sum::<u64>();
    let matched = sum(|n| n.matched_pods);
    let attached = sum(|n| n.attached_pods);
    let skipped = sum(|n| n.skipped_host_network_pods);
    let sidecars = sum(|n| n.sidecar_pods);
    // Pods mirrored from inside by their own sidecar, said beside the rest.
    let by_sidecars = if sidecars > 0 {
        format!(" ({sidecars} more selected pods are mirrored by their own sidecars)")
    } else {
        String::new()
    };
    let (ready, reason, message) = if !accepted {
        (
            false,
            reasons::NOT_ACCEPTED,
            "the policy is not accepted".to_owned(),
        )
    } else {
        // A node still hooking its pods (attached < matched, no problem)
        // is on its way, not failing.
        let mut failing: Vec<&&NodeStatus> =
            nodes.iter().filter(|n| !n.problems.is_empty()).collect();
        failing.sort_by(|a, b| a.node.cmp(&b.node));
        if !failing.is_empty() {
            let detail: Vec<String> = failing
                .iter()
                .map(|n| format!("on node {}: {}", n.node, n.problems.join("; ")))
                .collect();
            (
                false,
                reasons::ATTACH_FAILED,
                format!(
                    "{attached} of {matched} selected pods are mirrored{by_sidecars}; {}",
                    detail.join("; ")
                ),
            )
        } else if matched == 0 && sidecars > 0 {
            (
                true,
                reasons::MIRRORING,
                format!("the {sidecars} selected pods are mirrored by their own sidecars"),
            )
        } else if matched == 0 {
            let hn = if skipped > 0 {
                format!(
                    " ({skipped} hostNetwork pods are selected but never mirrored: their interfaces are their nodes')"
                )
            } else {
                String::new()
            };
            (
                false,
                reasons::NO_MATCHING_PODS,
                format!("no selected pod runs on any node{hn}"),
            )
        } else {
            let on = nodes.iter().filter(|n| n.attached_pods > 0).count();
            (
                true,
                reasons::MIRRORING,
                format!("mirroring {attached} pods on {on} nodes{by_sidecars}"),
            )
        }
    };
    Summary {
        ready,
        reason,
        message,
        matched,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::Acceptance;

    fn node(name: &str, matched: u64, attached: u64, problems: &[&str]) -> NodeStatus {
        NodeStatus {
            node: name.into(),
            matched_pods: matched,
            attached_pods: attached,
            problems: problems.iter().map(|p| (*p).to_owned()).collect(),
            ..NodeStatus::default()
        }
    }

    #[test]
    fn every_node_counts_and_the_order_does_not_matter() {
        let (a, b, c) = (
            node("a", 2, 2, &[]),
            node("b", 0, 0, &[]),
            node("c", 3, 3, &[]),
        );
        let one = summarize(true, &[&a, &b, &c]);
        assert_eq!(one, summarize(true, &[&c, &a, &b]));
        assert_eq!(
            (one.ready, one.reason, one.matched),
            (true, reasons::MIRRORING, 5)
        );
        assert_eq!(one.message, "mirroring 5 pods on 2 nodes");
    }

    #[test]
    fn a_node_that_fails_makes_it_not_ready_and_is_named_one_still_hooking_does_not() {
        let a = node("a", 2, 2, &[]);
        let b = node(
            "b",
            2,
            1,
            &["pod shop/web-9: no network namespace on this node holds 198.18.0.9"],
        );
        let s = summarize(true, &[&b, &a]);
        assert_eq!(
            (s.ready, s.reason, s.matched),
            (false, reasons::ATTACH_FAILED, 4)
        );
        assert!(
            s.message
                .starts_with("3 of 4 selected pods are mirrored; on node b: pod shop/web-9"),
            "{}",
            s.message
        );
        let attaching = node("c", 3, 1, &[]);
        let s = summarize(true, &[&a, &attaching]);
        assert_eq!(
            (s.ready, s.reason),
            (true, reasons::MIRRORING),
            "still hooking"
        );
    }

    #[test]
    fn no_pods_anywhere_and_not_accepted() {
        let mut a = node("a", 0, 0, &[]);
        a.skipped_host_network_pods = 1;
        let s = summarize(true, &[&a, &node("b", 0, 0, &[])]);
        assert_eq!(
            (s.ready, s.reason, s.matched),
            (false, reasons::NO_MATCHING_PODS, 0)
        );
        assert!(s.message.contains("1 hostNetwork pods"), "{}", s.message);
        let s = summarize(false, &[&node("a", 2, 2, &[])]);
        assert_eq!((s.ready, s.reason), (false, reasons::NOT_ACCEPTED));
    }

    #[test]
    fn pods_with_their_own_sidecar_are_said_to_be_mirrored_by_it() {
        let mut a = node("a", 0, 0, &[]);
        a.sidecar_pods = 2;
        let s = summarize(true, &[&a]);
        assert_eq!(
            (s.ready, s.reason, s.matched),
            (true, reasons::MIRRORING, 0)
        );
        assert_eq!(
            s.message,
            "the 2 selected pods are mirrored by their own sidecars"
        );
        let s = summarize(true, &[&a, &node("b", 3, 3, &[])]);
        assert_eq!(
            s.message,
            "mirroring 3 pods on 1 nodes (2 more selected pods are mirrored by their own sidecars)"
        );
    }

    fn web() -> Outcome {
        Outcome {
            policy: PolicyRef {
                cluster: false,
                namespace: "shop".into(),
                name: "web".into(),
            },
            generation: Some(1),
            accepted: Ok(Acceptance::default()),
            matched: 1,
            attached: 1,
            skipped_host_network: 0,
            sidecar: 0,
            terminating: 0,
            problems: Vec::new(),
        }
    }

    fn written_at(name: &str, attached: u64, seconds_ago: i64) -> NodeStatus {
        let mut n = node(name, attached, attached, &[]);
        n.last_update_time = Some(Time(
            Timestamp::from_second(Timestamp::now().as_second() - seconds_ago).expect("in range"),
        ));
        n
    }

    #[test]
    fn entries_not_renewed_in_time_are_stale_ours_never() {
        let nodes = [
            written_at("a", 1, 400),
            written_at("b", 1, 100),
            node("c", 1, 1, &[]),
            written_at("own", 1, 4000),
        ];
        let stale = stale_nodes(&nodes, "own", Timestamp::now(), Duration::from_secs(300));
        assert_eq!(stale, ["a"]);
    }

    #[test]
    fn a_stale_entry_is_left_out_of_the_sum_and_removed_on_the_version_seen() {
        let cached = PolicyStatus {
            nodes: vec![written_at("gone", 5, 600), written_at("alive", 2, 10)],
            ..PolicyStatus::default()
        };
        let mut writer = StatusWriter::new("node-a", Duration::ZERO, Duration::from_secs(300));
        let due = writer.due(
            &[web()],
            |_| PolicyTotals::default(),
            |_| (cached.clone(), Some("42".into())),
        );
        let [pending] = due.as_slice() else {
            panic!("one status");
        };
        // alive's 2 and our 1.
        assert_eq!(pending.body["status"]["matchedPods"], 3);
        let ready = &pending.body["status"]["conditions"][1];
        assert_eq!(ready["message"], "mirroring 3 pods on 2 nodes", "{ready}");
        let prune = pending.prune.as_ref().expect("a removal");
        assert_eq!(prune["metadata"]["resourceVersion"], "42");
        let kept: Vec<&str> = prune["status"]["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| n["node"].as_str().expect("name"))
            .collect();
        assert_eq!(kept, ["alive"]);
        // Unseen version: no removal that could undo a renewal.
        let mut writer = StatusWriter::new("node-a", Duration::ZERO, Duration::from_secs(300));
        let due = writer.due(
            &[web()],
            |_| PolicyTotals::default(),
            |_| (cached.clone(), None),
        );
        assert!(due[0].prune.is_none());
    }

    #[test]
    fn an_unchanged_entry_is_renewed_at_a_third_of_the_stale_time() {
        let none = |_: &PolicyRef| (PolicyStatus::default(), None);
        let totals = |_: &str| PolicyTotals::default();
        let mut writer = StatusWriter::new("node-a", Duration::ZERO, Duration::from_secs(300));
        assert_eq!(writer.due(&[web()], totals, none).len(), 1);
        assert!(
            writer.due(&[web()], totals, none).is_empty(),
            "unchanged, renewal not due"
        );
        let mut writer = StatusWriter::new("node-a", Duration::ZERO, Duration::ZERO);
        assert_eq!(writer.due(&[web()], totals, none).len(), 1);
        assert_eq!(
            writer.due(&[web()], totals, none).len(),
            1,
            "unchanged, renewal due"
        );
    }

    #[test]
    fn losses_are_written_under_the_names_the_crd_documents() {
        let outcome = Outcome {
            policy: PolicyRef {
                cluster: true,
                namespace: String::new(),
                name: "web".into(),
            },
            ..web()
        };
        let totals = |_: &str| PolicyTotals {
            mirrored: 5,
            lost: BTreeMap::from([
                (Loss::RingFull, 3),
                (Loss::CopyFailed, 1),
                (Loss::RateLimited, 4),
                (Loss::QueueFull, 6),
                (Loss::SendError, 2),
            ]),
            ..PolicyTotals::default()
        };
        let mut writer = StatusWriter::new("node-a", Duration::ZERO, Duration::from_secs(300));
        let due = writer.due(&[outcome], totals, |_| (PolicyStatus::default(), None));
        let [pending] = due.as_slice() else {
            panic!("one status");
        };
        let node = &pending.body["status"]["nodes"][0];
        assert_eq!(node["mirrored"], 5);
        assert_eq!(
            node["dropped"],
            json!({"ringFull": 3, "copyFailed": 1, "rateLimited": 4, "queueFull": 6, "sendError": 2})
        );
    }
}
