//! The injection decision, from YAML objects as the API server holds them.
//! The patched pod is checked by applying the patch with json-patch and
//! reading the result back as a Pod; the policy the sidecar gets is parsed
//! by the policy file's own loader, and its collector URI by `--output`'s.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use kube::core::admission::AdmissionRequest;

use super::*;
use crate::{export::output::Output, policy::PolicyFile};

const POLICY: &str = "\
apiVersion: mirror.packets.dev/v1alpha1
kind: MirrorPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  collectorRef: {name: lab}
  direction: Ingress
  filter: not port 22
  snaplen: 256
";

const COLLECTOR: &str = "\
apiVersion: mirror.packets.dev/v1alpha1
kind: MirrorCollector
metadata: {name: lab}
spec:
  protocol: vxlan
  address: 198.18.0.9
  vni: 42
  allowedNamespaces: {matchLabels: {team: shop}}
";

fn injector() -> Injector {
    Injector {
        image: "ghcr.io/example/mirror-agent:test".into(),
        own_namespace: "mirror-system".into(),
        memory: 64 << 20,
        cpu: "50m".into(),
        metrics_port: 19464,
        tls_dir: "/run/mirror/tls".into(),
    }
}

fn pod(extra_meta: &str, spec: &str) -> Pod {
    serde_norway::from_str(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: shop\n  labels: {{app: web}}\n{extra_meta}spec:\n{spec}"
    ))
    .expect("a pod")
}

fn plain_spec() -> &'static str {
    "  containers: [{name: app, image: nginx}]\n"
}

struct World {
    labels: BTreeMap<String, String>,
    policies: Vec<MirrorPolicy>,
    collectors: Vec<MirrorCollector>,
}

impl World {
    fn new(label: Option<&str>) -> Self {
        let mut labels = BTreeMap::from([("team".to_owned(), "shop".to_owned())]);
        if let Some(v) = label {
            labels.insert(annotations::SIDECAR.into(), v.into());
        }
        Self {
            labels,
            policies: vec![serde_norway::from_str(POLICY).expect("policy")],
            collectors: vec![serde_norway::from_str(COLLECTOR).expect("collector")],
        }
    }

    fn decide(&self, pod: &Pod, namespace: &str) -> Outcome {
        injector().decide(
            pod,
            namespace,
            &Cluster {
                namespace_labels: &self.labels,
                policies: &self.policies,
                collectors: &self.collectors,
            },
        )
    }
}

/// The pod after the patch, and its sidecar container.
fn patched(pod: &Pod, patch: &json_patch::Patch) -> (Pod, Value) {
    let mut doc = serde_json::to_value(pod).expect("pod as json");
    json_patch::patch(&mut doc, patch).expect("the patch applies");
    let sidecar = doc["spec"]["initContainers"][0].clone();
    (serde_json::from_value(doc).expect("still a pod"), sidecar)
}

#[test]
fn a_pod_of_an_opted_in_namespace_gets_the_native_sidecar() {
    let w = World::new(Some("enabled"));
    let pod = pod("", plain_spec());
    let Outcome::Inject { patch, policy } = w.decide(&pod, "shop") else {
        panic!("not injected: {:?}", w.decide(&pod, "shop"));
    };
    assert_eq!(policy, "web");
    let (after, c) = patched(&pod, &patch);
    assert_eq!(c["name"], SIDECAR_NAME);
    assert_eq!(c["restartPolicy"], "Always");
    assert_eq!(c["args"][0], "sidecar");
    let sc = &c["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "NET_ADMIN"])
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["resources"]["limits"]["memory"],
        (64u64 << 20).to_string()
    );
    assert_eq!(c["startupProbe"]["httpGet"]["port"], 19464);
    assert_eq!(
        after
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::INJECTED)),
        Some(&"web".to_owned())
    );
    // The application's container is untouched.
    assert_eq!(after.spec.as_ref().map(|s| s.containers.len()), Some(1));
    // The policy the sidecar reads: the MirrorPolicy's body, every
    // interface, the collector as the URI `--output` parses to the same output.
    let env = c["env"].as_array().expect("env");
    let text = env
        .iter()
        .find(|e| e["name"] == "MIRROR_POLICY")
        .and_then(|e| e["value"].as_str())
        .expect("MIRROR_POLICY");
    let file = PolicyFile::from_yaml(text).expect("a valid policy file");
    let [p] = file.policies.as_slice() else {
        panic!("{file:?}")
    };
    assert_eq!(p.name, "web");
    assert!(p.wants("eth0") && p.wants("net1"));
    let expected = w.policies[0].validate().expect("valid").body;
    assert_eq!(p.body, expected);
    let uri: Output = p.collectors[0].parse().expect("a collector URI");
    assert_eq!(
        uri,
        w.collectors[0]
            .spec
            .output(std::path::Path::new("/x"))
            .expect("output")
    );
}

