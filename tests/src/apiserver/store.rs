//! The objects, one resourceVersion counter for all of them, and a bounded
//! history of changes for watches: the part of the API server that is etcd
//! plus the registry's create/update/patch/delete rules.

use std::{
    collections::{BTreeMap, VecDeque},
    ops::Bound,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value, json};

use super::{
    error::ApiError,
    ownership::{self, Manager, Part, Writer},
    patch,
    resources::{RESOURCES, Resource},
    select::Selector,
};

/// An object's place: index in [`RESOURCES`], namespace (empty for
/// cluster-scoped kinds) and name. Ordered, so lists come out sorted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub res: usize,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(res: usize, namespace: Option<&str>, name: &str) -> Self {
        Self {
            res,
            namespace: namespace.unwrap_or_default().to_string(),
            name: name.to_string(),
        }
    }

    fn resource(&self) -> &'static Resource {
        &RESOURCES[self.res]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watches replay it.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub key: Key,
    pub kind: EventType,
    /// The object after the change (for a deletion, its last state).
    pub object: Arc<Value>,
    /// The object before the change: a watch with a selector turns a change
    /// across the selector's edge into ADDED or DELETED.
    pub prev: Option<Arc<Value>>,
}

#[derive(Debug, Clone)]
struct Entry {
    object: Value,
    managers: Vec<Manager>,
}

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The object: its `.status` is kept where the kind has a status subresource.
    Main,
    /// The `/status` subresource: only `.status` changes.
    Status,
    /// A test's own write: everything but the server's metadata.
    Raw,
}

impl Target {
    fn parts(self) -> &'static [Part] {
        match self {
            Target::Main => &[Part::Main],
            Target::Status => &[Part::Status],
            Target::Raw => &[Part::Main, Part::Status],
        }
    }
}

/// A patch body, by its content type.
#[derive(Debug, Clone)]
pub enum PatchBody {
    /// `application/merge-patch+json` (and strategic merge patch, approximated).
    Merge(Value),
    /// `application/json-patch+json`.
    Json(Value),
    /// `application/apply-patch+yaml`: server-side apply.
    Apply { object: Value, force: bool },
}

