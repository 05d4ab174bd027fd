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

pub mod locate;
pub mod podns;
pub mod point;

use std::{
    fmt,
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
};

use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkLayerType, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
};
use nix::libc;
use tracing::debug;

pub use self::point::{Decision, NoHostEnd, Reason, decide};
use crate::{
    kernel::netlink::{self, NetlinkError},
    kernel::netns::{Namespace, NetnsError},
    kernel::tc::{self, TcProgram, TcQueryError},
    model::{record::IfIndex, values::AttachPoint},
};

/// A link's kind, from `IFLA_INFO_KIND`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LinkKind {
    Veth,
    Netkit,
    IpVlan,
    MacVlan,
    /// Any other kind; empty for a device with none (a physical NIC or an
    /// SR-IOV function moved into the pod).
    Other(String),
}

impl LinkKind {
    fn from_info(kind: &InfoKind) -> Self {
        match kind {
            InfoKind::Veth => Self::Veth,
            InfoKind::Netkit => Self::Netkit,
            InfoKind::IpVlan => Self::IpVlan,
            InfoKind::MacVlan => Self::MacVlan,
            other => Self::Other(other.to_string()),
        }
    }

    /// Kinds that come in pairs, one end of which may be the host's.
    fn is_pair(&self) -> bool {
        matches!(self, Self::Veth | Self::Netkit)
    }
}

impl fmt::Display for LinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Veth => f.write_str("a veth"),
            Self::Netkit => f.write_str("a netkit"),
            Self::IpVlan => f.write_str("an ipvlan"),
            Self::MacVlan => f.write_str("a macvlan"),
            Self::Other(k) if k.is_empty() => f.write_str("a device of no link kind"),
            Self::Other(k) => write!(f, "a `{k}` link"),
        }
    }
}

/// A namespace id as one namespace numbers another (`IFLA_LINK_NETNSID`,
/// `RTM_GETNSID`); meaningful only relative to the namespace that gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NsId(pub i32);

/// `IFLA_LINK`, and `IFLA_LINK_NETNSID` when the linked device lives in
/// another namespace: for a veth or netkit its peer, for ipvlan or macvlan
/// its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkRef {
    pub index: IfIndex,
    /// `None`: in the same namespace as the device itself.
    pub netns: Option<NsId>,
}

/// One interface inside the pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    pub index: IfIndex,
    pub name: String,
    pub kind: LinkKind,
    pub addresses: Vec<IpAddr>,
    pub link: Option<LinkRef>,
}

/// The host end of the pod's veth, in the host's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPeer {
    pub index: IfIndex,
    pub name: String,
    /// BPF programs on its TC hooks, ours included.
    pub programs: Vec<TcProgram>,
}

impl HostPeer {
    /// Programs on the host end that the mirror did not put there.
    pub fn foreign_programs(&self) -> impl Iterator<Item = &TcProgram> {
        self.programs.iter().filter(|p| !p.is_ours())
    }
}

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

/// The index of the interface's peer in the host's namespace, if its kind
/// pairs and the pod says its peer lives in the host's namespace.
fn peer_in_host(interface: &PodInterface, host_id: Option<NsId>) -> Option<IfIndex> {
    let link = interface.link?;
    (interface.kind.is_pair() && host_id.is_some() && link.netns == host_id).then_some(link.index)
}

/// What the pod's namespace says about itself.
struct PodFacts {
    /// Every interface but loopback, in index order.
    interfaces: Vec<PodInterface>,
    /// The id the pod's namespace gives the host's, if it has one.
    host_id: Option<NsId>,
}

/// Runs inside the pod's namespace.
fn pod_facts(host: BorrowedFd<'_>) -> Result<PodFacts, (&'static str, NetlinkError)> {
    let links = netlink::dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
        .map_err(|e| ("dumping links", e))?;
    let addresses = netlink::dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))
        .map_err(|e| ("dumping addresses", e))?;
    // After the link dump: reporting a link whose peer is in another
    // namespace gives that namespace an id if it had none.
    let host_id = nsid_of(host).map_err(|e| ("asking for the host namespace's id", e))?;

    let mut interfaces: Vec<PodInterface> = links
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l)
                if l.header.link_layer_type != LinkLayerType::Loopback =>
            {
                Some(interface_of(l))
            }
            _ => None,
        })
        .collect();
    interfaces.sort_by_key(|i| i.index);
    for m in &addresses {
        if let RouteNetlinkMessage::NewAddress(a) = m
            && let Some(ip) = address_of(a)
            && let Some(i) = interfaces.iter_mut().find(|i| i.index.0 == a.header.index)
        {
            i.addresses.push(ip);
        }
    }
    Ok(PodFacts {
        interfaces,
        host_id,
    })
}

