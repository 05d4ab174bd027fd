//! What the agent watches: its node's Pods, Namespaces (for their labels),
//! and the three kinds of the mirror. Each is a kube-runtime reflector: a
//! local cache kept by list+watch, which relists at once on 410 Gone and
//! retries with a short backoff while the API server is away or refuses
//! (saying so once, see [`super::retry`]), keeping the last known state
//! meanwhile. Any change wakes the reconciler, which takes a [`Snapshot`]
//! of the caches.

use std::{sync::Arc, time::Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::{
    Api, Client, Resource,
    runtime::{
        reflector::{self, ObjectRef, Store},
        utils::Backoff,
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::{
    controller::{
        retry::{self, Failure, Health, Say},
        snapshot::{PolicyRef, Snapshot},
    },
    k8s::{ClusterMirrorPolicy, MirrorCollector, MirrorPolicy, PolicyStatus},
};

pub struct Cluster {
    pub pods: Store<Pod>,
    pub namespaces: Store<Namespace>,
    pub policies: Store<MirrorPolicy>,
    pub cluster_policies: Store<ClusterMirrorPolicy>,
    pub collectors: Store<MirrorCollector>,
    /// TLS collectors' Secrets: only those of the agent's own namespace.
    pub secrets: Store<Secret>,
    /// Woken on every change of any of them.
    pub changed: Arc<Notify>,
}

const PODS: &str = "pods";
const NAMESPACES: &str = "namespaces";
const POLICIES: &str = "mirrorpolicies";
const CLUSTER_POLICIES: &str = "clustermirrorpolicies";
const COLLECTORS: &str = "mirrorcollectors";
const SECRETS: &str = "secrets";

/// The resources `run` watches, as its log lines and RBAC name them.
pub const WATCHED: [&str; 6] = [
    PODS,
    NAMESPACES,
    POLICIES,
    CLUSTER_POLICIES,
    COLLECTORS,
    SECRETS,
];

impl Cluster {
    /// Starts the watches on the current tokio runtime.
    pub fn watch(client: &Client, node: &str, secrets_namespace: &str) -> Self {
        let changed = Arc::new(Notify::new());
        let health = Arc::new(Health::default());
        let on_node = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        Self {
            pods: spawn(Api::all(client.clone()), on_node, &changed, &health, PODS),
            namespaces: spawn(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &health,
                NAMESPACES,
            ),
            policies: spawn(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &health,
                POLICIES,
            ),
            cluster_policies: spawn(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &health,
                CLUSTER_POLICIES,
            ),
            collectors: spawn(
                Api::all(client.clone()),
                watcher::Config::default(),
                &changed,
                &health,
                COLLECTORS,
            ),
            secrets: spawn(
                Api::namespaced(client.clone(), secrets_namespace),
                watcher::Config::default(),
                &changed,
                &health,
                SECRETS,
            ),
            changed,
        }
    }

    /// Whether every cache has had its first full list.
    pub async fn ready(&self) {
        // An error here means the writer is gone: the watch task ended, and
        // that task only ends with the runtime.
        let _ = self.pods.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.policies.wait_until_ready().await;
        let _ = self.cluster_policies.wait_until_ready().await;
        let _ = self.collectors.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
    }

    /// What the caches hold now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            pods: self.pods.state(),
            namespaces: self.namespaces.state(),
            policies: self.policies.state(),
            cluster_policies: self.cluster_policies.state(),
            collectors: self.collectors.state(),
            secrets: self.secrets.state(),
        }
    }

    /// A policy's status as last seen (every node's entry), and the
    /// resourceVersion it was seen at.
    pub fn reported(&self, policy: &PolicyRef) -> (PolicyStatus, Option<String>) {
        let (status, version) = if policy.cluster {
            self.cluster_policies
                .get(&ObjectRef::new(&policy.name))
                .map(|p| (p.status.clone(), p.metadata.resource_version.clone()))
        } else {
            self.policies
                .get(&ObjectRef::new(&policy.name).within(&policy.namespace))
                .map(|p| (p.status.clone(), p.metadata.resource_version.clone()))
        }
        .unwrap_or_default();
        (status.unwrap_or_default(), version)
    }
}

fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    changed: &Arc<Notify>,
    health: &Arc<Health>,
    what: &'static str,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let changed = changed.clone();
    let health = health.clone();
    // No backoff on the stream itself: this loop waits after a failure,
    // so that a 410 relists at once and a relist's `Init` resets nothing.
    let stream = reflector::reflector(writer, watcher(api, config));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut backoff = retry::backoff();
        while let Some(event) = stream.next().await {
            match event {
                // A relist starts: neither a success nor news.
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => {
                    backoff.reset();
                    say(what, health.ok(what, Instant::now()));
                    changed.notify_one();
                }
                Err(error) => match retry::classify(&error, what) {
                    Failure::Expired => {
                        debug!(watch = what, "watch expired (410 Gone); relisting now");
                    }
                    Failure::Retry(text) => {
                        say(what, health.failed(what, text, Instant::now()));
                        // `backoff()` never gives up; MAX_DELAY is a floor if it did.
                        let delay = backoff.next().unwrap_or(retry::MAX_DELAY);
                        tokio::time::sleep(delay).await;
                    }
                },
            }
        }
    });
    reader
}

fn keeping(known: bool) -> &'static str {
    if known {
        "mirroring on the last known state"
    } else {
        "nothing is known of it yet: pinned hooks of an earlier agent go on as they were, \
         and nothing new is mirrored until its first list"
    }
}

fn say(what: &str, said: Say) {
    match said {
        Say::Nothing => {}
        Say::Failing(f) => {
            warn!(watch = what, error = %f.text, "watch failed; retrying every {:?} at most, {}", 2 * retry::MAX_DELAY, keeping(f.known));
        }
        Say::All {
            failing,
            reminder,
            since,
        } => {
            let all: Vec<String> = failing
                .iter()
                .map(|f| format!("{}: {} ({})", f.watch, f.text, keeping(f.known)))
                .collect();
            let head = if reminder {
                "watches still failing"
            } else {
                "watches failed"
            };
            warn!(
                failing = failing.len(),
                failing_for = ?since,
                "{head}; retrying every {:?} at most, reminding once a minute: {}",
                2 * retry::MAX_DELAY,
                all.join("; ")
            );
        }
        Say::Recovered(after) => info!(watch = what, failed_for = ?after, "watch works again"),
    }
}
