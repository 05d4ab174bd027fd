//! Inside the pod's namespace: its interfaces and addresses, which of
//! them is the pod's, and whether its peer is in the host's namespace.

use std::{net::IpAddr, os::fd::BorrowedFd};

use netlink_packet_route::{
    RouteNetlinkMessage,
    address::AddressMessage,
    link::{LinkLayerType, LinkMessage},
};

use super::link::{LinkFacts, LinkKind, LinkRef, NsId, address_of, nsid_of};
use crate::{
    kernel::netlink::{self, NetlinkError},
    model::record::IfIndex,
};

/// One interface inside the pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInterface {
    pub index: IfIndex,
    pub name: String,
    pub kind: LinkKind,
    pub addresses: Vec<IpAddr>,
    pub link: Option<LinkRef>,
}

/// The index of the interface's peer in the host's namespace, if its kind
/// pairs and the pod says its peer lives in the host's namespace.
pub(super) fn peer_in_host(interface: &PodInterface, host_id: Option<NsId>) -> Option<IfIndex> {
    let link = interface.link?;
    (interface.kind.is_pair() && host_id.is_some() && link.netns == host_id).then_some(link.index)
}

/// What the pod's namespace says about itself.
pub(super) struct PodFacts {
    /// Every interface but loopback, in index order.
    pub(super) interfaces: Vec<PodInterface>,
    /// The id the pod's namespace gives the host's, if it has one.
    pub(super) host_id: Option<NsId>,
}

/// Runs inside the pod's namespace.
pub(super) fn pod_facts(host: BorrowedFd<'_>) -> Result<PodFacts, (&'static str, NetlinkError)> {
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

pub(super) enum Choice {
    None,
    Ambiguous(Vec<String>),
}

/// The pod's interface: the first holding a pod IP; else the only one.
pub(super) fn choose(
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

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo};

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
}
