//! The resources as YAML, their generated schemas, and the examples in
//! `deploy/examples`.

use std::{fs, path::Path};

use kube::{CustomResourceExt, Resource};
use serde_json::Value;

use super::*;
use crate::{export::output::Output, policy::Action};

const POLICY: &str = "\
apiVersion: mirror.packets.dev/v1alpha1
kind: MirrorPolicy
metadata:
  name: web
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions:
      - {key: tier, operator: In, values: [front]}
  collectorRef: {name: lab}
  direction: Ingress
  rules:
    - {action: Reject, protocol: TCP, sourceCIDRs: ['198.18.0.1'], destinationPorts: [{from: 8080}]}
    - {action: Accept, protocol: 6, destinationPorts: [{from: 443}, {from: 8000, to: 8100}]}
    - {action: Accept, destinationCIDRs: ['fd00:198:18::/48'], tcpFlags: [SYN]}
  filter: not port 22
  snaplen: 256
  sampling: 10
  rateLimit: {packetsPerSecond: 20000}
";

#[test]
fn policy_yaml_round_trip() {
    let policy: MirrorPolicy = serde_norway::from_str(POLICY).expect("policy");
    assert_eq!(policy.spec.collector_ref.name, "lab");
    assert_eq!(policy.spec.body.sampling, 10);
    let valid = policy.validate().expect("valid");
    assert_eq!(valid.scope, policy::Scope::Namespace("shop".into()));
    assert_eq!(valid.body.snaplen.get(), 256);
    assert_eq!(
        valid.body.direction,
        crate::model::direction::Directions::Ingress
    );
    assert_eq!(valid.body.rules.rules()[0].action(), Action::Reject);
    assert_eq!(
        valid.body.filter.as_ref().map(|f| f.as_str()),
        Some("not port 22")
    );
    // Through JSON, as the API server sends it, and back.
    let json = serde_json::to_value(&policy).expect("to json");
    assert_eq!(json["spec"]["rules"][1]["protocol"], "TCP");
    assert_eq!(json["spec"]["rateLimit"]["packetsPerSecond"], 20000);
    let again: MirrorPolicy = serde_json::from_value(json).expect("from json");
    assert_eq!(again, policy);
}

#[test]
fn body_defaults_apply_in_a_resource() {
    let policy: MirrorPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "mirror.packets.dev/v1alpha1",
        "kind": "MirrorPolicy",
        "metadata": {"name": "all", "namespace": "shop"},
        "spec": {"podSelector": {}, "collectorRef": {"name": "lab"}},
    }))
    .expect("policy");
    let valid = policy.validate().expect("valid");
    assert_eq!(valid.body, crate::policy::PolicyBody::default());
}

#[test]
fn invalid_body_names_the_field() {
    let bad = POLICY.replace("{from: 8000, to: 8100}", "{from: 9000, to: 8000}");
    let policy: MirrorPolicy = serde_norway::from_str(&bad).expect("policy");
    let e = policy.validate().expect_err("reversed range").to_string();
    assert_eq!(
        e,
        "rules[1].destinationPorts[1]: from 9000 is greater than to 8000"
    );
    let bad = POLICY.replace("operator: In", "operator: Within");
    let policy: MirrorPolicy = serde_norway::from_str(&bad).expect("policy");
    let e = policy.validate().expect_err("bad operator").to_string();
    assert_eq!(
        e,
        "podSelector.matchExpressions[0].operator: \"Within\" is not In, NotIn, Exists or \
         DoesNotExist"
    );
}

