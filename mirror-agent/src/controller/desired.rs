//! From what the API server says to what this node mirrors: each policy is
//! checked (spec, collector, tenancy), its pods on this node are found, and
//! each pod's interface is located from kernel facts. The result is a plan
//! for [`crate::datapath::mirror::Mirror::apply`] and, per policy, what its status on
//! this node says.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::Path,
    sync::Arc,
};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::{
    controller::{secrets, watch::Cluster},
    datapath::plan::Planned,
    discovery::{self, podns::NetnsIndex},
    k8s::{MirrorCollector, Refusal, ValidPolicy, accept_cluster_policy, accept_policy, reasons},
    kernel::{hooks::Interface, netns::Namespace},
    model::{
        record::{IfaceId, NetnsCookie, PolicyId},
        values::{AttachPoint, End},
    },
};

/// Which policy, of which kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    pub cluster: bool,
    pub namespace: String,
    pub name: String,
}

impl PolicyRef {
    /// The policy's name in the plan, the log and metrics.
    pub fn plan_name(&self) -> String {
        if self.cluster {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

/// One policy's standing on this node.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub policy: PolicyRef,
    pub generation: Option<i64>,
    pub accepted: Result<(), Refusal>,
    /// Pods on this node it selects (hostNetwork ones not included).
    pub matched: u64,
    /// Of those, the pods whose hooks are planned.
    pub attached: u64,
    pub skipped_host_network: u64,
    /// Why selected pods are not mirrored, one line each.
    pub problems: Vec<String>,
}

/// Where one pod's hooks go, worked out once per pod and IP.
#[derive(Clone, Debug)]
struct Located {
    ips: Vec<IpAddr>,
    at: Result<Interface, String>,
}

/// Remembers pods' interfaces between reconciles: discovery enters
/// namespaces, which is too slow to redo for every pod every time.
pub struct Locator {
    index: NetnsIndex,
    wanted: AttachPoint,
    host: Namespace,
    host_cookie: NetnsCookie,
    cache: HashMap<String, Located>,
}

impl Locator {
    pub fn new(
        index: NetnsIndex,
        wanted: AttachPoint,
        host: Namespace,
        host_cookie: NetnsCookie,
    ) -> Self {
        Self {
            index,
            wanted,
            host,
            host_cookie,
            cache: HashMap::new(),
        }
    }

    fn locate(&mut self, uid: &str, ips: &[IpAddr]) -> Result<Interface, String> {
        if let Some(found) = self.cache.get(uid)
            && found.ips == ips
            && let Ok(iface) = &found.at
            // Still there: a pod's sandbox can be replaced under the same pod.
            && iface.exists()
        {
            return found.at.clone();
        }
        let at = self.discover(ips);
        self.cache.insert(
            uid.to_owned(),
            Located {
                ips: ips.to_vec(),
                at: at.clone(),
            },
        );
        at
    }

    fn discover(&mut self, ips: &[IpAddr]) -> Result<Interface, String> {
        let list = |ips: &[IpAddr]| {
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut found = self.index.find(ips);
        if found.is_empty() {
            // A namespace made since the last look.
            self.index.refresh();
            found = self.index.find(ips);
        }
        let path = match found.as_slice() {
            [one] => one.to_path_buf(),
            [] => {
                return Err(format!(
                    "no network namespace on this node holds {}",
                    list(ips)
                ));
            }
            many => {
                return Err(format!(
                    "{} network namespaces hold {}; cannot tell which is the pod's",
                    many.len(),
                    list(ips)
                ));
            }
        };
        let pod = Namespace::open(&path).map_err(|e| e.to_string())?;
        let network = discovery::discover(&self.host, &pod, ips).map_err(|e| e.to_string())?;
        let decision = network.decide(self.wanted).map_err(|e| e.to_string())?;
        match decision.end {
            End::Host => Ok(Interface::local(
                decision.interface,
                decision.index,
                self.host_cookie,
                End::Host,
            )),
            End::Pod => {
                let netns = pod.cookie().map_err(|e| e.to_string())?;
                tracing::debug!(interface = %decision.interface, reason = ?decision.reason, "pod end");
                Ok(Interface {
                    label: decision.interface.clone(),
                    name: decision.interface,
                    index: decision.index,
                    netns,
                    end: End::Pod,
                    ns: Some(Arc::new(pod)),
                })
            }
        }
    }

    /// Forgets where these interfaces' pods were found, so they are looked
    /// for again (an attach to them failed: the pod's sandbox was replaced).
    pub fn forget_interfaces(&mut self, interfaces: &[IfaceId]) {
        self.cache
            .retain(|_, l| !matches!(&l.at, Ok(i) if interfaces.contains(&i.id())));
    }

    /// Forgets pods no longer on the node.
    fn retain(&mut self, uids: &[String]) {
        self.cache.retain(|uid, _| uids.contains(uid));
    }
}

/// A pod worth mirroring: scheduled here, running, with an IP.
struct LivePod {
    uid: String,
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    ips: Vec<IpAddr>,
    host_network: bool,
}

fn live(pod: &Pod) -> Option<LivePod> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
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
    })
}