/// Preconditions of a delete (`DeleteOptions.preconditions`).
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Store {
    rv: u64,
    /// Watches and continue tokens from before this are answered 410 Gone:
    /// the history holds every event after it.
    floor: u64,
    history_limit: usize,
    history: VecDeque<Event>,
    objects: BTreeMap<Key, Entry>,
    ids: Ids,
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        Self {
            rv: 1,
            floor: 1,
            history_limit: history_limit.max(1),
            history: VecDeque::new(),
            objects: BTreeMap::new(),
            ids: Ids::new(),
        }
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Drops the history and moves past every resourceVersion handed out so
    /// far, as an etcd compaction does: any watch from before gets 410.
    pub fn compact(&mut self) {
        self.rv += 1;
        self.floor = self.rv;
        self.history.clear();
    }

    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key).map(|e| &e.object)
    }

    /// Objects of one kind, in one namespace or all, that the selector
    /// matches, sorted, starting after `after` (a continue token's place).
    pub fn list<'a>(
        &'a self,
        res: usize,
        namespace: Option<&'a str>,
        selector: &'a Selector,
        after: Option<Key>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> + 'a {
        let start = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Included(Key::new(res, None, "")),
        };
        self.objects
            .range((start, Bound::Unbounded))
            .take_while(move |(k, _)| k.res == res)
            .filter(move |(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .filter(move |(_, e)| selector.matches(&e.object))
            .map(|(k, e)| (k, &e.object))
    }

    /// The events after `rv`, or 410 if the history no longer reaches back.
    pub fn since(&self, rv: u64) -> Result<impl Iterator<Item = &Event>, ApiError> {
        if rv < self.floor {
            return Err(ApiError::expired(format!(
                "too old resource version: {rv} ({})",
                self.floor
            )));
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Ok(self.history.range(start..))
    }

    /// 410 for a continue token minted before the kept history.
    pub fn check_continue(&self, rv: u64) -> Result<(), ApiError> {
        if rv < self.floor {
            return Err(ApiError::expired(
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter.",
            ));
        }
        Ok(())
    }

    fn push(&mut self, event: Event) {
        self.history.push_back(event);
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.floor = old.rv;
            }
        }
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// POST: a new object. `path_ns` is the namespace of the URL.
    pub fn create(
        &mut self,
        res_index: usize,
        path_ns: Option<&str>,
        mut obj: Value,
        target: Target,
        manager: &str,
        managers: Option<Vec<Manager>>,
    ) -> Result<Value, ApiError> {
        let res = &RESOURCES[res_index];
        check_type(res, &obj)?;
        let mut meta = match obj.get("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(ApiError::bad_request("metadata must be an object")),
        };
        let namespace = if res.namespaced {
            let body_ns = meta.get("namespace").and_then(Value::as_str);
            match (path_ns, body_ns) {
                (Some(p), Some(b)) if !b.is_empty() && p != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(p), _) => p.to_string(),
                (None, Some(b)) if !b.is_empty() => b.to_string(),
                _ => {
                    return Err(ApiError::invalid(
                        res,
                        "",
                        "metadata.namespace: Required value",
                    ));
                }
            }
        } else {
            String::new()
        };
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => format!("{prefix}{}", self.ids.suffix()),
                _ => {
                    return Err(ApiError::invalid(
                        res,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        check_name(res, &name)?;
        if res.namespaced {
            check_name(res, &namespace)?;
        }
        let key = Key::new(res_index, Some(&namespace), &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(res, &name));
        }
        for server_owned in [
            "resourceVersion",
            "managedFields",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(server_owned);
        }
        meta.insert("name".into(), json!(name));
        if res.namespaced {
            meta.insert("namespace".into(), json!(namespace));
        } else {
            meta.remove("namespace");
        }
        // A test may choose the UID (the agent matches pods by it); clients may not.
        let chosen_uid = meta
            .get("uid")
            .and_then(Value::as_str)
            .filter(|u| target == Target::Raw && !u.is_empty())
            .map(str::to_string);
        let uid = chosen_uid.unwrap_or_else(|| self.ids.uid());
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now()));
        meta.insert("generation".into(), json!(1));
        obj["metadata"] = Value::Object(meta);
        set_type(res, &mut obj);
        if target != Target::Raw && res.status {
            // As for CRDs with a status subresource: status is not set by create.
            if let Value::Object(o) = &mut obj {
                o.remove("status");
            }
        }
        let managers = match managers {
            Some(m) => m,
            None => {
                let mut m = Vec::new();
                let api_version = res.api_version();
                let time = now();
                for &part in target.parts() {
                    let w = Writer {
                        manager,
                        part,
                        api_version: &api_version,
                        now: &time,
                    };
                    let view = ownership::view(&obj, part, res);
                    ownership::record_update(&mut m, &json!({}), &view, &w);
                }
                m
            }
        };
        set_managed_fields(&mut obj, &managers);
        let rv = self.next_rv();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert(
            key.clone(),
            Entry {
                object: obj.clone(),
                managers,
            },
        );
        self.push(Event {
            rv,
            key,
            kind: EventType::Added,
            object: Arc::new(obj.clone()),
            prev: None,
        });
        Ok(obj)
    }

    /// PUT: replaces the object (or its status), if `body` is not stale.
    pub fn replace(
        &mut self,
        key: &Key,
        body: Value,
        target: Target,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let res = key.resource();
        check_type(res, &body)?;
        if !body.is_object() {
            return Err(ApiError::bad_request("the body must be an object"));
        }
        if let Some(name) = body.pointer("/metadata/name").and_then(Value::as_str)
            && name != key.name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                key.name
            )));
        }
        if let Some(ns) = body.pointer("/metadata/namespace").and_then(Value::as_str)
            && !ns.is_empty()
            && res.namespaced
            && ns != key.namespace
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let old = self
            .get(key)
            .ok_or_else(|| ApiError::not_found(res, &key.name))?;
        check_fresh(res, key, old, &body)?;
        self.write(key, body, target, Ownership::Update(manager))
    }

    /// PATCH, by merge patch, JSON patch or server-side apply. Apply to an
    /// object that does not exist creates it.
    pub fn patch(
        &mut self,
        key: &Key,
        target: Target,
        body: PatchBody,
        manager: &str,
    ) -> Result<(Value, bool), ApiError> {
        let res = key.resource();
        let (object, force) = match body {
            PatchBody::Merge(p) => {
                let old = self
                    .get(key)
                    .ok_or_else(|| ApiError::not_found(res, &key.name))?;
                let mut new = old.clone();
                patch::merge(&mut new, &p);
                check_fresh(res, key, old, &new)?;
                return Ok((
                    self.write(key, new, target, Ownership::Update(manager))?,
                    false,
                ));
            }
            PatchBody::Json(ops) => {
                let old = self
                    .get(key)
                    .ok_or_else(|| ApiError::not_found(res, &key.name))?;
                let mut new = old.clone();
                patch::json_patch(&mut new, &ops)
                    .map_err(|e| ApiError::invalid(res, &key.name, e))?;
                check_fresh(res, key, old, &new)?;
                return Ok((
                    self.write(key, new, target, Ownership::Update(manager))?,
                    false,
                ));
            }
            PatchBody::Apply { object, force } => (object, force),
        };
        self.apply(key, target, object, force, manager)
    }

    fn apply(
        &mut self,
        key: &Key,
        target: Target,
        applied: Value,
        force: bool,
        manager: &str,
    ) -> Result<(Value, bool), ApiError> {
        let res = key.resource();
        if !applied.is_object() {
            return Err(ApiError::bad_request(
                "an applied configuration must be an object",
            ));
        }
        let api_version = applied.get("apiVersion").and_then(Value::as_str);
        let kind = applied.get("kind").and_then(Value::as_str);
        if api_version.is_none() || kind.is_none() {
            return Err(ApiError::bad_request(format!(
                "invalid object type: {}, Kind={}: apiVersion and kind must be set",
                api_version.unwrap_or(""),
                kind.unwrap_or("")
            )));
        }
        check_type(res, &applied)?;
        if let Some(name) = applied.pointer("/metadata/name").and_then(Value::as_str)
            && name != key.name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                key.name
            )));
        }
        let part = match target {
            Target::Status => Part::Status,
            _ => Part::Main,
        };
        let api_version = res.api_version();
        let time = now();
        let w = Writer {
            manager,
            part,
            api_version: &api_version,
            now: &time,
        };
        let applied_view = ownership::view(&applied, part, res);
        let Some(entry) = self.objects.get(key) else {
            if part == Part::Status {
                return Err(ApiError::not_found(res, &key.name));
            }
            let mut managers = Vec::new();
            let merged = ownership::apply(&mut managers, &json!({}), &applied_view, force, &w)
                .map_err(|c| conflict_error(res, &key.name, &c))?;
            let mut obj = json!({ "metadata": { "name": key.name } });
            ownership::unview(&mut obj, &merged, part, res);
            let ns = res.namespaced.then_some(key.namespace.as_str());
            let created = self.create(key.res, ns, obj, Target::Main, manager, Some(managers))?;
            return Ok((created, true));
        };
        check_fresh(res, key, &entry.object, &applied)?;
        let mut managers = entry.managers.clone();
        let live = ownership::view(&entry.object, part, res);
        let merged = ownership::apply(&mut managers, &live, &applied_view, force, &w)
            .map_err(|c| conflict_error(res, &key.name, &c))?;
        let mut new = entry.object.clone();
        ownership::unview(&mut new, &merged, part, res);
        let t = if part == Part::Status {
            Target::Status
        } else {
            Target::Main
        };
        Ok((self.write(key, new, t, Ownership::Set(managers))?, false))
    }

    /// The common end of every change to an existing object.
    fn write(
        &mut self,
        key: &Key,
        candidate: Value,
        target: Target,
        ownership: Ownership,
    ) -> Result<Value, ApiError> {
        let res = key.resource();
        let Some(entry) = self.objects.get(key) else {
            return Err(ApiError::not_found(res, &key.name));
        };
        let old = &entry.object;
        if !candidate.is_object()
            || !matches!(candidate.get("metadata"), None | Some(Value::Object(_)))
        {
            return Err(ApiError::invalid(
                res,
                &key.name,
                "the object and its metadata must be JSON objects",
            ));
        }
        let old_uid = old.pointer("/metadata/uid").and_then(Value::as_str);
        if let Some(uid) = candidate.pointer("/metadata/uid").and_then(Value::as_str)
            && Some(uid) != old_uid
        {
            return Err(ApiError::conflict(
                res,
                &key.name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    old_uid.unwrap_or_default()
                ),
            ));
        }
        let mut new = match target {
            Target::Status => {
                let mut n = old.clone();
                let status = ownership::view(&candidate, Part::Status, res);
                ownership::unview(&mut n, &status, Part::Status, res);
                n
            }
            Target::Main => {
                let mut n = candidate;
                if res.status {
                    let status = ownership::view(old, Part::Status, res);
                    ownership::unview(&mut n, &status, Part::Status, res);
                }
                n
            }
            Target::Raw => candidate,
        };
        // The server's own metadata is never the writer's to change.
        let mut meta = new
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        for server_owned in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old.pointer(&format!("/metadata/{server_owned}")) {
                Some(v) => meta.insert(server_owned.into(), v.clone()),
                None => meta.remove(server_owned),
            };
        }
        new["metadata"] = Value::Object(meta);
        set_type(res, &mut new);

        let mut managers = entry.managers.clone();
        match ownership {
            Ownership::Update(manager) => {
                let api_version = res.api_version();
                let time = now();
                for &part in target.parts() {
                    let w = Writer {
                        manager,
                        part,
                        api_version: &api_version,
                        now: &time,
                    };
                    let (before, after) = (
                        ownership::view(old, part, res),
                        ownership::view(&new, part, res),
                    );
                    ownership::record_update(&mut managers, &before, &after, &w);
                }
            }
            Ownership::Set(m) => managers = m,
        }
        // Only a change outside metadata and status is a new generation.
        if spec_of(old) != spec_of(&new) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        let finalized = new.pointer("/metadata/deletionTimestamp").is_some()
            && new
                .pointer("/metadata/finalizers")
                .and_then(Value::as_array)
                .is_none_or(Vec::is_empty);
        set_managed_fields(&mut new, &managers);
        if finalized {
            return Ok(self.remove(key, new));
        }
        // A write that changes nothing is no write: no new resourceVersion, no event.
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == *old {
            return Ok(new);
        }
        let prev = Arc::new(old.clone());
        let rv = self.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert(
            key.clone(),
            Entry {
                object: new.clone(),
                managers,
            },
        );
        self.push(Event {
            rv,
            key: key.clone(),
            kind: EventType::Modified,
            object: Arc::new(new.clone()),
            prev: Some(prev),
        });
        Ok(new)
    }

    /// DELETE: gone at once, or marked for deletion while finalizers remain.
    pub fn delete(&mut self, key: &Key, pre: &Preconditions) -> Result<Value, ApiError> {
        let res = key.resource();
        let Some(entry) = self.objects.get(key) else {
            return Err(ApiError::not_found(res, &key.name));
        };
        let old = entry.object.clone();
        let failed = |what: &str, wanted: &str, have: Option<&str>| {
            ApiError::conflict(
                res,
                &key.name,
                &format!(
                    "Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {}",
                    have.unwrap_or_default()
                ),
            )
        };
        let have_uid = old.pointer("/metadata/uid").and_then(Value::as_str);
        if let Some(uid) = &pre.uid
            && Some(uid.as_str()) != have_uid
        {
            return Err(failed("UID", uid, have_uid));
        }
        let have_rv = old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if let Some(rv) = &pre.resource_version
            && Some(rv.as_str()) != have_rv
        {
            return Err(failed("ResourceVersion", rv, have_rv));
        }
        let finalizers = old
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        if !finalizers {
            if res.group.is_empty() && res.kind == "Namespace" {
                self.empty_namespace(&key.name);
            }
            return Ok(self.remove(key, old));
        }
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(old);
        }
        let mut new = old.clone();
        new["metadata"]["deletionTimestamp"] = json!(now());
        new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        let rv = self.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv.to_string());
        if let Some(e) = self.objects.get_mut(key) {
            e.object = new.clone();
        }
        self.push(Event {
            rv,
            key: key.clone(),
            kind: EventType::Modified,
            object: Arc::new(new.clone()),
            prev: Some(Arc::new(old)),
        });
        Ok(new)
    }

    /// Deletes everything in a namespace that goes, as the namespace
    /// controller does (at once here, not while the namespace terminates).
    fn empty_namespace(&mut self, namespace: &str) {
        let inside: Vec<(Key, Value)> = self
            .objects
            .iter()
            .filter(|(k, _)| RESOURCES[k.res].namespaced && k.namespace == namespace)
            .map(|(k, e)| (k.clone(), e.object.clone()))
            .collect();
        for (key, last) in inside {
            self.remove(&key, last);
        }
    }

    /// Removes the object; `last` is its final state, as the DELETED event shows it.
    fn remove(&mut self, key: &Key, mut last: Value) -> Value {
        let prev = self.objects.remove(key).map(|e| Arc::new(e.object));
        let rv = self.next_rv();
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.push(Event {
            rv,
            key: key.clone(),
            kind: EventType::Deleted,
            object: Arc::new(last.clone()),
            prev,
        });
        last
    }
}