#[test]
fn collector_yaml_round_trip() {
    let yaml = "\
apiVersion: mirror.packets.dev/v1alpha1
kind: MirrorCollector
metadata: {name: lab}
spec:
  protocol: erspan3
  address: 198.18.0.9
  sessionId: 100
  hardwareId: 3
  mtu: 9000
  allowedNamespaces: {matchLabels: {team: a}}
";
    let c: MirrorCollector = serde_norway::from_str(yaml).expect("collector");
    assert_eq!(c.spec.protocol, CollectorProtocol::Erspan3);
    let out = c.spec.output(Path::new("/unused")).expect("output");
    let want: Output = "erspan3://198.18.0.9?session=100&hwid=3&mtu=9000"
        .parse()
        .expect("uri");
    assert_eq!(out, want);
    let again: MirrorCollector =
        serde_json::from_value(serde_json::to_value(&c).expect("to json")).expect("from json");
    assert_eq!(again, c);
}

/// The CRD's `openAPIV3Schema`, as JSON.
fn schema_of(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> Value {
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("a schema");
    serde_json::to_value(schema).expect("schema as json")
}

/// The schema at `path`, a list of property names (`[]` steps into items).
fn at<'a>(schema: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(schema, |s, step| match *step {
        "[]" => &s["items"],
        "{}" => &s["additionalProperties"],
        name => &s["properties"][name],
    })
}

/// `minimum` and `maximum` of property `field` (the Kubernetes types hold them as f64).
fn bounds(schema: &Value, field: &str) -> (f64, f64) {
    let property = at(schema, &[field]);
    let number = |key: &str| property[key].as_f64().unwrap_or(f64::NAN);
    (number("minimum"), number("maximum"))
}

