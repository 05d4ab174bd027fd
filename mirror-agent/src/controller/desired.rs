//! From what the API server says to what this node mirrors, as a pure
//! function of plain data: each policy is checked (spec, collector,
//! tenancy, the collector's Secret), its pods on this node are found, and
//! where each pod's hooks go is decided from what discovery found about
//! it. The result is a plan for [`crate::datapath::mirror::Mirror::apply`],
//! per policy what its status on this node says, and the TLS files the
//! plan's outputs read.
//!
//! Nothing here touches the kernel, the disk or the API server: discovery
//! locates the pods [`to_locate`] names (`crate::discovery::locate`), and
//! [`super::reconcile`] writes the TLS files before applying the plan.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::{
    controller::{
        secrets::TlsMaterial,
        snapshot::{PolicyRef, Snapshot},
    },
    datapath::plan::Planned,
    discovery::locate::{Located, LocatedPod, PodAddr},
    export::output::Output,
    k8s::{
        Acceptance, MirrorCollector, Refusal, ValidPolicy, accept_cluster_policy, accept_policy,
        inject::SIDECAR_NAME, reasons,
    },
    kernel::hooks::Interface,
    model::{
        record::{NetnsCookie, PolicyId},
        values::{AttachPoint, End},
    },
    policy::PrefixTables,
};

/// What the desired state depends on besides the cluster: this node's own.
#[derive(Clone, Debug)]
pub struct Node {
    /// Where pods' hooks go (`--attach-point`).
    pub attach_point: AttachPoint,
    /// The agent's own network namespace, the host's: host ends live there.
    pub host_cookie: NetnsCookie,
    /// Where TLS collectors' files are written, a directory per collector.
    pub tls_dir: PathBuf,
}

/// One policy's standing on this node.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub policy: PolicyRef,
    pub generation: Option<i64>,
    pub accepted: Result<Acceptance, Refusal>,
    /// Pods on this node it selects (hostNetwork ones not included).
    pub matched: u64,
    /// Of those, the pods whose hooks are planned.
    pub attached: u64,
    pub skipped_host_network: u64,
    /// Selected pods that carry the mirror sidecar: it mirrors them, so
    /// the node agent does not (each copy made once). Not in `matched`.
    pub sidecar: u64,
    /// Of the matched pods, those being deleted (Terminating): mirrored
    /// until their network namespace is gone.
    pub terminating: u64,
    /// Why selected pods are not mirrored, one line each.
    pub problems: Vec<String>,
}

/// What this node should mirror now.
#[derive(Debug)]
pub struct Desired {
    pub plan: Vec<Planned>,
    /// Every policy's standing, in the order of their ids.
    pub outcomes: Vec<Outcome>,
    /// The credentials the plan's TLS outputs read, one per collector, to
    /// be written before the plan is applied.
    pub tls: Vec<TlsMaterial>,
}

/// The pods discovery must locate for [`compute`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToLocate {
    /// Every pod worth mirroring on this node, by uid: what was found for
    /// others may be forgotten.
    pub on_node: HashSet<String>,
    /// Those a usable policy selects, hostNetwork and sidecar ones left out.
    pub pods: Vec<PodAddr>,
}

/// A pod worth mirroring: scheduled here, running, with an IP. A pod being
/// deleted is still one: its containers go on talking for their grace
/// period, and what a pod says last matters to whoever investigates it.
struct LivePod {
    uid: String,
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    ips: Vec<IpAddr>,
    host_network: bool,
    /// Carries the mirror sidecar, which mirrors it from inside.
    sidecar: bool,
    /// Being deleted: mirrored while its network namespace is there.
    terminating: bool,
}

fn live(pod: &Pod) -> Option<LivePod> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_ref().and_then(|i| i.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    if ips.is_empty() {
        return None;
    }
    Some(LivePod {
        uid: pod.uid()?,
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        labels: pod.labels().clone(),
        ips,
        host_network: pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false),
        sidecar: has_sidecar(pod),
        terminating: pod.metadata.deletion_timestamp.is_some(),
    })
}

/// Whether the pod has the mirror sidecar (by its container's name, as the
/// webhook marks it; a pod's containers never change once it is made).
fn has_sidecar(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == SIDECAR_NAME)
    })
}

/// A policy this node can act on: accepted, with its output.
struct Usable {
    valid: ValidPolicy,
    output: Output,
    tls: Option<TlsMaterial>,
}

/// One policy, checked.
struct Checked {
    policy: PolicyRef,
    generation: Option<i64>,
    decision: Result<Usable, Refusal>,
    /// The spec, when it is valid whether or not the policy is accepted:
    /// a refused policy still reports the pods it selects.
    spec: Option<ValidPolicy>,
}

/// The snapshot, checked and indexed.
struct View {
    ns_labels: HashMap<String, BTreeMap<String, String>>,
    no_labels: BTreeMap<String, String>,
    /// Every policy, in a fixed order (policy ids follow it).
    checked: Vec<Checked>,
    pods: Vec<LivePod>,
}