fn interface_of(l: &LinkMessage) -> PodInterface {
    let facts = LinkFacts::of(l);
    PodInterface {
        index: IfIndex(l.header.index),
        name: facts.name,
        kind: facts.kind,
        addresses: Vec::new(),
        link: facts.link,
    }
}

/// The attributes of a link message discovery reads.
struct LinkFacts {
    name: String,
    kind: LinkKind,
    link: Option<LinkRef>,
}

impl LinkFacts {
    fn of(l: &LinkMessage) -> Self {
        let mut name = String::new();
        let mut kind = LinkKind::Other(String::new());
        let (mut link, mut netns) = (None, None);
        for a in &l.attributes {
            match a {
                LinkAttribute::IfName(n) => name.clone_from(n),
                LinkAttribute::Link(i) => link = Some(IfIndex(*i)),
                LinkAttribute::LinkNetNsId(id) => netns = Some(NsId(*id)),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(k) = info {
                            kind = LinkKind::from_info(k);
                        }
                    }
                }
                _ => {}
            }
        }
        Self {
            name,
            kind,
            // IFLA_LINK is 0 for "none" on some kinds.
            link: link
                .filter(|i| i.0 != 0)
                .map(|index| LinkRef { index, netns }),
        }
    }
}

/// An interface address: IFA_LOCAL (the local end on point-to-point
/// links, where IFA_ADDRESS is the remote), else IFA_ADDRESS.
fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    let find = |want: fn(&AddressAttribute) -> Option<IpAddr>| a.attributes.iter().find_map(want);
    find(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    })
    .or_else(|| {
        find(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// The id the calling thread's namespace gives the namespace `fd`, if any.
fn nsid_of(fd: BorrowedFd<'_>) -> Result<Option<NsId>, NetlinkError> {
    let mut request = NsidMessage::default();
    // A descriptor number is never negative.
    let Ok(raw) = u32::try_from(std::os::fd::AsRawFd::as_raw_fd(&fd)) else {
        return Ok(None);
    };
    request.attributes.push(NsidAttribute::Fd(raw));
    let replies = netlink::get(RouteNetlinkMessage::GetNsId(request))?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewNsId(n) => n.attributes.iter().find_map(|a| match a {
                NsidAttribute::Id(id) => Some(*id),
                _ => None,
            }),
            _ => None,
        })
        .next()
        // -1: the namespaces have no id for each other, so no link joins them.
        .filter(|id| *id >= 0)
        .map(NsId))
}

enum Choice {
    None,
    Ambiguous(Vec<String>),
}

/// The pod's interface: the first holding a pod IP; else the only one.
fn choose(
    mut interfaces: Vec<PodInterface>,
    pod_ips: &[IpAddr],
) -> Result<(PodInterface, Vec<PodInterface>), Choice> {
    let holding = interfaces
        .iter()
        .position(|i| i.addresses.iter().any(|a| pod_ips.contains(a)));
    let at = match (holding, interfaces.len()) {
        (Some(at), _) => at,
        (None, 0) => return Err(Choice::None),
        (None, 1) => 0,
        (None, _) => {
            return Err(Choice::Ambiguous(
                interfaces.iter().map(|i| i.name.clone()).collect(),
            ));
        }
    };
    let chosen = interfaces.remove(at);
    Ok((chosen, interfaces))
}

enum HostError {
    Netlink(NetlinkError),
    Programs(String, TcQueryError),
}

