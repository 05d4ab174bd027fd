//! Tunnel exporters: VXLAN and GENEVE over UDP sockets, GRE and ERSPAN over
//! a raw `IPPROTO_GRE` socket, sent in batches with `sendmmsg`.
//!
//! UDP tunnels use a small pool of sockets, each on its own source port, and
//! pick one by a symmetric hash of the inner host pair ([`flow_hash`]):
//! RFC 7348's source-port entropy for ECMP, without crafting UDP headers
//! ourselves. Both directions of a connection take one port and each port
//! sends in capture order, so a connection is never reordered.

use std::{
    io,
    net::{SocketAddr, ToSocketAddrs},
    os::fd::{AsRawFd, RawFd},
};

use nix::{errno::Errno, libc};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::warn;

use super::{
    Context, Stats,
    lane::flow_hash,
    queue::{Batch, Inbox, Span},
};
use crate::{
    export::{
        encap::{
            Encapsulator, PacketMeta,
            erspan::{Erspan2, Erspan3},
            geneve::Geneve,
            gre::Gre,
            vxlan::Vxlan,
        },
        output::{Endpoint, FALLBACK_MTU, ROUTE_MTU, Tunnel},
    },
    kernel::route,
    model::record::Record,
};

/// Source ports per UDP tunnel.
const UDP_LANES: u32 = 8;
/// Messages per `sendmmsg` call (the kernel's UIO_MAXIOV is 1024).
const MAX_MSGS: usize = 256;
/// Datagrams per UDP GSO message (the kernel's UDP_MAX_SEGMENTS, 64 before
/// Linux 6.9 and 128 since).
const GSO_MAX_SEGMENTS: usize = 64;
/// Bytes per UDP GSO message: the whole must fit one IP packet's 64 KiB.
const GSO_MAX_BYTES: usize = 60 << 10;
const IPPROTO_GRE: i32 = 47;
const UDP_HEADER: usize = 8;

/// The drain thread's half: encodes packets into batches.
pub struct Encode {
    encoder: Box<dyn Encapsulator + Send>,
    /// Bytes of tunnel header plus inner frame that fit the path MTU.
    max_payload: usize,
    lanes: u32,
    /// For the one warning when copies are first cut.
    name: String,
    mtu: u16,
    cut_logged: bool,
}

/// The sender thread's half: owns the sockets.
pub struct Sender {
    name: String,
    sockets: Vec<Socket>,
    to: SockAddr,
    /// UDP tunnels send runs of equal-size datagrams as one message each
    /// (UDP GSO; on unless `gso=false`), until the kernel refuses.
    gso: bool,
    logged: bool,
}

pub fn open(
    tunnel: &Tunnel,
    to: &Endpoint,
    mtu: u16,
    gso: bool,
    ctx: &Context<'_>,
) -> io::Result<(Encode, Sender)> {
    let addr = (to.host.as_str(), to.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} resolves to nothing", to.host),
            )
        })?;
    let ip_header = if addr.is_ipv4() { 20 } else { 40 };
    let mtu = if mtu == ROUTE_MTU {
        match route::path_mtu(addr.ip()) {
            Ok(path) => u16::try_from(path).unwrap_or(u16::MAX),
            Err(error) => {
                warn!(%error, mtu = FALLBACK_MTU, "no path MTU towards the collector; assuming one");
                FALLBACK_MTU
            }
        }
    } else {
        mtu
    };
    let name = format!("{tunnel:?} to {to}");
    let (encoder, udp): (Box<dyn Encapsulator + Send>, bool) = match tunnel {
        Tunnel::Vxlan { vni } => (Box::new(Vxlan::new(*vni)), true),
        Tunnel::Geneve { vni } => (Box::new(Geneve::new(*vni, ctx.node)), true),
        Tunnel::Gre { key, sequence } => {
            let mut gre = Gre::new();
            if let Some(key) = key {
                gre = gre.with_key(*key);
            }
            if *sequence {
                gre = gre.with_sequence();
            }
            (Box::new(gre), false)
        }
        Tunnel::Erspan2 { session } => (Box::new(Erspan2::new(*session)), false),
        Tunnel::Erspan3 { session, hw_id } => (Box::new(Erspan3::new(*session, *hw_id)), false),
    };
    let lanes = if udp { UDP_LANES } else { 1 };
    let sockets = (0..lanes)
        .map(|_| tunnel_socket(addr, udp, ctx.mark.value))
        .collect::<io::Result<Vec<_>>>()?;
    let max_payload = usize::from(mtu).saturating_sub(ip_header + if udp { UDP_HEADER } else { 0 });
    Ok((
        Encode {
            encoder,
            max_payload,
            lanes,
            name: name.clone(),
            mtu,
            cut_logged: false,
        },
        Sender {
            name,
            sockets,
            to: addr.into(),
            gso: udp && gso,
            logged: false,
        },
    ))
}

