//! Which qdisc holds an interface's ingress slot (parent `TC_H_INGRESS`), and
//! whether a netlink TC hook can go there.
//!
//! A netlink hook needs `clsact`. A plain `ingress` qdisc (the CNI bandwidth
//! plugin installs one on pod veths) takes the same slot, so adding `clsact`
//! fails with EEXIST; the kernel then still accepts an egress filter at
//! ffff:fff3, but files it in the `ingress` qdisc's only block, where it runs
//! on *ingress* packets. So the slot is asked for before attaching.

use std::io;

use aya::programs::TcAttachType;
use netlink_packet_core::{
    DecodeError, DoneBuffer, ErrorBuffer, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST, NLMSG_DONE,
    NLMSG_ERROR, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, Parseable,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcHandle, TcHeader, TcMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::libc;

/// Dump datagrams are at most 32 KiB (the kernel's cap for netlink dumps);
/// twice that leaves room, and `MSG_TRUNC` still catches a longer one.
const RECV_BUFFER: usize = 64 * 1024;

/// A dump that raced with qdisc changes elsewhere is retried this often.
const DUMP_TRIES: usize = 3;

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
    Io(#[from] io::Error),
    #[error("the kernel's qdisc dump is malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("a qdisc dump datagram of {0} bytes exceeds the receive buffer")]
    Truncated(usize),
    #[error("the qdisc dump was interrupted by concurrent changes {DUMP_TRIES} times in a row")]
    Interrupted,
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
    for _ in 0..DUMP_TRIES {
        if let Some(slot) = dump(ifindex)? {
            return Ok(slot);
        }
    }
    Err(QdiscError::Interrupted)
}

/// One dump; `None` when the kernel flagged it as interrupted.
fn dump(ifindex: u32) -> Result<Option<IngressSlot>, QdiscError> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    // Connected to the kernel, so nothing but its replies arrives here.
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&dump_request(), 0)?;

    let mut scan = Scan::default();
    let mut buf = vec![0u8; RECV_BUFFER];
    while !scan.done {
        // MSG_TRUNC makes recv return the datagram's full length, so a cut
        // one is noticed rather than parsed as a short dump.
        let len = socket.recv(&mut &mut buf[..], libc::MSG_TRUNC)?;
        let datagram = buf.get(..len).ok_or(QdiscError::Truncated(len))?;
        scan.datagram(datagram, ifindex)?;
    }
    Ok((!scan.interrupted).then(|| scan.slot.unwrap_or(IngressSlot::Empty)))
}

fn dump_request() -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let payload = RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default());
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);
    buf
}

/// The state of a dump read datagram by datagram.
#[derive(Debug, Default)]
struct Scan {
    slot: Option<IngressSlot>,
    interrupted: bool,
    done: bool,
}

impl Scan {
    /// Reads one datagram's messages. The dump covers every interface of the
    /// namespace (the request names none), so each qdisc's
    /// fixed header is read first and only the one wanted is parsed whole: a
    /// qdisc elsewhere whose options the crate cannot parse does not matter.
    fn datagram(&mut self, mut rest: &[u8], ifindex: u32) -> Result<(), QdiscError> {
        while !rest.is_empty() && !self.done {
            let message = NetlinkBuffer::new_checked(rest)?;
            if message.flags() & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            let payload = message.payload();
            match message.message_type() {
                NLMSG_DONE => {
                    self.done = true;
                    let code = DoneBuffer::new_checked(payload)?.code();
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(code.saturating_abs()).into());
                    }
                }
                NLMSG_ERROR => {
                    if let Some(code) = ErrorBuffer::new_checked(payload)?.code() {
                        return Err(
                            io::Error::from_raw_os_error(code.get().saturating_abs()).into()
                        );
                    }
                }
                libc::RTM_NEWQDISC => {
                    let header = TcHeader::parse(payload)?;
                    if u32::try_from(header.index) == Ok(ifindex)
                        && header.parent == TcHandle::INGRESS
                    {
                        let qdisc = TcMessage::parse(payload)?;
                        let kind = qdisc.attributes.iter().find_map(|a| match a {
                            TcAttribute::Kind(kind) => Some(kind.as_str()),
                            _ => None,
                        });
                        self.slot = Some(IngressSlot::from_kind(kind.unwrap_or("")));
                    }
                }
                _ => {}
            }
            // Messages are 4-byte aligned within a datagram.
            let next = (message.length() as usize).next_multiple_of(4);
            rest = rest.get(next..).unwrap_or_default();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DoneMessage, ErrorMessage};

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

    fn message(flags: u16, payload: RouteNetlinkMessage) -> Vec<u8> {
        encode(flags, NetlinkPayload::from(payload))
    }

    fn encode(flags: u16, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        let mut m = NetlinkMessage::new(header, payload);
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    fn qdisc(ifindex: i32, parent: TcHandle, kind: &str) -> Vec<u8> {
        let mut tc = TcMessage::with_index(ifindex);
        tc.header.parent = parent;
        tc.attributes.push(TcAttribute::Kind(kind.into()));
        message(0, RouteNetlinkMessage::NewQueueDiscipline(tc))
    }

    fn done(code: i32) -> Vec<u8> {
        let mut d = DoneMessage::default();
        d.code = code;
        encode(0, NetlinkPayload::Done(d))
    }

    #[test]
    fn scan_picks_the_ingress_slot_of_the_interface() {
        let mut datagram = qdisc(7, TcHandle::INGRESS, "clsact");
        datagram.extend(qdisc(3, TcHandle::ROOT, "noqueue"));
        datagram.extend(qdisc(3, TcHandle::INGRESS, "ingress"));
        datagram.extend(done(0));
        let mut scan = Scan::default();
        scan.datagram(&datagram, 3).expect("parses");
        assert!(scan.done && !scan.interrupted);
        assert_eq!(scan.slot, Some(IngressSlot::Ingress));
    }

    #[test]
    fn scan_without_a_match_is_empty_and_spans_datagrams() {
        let mut scan = Scan::default();
        scan.datagram(&qdisc(3, TcHandle::ROOT, "fq_codel"), 3)
            .expect("parses");
        assert!(!scan.done);
        scan.datagram(&done(0), 3).expect("parses");
        assert!(scan.done);
        assert_eq!(scan.slot, None);
    }

    #[test]
    fn scan_notes_an_interrupted_dump() {
        let mut scan = Scan::default();
        let mut datagram = message(
            NLM_F_DUMP_INTR,
            RouteNetlinkMessage::NewQueueDiscipline(TcMessage::with_index(1)),
        );
        datagram.extend(done(0));
        scan.datagram(&datagram, 3).expect("parses");
        assert!(scan.interrupted);
    }

    #[test]
    fn scan_reports_kernel_errors() {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(-libc::EPERM);
        let err = Scan::default()
            .datagram(&encode(0, NetlinkPayload::Error(e)), 3)
            .unwrap_err();
        assert!(matches!(&err, QdiscError::Io(io) if io.raw_os_error() == Some(libc::EPERM)));
        let err = Scan::default()
            .datagram(&done(-libc::EINVAL), 3)
            .unwrap_err();
        assert!(matches!(&err, QdiscError::Io(io) if io.raw_os_error() == Some(libc::EINVAL)));
    }

    #[test]
    fn scan_rejects_a_cut_message() {
        let datagram = qdisc(3, TcHandle::INGRESS, "ingress");
        let cut = &datagram[..datagram.len() - 4];
        assert!(Scan::default().datagram(cut, 3).is_err());
    }
}
