//! How server-side apply merges each list, as the real server takes it from
//! schemas: a list marked `x-kubernetes-list-type: map` is a map keyed by
//! its `x-kubernetes-list-map-keys`, and any other list is atomic (replaced
//! whole). For the project's own kinds the markers come from the CRDs in
//! deploy/crds/ (written from mirror-agent/src/k8s by `cargo xtask crds`);
//! for the built-in kinds, from [`BUILTIN`].
//!
//! The schemas are walked as plain JSON rather than through k8s-openapi's
//! CRD types: only two extensions are read, and k8s-openapi stays a
//! dev-dependency, out of the library that xtask links.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use super::resources::{MIRROR_GROUP, RESOURCES, Resource};

/// The generated CRDs, as a cluster would be given them.
const CRDS: [(&str, &str); 3] = [
    (
        "mirrorpolicies.yaml",
        include_str!("../../../deploy/crds/mirrorpolicies.yaml"),
    ),
    (
        "clustermirrorpolicies.yaml",
        include_str!("../../../deploy/crds/clustermirrorpolicies.yaml"),
    ),
    (
        "mirrorcollectors.yaml",
        include_str!("../../../deploy/crds/mirrorcollectors.yaml"),
    ),
];

/// The associative lists of the built-in kinds that the agent and the tests
/// write: `(apiVersion, kind, path, keys)`. Kubernetes declares them with
/// `+listType=map`/`+listMapKey` (or the older `patchMergeKey`, which
/// server-side apply reads the same way) in k8s.io/api; k8s-openapi's
/// `DeepMerge` impls are generated from the same OpenAPI spec, and the tests
/// below check this table against them. Lists not named are atomic: add a
/// line when a test writes another list-map. Secrets and events.k8s.io
/// Events have none.
const BUILTIN: &[(&str, &str, &str, &[&str])] = &[
    ("v1", "Pod", "spec.containers", &["name"]),
    ("v1", "Pod", "status.conditions", &["type"]),
    ("v1", "Pod", "status.podIPs", &["ip"]),
    ("v1", "Namespace", "status.conditions", &["type"]),
    (
        "apps/v1",
        "DaemonSet",
        "spec.template.spec.containers",
        &["name"],
    ),
    (
        "apps/v1",
        "Deployment",
        "spec.template.spec.containers",
        &["name"],
    ),
];

/// Every kind's `metadata` (ObjectMeta), CRDs included: their schemas leave
/// metadata out. `finalizers` is a set there, approximated as atomic.
const METADATA: &[(&str, &[&str])] = &[("ownerReferences", &["uid"])];

/// How apply merges a list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum List {
    /// Replaced whole, and owned as one field.
    #[default]
    Atomic,
    /// Merged item by item, matched on these fields (never empty).
    Map(Vec<String>),
}

/// The merge semantics of one value and everything below it. A field the
/// schema does not name has the default shape: objects merge field by field,
/// lists are atomic. Nothing inside a list's items is read: apply owns and
/// replaces them whole (ownership.rs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    fields: BTreeMap<String, Shape>,
    /// The values of a map with free keys (`additionalProperties`).
    values: Option<Box<Shape>>,
    list: List,
}

static UNKNOWN: Shape = Shape {
    fields: BTreeMap::new(),
    values: None,
    list: List::Atomic,
};

impl Shape {
    /// The shape of the field `name` of an object.
    pub fn field(&self, name: &str) -> &Shape {
        self.fields
            .get(name)
            .or(self.values.as_deref())
            .unwrap_or(&UNKNOWN)
    }

    pub fn list(&self) -> &List {
        &self.list
    }

    /// The shape at a dotted path, made on the way (for the tables).
    fn at_mut(&mut self, path: &str) -> &mut Shape {
        path.split('.').fold(self, |s, name| {
            s.fields.entry(name.to_string()).or_default()
        })
    }

    /// Reads an OpenAPI v3 schema; `at` names the place for errors.
    pub(super) fn from_openapi(schema: &Value, at: &str) -> Result<Self> {
        let mut shape = Shape::default();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, sub) in props {
                let sub = Self::from_openapi(sub, &format!("{at}.{name}"))?;
                shape.fields.insert(name.clone(), sub);
            }
        }
        if let Some(values) = schema.get("additionalProperties").filter(|v| v.is_object()) {
            shape.values = Some(Box::new(Self::from_openapi(values, &format!("{at}.*"))?));
        }
        let text = |name: &str| schema.get(name).and_then(Value::as_str);
        shape.list = match text("x-kubernetes-list-type") {
            None | Some("atomic") => List::Atomic,
            Some("map") => {
                let keys: Vec<String> = schema
                    .get("x-kubernetes-list-map-keys")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k.as_str().map(str::to_string))
                    .collect();
                if keys.is_empty() {
                    bail!("{at}: a list-map without x-kubernetes-list-map-keys");
                }
                List::Map(keys)
            }
            // Refused rather than merged wrongly: nothing here has one yet.
            Some(other) => bail!("{at}: x-kubernetes-list-type {other:?} is not implemented"),
        };
        if text("x-kubernetes-map-type") == Some("atomic") {
            bail!("{at}: x-kubernetes-map-type atomic is not implemented");
        }
        Ok(shape)
    }
}

