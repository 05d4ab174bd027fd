//! Fields the API server fills in when a manifest leaves them out. After a
//! client-side apply (`kubectl apply`), a server-side apply of the same
//! files (`kubectl apply --server-side`) conflicts on such fields (it did
//! on `fieldRef.apiVersion` against kube-apiserver 1.34), and `kubectl
//! diff` has defaulted values to tell apart from stated ones. So deploy/
//! states every field the server defaults, as this check knows them from
//! Kubernetes' defaulting of the kinds deploy/ uses; a manifest that
//! leaves one out is refused with the field's path and its default.

use std::{fs, path::Path};

use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use serde_json::{Value, json};

/// Every place in `files` (each may hold several documents) where a field
/// the server defaults is left out, as `file: path.to.field`.
pub fn check(files: &[impl AsRef<Path>]) -> Result<()> {
    let mut missing = Vec::new();
    for file in files {
        let file = file.as_ref();
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value =
                Value::deserialize(doc).with_context(|| format!("{}: not YAML", file.display()))?;
            for at in unstated(&value) {
                missing.push(format!("{}: {at}", file.display()));
            }
            for at in blocking_webhooks(&value) {
                missing.push(format!("{}: {at}", file.display()));
            }
        }
    }
    ensure!(
        missing.is_empty(),
        "fields the API server defaults are left out (a server-side apply after a \
         client-side one would conflict on them; state them):\n  {}",
        missing.join("\n  ")
    );
    Ok(())
}

/// A mutating webhook must never block pod creation nor have side effects:
/// each of a `MutatingWebhookConfiguration`'s webhooks states
/// `failurePolicy: Ignore` (the server's default is `Fail`) and
/// `sideEffects: None`.
fn blocking_webhooks(value: &Value) -> Vec<String> {
    if value["kind"] != "MutatingWebhookConfiguration" {
        return Vec::new();
    }
    let hooks = value["webhooks"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        if hook["failurePolicy"] != "Ignore" {
            out.push(format!("webhooks[{i}].failurePolicy must be Ignore (a webhook that is down must not block pods)"));
        }
        if hook["sideEffects"] != "None" {
            out.push(format!("webhooks[{i}].sideEffects must be None"));
        }
    }
    out
}

/// Where in one object fields the server defaults are left out, as
/// `.path.to.field (defaulted to VALUE)`: each `fieldRef` (downward API, in
/// env and volumes, of any kind) without `apiVersion`, and by kind what the
/// API server's defaulting (Kubernetes' `SetDefaults_*` of core/v1,
/// apps/v1, admissionregistration/v1 and apiextensions/v1) fills in. Values
/// a cluster allocates or decides (a Service's clusterIP and IP families, a
/// claim's storage class) are not defaults and are never stated.
fn unstated(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    field_refs(value, "", &mut out);
    let spec = &value["spec"];
    match value["kind"].as_str() {
        Some("Pod") => {
            want(&mut out, spec, ".spec", "enableServiceLinks", json!(true));
            pod_spec(spec, ".spec", &mut out);
        }
        Some("DaemonSet") => {
            want(&mut out, spec, ".spec", "revisionHistoryLimit", json!(10));
            rollout(spec, "updateStrategy", (json!(1), json!(0)), &mut out);
            pod_spec(&spec["template"]["spec"], ".spec.template.spec", &mut out);
        }
        Some("Deployment") => {
            want(&mut out, spec, ".spec", "replicas", json!(1));
            want(&mut out, spec, ".spec", "revisionHistoryLimit", json!(10));
            want(
                &mut out,
                spec,
                ".spec",
                "progressDeadlineSeconds",
                json!(600),
            );
            rollout(spec, "strategy", (json!("25%"), json!("25%")), &mut out);
            pod_spec(&spec["template"]["spec"], ".spec.template.spec", &mut out);
        }
        Some("Service") => service(spec, &mut out),
        Some("PersistentVolumeClaim") => {
            want(&mut out, spec, ".spec", "volumeMode", json!("Filesystem"));
        }
        Some(kind @ ("MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration")) => {
            webhooks(value, kind == "MutatingWebhookConfiguration", &mut out);
        }
        Some("CustomResourceDefinition") => {
            let names = &spec["names"];
            if let Some(kind) = names["kind"].as_str() {
                want(
                    &mut out,
                    names,
                    ".spec.names",
                    "singular",
                    json!(kind.to_lowercase()),
                );
                want(
                    &mut out,
                    names,
                    ".spec.names",
                    "listKind",
                    json!(format!("{kind}List")),
                );
            }
            want(
                &mut out,
                spec,
                ".spec",
                "conversion",
                json!({"strategy": "None"}),
            );
        }
        _ => {}
    }
    out
}