enum Ownership<'a> {
    /// A plain write by this manager.
    Update(&'a str),
    /// Server-side apply already worked out the managers.
    Set(Vec<Manager>),
}

fn conflict_error(res: &Resource, name: &str, conflicts: &ownership::Conflicts) -> ApiError {
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(m, p)| format!("conflict with \"{m}\": {}", ownership::describe(p)))
        .collect();
    let plural = if conflicts.len() == 1 { "" } else { "s" };
    let mut e = ApiError::new(
        409,
        "Conflict",
        format!(
            "Apply failed with {} conflict{plural}: {}",
            conflicts.len(),
            lines.join("\n")
        ),
    )
    .about(res, name);
    if let Some(details) = &mut e.details {
        details.causes = conflicts
            .iter()
            .map(|(m, p)| {
                json!({
                    "type": "FieldManagerConflict",
                    "message": format!("conflict with \"{m}\""),
                    "field": ownership::describe(p),
                })
            })
            .collect();
    }
    e
}

/// Optimistic concurrency: a resourceVersion in the body must be the stored one.
fn check_fresh(res: &Resource, key: &Key, old: &Value, body: &Value) -> Result<(), ApiError> {
    let wanted = body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let have = old
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if wanted.is_empty() || wanted == have {
        Ok(())
    } else {
        Err(ApiError::stale(res, &key.name))
    }
}