/// What this node should mirror now, and each policy's standing.
pub fn compute(
    cluster: &Cluster,
    locator: &mut Locator,
    tls_dir: &Path,
) -> (Vec<Planned>, Vec<Outcome>) {
    let collectors: HashMap<String, Arc<MirrorCollector>> = cluster
        .collectors
        .state()
        .into_iter()
        .map(|c| (c.name_any(), c))
        .collect();
    let ns_labels: HashMap<String, BTreeMap<String, String>> = cluster
        .namespaces
        .state()
        .iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect();
    let no_labels = BTreeMap::new();
    let labels_of = |ns: &str| ns_labels.get(ns).unwrap_or(&no_labels);

    // Every policy, checked, in a fixed order (policy ids follow it).
    let mut checked: Vec<(PolicyRef, Option<i64>, Result<ValidPolicy, Refusal>)> = Vec::new();
    for p in cluster.policies.state() {
        let namespace = p.namespace().unwrap_or_default();
        let collector = collectors.get(&p.spec.collector_ref.name).map(Arc::as_ref);
        checked.push((
            PolicyRef {
                cluster: false,
                namespace: namespace.clone(),
                name: p.name_any(),
            },
            p.metadata.generation,
            accept_policy(&p, labels_of(&namespace), collector),
        ));
    }
    for p in cluster.cluster_policies.state() {
        let collector = collectors.get(&p.spec.collector_ref.name).map(Arc::as_ref);
        checked.push((
            PolicyRef {
                cluster: true,
                namespace: String::new(),
                name: p.name_any(),
            },
            p.metadata.generation,
            accept_cluster_policy(&p, collector),
        ));
    }
    checked.sort_by(|a, b| a.0.cmp(&b.0));

    let pods: Vec<LivePod> = cluster
        .pods
        .state()
        .iter()
        .filter_map(|p| live(p))
        .collect();
    locator.retain(&pods.iter().map(|p| p.uid.clone()).collect::<Vec<_>>());
    // A pod (its interface) is mirrored by one policy: the first that selects it.
    let mut claimed: HashMap<String, String> = HashMap::new();
    let mut plan = Vec::new();
    let mut outcomes = Vec::new();
    for (i, (policy, generation, decision)) in checked.into_iter().enumerate() {
        let mut outcome = Outcome {
            policy: policy.clone(),
            generation,
            accepted: decision.as_ref().map(|_| ()).map_err(Clone::clone),
            matched: 0,
            attached: 0,
            skipped_host_network: 0,
            problems: Vec::new(),
        };
        let Ok(valid) = decision else {
            outcomes.push(outcome);
            continue;
        };
        let collector = &collectors[&valid.collector];
        let material = match &collector.spec.tls {
            None => Ok(tls_dir.to_owned()),
            Some(tls) => secrets::materialize(cluster, &valid.collector, &tls.secret_name, tls_dir),
        };
        let material = match material {
            Ok(dir) => dir,
            Err(message) => {
                outcome.accepted = Err(Refusal {
                    reason: reasons::INVALID_COLLECTOR,
                    message: format!("MirrorCollector \"{}\": {message}", valid.collector),
                });
                outcomes.push(outcome);
                continue;
            }
        };
        let output = match collector.spec.output(&material) {
            Ok(o) => o,
            Err(e) => {
                outcome.accepted = Err(Refusal {
                    reason: reasons::INVALID_COLLECTOR,
                    message: format!("MirrorCollector \"{}\": spec.{e}", valid.collector),
                });
                outcomes.push(outcome);
                continue;
            }
        };
        let mut interfaces = Vec::new();
        for pod in &pods {
            if !valid.selects(&pod.namespace, labels_of(&pod.namespace), &pod.labels) {
                continue;
            }
            if pod.host_network {
                outcome.skipped_host_network += 1;
                continue;
            }
            outcome.matched += 1;
            let who = format!("{}/{}", pod.namespace, pod.name);
            if let Some(other) = claimed.get(&pod.uid) {
                outcome
                    .problems
                    .push(format!("pod {who} is already mirrored by policy {other}"));
                continue;
            }
            match locator.locate(&pod.uid, &pod.ips) {
                Ok(mut iface) => {
                    claimed.insert(pod.uid.clone(), policy.plan_name());
                    outcome.attached += 1;
                    // Outputs and metrics name the pod, not its interface.
                    iface.label = who;
                    interfaces.push(iface);
                }
                Err(why) => outcome.problems.push(format!("pod {who}: {why}")),
            }
        }
        if !interfaces.is_empty() {
            let body = valid.body;
            plan.push(Planned {
                // Ids start at 1; 0 stays free to mean "none" in the kernel.
                id: PolicyId(i as u32 + 1),
                name: policy.plan_name(),
                interfaces,
                // As the pod sees them; a host end swaps them.
                directions: body.direction,
                snaplen: body.snaplen,
                sample: body.sampling,
                body: Some(body),
                outputs: vec![output],
            });
        }
        outcomes.push(outcome);
    }
    (plan, outcomes)
}