#[test]
fn the_annotation_overrides_the_namespace_both_ways() {
    let out = format!("  annotations: {{{}: disabled}}\n", annotations::SIDECAR);
    assert_eq!(
        World::new(Some("enabled")).decide(&pod(&out, plain_spec()), "shop"),
        Outcome::Skip("opted out")
    );
    let within = format!("  annotations: {{{}: enabled}}\n", annotations::SIDECAR);
    assert!(matches!(
        World::new(None).decide(&pod(&within, plain_spec()), "shop"),
        Outcome::Inject { .. }
    ));
    assert_eq!(
        World::new(None).decide(&pod("", plain_spec()), "shop"),
        Outcome::Skip("not opted in")
    );
}

#[test]
fn never_host_network_system_namespaces_or_twice() {
    let w = World::new(Some("enabled"));
    let host = pod(
        "",
        "  hostNetwork: true\n  containers: [{name: app, image: nginx}]\n",
    );
    assert!(matches!(w.decide(&host, "shop"), Outcome::Skip(r) if r.contains("hostNetwork")));
    for ns in ["kube-system", "mirror-system"] {
        assert!(
            matches!(w.decide(&pod("", plain_spec()), ns), Outcome::Skip(_)),
            "{ns}"
        );
    }
    let once = pod("", plain_spec());
    let Outcome::Inject { patch, .. } = w.decide(&once, "shop") else {
        panic!("not injected")
    };
    let (twice, _) = patched(&once, &patch);
    assert_eq!(w.decide(&twice, "shop"), Outcome::Skip("already injected"));
}

#[test]
fn existing_init_containers_come_after_the_sidecar() {
    let w = World::new(Some("enabled"));
    let pod = pod(
        "",
        "  initContainers: [{name: setup, image: busybox}]\n  containers: [{name: app, image: nginx}]\n",
    );
    let Outcome::Inject { patch, .. } = w.decide(&pod, "shop") else {
        panic!("not injected")
    };
    let (after, _) = patched(&pod, &patch);
    let names: Vec<String> = after
        .spec
        .and_then(|s| s.init_containers)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, [SIDECAR_NAME, "setup"]);
}

#[test]
fn bad_annotations_are_named_and_the_pod_is_admitted_without() {
    let w = World::new(Some("enabled"));
    for (key, value, part) in [
        (annotations::MEMORY, "lots", "not a memory quantity"),
        (annotations::MEMORY, "1Mi", "less than 16Mi"),
        (annotations::SIDECAR, "yes", "\"enabled\" or \"disabled\""),
        (annotations::INTERFACES, "eth*", "no globs"),
        (annotations::METRICS_PORT, "80", "1024 to 65535"),
        (annotations::POLICY, "Web!", "not a valid MirrorPolicy name"),
        (annotations::POLICY, "other", "no MirrorPolicy \"other\""),
    ] {
        let meta = format!("  annotations: {{{key}: '{value}'}}\n");
        let Outcome::Refuse(warning) = w.decide(&pod(&meta, plain_spec()), "shop") else {
            panic!("{key}={value} accepted")
        };
        assert!(warning.contains(part), "{key}={value}: {warning}");
        assert!(warning.contains("admitted without"), "{warning}");
        if part != "no MirrorPolicy \"other\"" {
            assert!(warning.contains(key), "{key}: {warning}");
        }
    }
}

