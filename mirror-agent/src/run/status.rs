//! Each policy's status on this node, written by server-side apply under a
//! field manager of this node's own (so nodes never overwrite each other's
//! entries), at most once per interval per policy, and only when it says
//! something new. Refusals and attach problems also become Events.

use std::{
    collections::HashMap,
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
use tracing::{debug, warn};

use crate::{
    k8s::{
        ClusterMirrorPolicy, GROUP, MirrorPolicy, NodeStatus, VERSION, accepted_condition,
        conditions, reasons, status::condition,
    },
    mirror::PolicyTotals,
    run::desired::{Outcome, PolicyRef},
};

/// One status to write: the policy, and its status object.
pub struct Pending {
    policy: PolicyRef,
    body: Value,
    /// A problem to report as an Event, if new.
    warning: Option<(String, String)>,
}

pub struct StatusWriter {
    node: String,
    interval: Duration,
    /// What was last written per policy (without times), and when.
    last: HashMap<PolicyRef, (Value, Instant)>,
    warned: HashMap<PolicyRef, String>,
}

impl StatusWriter {
    pub fn new(node: &str, interval: Duration) -> Self {
        Self {
            node: node.to_owned(),
            interval,
            last: HashMap::new(),
            warned: HashMap::new(),
        }
    }

    /// The statuses due now: changed since last written, and not written
    /// within the interval.
    pub fn due(
        &mut self,
        outcomes: &[Outcome],
        totals: impl Fn(&str) -> PolicyTotals,
    ) -> Vec<Pending> {
        let now = Instant::now();
        let stamp = Time(Timestamp::now());
        let mut due = Vec::new();
        for o in outcomes {
            let t = totals(&o.policy.plan_name());
            let (ready, reason, message) = ready(o, &self.node);
            let content = json!({
                "accepted": o.accepted.as_ref().err().map(|r| (r.reason, r.message.clone())),
                "ready": (ready, reason, &message),
                "counts": [o.matched, o.attached, o.skipped_host_network, t.mirrored, t.truncated],
                "dropped": t.dropped,
                "generation": o.generation,
            });
            if let Some((last, at)) = self.last.get(&o.policy)
                && (*last == content || now.duration_since(*at) < self.interval)
            {
                continue;
            }
            let node = NodeStatus {
                node: self.node.clone(),
                matched_pods: o.matched,
                attached_pods: o.attached,
                skipped_host_network_pods: o.skipped_host_network,
                mirrored: t.mirrored,
                truncated: t.truncated,
                dropped: t.dropped.clone(),
                last_update_time: Some(stamp.clone()),
            };
            let body = json!({
                "apiVersion": format!("{GROUP}/{VERSION}"),
                "kind": kind(&o.policy),
                "status": {
                    "conditions": [
                        accepted_condition(&o.accepted, o.generation, stamp.clone()),
                        condition(conditions::READY, ready, reason, message.clone(), o.generation, stamp.clone()),
                    ],
                    "nodes": [node],
                },
            });
            let warning = match (&o.accepted, o.problems.is_empty()) {
                (Err(r), _) => Some((r.reason.to_owned(), r.message.clone())),
                (Ok(()), false) => Some((reasons::ATTACH_FAILED.to_owned(), message.clone())),
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
            });
        }
        // Policies gone: forget them, so a new one of the same name starts afresh.
        self.last
            .retain(|p, _| outcomes.iter().any(|o| &o.policy == p));
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
                warn!(policy = %p.policy.plan_name(), %error, "publishing an event failed");
            }
        }
    }
}

fn kind(p: &PolicyRef) -> &'static str {
    if p.cluster {
        "ClusterMirrorPolicy"
    } else {
        "MirrorPolicy"
    }
}

/// The Ready condition on this node.
fn ready(o: &Outcome, node: &str) -> (bool, &'static str, String) {
    if o.accepted.is_err() {
        return (
            false,
            reasons::NOT_ACCEPTED,
            "the policy is not accepted".into(),
        );
    }
    if !o.problems.is_empty() {
        return (
            false,
            reasons::ATTACH_FAILED,
            format!(
                "on node {node}, {} of {} selected pods are mirrored: {}",
                o.attached,
                o.matched,
                o.problems.join("; ")
            ),
        );
    }
    if o.matched == 0 {
        let hn = if o.skipped_host_network > 0 {
            format!(
                " ({} hostNetwork pods are selected but never mirrored: their interfaces are the node's)",
                o.skipped_host_network
            )
        } else {
            String::new()
        };
        return (
            false,
            reasons::NO_MATCHING_PODS,
            format!("no selected pod runs on node {node}{hn}"),
        );
    }
    (
        true,
        reasons::MIRRORING,
        format!("mirroring {} pods on node {node}", o.attached),
    )
}
