//! `cargo xtask manifests`, and the last step of `cargo xtask test`: deploy/
//! is what it should be.
//!
//! 1. deploy/crds/ matches the Rust types (`crds::check`).
//! 2. Every manifest kustomization.yaml applies passes `kubernetes-validate
//!    --strict`, for the Kubernetes version of the workspace's k8s-openapi,
//!    and states the fields the API server would default (`defaults.rs`),
//!    so a server-side apply after a client-side one does not conflict.
//! 3. Every custom resource in deploy/examples/ passes `check-jsonschema`
//!    against its CRD's `openAPIV3Schema`; and resources that break the
//!    schema's bounds (made up here) are refused, so the check is known to
//!    bite.
//!
//! A CRD's schema is OpenAPI as the API server reads it, not JSON Schema; it
//! is converted to what the API server enforces, in JSON Schema terms:
//! `nullable` and `x-kubernetes-int-or-string` become type lists, and
//! objects refuse unknown fields, as strict field validation (kubectl's
//! default) does. `apiVersion`, `kind` and `metadata`, which the API server
//! checks itself, are added.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{crds, paths, run, setup};

mod defaults;

/// A Kubernetes object name (an RFC 1123 subdomain).
const SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// A namespace name (an RFC 1123 label).
const LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

pub fn run() -> Result<()> {
    setup::agent_toolchain()?;
    setup::python_tools()?;
    check()
}

/// The three checks; each runs even when another failed, so one run shows
/// every problem. Needs setup done (bpf-linker, the Python tools).
pub fn check() -> Result<()> {
    let deploy = paths::workspace_root().join("deploy");
    let version = kubernetes_version()?;
    let work = paths::target_dir().join("deploy-check");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("clearing {}", work.display()))?;
    }
    let mut failed = Vec::new();
    for (what, result) in [
        ("CRDs", crds::check()),
        ("manifests", plain_manifests(&deploy, &version)),
        ("examples", examples(&deploy, &work, &version)),
    ] {
        if let Err(e) = result {
            eprintln!("manifests: {what}: {e:#}");
            failed.push(what);
        }
    }
    ensure!(
        failed.is_empty(),
        "deploy/ checks failed: {} (messages above)",
        failed.join(", ")
    );
    println!("manifests: deploy/ passed (Kubernetes {version})");
    Ok(())
}

/// `1.34.0` for the `v1_34` feature of k8s-openapi in the workspace
/// Cargo.toml: the API the agent is built against is the one to check.
fn kubernetes_version() -> Result<String> {
    let path = paths::workspace_root().join("Cargo.toml");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let minor = text
        .lines()
        .filter(|l| l.trim_start().starts_with("k8s-openapi"))
        .flat_map(|l| l.split('"'))
        .find_map(|part| part.strip_prefix("v1_")?.parse::<u32>().ok())
        .context("the workspace Cargo.toml names no k8s-openapi version feature (v1_NN)")?;
    Ok(format!("1.{minor}.0"))
}

/// kubernetes-validate on everything kustomization.yaml applies.
fn plain_manifests(deploy: &Path, version: &str) -> Result<()> {
    let path = deploy.join("kustomization.yaml");
    let kustomization: Value = read_yaml(&path)?;
    let files: Vec<PathBuf> = kustomization["resources"]
        .as_array()
        .context("kustomization.yaml has no resources list")?
        .iter()
        .map(|r| r.as_str().map(|r| deploy.join(r)))
        .collect::<Option<_>>()
        .context("kustomization.yaml: every resource must be a file name")?;
    for file in &files {
        ensure!(
            file.exists(),
            "kustomization.yaml lists {}, which is missing",
            file.display()
        );
    }
    let defaulted = defaults::check(&files);
    kubernetes_validate(&files, version)?;
    defaulted
}

fn kubernetes_validate(files: &[PathBuf], version: &str) -> Result<()> {
    let mut cmd = Command::new(setup::python_tool("kubernetes-validate"));
    cmd.args(["--kubernetes-version", version, "--strict", "--quiet"])
        .args(files);
    println!("manifests: kubernetes-validate on {} files", files.len());
    run::show(&mut cmd).context("kubernetes-validate refused a manifest (its messages are above)")
}

/// One kind of ours, from its CRD.
struct Kind {
    name: String,
    /// The converted schema's file.
    schema: PathBuf,
}

