//! The agent's one rtnetlink exchange, minimal and blocking: one request,
//! its replies parsed by netlink-packet-route, whole ([`dump`], [`get`]) or
//! only as far as the caller needs ([`dump_with`]). It runs in the calling
//! thread's network namespace (the socket belongs to the namespace it is
//! opened in), so callers for another namespace go through
//! `crate::kernel::netns`.

use std::io;

use netlink_packet_core::{
    DecodeError, DoneBuffer, ErrorBuffer, NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    ParseableParametrized,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use nix::libc;

/// Dump datagrams are at most 32 KiB (the kernel's cap for netlink dumps);
/// twice that leaves room, and `MSG_TRUNC` still catches a longer one.
const RECV_BUFFER: usize = 64 * 1024;

/// A dump that raced with changes elsewhere is retried this often.
const DUMP_TRIES: usize = 3;

/// Our requests' sequence number; the socket is ours alone, so one suffices.
const SEQ: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("the kernel answered {0}")]
    Kernel(io::Error),
    #[error("the kernel's reply is malformed: {0}")]
    Decode(#[from] DecodeError),
    #[error("a reply datagram of {0} bytes exceeds the receive buffer")]
    Truncated(usize),
    #[error("the dump was interrupted by concurrent changes {DUMP_TRIES} times in a row")]
    Interrupted,
}

impl NetlinkError {
    /// The errno the kernel answered with, if that is what failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

/// Every object of a kind (`NLM_F_DUMP`), retried when the kernel flags
/// the dump as interrupted by concurrent changes.
pub fn dump(request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    dump_with(request, whole)
}

/// A dump that keeps what `pick` makes of each reply, from its message type
/// and payload (`None`: skip it). For dumps of which only some replies
/// matter: those the caller does not want are never parsed whole, so one
/// whose attributes netlink-packet-route cannot read does no harm.
pub fn dump_with<T>(
    request: RouteNetlinkMessage,
    mut pick: impl FnMut(u16, &[u8]) -> Result<Option<T>, DecodeError>,
) -> Result<Vec<T>, NetlinkError> {
    for _ in 0..DUMP_TRIES {
        let (replies, interrupted) = exchange(&request, NLM_F_DUMP, &mut pick)?;
        if !interrupted {
            return Ok(replies);
        }
    }
    Err(NetlinkError::Interrupted)
}

/// One object (a `GET` naming it), or the kernel's answer to a query.
/// `NLM_F_ACK` makes the kernel end the exchange with an acknowledgement,
/// so the end is known without guessing how many replies come.
pub fn get(request: RouteNetlinkMessage) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
    exchange(&request, NLM_F_ACK, whole).map(|(replies, _)| replies)
}

/// Every reply, parsed whole.
fn whole(kind: u16, payload: &[u8]) -> Result<Option<RouteNetlinkMessage>, DecodeError> {
    RouteNetlinkMessage::parse_with_param(payload, kind).map(Some)
}

fn exchange<T>(
    request: &RouteNetlinkMessage,
    flags: u16,
    pick: impl FnMut(u16, &[u8]) -> Result<Option<T>, DecodeError>,
) -> Result<(Vec<T>, bool), NetlinkError> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    // Connected to the kernel, so nothing but its replies arrives here.
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&encode(request.clone(), flags), 0)?;

    let mut reader = Reader::new(pick);
    let mut buf = vec![0u8; RECV_BUFFER];
    while !reader.done {
        // MSG_TRUNC returns the datagram's full length, so a cut one is
        // noticed rather than parsed as a short reply.
        let len = socket.recv(&mut &mut buf[..], libc::MSG_TRUNC)?;
        let datagram = buf.get(..len).ok_or(NetlinkError::Truncated(len))?;
        reader.datagram(datagram)?;
    }
    Ok((reader.replies, reader.interrupted))
}

fn encode(message: RouteNetlinkMessage, flags: u16) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = SEQ;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);
    buf
}

/// Replies read datagram by datagram, each kept as `pick` makes it.
struct Reader<T, P> {
    pick: P,
    replies: Vec<T>,
    interrupted: bool,
    done: bool,
}

impl<T, P: FnMut(u16, &[u8]) -> Result<Option<T>, DecodeError>> Reader<T, P> {
    fn new(pick: P) -> Self {
        Self {
            pick,
            replies: Vec::new(),
            interrupted: false,
            done: false,
        }
    }

