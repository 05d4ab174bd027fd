//! The real server's defaulting, where it decides whether applies conflict:
//! a field the server fills in is owned by the writer whose object it
//! completed, so a later applier that leaves it out changes it, and
//! conflicts when another manager owns it. Only what `deploy/` could leave
//! out is modelled: `fieldRef.apiVersion` (the downward API's
//! ObjectFieldSelector, in env and volumes), defaulted to `v1` in every
//! built-in kind that holds a pod spec. ObjectFieldSelector is atomic, so
//! an applied `fieldRef` without it differs from the stored one.

use serde_json::Value;

use super::resources::{MIRROR_GROUP, Resource};

/// Fills in what the server defaults, in place.
pub fn apply(res: &Resource, obj: &mut Value) {
    if res.group != MIRROR_GROUP {
        default_field_refs(obj);
    }
}

fn default_field_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "fieldRef"
                    && let Value::Object(selector) = child
                {
                    selector
                        .entry("apiVersion")
                        .or_insert_with(|| Value::from("v1"));
                }
                default_field_refs(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(default_field_refs),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::resources::{RESOURCES, by_kind};

    #[test]
    fn field_refs_get_their_api_version_in_built_in_kinds_only() {
        let env = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "env": [
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"apiVersion": "v2", "fieldPath": "status.podIP"}}},
        ]}]}}}});
        let mut daemonset = env.clone();
        apply(
            &RESOURCES[by_kind("apps/v1", "DaemonSet").unwrap()],
            &mut daemonset,
        );
        let vars = &daemonset["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(vars[0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(vars[1]["valueFrom"]["fieldRef"]["apiVersion"], "v2");
        let mut ours = env.clone();
        let policy = by_kind(&format!("{MIRROR_GROUP}/v1alpha1"), "MirrorPolicy").unwrap();
        apply(&RESOURCES[policy], &mut ours);
        assert_eq!(ours, env, "a custom resource is not defaulted so");
    }
}