/// The shape of every kind served, by index in [`RESOURCES`].
#[derive(Debug)]
pub struct Schemas(Vec<Shape>);

impl Schemas {
    /// Reads the CRDs and the built-in table. Fails if the CRDs and
    /// [`RESOURCES`] disagree on a kind of the project's group.
    pub fn load() -> Result<Self> {
        let mut shapes = vec![None; RESOURCES.len()];
        for (file, text) in CRDS {
            let crd: Value = serde_norway::from_str(text)
                .with_context(|| format!("deploy/crds/{file} is not YAML"))?;
            let (at, shape) = crd_shape(&crd).with_context(|| format!("deploy/crds/{file}"))?;
            shapes[at] = Some(shape);
        }
        for (at, res) in RESOURCES.iter().enumerate() {
            if res.group == MIRROR_GROUP && shapes[at].is_none() {
                bail!("{} has no CRD in deploy/crds/", res.qualified());
            }
        }
        let mut shapes: Vec<Shape> = shapes.into_iter().map(Option::unwrap_or_default).collect();
        for &(api_version, kind, path, keys) in BUILTIN {
            let at = RESOURCES
                .iter()
                .position(|r| r.api_version() == api_version && r.kind == kind)
                .ok_or_else(|| anyhow!("{kind} is in the list-map table but not served"))?;
            shapes[at].at_mut(path).list = List::Map(keys.iter().map(|k| k.to_string()).collect());
        }
        for shape in &mut shapes {
            for &(field, keys) in METADATA {
                shape.at_mut("metadata").at_mut(field).list =
                    List::Map(keys.iter().map(|k| k.to_string()).collect());
            }
        }
        Ok(Self(shapes))
    }

    /// The shape of a whole object of the kind at `res` in [`RESOURCES`].
    pub fn of(&self, res: usize) -> &Shape {
        self.0.get(res).unwrap_or(&UNKNOWN)
    }
}