/// A body's `apiVersion` and `kind`, where given, must be the URL's.
fn check_type(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    let expected = res.api_version();
    if let Some(v) = obj.get("apiVersion").and_then(Value::as_str)
        && v != expected
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({expected})"
        )));
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str)
        && k != res.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            res.kind
        )));
    }
    Ok(())
}

/// A DNS-1123 subdomain, as object names and namespaces must be.
fn check_name(res: &Resource, name: &str) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| ok_char(c) || c == '-' || c == '.')
        && name.starts_with(ok_char)
        && name.ends_with(ok_char);
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            res,
            name,
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of \
                 lower case alphanumeric characters, '-' or '.', and must start and end with an \
                 alphanumeric character"
            ),
        ))
    }
}

fn set_type(res: &Resource, obj: &mut Value) {
    obj["apiVersion"] = json!(res.api_version());
    obj["kind"] = json!(res.kind);
}

fn set_managed_fields(obj: &mut Value, managers: &[Manager]) {
    if managers.is_empty() {
        if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
            meta.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = ownership::render(managers);
    }
}

/// Everything but metadata and status: what `metadata.generation` counts.
fn spec_of(obj: &Value) -> Value {
    let mut spec = obj.clone();
    if let Value::Object(o) = &mut spec {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            o.remove(k);
        }
    }
    spec
}

