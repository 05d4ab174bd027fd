//! The objects, one resourceVersion counter for all of them, and a bounded
//! history of changes for watches: the part of the API server that is etcd
//! plus the registry's create/update/patch/delete rules.

mod meta;

use std::{
    collections::{BTreeMap, VecDeque},
    ops::Bound,
    sync::Arc,
};

use serde_json::{Map, Value, json};

use super::{
    defaults,
    error::ApiError,
    ownership::{self, ApplyError, Manager, Part, Writer},
    resources::{RESOURCES, Resource},
    schema::Schemas,
    select::Selector,
};
use meta::{
    Ids, check_fresh, check_name, check_type, conflict_error, now, set_managed_fields, set_type,
    spec_of,
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

#[derive(Debug)]
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
    /// `application/merge-patch+json`.
    Merge(Value),
    /// `application/apply-patch+yaml`: server-side apply.
    Apply { object: Value, force: bool },
}

#[derive(Debug)]
pub struct Store {
    rv: u64,
    /// Watches and continue tokens from before this are answered 410 Gone:
    /// the history holds every event after it.
    floor: u64,
    history_limit: usize,
    history: VecDeque<Event>,
    objects: BTreeMap<Key, Entry>,
    ids: Ids,
    /// How apply merges each kind's lists.
    schemas: Schemas,
}

impl Store {
    pub fn new(history_limit: usize, schemas: Schemas) -> Self {
        Self {
            rv: 1,
            floor: 1,
            history_limit: history_limit.max(1),
            history: VecDeque::new(),
            objects: BTreeMap::new(),
            ids: Ids::new(),
            schemas,
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
            _ => {
                return Err(ApiError::invalid(
                    res,
                    "",
                    "metadata.name: Required value: name is required",
                ));
            }
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
        // Before ownership: what the server fills in is the creator's.
        defaults::apply(res, &mut obj);
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
                    let shape = self.schemas.of(res_index);
                    ownership::record_update(&mut m, &json!({}), &view, shape, &w);
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

    /// PUT: replaces the object (its status stays), if `body` is not stale.
    pub fn replace(&mut self, key: &Key, body: Value, manager: &str) -> Result<Value, ApiError> {
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
        self.write(key, body, Target::Main, Ownership::Update(manager))
    }

    /// PATCH, by merge patch or server-side apply. Apply to an object that
    /// does not exist creates it.
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
                json_patch::merge(&mut new, &p);
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
        let shape = self.schemas.of(key.res);
        let refused = |e| match e {
            ApplyError::Conflicts(c) => conflict_error(res, &key.name, &c),
            ApplyError::Invalid(why) => ApiError::invalid(res, &key.name, why),
        };
        let Some(entry) = self.objects.get(key) else {
            if part == Part::Status {
                return Err(ApiError::not_found(res, &key.name));
            }
            let mut managers = Vec::new();
            let merged =
                ownership::apply(&mut managers, &json!({}), &applied_view, shape, force, &w)
                    .map_err(refused)?;
            let mut obj = json!({ "metadata": { "name": key.name } });
            ownership::unview(&mut obj, &merged, part, res);
            let ns = res.namespaced.then_some(key.namespace.as_str());
            let created = self.create(key.res, ns, obj, Target::Main, manager, Some(managers))?;
            return Ok((created, true));
        };
        check_fresh(res, key, &entry.object, &applied)?;
        let mut managers = entry.managers.clone();
        let live = ownership::view(&entry.object, part, res);
        let merged = ownership::apply(&mut managers, &live, &applied_view, shape, force, &w)
            .map_err(refused)?;
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
        // After apply's merge, which compared what was applied, as sent,
        // with the stored object; before an update's ownership.
        defaults::apply(res, &mut new);

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
                    let shape = self.schemas.of(key.res);
                    ownership::record_update(&mut managers, &before, &after, shape, &w);
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
        set_managed_fields(&mut new, &managers);
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

    /// The start of a graceful deletion, as the API server does for a pod:
    /// `deletionTimestamp` and `deletionGracePeriodSeconds` set (a MODIFIED
    /// event), the object kept until it is deleted for good. A second call
    /// changes nothing.
    pub fn start_deletion(&mut self, key: &Key, grace_seconds: u64) -> Result<Value, ApiError> {
        let res = key.resource();
        let Some(entry) = self.objects.get_mut(key) else {
            return Err(ApiError::not_found(res, &key.name));
        };
        if entry
            .object
            .pointer("/metadata/deletionTimestamp")
            .is_some()
        {
            return Ok(entry.object.clone());
        }
        let prev = Arc::new(entry.object.clone());
        self.rv += 1;
        let rv = self.rv;
        let m = &mut entry.object["metadata"];
        m["deletionTimestamp"] = json!(meta::now());
        m["deletionGracePeriodSeconds"] = json!(grace_seconds);
        m["resourceVersion"] = json!(rv.to_string());
        let new = entry.object.clone();
        self.push(Event {
            rv,
            key: key.clone(),
            kind: EventType::Modified,
            object: Arc::new(new.clone()),
            prev: Some(prev),
        });
        Ok(new)
    }

    /// DELETE: gone at once (no finalizers here: nothing sets them).
    pub fn delete(&mut self, key: &Key) -> Result<Value, ApiError> {
        let res = key.resource();
        let Some(entry) = self.objects.get(key) else {
            return Err(ApiError::not_found(res, &key.name));
        };
        let last = entry.object.clone();
        Ok(self.remove(key, last))
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

#[cfg(test)]
mod tests;