#[test]
fn policy_schema_carries_the_bounds() {
    for (crd, namespaced) in [
        (MirrorPolicy::crd(), true),
        (ClusterMirrorPolicy::crd(), false),
    ] {
        assert_eq!(crd.spec.group, GROUP);
        assert_eq!(crd.spec.versions[0].name, VERSION);
        assert_eq!(
            crd.spec.scope,
            if namespaced { "Namespaced" } else { "Cluster" }
        );
        let s = schema_of(&crd);
        let spec = at(&s, &["spec"]);
        let required: Vec<&str> = spec["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(required.contains(&"podSelector") && required.contains(&"collectorRef"));
        assert_eq!(bounds(spec, "snaplen"), (0.0, 262_144.0));
        assert_eq!(bounds(spec, "sampling"), (1.0, f64::from(u32::MAX)));
        assert_eq!(at(spec, &["sampling"])["default"], 1);
        assert_eq!(
            at(spec, &["direction"])["enum"],
            serde_json::json!(["Ingress", "Egress", "Both"])
        );
        let rule = at(spec, &["rules", "[]"]);
        assert_eq!(rule["required"], serde_json::json!(["action"]));
        assert_eq!(
            at(rule, &["action"])["enum"],
            serde_json::json!(["Accept", "Reject"])
        );
        for ports in ["sourcePorts", "destinationPorts"] {
            let range = at(rule, &[ports, "[]"]);
            assert_eq!(bounds(range, "from"), (0.0, 65535.0));
            assert_eq!(bounds(range, "to"), (0.0, 65535.0));
        }
        for cidrs in ["sourceCIDRs", "destinationCIDRs"] {
            assert_eq!(
                at(rule, &[cidrs, "[]"])["pattern"],
                crate::policy::spec::CIDR_PATTERN
            );
        }
        assert_eq!(at(rule, &["protocol"])["x-kubernetes-int-or-string"], true);
        assert_eq!(bounds(rule, "protocol"), (0.0, 255.0));
        assert_eq!(
            at(rule, &["protocol"])["not"],
            serde_json::json!({"enum": [0, 43, 44, 51, 60]})
        );
        assert_eq!(
            at(rule, &["tcpFlags", "[]"])["enum"],
            serde_json::json!(["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"])
        );
        let status = at(&s, &["status"]);
        assert_eq!(
            at(status, &["conditions"])["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        assert_eq!(
            at(status, &["nodes"])["x-kubernetes-list-map-keys"],
            serde_json::json!(["node"])
        );
        assert_eq!(
            at(status, &["nodes", "[]", "dropped", "{}"])["type"],
            "integer"
        );
        // Status is a subresource, so the agents' writes never touch the spec.
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }
    let s = schema_of(&ClusterMirrorPolicy::crd());
    assert_eq!(at(&s, &["spec", "namespaceSelector"])["type"], "object");
}

#[test]
fn collector_schema_carries_the_bounds() {
    let crd = MirrorCollector::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    let s = schema_of(&crd);
    let spec = at(&s, &["spec"]);
    assert_eq!(
        at(spec, &["protocol"])["enum"],
        serde_json::json!(["vxlan", "geneve", "gre", "erspan2", "erspan3", "tcp", "tls"])
    );
    assert_eq!(bounds(spec, "port"), (1.0, 65535.0));
    assert_eq!(bounds(spec, "vni"), (0.0, 16_777_215.0));
    assert_eq!(bounds(spec, "key"), (0.0, f64::from(u32::MAX)));
    assert_eq!(bounds(spec, "sessionId"), (0.0, 1023.0));
    assert_eq!(bounds(spec, "hardwareId"), (0.0, 63.0));
    assert_eq!(bounds(spec, "mtu"), (576.0, 65535.0));
    assert_eq!(at(spec, &["address"])["maxLength"], 253);
    assert_eq!(
        at(spec, &["tls"])["required"],
        serde_json::json!(["secretName"])
    );
    assert_eq!(spec["required"], serde_json::json!(["address", "protocol"]));
}

#[test]
fn crds_are_named_for_their_files() {
    let names: Vec<(&str, String)> = crds()
        .into_iter()
        .map(|(file, crd)| (file, crd.metadata.name.unwrap_or_default()))
        .collect();
    assert_eq!(
        names,
        [
            (
                "mirrorcollectors.yaml",
                "mirrorcollectors.mirror.packets.dev".to_owned()
            ),
            (
                "mirrorpolicies.yaml",
                "mirrorpolicies.mirror.packets.dev".to_owned()
            ),
            (
                "clustermirrorpolicies.yaml",
                "clustermirrorpolicies.mirror.packets.dev".to_owned()
            ),
        ]
    );
    assert_eq!(MirrorPolicy::group(&()), GROUP);
    assert_eq!(MirrorCollector::version(&()), VERSION);
}

/// Every custom resource in `deploy/examples` passes the agent's own checks,
/// which go further than the schema (host bits, reversed ranges, filters).
#[test]
fn deploy_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut seen = Vec::new();
    let mut files: Vec<_> = fs::read_dir(&dir)
        .expect("deploy/examples")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = fs::read_to_string(&path).expect("example");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc).expect("yaml");
            let api = value["apiVersion"].as_str().unwrap_or_default();
            if !api.starts_with(GROUP) {
                // The policy file of `attach --policy` lives here too.
                continue;
            }
            let what = format!("{}: {}", path.display(), value["kind"]);
            let checked = match value["kind"].as_str() {
                Some("MirrorPolicy") => serde_json::from_value::<MirrorPolicy>(value.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|p| p.validate().map(drop).map_err(|e| e.to_string())),
                Some("ClusterMirrorPolicy") => {
                    serde_json::from_value::<ClusterMirrorPolicy>(value.clone())
                        .map_err(|e| e.to_string())
                        .and_then(|p| p.validate().map(drop).map_err(|e| e.to_string()))
                }
                Some("MirrorCollector") => serde_json::from_value::<MirrorCollector>(value.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|c| c.spec.validate().map_err(|e| e.to_string())),
                other => Err(format!("unknown kind {other:?}")),
            };
            assert_eq!(checked, Ok(()), "{what}");
            seen.push(value["kind"].as_str().unwrap_or_default().to_owned());
        }
    }
    for kind in ["MirrorPolicy", "ClusterMirrorPolicy", "MirrorCollector"] {
        assert!(
            seen.iter().any(|k| k == kind),
            "no {kind} example in {}",
            dir.display()
        );
    }
}
