//! Server-side apply, approximated: who owns which field (managedFields),
//! conflicts between managers, and the removal of fields a manager stops
//! applying.
//!
//! Lists follow the schema (schema.rs), as on the real server: a list-map
//! merges item by item, matched on its keys, and any other list is one
//! field, replaced whole. Unlike the real server, a list-map's item is owned
//! whole rather than field by field: two managers that set different fields
//! of one item conflict on the item.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::{
    resources::Resource,
    schema::{List, Shape},
};

/// Metadata that managers own; the rest is the server's.
const META_OWNED: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Seg {
    Field(String),
    /// An item of a list-map: its key fields, sorted, each with the JSON of
    /// its value.
    Key(Vec<(String, String)>),
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

/// The key of a list-map's item, if it has every key field as a scalar.
fn item_key(item: &Value, keys: &[String]) -> Option<Seg> {
    key_pairs(item, keys.iter()).map(Seg::Key)
}

/// The item's values of `keys`, each as JSON, sorted by field.
fn key_pairs<'a>(
    item: &Value,
    keys: impl Iterator<Item = &'a String>,
) -> Option<Vec<(String, String)>> {
    let mut pairs = keys
        .map(|k| match item.get(k)? {
            v @ (Value::String(_) | Value::Number(_) | Value::Bool(_)) => {
                Some((k.clone(), v.to_string()))
            }
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    pairs.sort();
    Some(pairs)
}

fn has_key(item: &Value, pairs: &[(String, String)]) -> bool {
    key_pairs(item, pairs.iter().map(|(k, _)| k)).as_deref() == Some(pairs)
}

/// The owned leaves of a value: scalars, atomic lists, empty objects and the
/// items of list-maps (an item without its keys owns nothing). `null` marks
/// a removal and owns nothing.
pub fn leaves(v: &Value, shape: &Shape) -> FieldSet {
    let mut out = FieldSet::new();
    collect(v, shape, &mut Vec::new(), &mut out);
    out
}

fn collect(v: &Value, shape: &Shape, prefix: &mut Path, out: &mut FieldSet) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, child) in map {
                if child.is_null() {
                    continue;
                }
                prefix.push(Seg::Field(k.clone()));
                collect(child, shape.field(k), prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => match shape.list() {
            List::Map(keys) => {
                for key in items.iter().filter_map(|item| item_key(item, keys)) {
                    let mut path = prefix.clone();
                    path.push(key);
                    out.insert(path);
                }
            }
            List::Atomic => {
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

/// An applied configuration's list-maps must give every item its keys, once:
/// the real server refuses it otherwise.
fn check_keys(v: &Value, shape: &Shape, at: &mut Path) -> Result<(), String> {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                at.push(Seg::Field(k.clone()));
                check_keys(child, shape.field(k), at)?;
                at.pop();
            }
        }
        Value::Array(items) => {
            if let List::Map(keys) = shape.list() {
                let mut seen = BTreeSet::new();
                for item in items {
                    let key = item_key(item, keys).ok_or_else(|| {
                        format!(
                            "{}: an item of a list keyed by {keys:?} lacks a key: {item}",
                            describe(at)
                        )
                    })?;
                    if !seen.insert(key.clone()) {
                        at.push(key);
                        return Err(format!("{}: duplicate entries", describe(at)));
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

fn child<'a>(v: &'a Value, seg: &Seg) -> Option<&'a Value> {
    match seg {
        Seg::Field(f) => v.as_object()?.get(f),
        Seg::Key(pairs) => v.as_array()?.iter().find(|item| has_key(item, pairs)),
    }
}

fn child_mut<'a>(v: &'a mut Value, seg: &Seg) -> Option<&'a mut Value> {
    match seg {
        Seg::Field(f) => v.as_object_mut()?.get_mut(f),
        Seg::Key(pairs) => v
            .as_array_mut()?
            .iter_mut()
            .find(|item| has_key(item, pairs)),
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
        (Value::Array(items), Seg::Key(pairs)) => {
            items.retain(|item| !has_key(item, pairs));
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
/// field, list-maps item by item, anything else replaced.
fn merge_applied(live: &mut Value, applied: &Value, shape: &Shape) {
    match (live, applied, shape.list()) {
        (Value::Object(l), Value::Object(a), _) => {
            for (k, av) in a {
                if av.is_null() {
                    l.remove(k);
                } else if let Some(lv) = l.get_mut(k) {
                    merge_applied(lv, av, shape.field(k));
                } else {
                    l.insert(k.clone(), av.clone());
                }
            }
        }
        (Value::Array(l), Value::Array(a), List::Map(keys)) => {
            for item in a {
                let found = item_key(item, keys).and_then(|key| match &key {
                    Seg::Key(pairs) => l.iter_mut().find(|i| has_key(i, pairs)),
                    Seg::Field(_) => None,
                });
                match found {
                    Some(existing) => *existing = item.clone(),
                    None => l.push(item.clone()),
                }
            }
        }
        (live, applied, _) => *live = applied.clone(),
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
pub fn record_update(
    managers: &mut Vec<Manager>,
    old: &Value,
    new: &Value,
    shape: &Shape,
    w: &Writer,
) {
    let changed: FieldSet = leaves(new, shape)
        .into_iter()
        .filter(|p| get(old, p) != get(new, p))
        .collect();
    let gone: FieldSet = leaves(old, shape)
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

/// Why an apply is refused.
#[derive(Debug, PartialEq)]
pub enum ApplyError {
    /// Fields other managers own with other values (unless forced).
    Conflicts(Conflicts),
    /// A list-map item without its keys, or twice.
    Invalid(String),
}

/// Server-side apply of `applied` onto `live` (both views of one part, of
/// the given shape). Returns the new view.
pub fn apply(
    managers: &mut Vec<Manager>,
    live: &Value,
    applied: &Value,
    shape: &Shape,
    force: bool,
    w: &Writer,
) -> Result<Value, ApplyError> {
    check_keys(applied, shape, &mut Vec::new()).map_err(ApplyError::Invalid)?;
    let sub = w.part.subresource();
    let is_me = |m: &Manager| m.name == w.manager && m.apply && m.subresource == sub;
    let new_set = leaves(applied, shape);
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
            return Err(ApplyError::Conflicts(conflicts));
        }
        // Forced: the applier takes the conflicting fields; fields applied
        // with the value they already have stay shared.
        for m in managers.iter_mut().filter(|m| !is_me(m)) {
            m.fields
                .retain(|p| !conflicts.iter().any(|(n, c)| *n == m.name && c == p));
        }
    }
    let mut merged = live.clone();
    merge_applied(&mut merged, applied, shape);
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

/// `.status.nodes[node="a"]`, as conflict messages name fields.
pub fn describe(path: &[Seg]) -> String {
    path.iter()
        .map(|seg| match seg {
            Seg::Field(f) => format!(".{f}"),
            Seg::Key(pairs) => {
                let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", pairs.join(","))
            }
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
                        Seg::Key(pairs) => {
                            let pairs: Vec<String> = pairs
                                .iter()
                                .map(|(k, v)| format!("{}:{v}", Value::from(k.as_str())))
                                .collect();
                            format!("k:{{{}}}", pairs.join(","))
                        }
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
mod tests;