fn tunnel_socket(to: SocketAddr, udp: bool, mark: u32) -> io::Result<Socket> {
    let socket = if udp {
        Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP))?
    } else {
        // The kernel writes the IP header; we write GRE (and ERSPAN) onward.
        Socket::new(
            Domain::for_address(to),
            Type::RAW,
            Some(Protocol::from(IPPROTO_GRE)),
        )?
    };
    socket.set_mark(mark)?;
    // Not connected: a connected socket turns the ICMP port-unreachable of a
    // receiver with no listening socket (one that only sniffs its NIC, as
    // Wireshark or a packet broker does) into an error on the next send,
    // losing that copy. Bound, so each UDP lane keeps its own source port.
    let any: SocketAddr = match to {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    socket.bind(&any.into())?;
    Ok(socket)
}

impl Encode {
    /// Encodes one copy (`data`, of a packet of `orig_len` bytes) of
    /// `record`'s packet into the batch.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        batch: &mut Batch,
        record: &Record<'_>,
        data: &[u8],
        orig_len: u32,
        unix_ns: u64,
        interface: &str,
        stats: &Stats,
    ) {
        let meta = PacketMeta {
            unix_ns,
            ifindex: record.iface.index,
            direction: record.direction,
            orig_len,
            pod: interface,
        };
        let header = self.encoder.header_len(&meta);
        let room = self.max_payload.saturating_sub(header);
        let inner = &data[..data.len().min(room)];
        if inner.len() < data.len() {
            if !self.cut_logged {
                self.cut_logged = true;
                warn!(
                    output = %self.name,
                    mtu = self.mtu,
                    frame = data.len(),
                    room = inner.len(),
                    "copies are cut to fit the tunnel's MTU (counted as mtu_truncated); \
                     raise the MTU of the path to the collector and set mtu= to match"
                );
            }
            stats
                .mtu_truncated
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let start = batch.buf.len();
        batch.buf.resize(start + header, 0);
        match self
            .encoder
            .write_header(&meta, inner, &mut batch.buf[start..])
        {
            Ok(n) => batch.buf.truncate(start + n),
            Err(error) => {
                warn!(%error, "encapsulation failed (counted as a send error)");
                batch.buf.truncate(start);
                stats.add_send_errors(1);
                return;
            }
        }
        batch.buf.extend_from_slice(inner);
        batch.packets.push(Span {
            start,
            len: batch.buf.len() - start,
            lane: flow_hash(inner) % self.lanes,
        });
    }
}

impl Sender {
    pub fn run(mut self, inbox: &Inbox, stats: &Stats) {
        let mut scratch = Scratch::new(self.sockets.len());
        while let Some(batch) = inbox.recv() {
            scratch.sort(&batch);
            for lane in 0..self.sockets.len() {
                self.send_lane(lane, &mut scratch, stats);
            }
            // The iovecs point into the batch: forget them before it goes back.
            scratch.clear();
            inbox.done(batch);
        }
    }

