//! Fields the API server fills in when a manifest leaves them out. After a
//! client-side apply (`kubectl apply`), a server-side apply of the same
//! files (`kubectl apply --server-side`) conflicts on each such field: the
//! last-applied annotation's owner holds the defaulted value, which the
//! applied file does not state. So deploy/ states them.

use std::{fs, path::Path};

use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use serde_json::Value;

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
            for at in unstated(&value, "") {
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

/// The paths below `value` of defaulted fields left out: each `fieldRef`
/// (downward API, in env and volumes) without `apiVersion` (defaulted to
/// `v1`).
fn unstated(value: &Value, path: &str) -> Vec<String> {
    let mut out = Vec::new();
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let here = format!("{path}.{key}");
                if key == "fieldRef" && child.get("apiVersion").is_none() {
                    out.push(format!("{here}.apiVersion (defaulted to v1)"));
                }
                out.extend(unstated(child, &here));
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                out.extend(unstated(child, &format!("{path}[{i}]")));
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_field_ref_without_its_api_version_is_found() {
        let env = json!({"spec": {"containers": [{"env": [
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
        ]}]}});
        assert_eq!(
            unstated(&env, ""),
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
}
