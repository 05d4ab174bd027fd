//! In the host's namespace: the link at the index the pod gave for its
//! interface's peer, if it really is that interface's other end.

use std::os::fd::BorrowedFd;

use netlink_packet_route::{RouteNetlinkMessage, link::LinkMessage};
use nix::libc;
use tracing::debug;

use super::{
    link::{LinkFacts, LinkRef, nsid_of},
    pod::PodInterface,
};
use crate::{
    kernel::{
        netlink::{self, NetlinkError},
        tc::{self, TcProgram, TcQueryError},
    },
    model::record::IfIndex,
};

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

pub(super) enum HostError {
    Netlink(NetlinkError),
    Programs(String, TcQueryError),
}

/// Runs in the host's namespace: the link at `peer`, if it is the other
/// end of the pod's `interface`, with the programs on its hooks.
pub(super) fn host_peer(
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