    /// Sends one lane's datagrams of the current batch, in order, in as few
    /// `sendmmsg` calls and (with GSO) as few messages as it can.
    fn send_lane(&mut self, lane: usize, s: &mut Scratch, stats: &Stats) {
        let iov = &s.lanes[lane];
        if iov.is_empty() {
            return;
        }
        s.msgs.clear();
        group(iov, 0, self.gso, &mut s.msgs);
        let fd = self.sockets[lane].as_raw_fd();
        let mut at = 0;
        while at < s.msgs.len() {
            let chunk = &s.msgs[at..s.msgs.len().min(at + MAX_MSGS)];
            match send_messages(fd, iov, chunk, &self.to, &mut s.headers, &mut s.cmsgs) {
                Ok(n) => {
                    for m in &chunk[..n] {
                        stats.add_sent(m.count, m.bytes);
                    }
                    // A short count: the next message is tried again, alone
                    // at the head of the next call, which reports its error.
                    at += n;
                }
                Err(Errno::EINTR) => {}
                Err(error) if chunk[0].gso_size != 0 && GSO_REFUSED.contains(&error) => {
                    // The path cannot take UDP GSO (no checksum offload, a
                    // smaller MTU, an old kernel): send one datagram per
                    // message from here on, starting again with this one.
                    warn!(
                        output = %self.name,
                        %error,
                        reason = gso_refusal(error),
                        "UDP GSO refused; sending datagrams one by one (gso=false says so up front)"
                    );
                    self.gso = false;
                    let from = chunk[0].iov_start;
                    s.msgs.truncate(at);
                    group(iov, from, false, &mut s.msgs);
                }
                Err(error) => {
                    if !self.logged {
                        warn!(output = %self.name, %error, "sending failed; later failures are only counted");
                        self.logged = true;
                    }
                    stats.add_send_errors(chunk[0].count);
                    at += 1;
                }
            }
        }
    }
}

/// Errors with which the kernel refuses a UDP GSO message it would take
/// as separate datagrams.
const GSO_REFUSED: [Errno; 4] = [
    Errno::EIO,
    Errno::EINVAL,
    Errno::EMSGSIZE,
    Errno::ENOPROTOOPT,
];

/// Why the kernel refuses a UDP GSO message, for the one warning.
fn gso_refusal(error: Errno) -> &'static str {
    match error {
        Errno::EIO => "the route's device does not offload checksums (ethtool -k: tx-checksumming)",
        Errno::EMSGSIZE => "the message is larger than the path allows",
        Errno::ENOPROTOOPT => "this kernel has no UDP GSO (Linux 4.18 or later has it)",
        _ => "the kernel does not take this message as UDP GSO",
    }
}

/// One message of a `sendmmsg` call: `count` datagrams of a lane, from
/// `iov_start`, coalesced with UDP GSO when `gso_size` is not zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Msg {
    iov_start: usize,
    count: usize,
    bytes: usize,
    gso_size: u16,
}

/// Groups the datagrams from `from` on into messages: with `gso`, a run of
/// equal-size datagrams, which may end with one shorter one (the kernel
/// cuts a GSO message into `gso_size` pieces, the last possibly shorter).
fn group(iov: &[libc::iovec], from: usize, gso: bool, msgs: &mut Vec<Msg>) {
    let mut i = from;
    while i < iov.len() {
        let size = iov[i].iov_len;
        let (mut count, mut bytes) = (1, size);
        if gso {
            while i + count < iov.len() && count < GSO_MAX_SEGMENTS {
                let next = iov[i + count].iov_len;
                if next > size || bytes + next > GSO_MAX_BYTES {
                    break;
                }
                count += 1;
                bytes += next;
                if next < size {
                    break;
                }
            }
        }
        msgs.push(Msg {
            iov_start: i,
            count,
            bytes,
            // Datagrams fit the path MTU (a u16), so the size does too.
            gso_size: if count > 1 { size as u16 } else { 0 },
        });
        i += count;
    }
}

/// The `UDP_SEGMENT` control message (`CMSG_SPACE(sizeof(u16))` bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct GsoCmsg {
    header: libc::cmsghdr,
    segment: u16,
    _pad: [u8; 6],
}

/// Per-batch buffers of the sender thread, reused so steady state allocates
/// nothing. They hold pointers into the batch being sent, so they live on
/// the sender thread only and are cleared before the batch goes back.
struct Scratch {
    /// Each lane's datagrams, in batch order.
    lanes: Vec<Vec<libc::iovec>>,
    msgs: Vec<Msg>,
    headers: Vec<libc::mmsghdr>,
    cmsgs: Vec<GsoCmsg>,
}

impl Scratch {
    fn new(lanes: usize) -> Self {
        Self {
            lanes: (0..lanes).map(|_| Vec::new()).collect(),
            msgs: Vec::new(),
            headers: Vec::new(),
            cmsgs: Vec::new(),
        }
    }