/// Now, as RFC 3339 in UTC to the second, as Kubernetes writes timestamps.
pub fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm), for dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// UIDs and generated name suffixes: unique, not secret (splitmix64).
#[derive(Debug, Clone)]
struct Ids {
    state: u64,
}

impl Ids {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            state: nanos ^ (u64::from(std::process::id()) << 32),
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A version 4 UUID.
    fn uid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    /// Five characters for `generateName`.
    fn suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let mut n = self.next();
        (0..5)
            .map(|_| {
                let c = ALPHABET[(n % ALPHABET.len() as u64) as usize];
                n /= ALPHABET.len() as u64;
                char::from(c)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "n"},
               "spec": {"nodeName": "a"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn history_window_and_compaction() {
        let mut s = Store::new(2);
        for i in 0..4 {
            s.create(0, Some("n"), pod(&format!("p{i}")), Target::Raw, "t", None)
                .unwrap();
        }
        // rv 2..=5 were the creates; only the last two are kept.
        assert!(s.since(2).is_err());
        assert_eq!(s.since(3).unwrap().count(), 2);
        s.compact();
        assert_eq!(s.since(5).err().map(|e| e.code), Some(410));
        assert_eq!(s.since(s.resource_version()).unwrap().count(), 0);
    }

    #[test]
    fn generation_status_and_noop() {
        let mut s = Store::new(10);
        let key = Key::new(0, Some("n"), "p");
        let created = s
            .create(0, Some("n"), pod("p"), Target::Main, "t", None)
            .unwrap();
        assert!(
            created.get("status").is_none(),
            "create does not set status"
        );
        let patched = s
            .patch(
                &key,
                Target::Status,
                PatchBody::Merge(json!({"status": {"phase": "Running"}})),
                "k",
            )
            .unwrap()
            .0;
        assert_eq!(patched["metadata"]["generation"], 1);
        let rv = s.resource_version();
        s.patch(
            &key,
            Target::Status,
            PatchBody::Merge(json!({"status": {"phase": "Running"}})),
            "k",
        )
        .unwrap();
        assert_eq!(s.resource_version(), rv, "a no-op write is no write");
        let spec = s
            .patch(
                &key,
                Target::Main,
                PatchBody::Merge(json!({"spec": {"nodeName": "b"}, "status": null})),
                "k",
            )
            .unwrap()
            .0;
        assert_eq!(spec["metadata"]["generation"], 2);
        assert_eq!(
            spec["status"]["phase"], "Running",
            "status kept by a write to the object"
        );
    }

    #[test]
    fn namespace_deletion_empties_it() {
        let mut s = Store::new(10);
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}});
        s.create(1, None, ns, Target::Raw, "t", None).unwrap();
        s.create(0, Some("n"), pod("p"), Target::Raw, "t", None)
            .unwrap();
        s.delete(&Key::new(1, None, "n"), &Preconditions::default())
            .unwrap();
        assert!(s.get(&Key::new(0, Some("n"), "p")).is_none());
        let kinds: Vec<EventType> = s.since(1).unwrap().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EventType::Added,
                EventType::Added,
                EventType::Deleted,
                EventType::Deleted
            ]
        );
    }

    #[test]
    fn timestamp() {
        let t = now();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
