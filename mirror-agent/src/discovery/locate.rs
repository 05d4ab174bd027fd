//! From a pod's IPs to its network, found in the kernel: which namespace
//! holds the IPs ([`NetnsIndex`]), then [`super::discover`] inside it. What
//! is found is plain data ([`LocatedPod`]); where the hooks go is decided
//! from it by the caller, so that decision stays a pure function.
//!
//! Finding a pod enters namespaces, too slow to redo for every pod on every
//! reconcile, so the [`Locator`] remembers each pod's network while the pod
//! keeps its IPs and its interface is still there.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use tracing::debug;

use super::{PodNetwork, podns::NetnsIndex};
use crate::{
    kernel::{hooks::Interface, netns::Namespace},
    model::{
        record::{IfaceId, NetnsCookie},
        values::End,
    },
};

/// A pod to locate: its uid (what the cache is keyed by) and its IPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAddr {
    pub uid: String,
    pub ips: Vec<IpAddr>,
}

/// Where a pod's network was found.
#[derive(Clone, Debug)]
pub struct LocatedPod {
    /// Its interface, the host end of it if any, and what sits there.
    pub network: PodNetwork,
    /// Its namespace, open: hooks on the pod end are attached from inside.
    pub ns: Arc<Namespace>,
    /// The namespace's cookie, or why it could not be read (which matters
    /// only if the pod end is hooked).
    pub netns: Result<NetnsCookie, String>,
}

/// Each pod asked for, by uid: where it is, or why it was not found.
pub type Located = HashMap<String, Result<LocatedPod, String>>;

struct Cached {
    ips: Vec<IpAddr>,
    at: Result<LocatedPod, String>,
}

/// Finds pods' networks, and remembers them between reconciles.
pub struct Locator {
    index: NetnsIndex,
    host: Namespace,
    host_cookie: NetnsCookie,
    cache: HashMap<String, Cached>,
}

impl Locator {
    /// `host`: the agent's own namespace (the host's), whose cookie is
    /// `host_cookie`.
    pub fn new(index: NetnsIndex, host: Namespace, host_cookie: NetnsCookie) -> Self {
        Self {
            index,
            host,
            host_cookie,
            cache: HashMap::new(),
        }
    }

    /// Locates each pod: from the cache while it still holds, else anew.
    pub fn locate(&mut self, pods: &[PodAddr]) -> Located {
        pods.iter()
            .map(|p| (p.uid.clone(), self.locate_one(&p.uid, &p.ips)))
            .collect()
    }

    fn locate_one(&mut self, uid: &str, ips: &[IpAddr]) -> Result<LocatedPod, String> {
        if let Some(found) = self.cache.get(uid)
            && found.ips == ips
            && let Ok(pod) = &found.at
            // Still there: a pod's sandbox can be replaced under the same pod.
            && self.still_there(pod)
        {
            return found.at.clone();
        }
        let at = self.discover(ips);
        self.cache.insert(
            uid.to_owned(),
            Cached {
                ips: ips.to_vec(),
                at: at.clone(),
            },
        );
        at
    }

    /// Whether the pod's link is still there under its name and index: its
    /// host end where it has one (the two ends of a pair go together, and
    /// the host's is looked at without entering the pod), else the pod's own.
    fn still_there(&self, pod: &LocatedPod) -> bool {
        match (&pod.network.host_peer, &pod.netns) {
            (Some(peer), _) => {
                Interface::local(peer.name.clone(), peer.index, self.host_cookie, End::Host)
                    .exists()
            }
            (None, Ok(netns)) => Interface {
                label: pod.network.interface.name.clone(),
                name: pod.network.interface.name.clone(),
                index: pod.network.interface.index,
                netns: *netns,
                end: End::Pod,
                ns: Some(pod.ns.clone()),
            }
            .exists(),
            (None, Err(_)) => false,
        }
    }

    fn discover(&mut self, ips: &[IpAddr]) -> Result<LocatedPod, String> {
        let list = |ips: &[IpAddr]| {
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut found = self.index.find(ips);
        if found.is_empty() {
            // A namespace made since the last look.
            self.index.refresh();
            found = self.index.find(ips);
        }
        let path = match found.as_slice() {
            [one] => one.to_path_buf(),
            [] => {
                return Err(format!(
                    "no network namespace on this node holds {}",
                    list(ips)
                ));
            }
            many => {
                return Err(format!(
                    "{} network namespaces hold {}; cannot tell which is the pod's",
                    many.len(),
                    list(ips)
                ));
            }
        };
        let pod = Namespace::open(&path).map_err(|e| e.to_string())?;
        let network = super::discover(&self.host, &pod, ips).map_err(|e| e.to_string())?;
        let netns = pod.cookie().map_err(|e| e.to_string());
        debug!(
            netns = %network.netns.display(),
            interface = %network.interface.name,
            host_end = ?network.host_peer.as_ref().map(|p| &p.name),
            "pod located"
        );
        Ok(LocatedPod {
            network,
            ns: Arc::new(pod),
            netns,
        })
    }

    /// Forgets where these interfaces' pods were found, so they are looked
    /// for again (an attach to them failed: the pod's sandbox was replaced).
    pub fn forget_interfaces(&mut self, interfaces: &[IfaceId]) {
        let host = self.host_cookie;
        self.cache.retain(|_, c| {
            let Ok(pod) = &c.at else { return true };
            let host_end = pod.network.host_peer.as_ref().map(|p| IfaceId {
                netns: host,
                index: p.index,
            });
            let pod_end = pod.netns.as_ref().ok().map(|netns| IfaceId {
                netns: *netns,
                index: pod.network.interface.index,
            });
            ![host_end, pod_end]
                .iter()
                .flatten()
                .any(|id| interfaces.contains(id))
        });
    }

    /// Forgets pods no longer on the node.
    pub fn retain(&mut self, on_node: impl Fn(&str) -> bool) {
        self.cache.retain(|uid, _| on_node(uid));
    }
}