/// Which served kind a CRD defines, and the shape of its served version.
fn crd_shape(crd: &Value) -> Result<(usize, Shape)> {
    let text = |pointer: &str| {
        crd.pointer(pointer)
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("no {pointer}"))
    };
    let (group, kind, plural) = (
        text("/spec/group")?,
        text("/spec/names/kind")?,
        text("/spec/names/plural")?,
    );
    let namespaced = text("/spec/scope")? == "Namespaced";
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no /spec/versions"))?;
    let at = RESOURCES
        .iter()
        .position(|r| r.group == group && r.kind == kind)
        .ok_or_else(|| anyhow!("{kind}.{group} is not in RESOURCES"))?;
    let res: &Resource = &RESOURCES[at];
    let version = versions
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(res.version))
        .ok_or_else(|| anyhow!("no version {} of {kind}", res.version))?;
    let status = version.pointer("/subresources/status").is_some();
    if (res.plural, res.namespaced, res.status) != (plural, namespaced, status) {
        bail!(
            "RESOURCES has {kind} as {:?}, namespaced {}, status {}; the CRD as {plural:?}, {namespaced}, {status}",
            res.plural,
            res.namespaced,
            res.status
        );
    }
    let schema = version
        .pointer("/schema/openAPIV3Schema")
        .ok_or_else(|| anyhow!("no openAPIV3Schema for {}", res.version))?;
    Ok((at, Shape::from_openapi(schema, kind)?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn index(api_version: &str, kind: &str) -> usize {
        super::super::resources::by_kind(api_version, kind).unwrap()
    }

    #[test]
    fn the_generated_crds_give_the_keys() {
        let schemas = Schemas::load().unwrap();
        for kind in ["MirrorPolicy", "ClusterMirrorPolicy"] {
            let status = schemas
                .of(index("mirror.packets.dev/v1alpha1", kind))
                .field("status");
            assert_eq!(
                status.field("nodes").list(),
                &List::Map(vec!["node".into()])
            );
            assert_eq!(
                status.field("conditions").list(),
                &List::Map(vec!["type".into()])
            );
            // Not marked, so atomic, whatever its items' fields are called.
            let spec = schemas
                .of(index("mirror.packets.dev/v1alpha1", kind))
                .field("spec");
            assert_eq!(spec.field("rules").list(), &List::Atomic);
        }
        let pod = schemas.of(index("v1", "Pod"));
        assert_eq!(
            pod.field("spec").field("containers").list(),
            &List::Map(vec!["name".into()])
        );
        let collector = schemas.of(index("mirror.packets.dev/v1alpha1", "MirrorCollector"));
        assert_eq!(
            collector.field("metadata").field("ownerReferences").list(),
            &List::Map(vec!["uid".into()])
        );
    }

    /// Every file in deploy/crds/ is embedded: a new CRD cannot be served
    /// with guessed list semantics.
    #[test]
    fn every_crd_file_is_read() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/crds");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<&str> = CRDS.iter().map(|(f, _)| *f).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    /// `live` merged with `applied` by k8s-openapi's `DeepMerge`, whose list
    /// strategies are generated from the Kubernetes OpenAPI spec.
    fn deep_merge(kind: &str, live: Value, applied: Value) -> Value {
        use k8s_openapi::{
            DeepMerge,
            api::{
                apps::v1::{DaemonSet, Deployment},
                core::v1::{Namespace, Pod},
            },
        };
        fn merged<T>(live: Value, applied: Value) -> Value
        where
            T: DeepMerge + serde::de::DeserializeOwned + serde::Serialize,
        {
            let mut live: T = serde_json::from_value(live).unwrap();
            live.merge_from(serde_json::from_value(applied).unwrap());
            serde_json::to_value(live).unwrap()
        }
        // A workload's spec needs its selector to be read at all.
        let with_selector = |mut v: Value| {
            v["spec"]["selector"] = json!({});
            v
        };
        match kind {
            "Pod" => merged::<Pod>(live, applied),
            "Namespace" => merged::<Namespace>(live, applied),
            "DaemonSet" => merged::<DaemonSet>(with_selector(live), with_selector(applied)),
            "Deployment" => merged::<Deployment>(with_selector(live), with_selector(applied)),
            other => panic!("no k8s-openapi type here for {other}"),
        }
    }

    /// The table's keys are Kubernetes' own: two items that differ only in
    /// the table's key fields stay two, and two that share them merge into
    /// one, both by k8s-openapi's merge and by this server's apply.
    #[test]
    fn builtin_keys_are_kubernetes_keys() {
        use super::super::ownership::{self, Part, Writer};
        let schemas = Schemas::load().unwrap();
        let metadata = METADATA
            .iter()
            .map(|&(field, keys)| ("v1", "Pod", format!("metadata.{field}"), keys));
        let builtin = BUILTIN
            .iter()
            .map(|&(v, kind, path, keys)| (v, kind, path.to_string(), keys));
        for (api_version, kind, path, keys) in builtin.chain(metadata) {
            // Every other field a key could be is the same in all items.
            let item = |key: &str, other: &str| {
                let mut item = json!({"name": "same", "type": "same", "ip": "same", "uid": "same",
                                      "apiVersion": "v1", "kind": "Pod", "status": "True",
                                      "message": other});
                for k in keys {
                    item[*k] = json!(key);
                }
                item
            };
            let object = |item: Value| {
                let mut object = json!({"apiVersion": api_version, "kind": kind,
                                        "metadata": {"name": "x"}});
                let (parent, list) = path.rsplit_once('.').unwrap();
                let at = parent.split('.').fold(&mut object, |o, f| &mut o[f]);
                at[list] = json!([item]);
                object
            };
            let count = |object: &Value| {
                let pointer = format!("/{}", path.replace('.', "/"));
                object
                    .pointer(&pointer)
                    .and_then(Value::as_array)
                    .map(Vec::len)
            };
            let shape = schemas.of(index(api_version, kind));
            let w = Writer {
                manager: "m",
                part: Part::Main,
                api_version,
                now: "t",
            };
            for (live, applied, items) in [
                (item("a", "1"), item("b", "1"), 2),
                (item("a", "1"), item("a", "2"), 1),
            ] {
                let (live, applied) = (object(live), object(applied));
                let theirs = deep_merge(kind, live.clone(), applied.clone());
                assert_eq!(count(&theirs), Some(items), "k8s-openapi, {kind} {path}");
                let ours =
                    ownership::apply(&mut Vec::new(), &live, &applied, shape, false, &w).unwrap();
                assert_eq!(count(&ours), Some(items), "apply, {kind} {path}");
            }
        }
    }

    #[test]
    fn unknown_markers_are_refused() {
        let set = serde_json::json!({"type": "array", "x-kubernetes-list-type": "set"});
        assert!(Shape::from_openapi(&set, "x").is_err());
        let keyless = serde_json::json!({"type": "array", "x-kubernetes-list-type": "map"});
        assert!(Shape::from_openapi(&keyless, "x").is_err());
    }
}
