//! Which qdisc holds an interface's ingress slot (parent `TC_H_INGRESS`), and
//! whether a netlink TC hook can go there.
//!
//! A netlink hook needs `clsact`. A plain `ingress` qdisc (the CNI bandwidth
//! plugin installs one on pod veths) takes the same slot, so adding `clsact`
//! fails with EEXIST; the kernel then still accepts an egress filter at
//! ffff:fff3, but files it in the `ingress` qdisc's only block, where it runs
//! on *ingress* packets. So the slot is asked for before attaching.

use aya::programs::TcAttachType;
use netlink_packet_core::{DecodeError, Parseable};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcHeader, TcMessage},
};
use nix::libc;

use crate::kernel::netlink::{self, NetlinkError};

/// What sits in an interface's ingress slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IngressSlot {
    Empty,
    Clsact,
    Ingress,
    Other(String),
}

impl IngressSlot {
    fn from_kind(kind: &str) -> Self {
        match kind {
            "clsact" => Self::Clsact,
            "ingress" => Self::Ingress,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// What to do before attaching a netlink hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The slot is empty: add `clsact`, then ask again (someone may race us).
    AddClsact,
    /// The qdisc there serves this hook: attach to it.
    Attach,
}

#[derive(Debug, thiserror::Error)]
pub enum QdiscError {
    #[error(
        "it has an `ingress` qdisc, which has no egress hook (replacing it with `clsact` would \
         break whoever installed it); use tcx (kernel 6.6+) or mirror only --direction ingress"
    )]
    NoEgressHook,
    #[error(
        "its ingress slot holds a `{0}` qdisc, not `clsact` or `ingress`, so no TC hook can be \
         added with netlink; use tcx (kernel 6.6+)"
    )]
    Foreign(String),
    #[error("it has no qdisc at its ingress slot even after adding `clsact` (removed meanwhile?)")]
    Vanished,
    #[error("asking the kernel for its qdiscs failed: {0}")]
    Netlink(#[from] NetlinkError),
}

/// Whether a `hook` can go on the qdisc in `slot`: only `clsact` has both
/// hooks; `ingress` runs whatever is filed in its single block on inbound
/// packets, so it serves an ingress hook and nothing else.
pub fn decide(slot: &IngressSlot, hook: TcAttachType) -> Result<Action, QdiscError> {
    match (slot, hook) {
        (IngressSlot::Empty, _) => Ok(Action::AddClsact),
        (IngressSlot::Clsact, _) | (IngressSlot::Ingress, TcAttachType::Ingress) => {
            Ok(Action::Attach)
        }
        (IngressSlot::Ingress, _) => Err(QdiscError::NoEgressHook),
        (IngressSlot::Other(kind), _) => Err(QdiscError::Foreign(kind.clone())),
    }
}

/// Asks the kernel (one RTM_GETQDISC dump in the caller's network namespace)
/// what sits in the ingress slot of interface `ifindex`.
pub fn ingress_slot(ifindex: u32) -> Result<IngressSlot, QdiscError> {
    let request = RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default());
    let found = netlink::dump_with(request, |kind, payload| {
        ingress_qdisc(kind, payload, ifindex)
    })?;
    Ok(found.into_iter().last().unwrap_or(IngressSlot::Empty))
}

/// The qdisc one reply of the dump names, if it is the one in the ingress
/// slot of `ifindex`. The dump covers every interface of the namespace (the
/// request names none), so each qdisc's fixed header is read first and only
/// the one wanted is parsed whole: a qdisc elsewhere whose options the crate
/// cannot parse does not matter.
fn ingress_qdisc(
    kind: u16,
    payload: &[u8],
    ifindex: u32,
) -> Result<Option<IngressSlot>, DecodeError> {
    if kind != libc::RTM_NEWQDISC {
        return Ok(None);
    }
    let header = TcHeader::parse(payload)?;
    if u32::try_from(header.index) != Ok(ifindex) || header.parent != TcHandle::INGRESS {
        return Ok(None);
    }
    let qdisc = TcMessage::parse(payload)?;
    let kind = qdisc.attributes.iter().find_map(|a| match a {
        TcAttribute::Kind(kind) => Some(kind.as_str()),
        _ => None,
    });
    Ok(Some(IngressSlot::from_kind(kind.unwrap_or(""))))
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::Emitable;

    use super::*;

    #[test]
    fn clsact_serves_both_hooks() {
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            assert_eq!(
                decide(&IngressSlot::Clsact, hook).ok(),
                Some(Action::Attach)
            );
        }
    }

    #[test]
    fn empty_slot_gets_clsact() {
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            assert_eq!(
                decide(&IngressSlot::Empty, hook).ok(),
                Some(Action::AddClsact)
            );
        }
    }

    #[test]
    fn ingress_qdisc_serves_only_the_ingress_hook() {
        assert_eq!(
            decide(&IngressSlot::Ingress, TcAttachType::Ingress).ok(),
            Some(Action::Attach)
        );
        let err = decide(&IngressSlot::Ingress, TcAttachType::Egress).unwrap_err();
        assert!(matches!(err, QdiscError::NoEgressHook));
        let text = err.to_string();
        assert!(text.contains("`ingress` qdisc") && text.contains("--direction ingress"));
    }

    #[test]
    fn other_kinds_are_refused_by_name() {
        let slot = IngressSlot::from_kind("mystery");
        assert_eq!(slot, IngressSlot::Other("mystery".into()));
        for hook in [TcAttachType::Ingress, TcAttachType::Egress] {
            let err = decide(&slot, hook).unwrap_err();
            assert!(err.to_string().contains("`mystery`"), "{err}");
        }
    }

    /// One reply of the dump: a qdisc's payload, after the netlink header.
    fn qdisc(ifindex: i32, parent: TcHandle, kind: &str) -> Vec<u8> {
        let mut tc = TcMessage::with_index(ifindex);
        tc.header.parent = parent;
        tc.attributes.push(TcAttribute::Kind(kind.into()));
        let mut buf = vec![0u8; tc.buffer_len()];
        tc.emit(&mut buf);
        buf
    }

    fn pick(payload: &[u8], ifindex: u32) -> Option<IngressSlot> {
        ingress_qdisc(libc::RTM_NEWQDISC, payload, ifindex).expect("parses")
    }

    #[test]
    fn picks_the_ingress_slot_of_the_interface() {
        assert_eq!(pick(&qdisc(7, TcHandle::INGRESS, "clsact"), 3), None);
        assert_eq!(pick(&qdisc(3, TcHandle::ROOT, "noqueue"), 3), None);
        assert_eq!(
            pick(&qdisc(3, TcHandle::INGRESS, "ingress"), 3),
            Some(IngressSlot::Ingress)
        );
        assert_eq!(
            pick(&qdisc(7, TcHandle::INGRESS, "clsact"), 7),
            Some(IngressSlot::Clsact)
        );
    }

    #[test]
    fn skips_other_messages() {
        let payload = qdisc(3, TcHandle::INGRESS, "ingress");
        assert_eq!(
            ingress_qdisc(libc::RTM_NEWLINK, &payload, 3).expect("skipped"),
            None
        );
    }

    #[test]
    fn rejects_a_cut_qdisc() {
        let payload = qdisc(3, TcHandle::INGRESS, "ingress");
        let cut = &payload[..payload.len() - 4];
        assert!(ingress_qdisc(libc::RTM_NEWQDISC, cut, 3).is_err());
        assert!(ingress_qdisc(libc::RTM_NEWQDISC, &payload[..8], 3).is_err());
    }
}
