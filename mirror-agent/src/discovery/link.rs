//! What netlink says of a link (its kind, name and linked device) and of
//! how one namespace numbers another.

use std::{fmt, net::IpAddr, os::fd::BorrowedFd};

use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    nsid::{NsidAttribute, NsidMessage},
};

use crate::{
    kernel::netlink::{self, NetlinkError},
    model::record::IfIndex,
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
    pub(super) fn is_pair(&self) -> bool {
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

/// The attributes of a link message discovery reads.
pub(super) struct LinkFacts {
    pub(super) name: String,
    pub(super) kind: LinkKind,
    pub(super) link: Option<LinkRef>,
}

impl LinkFacts {
    pub(super) fn of(l: &LinkMessage) -> Self {
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
pub(super) fn address_of(a: &AddressMessage) -> Option<IpAddr> {
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
pub(super) fn nsid_of(fd: BorrowedFd<'_>) -> Result<Option<NsId>, NetlinkError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