    fn datagram(&mut self, mut rest: &[u8]) -> Result<(), NetlinkError> {
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
                        return Err(kernel(code));
                    }
                }
                // An error, or (code 0) the acknowledgement that ends a GET.
                NLMSG_ERROR => {
                    self.done = true;
                    if let Some(code) = ErrorBuffer::new_checked(payload)?.code() {
                        return Err(kernel(code.get()));
                    }
                }
                kind if message.sequence_number() == SEQ => {
                    if let Some(reply) = (self.pick)(kind, payload)? {
                        self.replies.push(reply);
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

fn kernel(code: i32) -> NetlinkError {
    NetlinkError::Kernel(io::Error::from_raw_os_error(code.saturating_abs()))
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{DoneMessage, ErrorMessage};
    use netlink_packet_route::link::{LinkAttribute, LinkHeader, LinkMessage};

    use super::*;

    fn message(seq: u32, flags: u16, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = seq;
        let mut m = NetlinkMessage::new(header, payload);
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        buf
    }

    fn link(seq: u32, index: u32, name: &str) -> Vec<u8> {
        let mut l = LinkMessage::default();
        l.header.index = index;
        l.attributes.push(LinkAttribute::IfName(name.into()));
        message(seq, 0, RouteNetlinkMessage::NewLink(l).into())
    }

    fn done() -> Vec<u8> {
        message(SEQ, 0, NetlinkPayload::Done(DoneMessage::default()))
    }

    fn failed_done(code: i32) -> Vec<u8> {
        let mut d = DoneMessage::default();
        d.code = code;
        message(SEQ, 0, NetlinkPayload::Done(d))
    }

    fn error(code: i32) -> Vec<u8> {
        let mut e = ErrorMessage::default();
        e.code = std::num::NonZeroI32::new(code);
        message(SEQ, 0, NetlinkPayload::Error(e))
    }

    #[test]
    fn replies_are_collected_across_datagrams_until_done() {
        let mut r = Reader::new(whole);
        r.datagram(&link(SEQ, 3, "eth0")).expect("parses");
        assert!(!r.done);
        let mut second = link(SEQ, 4, "eth1");
        second.extend(done());
        r.datagram(&second).expect("parses");
        assert!(r.done && !r.interrupted);
        assert_eq!(r.replies.len(), 2);
    }

    #[test]
    fn an_acknowledgement_ends_a_get() {
        let mut datagram = link(SEQ, 3, "eth0");
        datagram.extend(error(0));
        let mut r = Reader::new(whole);
        r.datagram(&datagram).expect("parses");
        assert!(r.done);
        assert_eq!(r.replies.len(), 1);
    }

    #[test]
    fn kernel_errors_keep_their_errno() {
        let err = Reader::new(whole)
            .datagram(&error(-libc::ENODEV))
            .unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENODEV));
    }

    #[test]
    fn a_dump_that_ends_in_an_error_keeps_its_errno() {
        let err = Reader::new(whole)
            .datagram(&failed_done(-libc::EINVAL))
            .unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL));
    }

    #[test]
    fn replies_can_be_picked_without_parsing_them_whole() {
        let mut datagram = link(SEQ, 3, "eth0");
        datagram.extend(link(SEQ, 4, "eth1"));
        datagram.extend(done());
        let mut kinds = Vec::new();
        let mut r = Reader::new(|kind: u16, payload: &[u8]| {
            kinds.push(kind);
            // Only the fixed header, as `crate::kernel::qdisc` reads its dump.
            Ok((LinkHeader::parse(payload)?.index == 4).then_some("eth1"))
        });
        r.datagram(&datagram).expect("parses");
        assert!(r.done);
        assert_eq!(r.replies, ["eth1"]);
        drop(r);
        assert_eq!(kinds, [libc::RTM_NEWLINK; 2]);
    }

    #[test]
    fn other_sequence_numbers_and_interrupted_dumps_are_noticed() {
        let mut datagram = link(SEQ + 1, 3, "stray");
        datagram.extend(message(
            SEQ,
            NLM_F_DUMP_INTR,
            RouteNetlinkMessage::NewLink(LinkMessage::default()).into(),
        ));
        datagram.extend(done());
        let mut r = Reader::new(whole);
        r.datagram(&datagram).expect("parses");
        assert_eq!(r.replies.len(), 1);
        assert!(r.interrupted);
    }

    #[test]
    fn a_cut_message_is_an_error() {
        let datagram = link(SEQ, 3, "eth0");
        assert!(
            Reader::new(whole)
                .datagram(&datagram[..datagram.len() - 4])
                .is_err()
        );
    }
}