/// Runs in the host's namespace: the link at `peer`, if it is the other
/// end of the pod's `interface`, with the programs on its hooks.
fn host_peer(
    pod: BorrowedFd<'_>,
    interface: &PodInterface,
    peer: IfIndex,
) -> Result<Option<HostPeer>, HostError> {
    let mut request = LinkMessage::default();
    request.header.index = peer.0;
    let link = match netlink::get(RouteNetlinkMessage::GetLink(request)) {
        Ok(replies) => replies.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        }),
        // Gone meanwhile (the pod is being deleted): no host end.
        Err(e) if e.errno() == Some(libc::ENODEV) => None,
        Err(e) => return Err(HostError::Netlink(e)),
    };
    let Some(link) = link else {
        return Ok(None);
    };
    let facts = LinkFacts::of(&link);
    // After the GET, which gave the pod's namespace an id if the link
    // points there.
    let pod_id = nsid_of(pod).map_err(HostError::Netlink)?;
    let back = LinkRef {
        index: interface.index,
        netns: pod_id,
    };
    if !(facts.kind.is_pair() && pod_id.is_some() && facts.link == Some(back)) {
        debug!(
            pod_interface = %interface.name,
            host_index = peer.0,
            host_interface = %facts.name,
            "the link at the peer's index is not the pod interface's other end"
        );
        return Ok(None);
    }
    let programs =
        tc::programs(peer, &facts.name).map_err(|e| HostError::Programs(facts.name.clone(), e))?;
    Ok(Some(HostPeer {
        index: peer,
        name: facts.name,
        programs,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(index: u32, name: &str, addresses: &[&str]) -> PodInterface {
        PodInterface {
            index: IfIndex(index),
            name: name.into(),
            kind: LinkKind::Veth,
            addresses: addresses.iter().map(|a| a.parse().expect("ip")).collect(),
            link: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn the_interface_holding_the_pod_ip_wins() {
        let ifs = vec![
            iface(2, "net1", &["198.19.0.5"]),
            iface(3, "eth0", &["198.18.0.2", "fd00:198:18::2"]),
        ];
        let Ok((chosen, others)) = choose(ifs, &[ip("fd00:198:18::2")]) else {
            panic!("no choice");
        };
        assert_eq!(chosen.name, "eth0");
        assert_eq!(others.len(), 1);
    }

    #[test]
    fn a_lone_interface_is_the_pods_even_without_the_ip() {
        let Ok((chosen, others)) = choose(vec![iface(2, "eth0", &[])], &[ip("198.18.0.2")]) else {
            panic!("no choice");
        };
        assert_eq!(chosen.name, "eth0");
        assert!(others.is_empty());
    }

    #[test]
    fn several_without_the_ip_are_ambiguous_and_none_is_none() {
        let ifs = vec![iface(2, "eth0", &[]), iface(3, "net1", &[])];
        assert!(matches!(
            choose(ifs, &[ip("198.18.0.2")]),
            Err(Choice::Ambiguous(names)) if names == ["eth0", "net1"]
        ));
        assert!(matches!(choose(vec![], &[]), Err(Choice::None)));
    }

    #[test]
    fn a_peer_counts_only_in_the_host_namespace_and_for_pairs() {
        let mut i = iface(2, "eth0", &[]);
        i.link = Some(LinkRef {
            index: IfIndex(17),
            netns: Some(NsId(0)),
        });
        assert_eq!(peer_in_host(&i, Some(NsId(0))), Some(IfIndex(17)));
        // Its peer in some other namespace, or the pod has no id for the host's.
        assert_eq!(peer_in_host(&i, Some(NsId(1))), None);
        assert_eq!(peer_in_host(&i, None), None);
        // An ipvlan's link is its parent, never a host end.
        i.kind = LinkKind::IpVlan;
        assert_eq!(peer_in_host(&i, Some(NsId(0))), None);
        // A veth whose peer is in the pod's own namespace.
        i.kind = LinkKind::Veth;
        i.link = Some(LinkRef {
            index: IfIndex(5),
            netns: None,
        });
        assert_eq!(peer_in_host(&i, Some(NsId(0))), None);
    }

    #[test]
    fn link_facts_read_kind_peer_and_netns() {
        let mut l = LinkMessage::default();
        l.header.index = 2;
        l.attributes.push(LinkAttribute::IfName("eth0".into()));
        l.attributes.push(LinkAttribute::Link(17));
        l.attributes.push(LinkAttribute::LinkNetNsId(3));
        l.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Veth,
            )]));
        let i = interface_of(&l);
        assert_eq!(i.kind, LinkKind::Veth);
        assert_eq!(
            i.link,
            Some(LinkRef {
                index: IfIndex(17),
                netns: Some(NsId(3))
            })
        );
        let mut bare = LinkMessage::default();
        bare.attributes.push(LinkAttribute::Link(0));
        let b = interface_of(&bare);
        assert_eq!((b.kind, b.link), (LinkKind::Other(String::new()), None));
    }

    #[test]
    fn kinds_read_well_in_messages() {
        assert_eq!(LinkKind::IpVlan.to_string(), "an ipvlan");
        assert_eq!(
            LinkKind::from_info(&InfoKind::Bridge).to_string(),
            "a `bridge` link"
        );
        assert_eq!(
            LinkKind::Other(String::new()).to_string(),
            "a device of no link kind"
        );
    }
}