impl View {
    /// `unwritable`: collectors whose TLS files could not be written, and why.
    fn new(snapshot: &Snapshot, node: &Node, unwritable: &BTreeMap<String, String>) -> Self {
        let collectors: HashMap<String, Arc<MirrorCollector>> = snapshot
            .collectors
            .iter()
            .map(|c| (c.name_any(), c.clone()))
            .collect();
        let mut view = Self {
            ns_labels: snapshot
                .namespaces
                .iter()
                .map(|n| (n.name_any(), n.labels().clone()))
                .collect(),
            no_labels: BTreeMap::new(),
            checked: Vec::new(),
            pods: snapshot.pods.iter().filter_map(|p| live(p)).collect(),
        };
        // The plan lists pods in one order, whatever order the caches keep.
        view.pods
            .sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
        let mut checked = Vec::new();
        for p in &snapshot.policies {
            let namespace = p.namespace().unwrap_or_default();
            let collector = collectors.get(&p.spec.collector_ref.name).map(Arc::as_ref);
            let accepted = accept_policy(p, view.labels_of(&namespace), collector);
            let spec = p.validate().ok();
            checked.push((
                PolicyRef {
                    cluster: false,
                    namespace,
                    name: p.name_any(),
                },
                p.metadata.generation,
                accepted,
                spec,
            ));
        }
        for p in &snapshot.cluster_policies {
            let collector = collectors.get(&p.spec.collector_ref.name).map(Arc::as_ref);
            checked.push((
                PolicyRef {
                    cluster: true,
                    namespace: String::new(),
                    name: p.name_any(),
                },
                p.metadata.generation,
                accept_cluster_policy(p, collector),
                p.validate().ok(),
            ));
        }
        checked.sort_by(|a, b| a.0.cmp(&b.0));
        view.checked = checked
            .into_iter()
            .map(|(policy, generation, accepted, spec)| Checked {
                policy,
                generation,
                spec,
                decision: accepted.and_then(|valid| {
                    // Accepted means the collector exists; no panic if not.
                    let collector = collectors.get(&valid.collector).ok_or_else(|| Refusal {
                        reason: reasons::COLLECTOR_NOT_FOUND,
                        message: format!("no MirrorCollector is named \"{}\"", valid.collector),
                    })?;
                    usable(snapshot, node, unwritable, collector, valid)
                }),
            })
            .collect();
        view
    }

    fn labels_of(&self, namespace: &str) -> &BTreeMap<String, String> {
        self.ns_labels.get(namespace).unwrap_or(&self.no_labels)
    }

    fn selects(&self, policy: &ValidPolicy, pod: &LivePod) -> bool {
        policy.selects(&pod.namespace, self.labels_of(&pod.namespace), &pod.labels)
    }
}

/// An accepted policy's output, and its collector's TLS credentials.
fn usable(
    snapshot: &Snapshot,
    node: &Node,
    unwritable: &BTreeMap<String, String>,
    collector: &MirrorCollector,
    valid: ValidPolicy,
) -> Result<Usable, Refusal> {
    let refuse = |message: String| Refusal {
        reason: reasons::INVALID_COLLECTOR,
        message: format!("MirrorCollector \"{}\": {message}", valid.collector),
    };
    let tls = match &collector.spec.tls {
        None => None,
        Some(tls) => Some(
            TlsMaterial::from_snapshot(snapshot, &valid.collector, &tls.secret_name, &node.tls_dir)
                .map_err(refuse)?,
        ),
    };
    if let Some(why) = unwritable.get(&valid.collector) {
        return Err(refuse(why.clone()));
    }
    let dir = tls.as_ref().map_or(&node.tls_dir, |m| &m.dir);
    let output = collector
        .spec
        .output(dir)
        .map_err(|e| refuse(format!("spec.{e}")))?;
    Ok(Usable { valid, output, tls })
}

/// The pods [`compute`] will need located: those a usable policy selects.
pub fn to_locate(snapshot: &Snapshot, node: &Node) -> ToLocate {
    let view = View::new(snapshot, node, &BTreeMap::new());
    let usable: Vec<&ValidPolicy> = view
        .checked
        .iter()
        .filter_map(|c| c.decision.as_ref().ok().map(|u| &u.valid))
        .collect();
    ToLocate {
        on_node: view.pods.iter().map(|p| p.uid.clone()).collect(),
        pods: view
            .pods
            .iter()
            .filter(|p| !p.host_network && !p.sidecar && usable.iter().any(|v| view.selects(v, p)))
            .map(|p| PodAddr {
                uid: p.uid.clone(),
                ips: p.ips.clone(),
            })
            .collect(),
    }
}