/// The CRDs' schemas, converted, written under `work/schemas`.
fn kinds(work: &Path) -> Result<Vec<Kind>> {
    let dir = work.join("schemas");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut kinds = Vec::new();
    for path in yaml_files(&crds::dir())? {
        let crd: Value = read_yaml(&path)?;
        let spec = &crd["spec"];
        let name = spec["names"]["kind"]
            .as_str()
            .context("a CRD without spec.names.kind")?;
        let group = spec["group"].as_str().context("a CRD without spec.group")?;
        let version = spec["versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["storage"] == true))
            .with_context(|| format!("{}: no storage version", path.display()))?;
        let openapi = &version["schema"]["openAPIV3Schema"];
        ensure!(
            openapi.is_object(),
            "{}: no openAPIV3Schema",
            path.display()
        );
        let api_version = format!("{group}/{}", version["name"].as_str().unwrap_or_default());
        let namespaced = spec["scope"] == "Namespaced";
        let schema = json_schema(openapi, &api_version, name, namespaced);
        let file = dir.join(format!("{name}.json"));
        fs::write(&file, serde_json::to_string_pretty(&schema)?)
            .with_context(|| format!("writing {}", file.display()))?;
        kinds.push(Kind {
            name: name.to_owned(),
            schema: file,
        });
    }
    ensure!(!kinds.is_empty(), "no CRDs in {}", crds::dir().display());
    Ok(kinds)
}

/// The examples, each document checked by what it is: our resources
/// against their CRD's schema, built-in ones by kubernetes-validate. The
/// policy files of `attach --policy` are not resources, and are left alone.
fn examples(deploy: &Path, work: &Path, version: &str) -> Result<()> {
    let kinds = kinds(work)?;
    let kind_names: Vec<&str> = kinds.iter().map(|k| k.name.as_str()).collect();
    let instances = work.join("examples");
    fs::create_dir_all(&instances)?;
    let mut ours: Vec<(String, PathBuf)> = Vec::new();
    let mut builtin = Vec::new();
    for path in yaml_files(&deploy.join("examples"))? {
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = fs::read_to_string(&path)?;
        for (index, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(doc).with_context(|| format!("{file}: not YAML"))?;
            let out = instances.join(format!("{file}.doc{index}.json"));
            match (value["apiVersion"].as_str(), value["kind"].as_str()) {
                (None, _) if value.get("policies").is_some() => {
                    println!(
                        "manifests: {file}: a policy file for `attach --policy`, not checked here"
                    );
                }
                (Some(api), Some(kind)) if api.starts_with("mirror.packets.dev/") => {
                    ensure!(
                        kind_names.contains(&kind),
                        "{file}, document {index}: no CRD defines kind {kind}"
                    );
                    fs::write(&out, serde_json::to_string_pretty(&value)?)?;
                    ours.push((kind.to_owned(), out));
                }
                (Some(_), Some(_)) => {
                    let out = out.with_extension("yaml");
                    fs::write(&out, serde_norway::to_string(&value)?)?;
                    builtin.push(out);
                }
                (None, None) if value.is_null() => {}
                _ => bail!(
                    "{file}, document {index}: not a Kubernetes object (no apiVersion and kind)"
                ),
            }
        }
    }
    ensure!(
        !ours.is_empty(),
        "deploy/examples holds no custom resources"
    );

    let refusals = refusals(&work.join("refused"))?;
    let mut failed = Vec::new();
    for kind in &kinds {
        let good: Vec<&PathBuf> = ours
            .iter()
            .filter(|(k, _)| *k == kind.name)
            .map(|(_, p)| p)
            .collect();
        let bad: Vec<&Refusal> = refusals.iter().filter(|r| r.kind == kind.name).collect();
        println!(
            "manifests: check-jsonschema: {} {} examples, and {} broken ones it must refuse",
            good.len(),
            kind.name,
            bad.len()
        );
        if let Err(e) = expect_pass(kind, &good) {
            eprintln!("{e:#}");
            failed.push(format!("{} examples", kind.name));
        }
        if let Err(e) = expect_refused(kind, &bad) {
            eprintln!("{e:#}");
            failed.push(format!("{} schema", kind.name));
        }
    }
    if !builtin.is_empty() && kubernetes_validate(&builtin, version).is_err() {
        failed.push("built-in objects among the examples".into());
    }
    ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

fn check_jsonschema(schema: &Path, files: &[&PathBuf]) -> Result<(bool, String)> {
    let mut cmd = Command::new(setup::python_tool("check-jsonschema"));
    cmd.arg("--schemafile").arg(schema).args(files);
    let out = cmd
        .output()
        .with_context(|| format!("running {}", run::describe(&cmd)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn expect_pass(kind: &Kind, files: &[&PathBuf]) -> Result<()> {
    if files.is_empty() {
        bail!("deploy/examples has no {} example", kind.name);
    }
    let (passed, text) = check_jsonschema(&kind.schema, files)?;
    ensure!(
        passed,
        "{text}\nan example {} breaks the CRD schema ({}); the files above are the \
         examples' documents as JSON",
        kind.name,
        kind.schema.display()
    );
    Ok(())
}

fn expect_refused(kind: &Kind, refusals: &[&Refusal]) -> Result<()> {
    let Some(first) = refusals.first() else {
        return Ok(());
    };
    // The unbroken object passes, so each refusal below is for its break.
    let (passed, text) = check_jsonschema(&kind.schema, &[&first.base])?;
    ensure!(
        passed,
        "{text}\nthe valid {} the refusals start from is refused",
        kind.name
    );
    // One run for all: check-jsonschema writes `FILE::$.path: reason` for
    // each error of each file it refuses.
    let files: Vec<&PathBuf> = refusals.iter().map(|r| &r.file).collect();
    let (_, text) = check_jsonschema(&kind.schema, &files)?;
    let wrong: Vec<&str> = refusals
        .iter()
        .filter(|r| !text.contains(&format!("{}::", r.file.display())))
        .map(|r| r.what)
        .collect();
    ensure!(
        wrong.is_empty(),
        "the {} schema accepts what the API server must refuse: {}",
        kind.name,
        wrong.join("; ")
    );
    Ok(())
}

/// A resource broken in one way, which the schema must refuse.
struct Refusal {
    kind: String,
    what: &'static str,
    file: PathBuf,
    /// The same resource unbroken.
    base: PathBuf,
}

/// The broken resources, written under `dir`.
fn refusals(dir: &Path) -> Result<Vec<Refusal>> {
    fs::create_dir_all(dir)?;
    const API: &str = "mirror.packets.dev/v1alpha1";
    let policy = json!({
        "apiVersion": API, "kind": "MirrorPolicy",
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"podSelector": {}, "collectorRef": {"name": "c"},
                 "rules": [{"action": "Accept", "protocol": "TCP", "destinationPorts": [{"from": 443}]}]},
    });
    let cluster = json!({
        "apiVersion": API, "kind": "ClusterMirrorPolicy",
        "metadata": {"name": "p"},
        "spec": {"namespaceSelector": {}, "podSelector": {}, "collectorRef": {"name": "c"}},
    });
    let collector = json!({
        "apiVersion": API, "kind": "MirrorCollector",
        "metadata": {"name": "c"},
        "spec": {"protocol": "vxlan", "address": "c.example", "vni": 1},
    });
    let rule = |r: Value| json!([r]);
    let cases: Vec<(&Value, &'static str, &str, Option<Value>)> = vec![
        (
            &policy,
            "snaplen over 262144",
            "/spec/snaplen",
            Some(json!(262_145)),
        ),
        (&policy, "sampling 0", "/spec/sampling", Some(json!(0))),
        (
            &policy,
            "direction Inbound",
            "/spec/direction",
            Some(json!("Inbound")),
        ),
        (
            &policy,
            "a misspelt field (snapLen)",
            "/spec/snapLen",
            Some(json!(128)),
        ),
        (&policy, "no collectorRef", "/spec/collectorRef", None),
        (
            &policy,
            "port 65536",
            "/spec/rules",
            Some(rule(
                json!({"action": "Accept", "destinationPorts": [{"from": 65536}]}),
            )),
        ),
        (
            &policy,
            "CIDR /33",
            "/spec/rules",
            Some(rule(
                json!({"action": "Accept", "sourceCIDRs": ["198.18.0.0/33"]}),
            )),
        ),
        (
            &policy,
            "CIDR 300.1.1.1",
            "/spec/rules",
            Some(rule(
                json!({"action": "Accept", "sourceCIDRs": ["300.1.1.1"]}),
            )),
        ),
        (
            &policy,
            "protocol TPC",
            "/spec/rules",
            Some(rule(json!({"action": "Accept", "protocol": "TPC"}))),
        ),
        (
            &policy,
            "protocol 256",
            "/spec/rules",
            Some(rule(json!({"action": "Accept", "protocol": 256}))),
        ),
        (
            &policy,
            "protocol 44 (an IPv6 extension header)",
            "/spec/rules",
            Some(rule(json!({"action": "Accept", "protocol": 44}))),
        ),
        (
            &policy,
            "action Allow",
            "/spec/rules",
            Some(rule(json!({"action": "Allow"}))),
        ),
        (
            &policy,
            "TCP flag syn",
            "/spec/rules",
            Some(rule(json!({"action": "Accept", "tcpFlags": ["syn"]}))),
        ),
        (
            &cluster,
            "a namespace on a cluster-scoped policy",
            "/metadata/namespace",
            Some(json!("shop")),
        ),
        (
            &cluster,
            "no namespaceSelector",
            "/spec/namespaceSelector",
            None,
        ),
        (
            &collector,
            "VNI 16777216",
            "/spec/vni",
            Some(json!(16_777_216)),
        ),
        (
            &collector,
            "session id 1024",
            "/spec/sessionId",
            Some(json!(1024)),
        ),
        (
            &collector,
            "hardware id 64",
            "/spec/hardwareId",
            Some(json!(64)),
        ),
        (
            &collector,
            "GRE key 2^32",
            "/spec/key",
            Some(json!(4_294_967_296_u64)),
        ),
        (&collector, "port 0", "/spec/port", Some(json!(0))),
        (&collector, "MTU 575", "/spec/mtu", Some(json!(575))),
        (
            &collector,
            "protocol udp",
            "/spec/protocol",
            Some(json!("udp")),
        ),
        (
            &collector,
            "an empty address",
            "/spec/address",
            Some(json!("")),
        ),
        (&collector, "no address", "/spec/address", None),
    ];
    let mut out = Vec::new();
    for (index, (base, what, pointer, value)) in cases.into_iter().enumerate() {
        let kind = base["kind"].as_str().unwrap_or_default().to_owned();
        let base_file = dir.join(format!("{kind}.valid.json"));
        fs::write(&base_file, serde_json::to_string_pretty(base)?)?;
        let mut broken = base.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
        let object = broken
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .with_context(|| format!("refusal \"{what}\": {parent} is not an object"))?;
        match value {
            Some(v) => object.insert(key.to_owned(), v),
            None => object.remove(key),
        };
        let file = dir.join(format!("{kind}.broken{index}.json"));
        fs::write(&file, serde_json::to_string_pretty(&broken)?)?;
        out.push(Refusal {
            kind,
            what,
            file,
            base: base_file,
        });
    }
    Ok(out)
}

/// The CRD's OpenAPI schema as JSON Schema for a whole object (see the
/// module's comment).
fn json_schema(openapi: &Value, api_version: &str, kind: &str, namespaced: bool) -> Value {
    let mut schema = openapi.clone();
    to_json_schema(&mut schema);
    let mut metadata = json!({
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "maxLength": 253, "pattern": SUBDOMAIN},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    });
    if namespaced {
        metadata["properties"]["namespace"] =
            json!({"type": "string", "maxLength": 63, "pattern": LABEL});
    } else {
        metadata["not"] = json!({"required": ["namespace"]});
    }
    schema["properties"]["apiVersion"] = json!({"const": api_version});
    schema["properties"]["kind"] = json!({"const": kind});
    schema["properties"]["metadata"] = metadata;
    let mut required: Vec<Value> = schema["required"].as_array().cloned().unwrap_or_default();
    for field in ["apiVersion", "kind", "metadata"] {
        if !required.iter().any(|r| r == field) {
            required.push(field.into());
        }
    }
    schema["required"] = Value::Array(required);
    schema["additionalProperties"] = false.into();
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema".into();
    schema
}

/// OpenAPI's extensions to what the API server enforces, in JSON Schema,
/// through the whole schema.
fn to_json_schema(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        properties.values_mut().for_each(to_json_schema);
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = object.get_mut(key) {
            to_json_schema(sub);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(subs)) = object.get_mut(key) {
            subs.iter_mut().for_each(to_json_schema);
        }
    }
    let flag = |object: &serde_json::Map<String, Value>, key: &str| {
        object.get(key) == Some(&Value::Bool(true))
    };
    let nullable = flag(object, "nullable");
    object.remove("nullable");
    let mut types: Vec<Value> = if flag(object, "x-kubernetes-int-or-string") {
        vec!["integer".into(), "string".into()]
    } else {
        match object.get("type") {
            Some(Value::String(t)) => vec![t.as_str().into()],
            _ => Vec::new(),
        }
    };
    if nullable && !types.is_empty() {
        types.push("null".into());
        if let Some(Value::Array(values)) = object.get_mut("enum") {
            values.push(Value::Null);
        }
    }
    match types.len() {
        0 => {}
        1 => {
            object.insert("type".into(), types.remove(0));
        }
        _ => {
            object.insert("type".into(), Value::Array(types));
        }
    }
    // Strict field validation: unknown fields are errors, except where the
    // schema keeps them.
    if object.contains_key("properties")
        && !object.contains_key("additionalProperties")
        && !flag(object, "x-kubernetes-preserve-unknown-fields")
    {
        object.insert("additionalProperties".into(), false.into());
    }
}

fn read_yaml(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_norway::from_str(&text).with_context(|| format!("{}: not YAML", path.display()))
}

/// The `*.yaml` files of `dir`, sorted.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}