/// `field` of `object` (at `path`) is left out, though the server sets it
/// to `default`.
fn want(out: &mut Vec<String>, object: &Value, path: &str, field: &str, default: Value) {
    if object.get(field).is_none() {
        let shown = match &default {
            Value::String(s) if s.is_empty() => "\"\"".to_owned(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        out.push(format!("{path}.{field} (defaulted to {shown})"));
    }
}

fn items<'a>(value: &'a Value, field: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    value[field].as_array().into_iter().flatten().enumerate()
}

/// Every `fieldRef` without `apiVersion`, wherever it is.
fn field_refs(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{path}.{key}");
                if key == "fieldRef" {
                    want(out, child, &here, "apiVersion", json!("v1"));
                }
                field_refs(child, &here, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                field_refs(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// A DaemonSet's `updateStrategy` or a Deployment's `strategy` (`field`
/// of `spec`): its type (RollingUpdate), and for a rolling update its two
/// bounds, maxUnavailable and maxSurge.
fn rollout(spec: &Value, field: &str, bounds: (Value, Value), out: &mut Vec<String>) {
    let strategy = &spec[field];
    let path = format!(".spec.{field}");
    if !strategy.is_object() {
        let whole = json!({"type": "RollingUpdate",
                           "rollingUpdate": {"maxUnavailable": bounds.0, "maxSurge": bounds.1}});
        want(out, spec, ".spec", field, whole);
        return;
    }
    want(out, strategy, &path, "type", json!("RollingUpdate"));
    if strategy["type"]
        .as_str()
        .is_none_or(|t| t == "RollingUpdate")
    {
        let rolling = &strategy["rollingUpdate"];
        if rolling.is_object() {
            let at = format!("{path}.rollingUpdate");
            want(out, rolling, &at, "maxUnavailable", bounds.0);
            want(out, rolling, &at, "maxSurge", bounds.1);
        } else {
            let both = json!({"maxUnavailable": bounds.0, "maxSurge": bounds.1});
            want(out, strategy, &path, "rollingUpdate", both);
        }
    }
}

/// A pod's spec (a Pod's, or a template's).
fn pod_spec(spec: &Value, path: &str, out: &mut Vec<String>) {
    if !spec.is_object() {
        return;
    }
    want(out, spec, path, "dnsPolicy", json!("ClusterFirst"));
    want(out, spec, path, "restartPolicy", json!("Always"));
    want(out, spec, path, "schedulerName", json!("default-scheduler"));
    want(out, spec, path, "securityContext", json!({}));
    want(out, spec, path, "terminationGracePeriodSeconds", json!(30));
    for list in ["initContainers", "containers"] {
        for (i, c) in items(spec, list) {
            container(c, &format!("{path}.{list}[{i}]"), out);
        }
    }
    for (i, v) in items(spec, "volumes") {
        let at = format!("{path}.volumes[{i}]");
        for source in ["secret", "configMap", "projected", "downwardAPI"] {
            if v[source].is_object() {
                want(
                    out,
                    &v[source],
                    &format!("{at}.{source}"),
                    "defaultMode",
                    json!(420),
                );
            }
        }
        if v["hostPath"].is_object() {
            want(
                out,
                &v["hostPath"],
                &format!("{at}.hostPath"),
                "type",
                json!(""),
            );
        }
    }
}

fn container(c: &Value, path: &str, out: &mut Vec<String>) {
    // Always for an image without a tag or tagged latest, else IfNotPresent.
    let image = c["image"].as_str().unwrap_or_default();
    let tag = image.rsplit('/').next().unwrap_or_default();
    let latest = !image.contains('@') && tag.split_once(':').is_none_or(|(_, t)| t == "latest");
    let pull = if latest { "Always" } else { "IfNotPresent" };
    want(out, c, path, "imagePullPolicy", json!(pull));
    want(
        out,
        c,
        path,
        "terminationMessagePath",
        json!("/dev/termination-log"),
    );
    want(out, c, path, "terminationMessagePolicy", json!("File"));
    for (i, port) in items(c, "ports") {
        want(
            out,
            port,
            &format!("{path}.ports[{i}]"),
            "protocol",
            json!("TCP"),
        );
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let p = &c[probe];
        if !p.is_object() {
            continue;
        }
        let at = format!("{path}.{probe}");
        want(out, p, &at, "timeoutSeconds", json!(1));
        want(out, p, &at, "periodSeconds", json!(10));
        want(out, p, &at, "successThreshold", json!(1));
        want(out, p, &at, "failureThreshold", json!(3));
        if p["httpGet"].is_object() {
            let at = format!("{at}.httpGet");
            want(out, &p["httpGet"], &at, "path", json!("/"));
            want(out, &p["httpGet"], &at, "scheme", json!("HTTP"));
        }
    }
    // A limit without a request: the request is defaulted to the limit.
    let resources = &c["resources"];
    if let Some(limits) = resources["limits"].as_object() {
        for (resource, limit) in limits {
            if resources["requests"].get(resource).is_none() {
                out.push(format!(
                    "{path}.resources.requests.{resource} (defaulted to the limit, {limit})"
                ));
            }
        }
    }
}

fn service(spec: &Value, out: &mut Vec<String>) {
    want(out, spec, ".spec", "type", json!("ClusterIP"));
    let kind = spec["type"].as_str().unwrap_or("ClusterIP");
    if kind == "ExternalName" {
        return;
    }
    want(out, spec, ".spec", "sessionAffinity", json!("None"));
    want(
        out,
        spec,
        ".spec",
        "internalTrafficPolicy",
        json!("Cluster"),
    );
    if matches!(kind, "NodePort" | "LoadBalancer") {
        want(
            out,
            spec,
            ".spec",
            "externalTrafficPolicy",
            json!("Cluster"),
        );
    }
    for (i, port) in items(spec, "ports") {
        let at = format!(".spec.ports[{i}]");
        want(out, port, &at, "protocol", json!("TCP"));
        let same = port["port"].clone();
        want(out, port, &at, "targetPort", same);
    }
}

fn webhooks(value: &Value, mutating: bool, out: &mut Vec<String>) {
    for (i, hook) in items(value, "webhooks") {
        let at = format!(".webhooks[{i}]");
        want(out, hook, &at, "failurePolicy", json!("Fail"));
        want(out, hook, &at, "matchPolicy", json!("Equivalent"));
        want(out, hook, &at, "namespaceSelector", json!({}));
        want(out, hook, &at, "objectSelector", json!({}));
        want(out, hook, &at, "timeoutSeconds", json!(10));
        if mutating {
            want(out, hook, &at, "reinvocationPolicy", json!("Never"));
        }
        let service = &hook["clientConfig"]["service"];
        if service.is_object() {
            want(
                out,
                service,
                &format!("{at}.clientConfig.service"),
                "port",
                json!(443),
            );
        }
        for (j, rule) in items(hook, "rules") {
            want(out, rule, &format!("{at}.rules[{j}]"), "scope", json!("*"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_ref_without_its_api_version_is_found() {
        let env = json!({"spec": {"containers": [{"env": [
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
        ]}]}});
        assert_eq!(
            unstated(&env),
            [".spec.containers[0].env[0].valueFrom.fieldRef.apiVersion (defaulted to v1)"]
        );
    }

    #[test]
    fn a_webhook_that_could_block_pods_is_found() {
        let config = json!({"kind": "MutatingWebhookConfiguration", "webhooks": [
            {"name": "a", "failurePolicy": "Ignore", "sideEffects": "None"},
            {"name": "b", "sideEffects": "Unknown"},
        ]});
        assert_eq!(
            blocking_webhooks(&config).len(),
            2,
            "{:?}",
            blocking_webhooks(&config)
        );
        assert!(blocking_webhooks(&config)[0].starts_with("webhooks[1].failurePolicy"));
    }

    /// deploy/ as `kubectl apply -k deploy/` applies it.
    fn deploy_files() -> Vec<std::path::PathBuf> {
        let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let text = fs::read_to_string(deploy.join("kustomization.yaml")).expect("kustomization");
        let k: Value = serde_norway::from_str(&text).expect("YAML");
        k["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| deploy.join(r.as_str().expect("a file")))
            .collect()
    }

    #[test]
    fn deploy_states_every_default() {
        if let Err(e) = check(&deploy_files()) {
            panic!("{e:#}");
        }
    }

    /// Each of these removed from deploy/, on its own, is found, by its path.
    #[test]
    fn deploy_with_a_default_left_out_is_refused() {
        let files = deploy_files();
        let docs: Vec<(String, Value)> = files
            .iter()
            .flat_map(|f| {
                let text = fs::read_to_string(f).expect("read");
                let name = f.file_name().expect("name").to_string_lossy().into_owned();
                serde_norway::Deserializer::from_str(&text)
                    .map(|d| (name.clone(), Value::deserialize(d).expect("YAML")))
                    .collect::<Vec<_>>()
            })
            .collect();
        let c = "/spec/template/spec/containers/0";
        let cases = [
            ("DaemonSet", "/spec/revisionHistoryLimit".to_owned()),
            (
                "DaemonSet",
                "/spec/updateStrategy/rollingUpdate/maxSurge".into(),
            ),
            ("DaemonSet", "/spec/template/spec/schedulerName".into()),
            ("DaemonSet", "/spec/template/spec/securityContext".into()),
            ("DaemonSet", format!("{c}/terminationMessagePolicy")),
            ("DaemonSet", format!("{c}/livenessProbe/timeoutSeconds")),
            ("DaemonSet", format!("{c}/readinessProbe/httpGet/scheme")),
            ("DaemonSet", format!("{c}/ports/0/protocol")),
            (
                "DaemonSet",
                format!("{c}/env/0/valueFrom/fieldRef/apiVersion"),
            ),
            ("Deployment", "/spec/progressDeadlineSeconds".into()),
            ("Deployment", "/spec/template/spec/dnsPolicy".into()),
            ("Deployment", format!("{c}/imagePullPolicy")),
            (
                "Deployment",
                "/spec/template/spec/volumes/0/secret/defaultMode".into(),
            ),
            ("Service", "/spec/sessionAffinity".into()),
            ("Service", "/spec/ports/0/targetPort".into()),
            ("PersistentVolumeClaim", "/spec/volumeMode".into()),
            (
                "MutatingWebhookConfiguration",
                "/webhooks/0/timeoutSeconds".into(),
            ),
            (
                "MutatingWebhookConfiguration",
                "/webhooks/0/rules/0/scope".into(),
            ),
            ("CustomResourceDefinition", "/spec/names/listKind".into()),
            ("CustomResourceDefinition", "/spec/conversion".into()),
        ];
        for (kind, pointer) in cases {
            // The first document of that kind holding the field.
            let (file, mut doc) = docs
                .iter()
                .find(|(_, d)| d["kind"] == kind && d.pointer(&pointer).is_some())
                .cloned()
                .unwrap_or_else(|| panic!("no {kind} in deploy/ states {pointer}"));
            let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
            doc.pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .expect("an object")
                .remove(key);
            // `/a/0/b` is reported as `.a[0].b`.
            let mut path = String::new();
            for part in pointer.split('/').skip(1) {
                if part.parse::<usize>().is_ok() {
                    path.push_str(&format!("[{part}]"));
                } else {
                    path.push_str(&format!(".{part}"));
                }
            }
            let found = unstated(&doc);
            assert!(
                found.len() == 1 && found[0].starts_with(&format!("{path} (defaulted to ")),
                "{file}: {kind} without {pointer}: {found:?}"
            );
        }
    }

    #[test]
    fn a_bare_pod_template_is_told_every_default() {
        let deployment = json!({"kind": "Deployment", "spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "example",
                            "ports": [{"containerPort": 80}],
                            "readinessProbe": {"httpGet": {"port": 80}},
                            "resources": {"limits": {"memory": "1Gi"}}}],
            "volumes": [{"name": "v", "hostPath": {"path": "/x"}}]}}}});
        let found = unstated(&deployment);
        let t = ".spec.template.spec";
        let want = [
            ".spec.replicas (defaulted to 1)".to_owned(),
            ".spec.revisionHistoryLimit (defaulted to 10)".into(),
            ".spec.progressDeadlineSeconds (defaulted to 600)".into(),
            ".spec.strategy (defaulted to {\"rollingUpdate\":{\"maxSurge\":\"25%\",\"maxUnavailable\":\"25%\"},\"type\":\"RollingUpdate\"})".into(),
            format!("{t}.dnsPolicy (defaulted to ClusterFirst)"),
            format!("{t}.restartPolicy (defaulted to Always)"),
            format!("{t}.schedulerName (defaulted to default-scheduler)"),
            format!("{t}.securityContext (defaulted to {{}})"),
            format!("{t}.terminationGracePeriodSeconds (defaulted to 30)"),
            // No tag: the image is pulled always.
            format!("{t}.containers[0].imagePullPolicy (defaulted to Always)"),
            format!("{t}.containers[0].terminationMessagePath (defaulted to /dev/termination-log)"),
            format!("{t}.containers[0].terminationMessagePolicy (defaulted to File)"),
            format!("{t}.containers[0].ports[0].protocol (defaulted to TCP)"),
            format!("{t}.containers[0].readinessProbe.timeoutSeconds (defaulted to 1)"),
            format!("{t}.containers[0].readinessProbe.periodSeconds (defaulted to 10)"),
            format!("{t}.containers[0].readinessProbe.successThreshold (defaulted to 1)"),
            format!("{t}.containers[0].readinessProbe.failureThreshold (defaulted to 3)"),
            format!("{t}.containers[0].readinessProbe.httpGet.path (defaulted to /)"),
            format!("{t}.containers[0].readinessProbe.httpGet.scheme (defaulted to HTTP)"),
            format!("{t}.containers[0].resources.requests.memory (defaulted to the limit, \"1Gi\")"),
            format!("{t}.volumes[0].hostPath.type (defaulted to \"\")"),
        ];
        assert_eq!(found, want);
    }
}
