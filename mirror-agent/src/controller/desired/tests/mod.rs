//! The desired state from hand-built snapshots: which pods each policy
//! selects, tenancy refusals, where hooks go given what discovery found,
//! and when the plan changes. Objects are read from JSON as the API server
//! sends them; discovery's findings are written out as plain data.

mod attach;
mod select;
mod tables;
mod tls;

use std::{collections::HashMap, path::Path, sync::Arc};

use k8s_openapi::{
    ByteString,
    api::core::v1::{Namespace as K8sNamespace, Pod, Secret},
};

use serde_json::{Value, json};

use super::*;
use crate::{
    discovery::{HostPeer, LinkKind, LinkRef, NsId, PodInterface, PodNetwork},
    k8s::{ClusterMirrorPolicy, MirrorPolicy},
    kernel::{
        netns::Namespace,
        tc::{Hook, TcApi, TcProgram},
    },
    model::{direction::Directions, record::IfIndex},
};

const HOST: NetnsCookie = NetnsCookie(1);
const VXLAN: &str = "vxlan://198.18.0.9?vni=42";

fn node(attach_point: AttachPoint) -> Node {
    Node {
        attach_point,
        host_cookie: HOST,
        tls_dir: "/run/mirror/tls".into(),
    }
}

fn from<T: serde::de::DeserializeOwned>(value: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(value).expect("object"))
}

fn namespace(name: &str, labels: Value) -> Arc<K8sNamespace> {
    from(json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": labels}}))
}

/// A running pod; `n` makes its uid (`uid-N`) and IP (198.18.0.N).
fn pod(namespace: &str, name: &str, n: u8, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{n}"),
                        "labels": labels},
           "spec": {"nodeName": "node-1", "containers": []},
           "status": {"phase": "Running", "podIP": format!("198.18.0.{n}"),
                      "podIPs": [{"ip": format!("198.18.0.{n}")}]}})
}

fn pods(values: Vec<Value>) -> Vec<Arc<Pod>> {
    values.into_iter().map(from).collect()
}

/// A VXLAN collector; `allowed`: its allowedNamespaces, if any.
fn collector(name: &str, allowed: Option<Value>) -> Arc<MirrorCollector> {
    let mut spec = json!({"protocol": "vxlan", "address": "198.18.0.9", "vni": 42});
    if let Some(a) = allowed {
        spec["allowedNamespaces"] = a;
    }
    from(
        json!({"apiVersion": "mirror.packets.dev/v1alpha1", "kind": "MirrorCollector",
                "metadata": {"name": name}, "spec": spec}),
    )
}

fn policy(namespace: &str, name: &str, selector: Value, collector: &str) -> Arc<MirrorPolicy> {
    from(
        json!({"apiVersion": "mirror.packets.dev/v1alpha1", "kind": "MirrorPolicy",
                "metadata": {"name": name, "namespace": namespace, "generation": 3},
                "spec": {"podSelector": selector, "collectorRef": {"name": collector},
                         "snaplen": 128}}),
    )
}

fn cluster_policy(name: &str, namespaces: Value, selector: Value) -> Arc<ClusterMirrorPolicy> {
    from(
        json!({"apiVersion": "mirror.packets.dev/v1alpha1", "kind": "ClusterMirrorPolicy",
                "metadata": {"name": name, "generation": 1},
                "spec": {"namespaceSelector": namespaces, "podSelector": selector,
                         "collectorRef": {"name": "lab"}}}),
    )
}

fn team_a() -> Option<Value> {
    Some(json!({"matchLabels": {"team": "a"}}))
}

/// What discovery finds for pod `n`: `eth0` (index 2) of `kind`, inside
/// namespace cookie 100+N, and for a veth its host end `vethN` (index
/// 10+N) with `programs` on it.
fn found(n: u8, kind: LinkKind, programs: &[&str]) -> LocatedPod {
    let paired = kind == LinkKind::Veth;
    let index = IfIndex(10 + u32::from(n));
    LocatedPod {
        network: PodNetwork {
            netns: format!("/run/netns/pod-{n}").into(),
            interface: PodInterface {
                index: IfIndex(2),
                name: "eth0".into(),
                kind,
                addresses: vec![format!("198.18.0.{n}").parse().expect("ip")],
                link: paired.then_some(LinkRef {
                    index,
                    netns: Some(NsId(0)),
                }),
            },
            host_peer: paired.then(|| HostPeer {
                index,
                name: format!("veth{n}"),
                programs: programs
                    .iter()
                    .map(|name| TcProgram {
                        hook: Hook::Ingress,
                        api: TcApi::Tcx,
                        name: (*name).into(),
                        id: Some(7),
                    })
                    .collect(),
            }),
            others: Vec::new(),
        },
        // Only carried along for pod-end hooks; any open namespace will do.
        ns: Arc::new(Namespace::current().expect("own namespace")),
        netns: Ok(NetnsCookie(100 + u64::from(n))),
    }
}

fn host_end(n: u8, label: &str) -> Interface {
    Interface {
        label: label.into(),
        ..Interface::local(
            format!("veth{n}"),
            IfIndex(10 + u32::from(n)),
            HOST,
            End::Host,
        )
    }
}

fn pod_end(n: u8, label: &str) -> Interface {
    Interface {
        name: "eth0".into(),
        label: label.into(),
        index: IfIndex(2),
        netns: NetnsCookie(100 + u64::from(n)),
        end: End::Pod,
        ns: None,
    }
}

/// Discovery as the tests have it: `facts` for the pods [`to_locate`] names.
fn desired(
    snapshot: &Snapshot,
    facts: &HashMap<String, Result<LocatedPod, String>>,
    node: &Node,
) -> Desired {
    let wanted = to_locate(snapshot, node);
    let located: Located = wanted
        .pods
        .iter()
        .map(|p| {
            let f = facts.get(&p.uid).cloned();
            (p.uid.clone(), f.unwrap_or_else(|| Err("no facts".into())))
        })
        .collect();
    compute(snapshot, &located, node, &BTreeMap::new())
}

/// Veth facts for pods 1 to 9, no foreign programs.
fn veths() -> HashMap<String, Result<LocatedPod, String>> {
    (1..10)
        .map(|n| (format!("uid-{n}"), Ok(found(n, LinkKind::Veth, &[]))))
        .collect()
}

/// Namespaces shop and other of team a, collector `lab` for team a, and
/// policy shop/web for `app: web`; pods shop/web-1 (1) and shop/db-1 (2).
fn shop() -> Snapshot {
    Snapshot {
        pods: pods(vec![
            pod("shop", "web-1", 1, json!({"app": "web"})),
            pod("shop", "db-1", 2, json!({"app": "db"})),
        ]),
        namespaces: vec![
            namespace("shop", json!({"team": "a"})),
            namespace("other", json!({"team": "a"})),
        ],
        policies: vec![policy(
            "shop",
            "web",
            json!({"matchLabels": {"app": "web"}}),
            "lab",
        )],
        collectors: vec![collector("lab", team_a())],
        ..Snapshot::default()
    }
}

fn outcome_of<'a>(d: &'a Desired, plan_name: &str) -> &'a Outcome {
    d.outcomes
        .iter()
        .find(|o| o.policy.plan_name() == plan_name)
        .expect(plan_name)
}