/// What this node should mirror now, and each policy's standing, given
/// what discovery found for the pods [`to_locate`] named (by uid), and the
/// collectors whose TLS files could not be written (`unwritable`, by name:
/// their policies are refused).
pub fn compute(
    snapshot: &Snapshot,
    located: &Located,
    node: &Node,
    unwritable: &BTreeMap<String, String>,
) -> Desired {
    let view = View::new(snapshot, node, unwritable);
    // A pod (its interface) is mirrored by one policy: the first that selects it.
    let mut claimed: HashMap<&str, String> = HashMap::new();
    // What the planned policies put in the kernel's prefix tables, which
    // they share: a policy that would overflow one is not planned here.
    let mut tables = PrefixTables::default();
    let mut desired = Desired {
        plan: Vec::new(),
        outcomes: Vec::new(),
        tls: Vec::new(),
    };
    for (i, checked) in view.checked.iter().enumerate() {
        let policy = &checked.policy;
        let mut outcome = Outcome {
            policy: policy.clone(),
            generation: checked.generation,
            accepted: checked
                .decision
                .as_ref()
                .map(|u| Acceptance::from(&u.valid))
                .map_err(Clone::clone),
            matched: 0,
            attached: 0,
            skipped_host_network: 0,
            sidecar: 0,
            terminating: 0,
            problems: Vec::new(),
        };
        let Ok(usable) = &checked.decision else {
            if let Some(spec) = &checked.spec {
                outcome.matched = view
                    .pods
                    .iter()
                    .filter(|pod| !pod.host_network && !pod.sidecar && view.selects(spec, pod))
                    .count() as u64;
            }
            desired.outcomes.push(outcome);
            continue;
        };
        if let Some(m) = &usable.tls
            && !desired.tls.iter().any(|t| t.collector == m.collector)
        {
            desired.tls.push(m.clone());
        }
        let mut interfaces = Vec::new();
        let mut mine = Vec::new();
        for pod in &view.pods {
            if !view.selects(&usable.valid, pod) {
                continue;
            }
            if pod.host_network {
                outcome.skipped_host_network += 1;
                continue;
            }
            if pod.sidecar {
                outcome.sidecar += 1;
                continue;
            }
            let found = located
                .get(&pod.uid)
                .cloned()
                .unwrap_or_else(|| Err("not looked for on this node".into()));
            if pod.terminating {
                // Gone from the node already: finished, not failing.
                if found.is_err() {
                    continue;
                }
                outcome.terminating += 1;
            }
            outcome.matched += 1;
            let who = format!("{}/{}", pod.namespace, pod.name);
            if let Some(other) = claimed.get(pod.uid.as_str()) {
                outcome
                    .problems
                    .push(format!("pod {who} is already mirrored by policy {other}"));
                continue;
            }
            match found.and_then(|f| interface(&f, node, who.clone())) {
                Ok(iface) => {
                    claimed.insert(&pod.uid, policy.plan_name());
                    mine.push(pod.uid.as_str());
                    outcome.attached += 1;
                    interfaces.push(iface);
                }
                Err(why) => outcome.problems.push(format!("pod {who}: {why}")),
            }
        }
        if !interfaces.is_empty() {
            match tables.add(&usable.valid.body) {
                Ok(more) => tables = more,
                Err(full) => {
                    // Its pods are left to the next policy that selects them.
                    for uid in mine {
                        claimed.remove(uid);
                    }
                    outcome.attached = 0;
                    outcome.problems.push(format!(
                        "not loaded on this node: spec.{}: {} (the policies ahead of it \
                         take the room first: MirrorPolicies by namespace and name, then \
                         ClusterMirrorPolicies by name)",
                        full.field, full.problem
                    ));
                    desired.outcomes.push(outcome);
                    continue;
                }
            }
            let body = usable.valid.body.clone();
            desired.plan.push(Planned {
                // Ids start at 1; 0 stays free to mean "none" in the kernel.
                id: PolicyId(i as u32 + 1),
                name: policy.plan_name(),
                tenant: policy.tenant(),
                interfaces,
                // As the pod sees them; a host end swaps them.
                directions: body.direction,
                snaplen: body.snaplen,
                sample: body.sampling,
                body: Some(body),
                outputs: vec![usable.output.clone()],
            });
        }
        desired.outcomes.push(outcome);
    }
    desired
}

/// The interface to hook for a located pod, by the attach-point rule
/// ([`crate::discovery::decide`]). `label` names the pod: outputs and
/// metrics name the pod, not its interface.
fn interface(found: &LocatedPod, node: &Node, label: String) -> Result<Interface, String> {
    let decision = found
        .network
        .decide(node.attach_point)
        .map_err(|e| e.to_string())?;
    Ok(match decision.end {
        End::Host => Interface {
            label,
            ..Interface::local(
                decision.interface,
                decision.index,
                node.host_cookie,
                End::Host,
            )
        },
        End::Pod => Interface {
            label,
            name: decision.interface,
            index: decision.index,
            netns: found.netns.clone()?,
            end: End::Pod,
            ns: Some(found.ns.clone()),
        },
    })
}

#[cfg(test)]
mod tests;
