//! A fake Kubernetes API server, in process, for the real kube-rs client
//! (and the real agent, through a kubeconfig file): no real API server can be
//! installed on these machines.
//!
//! It speaks plain HTTP/1.1 on 127.0.0.1 from a thread of its own, and
//! keeps objects as JSON. It serves what the agent's client (kube-runtime
//! watchers, status by server-side apply, the event recorder) and the
//! tests ask for, as the real one does:
//! - the kinds of [`RESOURCES`], with discovery;
//! - one resourceVersion counter for all objects; lists carry it, and page
//!   with `limit`/`continue`;
//! - watches from a resourceVersion (or from now, with the current objects
//!   as ADDED), with bookmarks, selectors and `timeoutSeconds`; a watch
//!   whose resourceVersion has left the bounded history gets an ERROR event
//!   with a 410 `Expired` Status, as do open watches after
//!   [`ApiServer::compact`], so kube-runtime's watcher relists;
//! - get, create, replace with optimistic concurrency (409), delete, merge
//!   patch, server-side apply with field managers, conflicts and `force`,
//!   lists merged by the keys their schemas give (schema.rs: the project's
//!   CRDs, and a table for built-in kinds), the `/status` subresource
//!   (writes to the object leave status alone), `metadata.generation`
//!   counting spec changes only, and no-op writes that change nothing (no
//!   new resourceVersion, no event);
//! - label selectors (equality and set-based) and field selectors on any
//!   field (`spec.nodeName=NODE`); errors as `Status` objects;
//! - defaulting of `fieldRef.apiVersion` (defaults.rs), so that applies
//!   conflict as on the real server; the kinds of `deploy/` are served, so
//!   tests can apply it client-side then server-side, as kubectl does.
//!
//! Left out, as nothing here uses them: strategic merge and JSON patches
//! (415), deletecollection, dry runs, finalizers, `generateName`, delete
//! preconditions, streaming lists, other defaults. Approximated: apply owns
//! a list-map's items whole (see ownership.rs); no schema validation,
//! admission or namespace existence checks; RBAC only as [`Options`] asks;
//! status given to a create over HTTP is dropped (tests set it through
//! [`ApiServer`]); lists read the latest state whatever `resourceVersion`
//! they ask for.
//!
//! Tests drive it through [`ApiServer`]: objects read and written directly,
//! every request recorded, history compacted, the server restarted.

mod defaults;
mod error;
mod http;
mod ownership;
pub mod rbac;
pub mod resources;
mod schema;
mod select;
mod store;

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

pub use error::{ApiError, Details};
pub use resources::{MIRROR_GROUP, RESOURCES, Resource};

use schema::Schemas;
use store::{Key, PatchBody, Store, Target};

/// The manager name of writes made through the test controls.
pub const TEST_MANAGER: &str = "testbed";

/// Events kept for watches; a watch from further back gets 410 Gone.
const HISTORY: usize = 1000;

/// Tuning of one server.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// The client is this user, authenticated but bound to no role (such
    /// as a ServiceAccount without the bindings of `deploy/rbac.yaml`):
    /// every request for a resource gets 403 as kube-apiserver's RBAC
    /// authorizer words it; discovery stays open, as `system:discovery`
    /// grants it to every authenticated user.
    pub unbound_user: Option<String>,
    /// The client is the user these grants are for (`rbac::Rbac::deploy()`:
    /// the agent's ServiceAccount with exactly `deploy/rbac.yaml`): a
    /// request they do not allow gets kube-apiserver's 403.
    pub rbac: Option<rbac::Rbac>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            bookmark_interval: Duration::from_secs(1),
            unbound_user: None,
            rbac: None,
        }
    }
}

/// One request as the server saw it, for tests to count.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` (`get`
    /// for discovery, `unsupported` for a method the URL does not take).
    pub verb: &'static str,
    /// Plural resource name, such as `pods` or `mirrorpolicies`.
    pub resource: Option<String>,
    /// `status` for the status subresource.
    pub subresource: Option<String>,
    pub name: Option<String>,
    pub field_manager: Option<String>,
}

impl RequestRecord {
    /// A write to `resource`'s status subresource (`PATCH` or `PUT`).
    pub fn is_status_write(&self, resource: &str) -> bool {
        matches!(self.verb, "patch" | "update")
            && self.resource.as_deref() == Some(resource)
            && self.subresource.as_deref() == Some("status")
    }
}

/// What the test controls tell the server thread.
enum Ctrl {
    Restart { downtime: Duration, done: Done },
    Stop,
}

/// Where a restart reports that the server is back.
enum Done {
    Blocking(std::sync::mpsc::Sender<std::io::Result<()>>),
    Async(oneshot::Sender<std::io::Result<()>>),
}

