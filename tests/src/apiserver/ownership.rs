//! Server-side apply, approximated: who owns which field (managedFields),
//! conflicts between managers, and the removal of fields a manager stops
//! applying.
//!
//! The real server takes list semantics from the schema
//! (`x-kubernetes-list-type`). With no schemas here, a list whose items all
//! carry one of [`LIST_KEYS`] is taken as a map keyed by it (each item owned
//! whole), and any other list as atomic.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::resources::Resource;

/// Item keys that make a list associative, in order of preference.
const LIST_KEYS: [&str; 4] = ["name", "type", "nodeName", "node"];

/// Metadata that managers own; the rest is the server's.
const META_OWNED: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    Field(String),
    /// An item of an associative list: key field and the JSON of its value.
    Key(String, String),
}

pub type Path = Vec<Seg>;
pub type FieldSet = BTreeSet<Path>;

/// Which part of an object a write is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

impl Part {
    pub fn subresource(self) -> &'static str {
        match self {
            Part::Main => "",
            Part::Status => "status",
        }
    }
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq)]
pub struct Manager {
    pub name: String,
    pub apply: bool,
    pub subresource: &'static str,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

fn list_key(items: &[Value]) -> Option<&'static str> {
    if items.is_empty() {
        return None;
    }
    LIST_KEYS.into_iter().find(|k| {
        items
            .iter()
            .all(|item| item.get(k).is_some_and(|v| v.is_string() || v.is_number()))
    })
}

fn key_of(item: &Value, key: &str) -> Option<String> {
    item.get(key).map(Value::to_string)
}

/// The owned leaves of a value: scalars, atomic lists, empty objects and the
/// items of associative lists. `null` marks a removal and owns nothing.
pub fn leaves(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    collect(v, &mut Vec::new(), &mut out);
    out
}

fn collect(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                if child.is_null() {
                    continue;
                }
                prefix.push(Seg::Field(k.clone()));
                collect(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => match list_key(items) {
            Some(key) => {
                for item in items {
                    if let Some(value) = key_of(item, key) {
                        let mut path = prefix.clone();
                        path.push(Seg::Key(key.to_string(), value));
                        out.insert(path);
                    }
                }
            }
            None => {
                out.insert(prefix.clone());
            }
        },
        _ => {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
        }
    }
}

fn child<'a>(v: &'a Value, seg: &Seg) -> Option<&'a Value> {
    match seg {
        Seg::Field(f) => v.as_object()?.get(f),
        Seg::Key(k, value) => v
            .as_array()?
            .iter()
            .find(|item| key_of(item, k).as_deref() == Some(value)),
    }
}

fn child_mut<'a>(v: &'a mut Value, seg: &Seg) -> Option<&'a mut Value> {
    match seg {
        Seg::Field(f) => v.as_object_mut()?.get_mut(f),
        Seg::Key(k, value) => v
            .as_array_mut()?
            .iter_mut()
            .find(|item| key_of(item, k).as_deref() == Some(value)),
    }
}

pub fn get<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(v, child)
}

fn remove_child(v: &mut Value, seg: &Seg) {
    match (v, seg) {
        (Value::Object(map), Seg::Field(f)) => {
            map.remove(f);
        }
        (Value::Array(items), Seg::Key(k, value)) => {
            items.retain(|item| key_of(item, k).as_deref() != Some(value));
        }
        _ => {}
    }
}

/// Removes the field at `path`, and the objects it leaves empty.
fn remove(v: &mut Value, path: &[Seg]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        remove_child(v, first);
        return;
    }
    let emptied = match child_mut(v, first) {
        Some(c) => {
            remove(c, rest);
            c.as_object().is_some_and(Map::is_empty)
        }
        None => false,
    };
    if emptied {
        remove_child(v, first);
    }
}

/// Merges an applied configuration into the live one: objects field by
/// field, associative lists item by item, anything else replaced.
fn merge_applied(live: &mut Value, applied: &Value) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, av) in a {
                if av.is_null() {
                    l.remove(k);
                } else if let Some(lv) = l.get_mut(k) {
                    merge_applied(lv, av);
                } else {
                    l.insert(k.clone(), av.clone());
                }
            }
        }
        (Value::Array(l), Value::Array(a)) if list_key(a).is_some() => {
            let key = list_key(a).unwrap_or_default();
            for item in a {
                let k = key_of(item, key);
                match l.iter_mut().find(|i| key_of(i, key) == k) {
                    Some(existing) => *existing = item.clone(),
                    None => l.push(item.clone()),
                }
            }
        }
        (live, applied) => *live = applied.clone(),
    }
}