#[test]
fn annotations_set_memory_interfaces_and_port() {
    let w = World::new(Some("enabled"));
    let meta = format!(
        "  annotations: {{{}: 128Mi, {}: 'eth0,net1', {}: '19500'}}\n",
        annotations::MEMORY,
        annotations::INTERFACES,
        annotations::METRICS_PORT
    );
    let pod = pod(&meta, plain_spec());
    let Outcome::Inject { patch, .. } = w.decide(&pod, "shop") else {
        panic!("not injected")
    };
    let (_, c) = patched(&pod, &patch);
    assert_eq!(
        c["resources"]["limits"]["memory"],
        (128u64 << 20).to_string()
    );
    assert_eq!(
        c["args"],
        serde_json::json!([
            "sidecar",
            "--metrics-addr",
            "0.0.0.0:19500",
            "--interface",
            "eth0",
            "--interface",
            "net1"
        ])
    );
}

#[test]
fn tenancy_holds_as_for_the_node_agent() {
    // The collector admits namespaces labelled team=shop only.
    let mut w = World::new(Some("enabled"));
    w.labels.insert("team".into(), "other".into());
    let Outcome::Refuse(warning) = w.decide(&pod("", plain_spec()), "shop") else {
        panic!("a collector that does not admit the namespace was used")
    };
    assert!(warning.contains("does not admit namespace"), "{warning}");
    // A GRE collector adds CAP_NET_RAW, and only then.
    let mut w = World::new(Some("enabled"));
    w.collectors[0].spec.protocol = crate::k8s::CollectorProtocol::Gre;
    w.collectors[0].spec.vni = None;
    let pod = pod("", plain_spec());
    let Outcome::Inject { patch, .. } = w.decide(&pod, "shop") else {
        panic!("not injected: {:?}", w.decide(&pod, "shop"))
    };
    let (_, c) = patched(&pod, &patch);
    assert_eq!(
        c["securityContext"]["capabilities"]["add"],
        serde_json::json!(["BPF", "PERFMON", "NET_ADMIN", "NET_RAW"])
    );
}

#[test]
fn two_policies_selecting_the_pod_need_the_annotation() {
    let mut w = World::new(Some("enabled"));
    let mut second = w.policies[0].clone();
    second.metadata.name = Some("web2".into());
    w.policies.push(second);
    let Outcome::Refuse(warning) = w.decide(&pod("", plain_spec()), "shop") else {
        panic!("injected with two candidate policies")
    };
    assert!(
        warning.contains("web, web2") && warning.contains(annotations::POLICY),
        "{warning}"
    );
    let meta = format!("  annotations: {{{}: web2}}\n", annotations::POLICY);
    assert!(matches!(
        w.decide(&pod(&meta, plain_spec()), "shop"),
        Outcome::Inject { policy, .. } if policy == "web2"
    ));
}

#[test]
fn quantities() {
    use annotations::quantity_bytes as q;
    assert_eq!(q("64Mi"), Some(64 << 20));
    assert_eq!(q("100M"), Some(100_000_000));
    assert_eq!(q("1048576"), Some(1 << 20));
    assert_eq!(q("1.5Gi"), None);
    assert_eq!(q("Mi"), None);
    assert_eq!(q("99999999999Ei"), None);
}

#[test]
fn the_response_allows_always_with_the_patch_or_the_warning() {
    let review = |annotations: &str| -> AdmissionRequest<Pod> {
        let pod = pod(annotations, plain_spec());
        let body = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "name": "web-1", "namespace": "shop", "operation": "CREATE",
                "userInfo": {"username": "tester"},
                "object": pod, "dryRun": false
            }
        });
        let review: kube::core::admission::AdmissionReview<Pod> =
            serde_json::from_value(body).expect("a review");
        review.try_into().expect("a request")
    };
    let w = World::new(Some("enabled"));
    let request = review("");
    let outcome = w.decide(request.object.as_ref().expect("pod"), "shop");
    let response = respond(&request, outcome);
    assert!(response.allowed);
    assert_eq!(response.uid, request.uid);
    let patch: json_patch::Patch =
        serde_json::from_slice(response.patch.as_deref().expect("a patch")).expect("JSON patch");
    assert_eq!(patch.0.len(), 3, "{patch:?}");
    let bad = review(&format!(
        "  annotations: {{{}: lots}}\n",
        annotations::MEMORY
    ));
    let response = respond(&bad, w.decide(bad.object.as_ref().expect("pod"), "shop"));
    assert!(response.allowed && response.patch.is_none());
    let warnings = response.warnings.unwrap_or_default();
    assert!(
        warnings.len() == 1 && warnings[0].contains(annotations::MEMORY),
        "{warnings:?}"
    );
}