impl Done {
    fn send(self, result: std::io::Result<()>) {
        // The caller may have given up waiting: nothing to tell then.
        match self {
            Done::Blocking(tx) => drop(tx.send(result)),
            Done::Async(tx) => drop(tx.send(result)),
        }
    }
}

/// State shared by the server thread and the test controls.
struct Shared {
    store: Mutex<Store>,
    /// The latest resourceVersion: watches wake when it moves.
    changed: watch::Sender<u64>,
    requests: Mutex<Vec<RequestRecord>>,
    /// Watch ERROR events with 410 sent.
    expired: AtomicU64,
    bookmark_interval: Duration,
    unbound_user: Option<String>,
    rbac: Option<rbac::Rbac>,
    addr: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A panicking test thread must not take the server down with it.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a change and wakes the watches.
    fn mutate<T>(&self, f: impl FnOnce(&mut Store) -> T) -> T {
        let mut store = self.lock();
        let before = store.resource_version();
        let out = f(&mut store);
        let after = store.resource_version();
        drop(store);
        if after != before {
            self.changed.send_replace(after);
        }
        out
    }

    fn record(&self, record: RequestRecord) {
        self.requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record);
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }
}

/// A running fake API server. Dropping it stops the server and closes every
/// connection.
pub struct ApiServer {
    shared: Arc<Shared>,
    ctrl: mpsc::UnboundedSender<Ctrl>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Starts a server with default [`Options`] on an ephemeral port.
    pub fn start() -> Result<Self> {
        Self::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Result<Self> {
        let schemas = Schemas::load().context("fake API server schemas")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("fake API server runtime")?;
        let listener = {
            let _in_runtime = runtime.enter();
            let loopback = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 0);
            http::bind(loopback).context("fake API server bind")?
        };
        let addr = listener.local_addr()?;
        let store = Store::new(HISTORY, schemas);
        let (changed, _) = watch::channel(store.resource_version());
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            changed,
            requests: Mutex::new(Vec::new()),
            expired: AtomicU64::new(0),
            bookmark_interval: options.bookmark_interval,
            unbound_user: options.unbound_user,
            rbac: options.rbac,
            addr,
        });
        let (ctrl, ctrl_rx) = mpsc::unbounded_channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || runtime.block_on(http::serve(listener, addr, serving, ctrl_rx)))
            .context("fake API server thread")?;
        Ok(Self {
            shared,
            ctrl,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:PORT`, the cluster URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// A kubeconfig whose current context points at this server, with
    /// `default` as the default namespace.
    fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: fake\n  \
               cluster:\n    \
                 server: {url}\n\
             users:\n\
             - name: fake\n  \
               user: {{}}\n\
             contexts:\n\
             - name: fake\n  \
               context:\n    \
                 cluster: fake\n    \
                 user: fake\n    \
                 namespace: default\n\
             current-context: fake\n\
             preferences: {{}}\n",
            url = self.url(),
        )
    }

    /// A kubeconfig for this server in a temporary file that lives as long
    /// as the returned guard, for a process given `KUBECONFIG=path`.
    pub fn kubeconfig_file(&self) -> Result<tempfile::NamedTempFile> {
        let file = tempfile::Builder::new()
            .prefix("kubeconfig-")
            .suffix(".yaml")
            .tempfile()?;
        std::fs::write(file.path(), self.kubeconfig())
            .with_context(|| format!("write {}", file.path().display()))?;
        Ok(file)
    }

    fn resource(api_version: &str, kind: &str) -> Result<usize, ApiError> {
        resources::by_kind(api_version, kind).ok_or_else(|| {
            ApiError::new(
                404,
                "NotFound",
                format!("no kind {kind:?} is served at {api_version:?}"),
            )
        })
    }

    fn key_of(obj: &Value) -> Result<Key, ApiError> {
        let field = |name: &str| obj.get(name).and_then(Value::as_str).unwrap_or_default();
        let res = Self::resource(field("apiVersion"), field("kind"))?;
        let meta = |name: &str| {
            obj.pointer(&format!("/metadata/{name}"))
                .and_then(Value::as_str)
        };
        Ok(Key::new(
            res,
            meta("namespace"),
            meta("name").unwrap_or_default(),
        ))
    }

    /// Creates an object as given, status included (it needs `apiVersion`,
    /// `kind` and, for namespaced kinds, `metadata.namespace`). Returns it as
    /// stored, with resourceVersion, creationTimestamp, generation and a uid
    /// (the one given in `metadata.uid`, if any).
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let key = Self::key_of(&obj)?;
        let ns = RESOURCES[key.res]
            .namespaced
            .then_some(key.namespace.as_str());
        self.shared
            .mutate(|s| s.create(key.res, ns, obj, Target::Raw, TEST_MANAGER, None))
    }

    /// Applies a JSON merge patch to an object, status included.
    pub fn merge_patch(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<Value, ApiError> {
        let key = Key::new(Self::resource(api_version, kind)?, namespace, name);
        self.shared.mutate(|s| {
            s.patch(&key, Target::Raw, PatchBody::Merge(patch), TEST_MANAGER)
                .map(|(obj, _)| obj)
        })
    }

    /// Deletes an object.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = Key::new(Self::resource(api_version, kind)?, namespace, name);
        self.shared.mutate(|s| s.delete(&key))
    }

    /// Deletes a pod as the API server and the kubelet do: at once it is
    /// Terminating (`deletionTimestamp` set, `grace` recorded), and it is
    /// removed `grace` later, unless the test removes it first with
    /// [`Self::delete`]. A real kubelet removes it once its containers have
    /// stopped, at most `grace` later.
    pub fn delete_gracefully(
        &self,
        namespace: &str,
        name: &str,
        grace: Duration,
    ) -> Result<Value, ApiError> {
        let key = Key::new(Self::resource("v1", "Pod")?, Some(namespace), name);
        let marked = self
            .shared
            .mutate(|s| s.start_deletion(&key, grace.as_secs()))?;
        let shared = Arc::downgrade(&self.shared);
        let uid = marked.pointer("/metadata/uid").cloned();
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            // The server may be gone, or the pod removed (or made anew) meanwhile.
            if let Some(shared) = shared.upgrade() {
                shared.mutate(|s| {
                    let same = s
                        .get(&key)
                        .and_then(|o| o.pointer("/metadata/uid"))
                        .cloned()
                        == uid;
                    if same {
                        let _ = s.delete(&key);
                    }
                });
            }
        });
        Ok(marked)
    }

    /// The stored object, if any.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let res = Self::resource(api_version, kind).ok()?;
        self.shared
            .lock()
            .get(&Key::new(res, namespace, name))
            .cloned()
    }

    /// All objects of a kind, in one namespace or (with `None`) all.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok(res) = Self::resource(api_version, kind) else {
            return Vec::new();
        };
        let all = select::Selector::default();
        self.shared
            .lock()
            .list(res, namespace, &all, None)
            .map(|(_, obj)| obj.clone())
            .collect()
    }

    /// Polls an object until `ready` holds for it (a missing object is
    /// `None`), for at most `timeout`. Returns the last state seen.
    pub fn wait_for(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        timeout: Duration,
        ready: impl Fn(Option<&Value>) -> bool,
    ) -> Result<Option<Value>, Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.get(api_version, kind, namespace, name);
            if ready(now.as_ref()) {
                return Ok(now);
            }
            if Instant::now() >= deadline {
                return Err(now);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The latest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version()
    }

    /// How many requests so far satisfy `pred`.
    pub fn count(&self, pred: impl Fn(&RequestRecord) -> bool) -> usize {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|r| pred(r))
            .count()
    }

    /// How many watches were told 410 Gone (an ERROR event) so far.
    pub fn expired_watches(&self) -> u64 {
        self.shared.expired.load(Ordering::Relaxed)
    }

    /// Drops the watch history and moves the resourceVersion on, as an etcd
    /// compaction: open watches get a 410 ERROR event and end, and so does
    /// any watch from an older resourceVersion; clients must relist.
    pub fn compact(&self) {
        self.shared.mutate(Store::compact);
    }

    /// Restarts the server: drops the listener and every connection
    /// (watches are cut mid-stream), refuses connections for `downtime`,
    /// then listens again on the same port with the same objects and, as a
    /// real server's new watch cache, no history: a watch resumed from
    /// before the restart gets a 410 Expired ERROR event. Returns
    /// once it listens again. Blocks the calling thread: from async code,
    /// use [`Self::restart_async`].
    pub fn restart(&self, downtime: Duration) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(Ctrl::Restart {
            downtime,
            done: Done::Blocking(tx),
        })?;
        rx.recv()
            .context("fake API server stopped during restart")?
            .context("fake API server rebind")
    }

    /// [`Self::restart`], awaited.
    pub async fn restart_async(&self, downtime: Duration) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Ctrl::Restart {
            downtime,
            done: Done::Async(tx),
        })?;
        rx.await
            .context("fake API server stopped during restart")?
            .context("fake API server rebind")
    }

    fn send(&self, command: Ctrl) -> Result<()> {
        self.ctrl
            .send(command)
            .map_err(|_| anyhow::anyhow!("fake API server has stopped"))
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.ctrl.send(Ctrl::Stop);
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread was already reported there.
            let _ = thread.join();
        }
    }
}