/// The part of an object that managers own for a write to `part`.
pub fn view(obj: &Value, part: Part, res: &Resource) -> Value {
    let mut out = Map::new();
    match part {
        Part::Status => {
            if let Some(status) = obj.get("status") {
                out.insert("status".into(), status.clone());
            }
        }
        Part::Main => {
            for (k, v) in obj.as_object().into_iter().flatten() {
                match k.as_str() {
                    "apiVersion" | "kind" => {}
                    "status" if res.status => {}
                    "metadata" => {
                        let meta: Map<String, Value> = v
                            .as_object()
                            .into_iter()
                            .flatten()
                            .filter(|(k, _)| META_OWNED.contains(&k.as_str()))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        if !meta.is_empty() {
                            out.insert("metadata".into(), Value::Object(meta));
                        }
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
    Value::Object(out)
}

/// Puts a (changed) view back into the whole object.
pub fn unview(full: &mut Value, view: &Value, part: Part, res: &Resource) {
    let Value::Object(obj) = full else {
        return;
    };
    match part {
        Part::Status => match view.get("status") {
            Some(status) => {
                obj.insert("status".into(), status.clone());
            }
            None => {
                obj.remove("status");
            }
        },
        Part::Main => {
            obj.retain(|k, _| {
                matches!(k.as_str(), "apiVersion" | "kind" | "metadata")
                    || (k == "status" && res.status)
            });
            if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
                meta.retain(|k, _| !META_OWNED.contains(&k.as_str()));
            }
            for (k, v) in view.as_object().into_iter().flatten() {
                if k == "metadata" {
                    let meta = obj
                        .entry("metadata")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let (Value::Object(meta), Value::Object(owned)) = (meta, v) {
                        meta.extend(owned.clone());
                    }
                } else {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

/// Who wrote, for the bookkeeping of one write.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub part: Part,
    pub api_version: &'a str,
    pub now: &'a str,
}

fn entry<'a>(managers: &'a mut Vec<Manager>, w: &Writer, apply: bool) -> &'a mut Manager {
    let sub = w.part.subresource();
    let found = managers
        .iter()
        .position(|m| m.name == w.manager && m.apply == apply && m.subresource == sub);
    let at = match found {
        Some(at) => at,
        None => {
            managers.push(Manager {
                name: w.manager.to_string(),
                apply,
                subresource: sub,
                api_version: w.api_version.to_string(),
                time: w.now.to_string(),
                fields: FieldSet::new(),
            });
            managers.len() - 1
        }
    };
    &mut managers[at]
}

/// A plain write (create, update, patch): the writer takes the fields it
/// changed from their former owners, and removed fields are owned by none.
pub fn record_update(managers: &mut Vec<Manager>, old: &Value, new: &Value, w: &Writer) {
    let changed: FieldSet = leaves(new)
        .into_iter()
        .filter(|p| get(old, p) != get(new, p))
        .collect();
    let gone: FieldSet = leaves(old)
        .into_iter()
        .filter(|p| get(new, p).is_none())
        .collect();
    for m in managers.iter_mut() {
        m.fields
            .retain(|p| !changed.contains(p) && !gone.contains(p));
    }
    if !changed.is_empty() {
        let me = entry(managers, w, false);
        me.fields.extend(changed);
        me.time = w.now.to_string();
        me.api_version = w.api_version.to_string();
    }
    managers.retain(|m| !m.fields.is_empty());
}

/// Conflicts of an apply: manager and field.
pub type Conflicts = Vec<(String, Path)>;

/// Server-side apply of `applied` onto `live` (both views of one part).
/// Returns the new view, or the conflicts when not forced.
pub fn apply(
    managers: &mut Vec<Manager>,
    live: &Value,
    applied: &Value,
    force: bool,
    w: &Writer,
) -> Result<Value, Conflicts> {
    let sub = w.part.subresource();
    let is_me = |m: &Manager| m.name == w.manager && m.apply && m.subresource == sub;
    let new_set = leaves(applied);
    let mut conflicts = Conflicts::new();
    for m in managers.iter().filter(|m| !is_me(m)) {
        for p in m.fields.intersection(&new_set) {
            if get(live, p) != get(applied, p) {
                conflicts.push((m.name.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts);
        }
        // Forced: the applier takes the conflicting fields; fields applied
        // with the value they already have stay shared.
        for m in managers.iter_mut().filter(|m| !is_me(m)) {
            m.fields
                .retain(|p| !conflicts.iter().any(|(n, c)| *n == m.name && c == p));
        }
    }
    let mut merged = live.clone();
    merge_applied(&mut merged, applied);
    let before = managers
        .iter()
        .find(|m| is_me(m))
        .map(|m| m.fields.clone())
        .unwrap_or_default();
    for p in before.difference(&new_set) {
        let shared = managers.iter().any(|m| !is_me(m) && m.fields.contains(p));
        if !shared {
            remove(&mut merged, p);
        }
    }
    let me = entry(managers, w, true);
    if me.fields != new_set || merged != *live {
        me.time = w.now.to_string();
        me.api_version = w.api_version.to_string();
    }
    me.fields = new_set;
    managers.retain(|m| !m.fields.is_empty());
    Ok(merged)
}

/// `.spec.rules[name="a"]`, as conflict messages name fields.
pub fn describe(path: &[Seg]) -> String {
    path.iter()
        .map(|seg| match seg {
            Seg::Field(f) => format!(".{f}"),
            Seg::Key(k, v) => format!("[{k}={v}]"),
        })
        .collect()
}

/// `metadata.managedFields` in the FieldsV1 format.
pub fn render(managers: &[Manager]) -> Value {
    let entries: Vec<Value> = managers
        .iter()
        .map(|m| {
            let mut tree = Map::new();
            for path in &m.fields {
                let mut node = &mut tree;
                for seg in path {
                    let name = match seg {
                        Seg::Field(f) => format!("f:{f}"),
                        Seg::Key(k, v) => format!("k:{{\"{k}\":{v}}}"),
                    };
                    let next = node
                        .entry(name)
                        .or_insert_with(|| Value::Object(Map::new()));
                    match next {
                        Value::Object(map) => node = map,
                        // Paths never run through a scalar: stop rather than panic.
                        _ => break,
                    }
                }
            }
            let mut e = json!({
                "manager": m.name,
                "operation": if m.apply { "Apply" } else { "Update" },
                "apiVersion": m.api_version,
                "time": m.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": tree,
            });
            if !m.subresource.is_empty() {
                e["subresource"] = json!(m.subresource);
            }
            e
        })
        .collect();
    Value::Array(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w<'a>(manager: &'a str) -> Writer<'a> {
        Writer {
            manager,
            part: Part::Status,
            api_version: "v1",
            now: "t",
        }
    }

    #[test]
    fn apply_owns_conflicts_and_removes() {
        let mut managers = Vec::new();
        let live = json!({});
        let a1 = json!({"status": {"nodes": [{"node": "n1", "n": 1}], "x": 1, "y": 2}});
        let v1 = apply(&mut managers, &live, &a1, false, &w("n1")).unwrap();
        assert_eq!(v1, a1);
        // Another node adds its own item: shared list, no conflict.
        let a2 = json!({"status": {"nodes": [{"node": "n2", "n": 5}]}});
        let v2 = apply(&mut managers, &v1, &a2, false, &w("n2")).unwrap();
        assert_eq!(v2["status"]["nodes"].as_array().unwrap().len(), 2);
        // n2 sets x to another value: conflict unless forced.
        let a3 = json!({"status": {"nodes": [{"node": "n2", "n": 6}], "x": 7}});
        let conflicts = apply(&mut managers, &v2, &a3, false, &w("n2")).unwrap_err();
        assert_eq!(describe(&conflicts[0].1), ".status.x");
        let v3 = apply(&mut managers, &v2, &a3, true, &w("n2")).unwrap();
        assert_eq!(v3["status"]["x"], 7);
        // n1 stops applying y and its item: both go; x is n2's now.
        let a4 = json!({});
        let v4 = apply(&mut managers, &v3, &a4, false, &w("n1")).unwrap();
        assert_eq!(
            v4,
            json!({"status": {"nodes": [{"node": "n2", "n": 6}], "x": 7}})
        );
        let fields = render(&managers);
        assert_eq!(fields.as_array().unwrap().len(), 1, "{fields}");
        assert!(fields[0]["fieldsV1"]["f:status"]["f:nodes"]["k:{\"node\":\"n2\"}"].is_object());
    }

    #[test]
    fn update_takes_ownership() {
        let mut managers = Vec::new();
        let v1 = apply(
            &mut managers,
            &json!({}),
            &json!({"status": {"x": 1}}),
            false,
            &w("a"),
        )
        .unwrap();
        let v2 = json!({"status": {"x": 2}});
        record_update(&mut managers, &v1, &v2, &w("b"));
        assert_eq!(managers.len(), 1);
        assert_eq!(managers[0].name, "b");
        // a no longer owns x, so applying without it leaves it.
        let v3 = apply(
            &mut managers,
            &v2,
            &json!({"status": {"z": 1}}),
            false,
            &w("a"),
        )
        .unwrap();
        assert_eq!(v3, json!({"status": {"x": 2, "z": 1}}));
    }
}