#[test]
fn a_tcp_collector_is_injected_as_is() {
    // The sidecar never mirrors its own connection (export/own.rs), so its
    // collector's acknowledgements make no loop.
    let mut w = World::new(Some("enabled"));
    let spec = &mut w.collectors[0].spec;
    spec.protocol = crate::k8s::collector::CollectorProtocol::Tcp;
    spec.vni = None;
    spec.port = Some(7000);
    let pod = pod("", plain_spec());
    let Outcome::Inject { patch, .. } = w.decide(&pod, "shop") else {
        panic!("not injected: {:?}", w.decide(&pod, "shop"));
    };
    let (after, c) = patched(&pod, &patch);
    let file = sidecar_policy(&c);
    assert_eq!(file.policies[0].collectors, ["tcp://198.18.0.9:7000"]);
    assert!(c.get("volumeMounts").is_none(), "{c}");
    assert!(after.spec.expect("spec").volumes.is_none());
}

#[test]
fn a_tls_collector_gets_its_secret_of_the_pods_namespace_mounted_read_only() {
    let mut w = World::new(Some("enabled"));
    w.collectors[0] = serde_norway::from_str(
        "apiVersion: mirror.packets.dev/v1alpha1\nkind: MirrorCollector\nmetadata: {name: lab}\n\
         spec: {protocol: tls, address: collector.example, port: 7443, \
         tls: {secretName: lab-client, serverName: collector.test}, \
         allowedNamespaces: {matchLabels: {team: shop}}}\n",
    )
    .expect("a TLS collector");
    // With volumes of its own, the Secret's comes after them.
    let pod = pod(
        "",
        "  containers: [{name: app, image: nginx}]\n  volumes: [{name: data, emptyDir: {}}]\n",
    );
    let Outcome::Inject { patch, .. } = w.decide(&pod, "shop") else {
        panic!("not injected: {:?}", w.decide(&pod, "shop"));
    };
    let (after, c) = patched(&pod, &patch);
    let file = sidecar_policy(&c);
    assert_eq!(
        file.policies[0].collectors,
        [
            "tls://collector.example:7443?ca=/run/mirror/tls/ca.crt&cert=/run/mirror/tls/tls.crt\
          &key=/run/mirror/tls/tls.key&name=collector.test"
        ]
    );
    assert_eq!(
        c["volumeMounts"],
        serde_json::json!([{"name": container::TLS_VOLUME, "mountPath": "/run/mirror/tls", "readOnly": true}])
    );
    let volumes = after.spec.expect("spec").volumes.expect("volumes");
    assert_eq!(volumes.len(), 2, "{volumes:?}");
    assert_eq!(volumes[0].name, "data");
    assert_eq!(volumes[1], container::tls_volume("lab-client"));
    let secret = volumes[1].secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("lab-client"));
    assert_eq!(secret.default_mode, Some(0o400));
    let keys: Vec<&str> = secret
        .items
        .iter()
        .flatten()
        .map(|i| i.key.as_str())
        .collect();
    assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key"]);
    // Without volumes of its own, the pod gets the list.
    let bare = pod_without_volumes();
    let Outcome::Inject { patch, .. } = w.decide(&bare, "shop") else {
        panic!("not injected");
    };
    let (after, _) = patched(&bare, &patch);
    assert_eq!(
        after.spec.expect("spec").volumes,
        Some(vec![container::tls_volume("lab-client")])
    );
}

fn pod_without_volumes() -> Pod {
    pod("", plain_spec())
}

/// The policy file the sidecar container gets in `$MIRROR_POLICY`.
fn sidecar_policy(c: &Value) -> crate::policy::spec::FileSpec {
    let env = c["env"].as_array().expect("env");
    let text = env
        .iter()
        .find(|e| e["name"] == "MIRROR_POLICY")
        .and_then(|e| e["value"].as_str())
        .expect("MIRROR_POLICY");
    serde_norway::from_str(text).expect("a policy file")
}
