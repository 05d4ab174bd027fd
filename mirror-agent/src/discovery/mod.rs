//! Pod discovery from kernel facts only, with no CNI-specific code: given a
//! pod's network namespace and its IPs, find the pod's interface, its kind,
//! the host end of its veth (if any) and what BPF programs sit there; then
//! [`PodNetwork::decide`] where the hooks go ([`point::decide`] has the rule).
//!
//! Netlink runs on threads that entered the namespace concerned
//! ([`crate::kernel::netns`]), never on the caller's thread, so this may be called
//! from a blocking task of an async runtime.
//!
//! The host end is found both ways round, because interface indexes are
//! per namespace and repeat (every pod's `eth0` may be index 2):
//! - inside the pod, the interface's `IFLA_LINK` is the peer's index and
//!   `IFLA_LINK_NETNSID` the peer's namespace as the pod numbers it, which
//!   must be the id the pod gives the host's namespace (`RTM_GETNSID`);
//! - in the host, the link at that index must be a veth (or netkit) whose
//!   own `IFLA_LINK` is the pod interface's index and whose
//!   `IFLA_LINK_NETNSID` is the id the host gives the pod's namespace.
//!
//! The parts: `pod.rs` what the pod's namespace says, `host.rs` the check
//! from the host's, `link.rs` the netlink attributes both read; `point.rs`
//! where the hooks go, `podns.rs` finding pods' namespaces, `locate.rs`
//! the cache `run` keeps of both per pod.

mod host;
mod link;
pub mod locate;
mod pod;
pub mod podns;
pub mod point;

use std::{net::IpAddr, os::fd::AsFd, path::PathBuf};

pub use self::{
    host::HostPeer,
    link::{LinkKind, LinkRef, NsId},
    pod::PodInterface,
    point::{Decision, NoHostEnd, Reason, decide},
};
use self::{
    host::{HostError, host_peer},
    pod::{Choice, choose, peer_in_host, pod_facts},
};
use crate::{
    kernel::netlink::NetlinkError,
    kernel::netns::{Namespace, NetnsError},
    kernel::tc::TcQueryError,
    model::{record::IfIndex, values::AttachPoint},
};

/// What discovery found for one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    /// The pod's namespace, as it was opened.
    pub netns: PathBuf,
    /// The pod's interface: the one holding a pod IP.
    pub interface: PodInterface,
    pub host_peer: Option<HostPeer>,
    /// The pod's other interfaces (not `lo`), e.g. Multus secondaries.
    pub others: Vec<PodInterface>,
}

impl PodNetwork {
    /// Where the hooks go for `wanted`; see [`point::decide`].
    pub fn decide(&self, wanted: AttachPoint) -> Result<Decision, DiscoveryError> {
        decide(wanted, &self.interface, self.host_peer.as_ref()).map_err(|source| {
            DiscoveryError::NoHostEnd {
                netns: self.netns.clone(),
                source,
            }
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "pod network namespace {netns} is the host's own (a hostNetwork pod): it has no pod \
         interface of its own to mirror"
    )]
    HostNetwork { netns: PathBuf },
    #[error("{what} in pod network namespace {netns}: {source}")]
    PodNetlink {
        netns: PathBuf,
        what: &'static str,
        source: NetlinkError,
    },
    #[error("pod network namespace {netns} has no interface but lo")]
    NoInterface { netns: PathBuf },
    #[error(
        "pod network namespace {netns}: none of its interfaces ({}) holds a pod IP ({}), so \
         which one is the pod's is unclear",
        interfaces.join(", "),
        list(ips)
    )]
    Ambiguous {
        netns: PathBuf,
        ips: Vec<IpAddr>,
        interfaces: Vec<String>,
    },
    #[error(
        "looking up the host end (host ifindex {}) of {interface} in pod network namespace \
         {netns}: {source}", peer.0
    )]
    HostNetlink {
        netns: PathBuf,
        interface: String,
        peer: IfIndex,
        source: NetlinkError,
    },
    #[error(
        "listing the TC programs on {host_interface}, host end of {interface} in pod network \
         namespace {netns}: {source}"
    )]
    Programs {
        netns: PathBuf,
        interface: String,
        host_interface: String,
        // Boxed: aya's error is large, and this one is rare.
        source: Box<TcQueryError>,
    },
    #[error("pod network namespace {netns}: {source}")]
    NoHostEnd { netns: PathBuf, source: NoHostEnd },
}

fn list(ips: &[IpAddr]) -> String {
    if ips.is_empty() {
        return "none given".into();
    }
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds the pod's interface in `pod` and its host end in `host` (the
/// agent's namespace: `Namespace::current()` when it runs with
/// hostNetwork). `pod_ips` picks the pod's interface among several.
/// Blocking; it starts one short thread per namespace.
pub fn discover(
    host: &Namespace,
    pod: &Namespace,
    pod_ips: &[IpAddr],
) -> Result<PodNetwork, DiscoveryError> {
    let netns = pod.path().to_owned();
    if pod.same_as(host)? {
        return Err(DiscoveryError::HostNetwork { netns });
    }
    let host_fd = host.as_fd();
    let facts =
        pod.run(|| pod_facts(host_fd))?
            .map_err(|(what, source)| DiscoveryError::PodNetlink {
                netns: netns.clone(),
                what,
                source,
            })?;
    let (interface, others) = choose(facts.interfaces, pod_ips).map_err(|e| match e {
        Choice::None => DiscoveryError::NoInterface {
            netns: netns.clone(),
        },
        Choice::Ambiguous(interfaces) => DiscoveryError::Ambiguous {
            netns: netns.clone(),
            ips: pod_ips.to_vec(),
            interfaces,
        },
    })?;

    let host_peer = match peer_in_host(&interface, facts.host_id) {
        None => None,
        Some(peer) => {
            let pod_fd = pod.as_fd();
            host.run(|| host_peer(pod_fd, &interface, peer))?
                .map_err(|e| match e {
                    HostError::Netlink(source) => DiscoveryError::HostNetlink {
                        netns: netns.clone(),
                        interface: interface.name.clone(),
                        peer,
                        source,
                    },
                    HostError::Programs(host_interface, source) => DiscoveryError::Programs {
                        netns: netns.clone(),
                        interface: interface.name.clone(),
                        host_interface,
                        source: Box::new(source),
                    },
                })?
        }
    };
    Ok(PodNetwork {
        netns,
        interface,
        host_peer,
        others,
    })
}