    /// One pass over the batch, into lanes.
    fn sort(&mut self, batch: &Batch) {
        let lanes = self.lanes.len();
        for p in &batch.packets {
            let bytes = batch.bytes(*p);
            self.lanes[p.lane as usize % lanes].push(libc::iovec {
                iov_base: bytes.as_ptr().cast_mut().cast(),
                iov_len: bytes.len(),
            });
        }
    }

    fn clear(&mut self) {
        for lane in &mut self.lanes {
            lane.clear();
        }
        self.headers.clear();
    }
}

/// One `sendmmsg` call for `msgs` (at most [`MAX_MSGS`]), whose iovecs are in
/// `iov`: how many messages the kernel took.
fn send_messages(
    fd: RawFd,
    iov: &[libc::iovec],
    msgs: &[Msg],
    to: &SockAddr,
    headers: &mut Vec<libc::mmsghdr>,
    cmsgs: &mut Vec<GsoCmsg>,
) -> Result<usize, Errno> {
    // Sized first: the headers point into it, so it must not move.
    cmsgs.clear();
    cmsgs.extend(msgs.iter().map(|m| GsoCmsg {
        header: libc::cmsghdr {
            cmsg_len: (size_of::<libc::cmsghdr>() + size_of::<u16>()) as _,
            cmsg_level: libc::SOL_UDP,
            cmsg_type: libc::UDP_SEGMENT,
        },
        segment: m.gso_size,
        _pad: [0; 6],
    }));
    headers.clear();
    for (m, cmsg) in msgs.iter().zip(cmsgs.iter_mut()) {
        debug_assert!(m.iov_start + m.count <= iov.len());
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
        h.msg_name = to.as_ptr().cast_mut().cast();
        h.msg_namelen = to.len();
        h.msg_iov = iov[m.iov_start..].as_ptr().cast_mut();
        h.msg_iovlen = m.count as _;
        if m.gso_size != 0 {
            h.msg_control = std::ptr::from_mut(cmsg).cast();
            h.msg_controllen = size_of::<GsoCmsg>() as _;
        }
        headers.push(libc::mmsghdr {
            msg_hdr: h,
            msg_len: 0,
        });
    }
    // SAFETY: every header points at live memory for the whole call: the
    // address `to`, `count` iovecs in `iov` (each into a batch the caller
    // holds), and its own control message in `cmsgs`.
    let rc = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), headers.len() as _, 0) };
    headers.clear();
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::{GSO_MAX_BYTES, GSO_MAX_SEGMENTS, Msg, group, libc};

    fn iov(sizes: &[usize]) -> Vec<libc::iovec> {
        sizes
            .iter()
            .map(|&iov_len| libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len,
            })
            .collect()
    }

    fn runs(sizes: &[usize], gso: bool) -> Vec<(usize, usize, u16)> {
        let mut msgs = Vec::new();
        group(&iov(sizes), 0, gso, &mut msgs);
        msgs.iter()
            .map(|m: &Msg| (m.iov_start, m.count, m.gso_size))
            .collect()
    }

    #[test]
    fn gso_runs_of_equal_size_end_with_at_most_one_shorter() {
        assert_eq!(
            runs(&[100, 100, 100, 60, 100, 120, 120], true),
            vec![(0, 4, 100), (4, 1, 0), (5, 2, 120)]
        );
        assert_eq!(runs(&[100, 100], false), vec![(0, 1, 0), (1, 1, 0)]);
        assert!(runs(&[], true).is_empty());
    }

    #[test]
    fn gso_messages_are_bounded() {
        let many = vec![100; 2 * GSO_MAX_SEGMENTS + 1];
        let r = runs(&many, true);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], (0, GSO_MAX_SEGMENTS, 100));
        assert_eq!(r[2], (2 * GSO_MAX_SEGMENTS, 1, 0));
        let big = vec![9000; 20];
        let r = runs(&big, true);
        assert!(r.iter().all(|&(_, n, _)| n * 9000 <= GSO_MAX_BYTES));
        assert_eq!(r.iter().map(|&(_, n, _)| n).sum::<usize>(), 20);
    }
}
