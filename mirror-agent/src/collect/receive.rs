//! Datagram listeners: VXLAN and GENEVE on UDP sockets, GRE (with ERSPAN)
//! on a raw `IPPROTO_GRE` socket. One blocking thread each; a short read
//! timeout lets the thread notice shutdown.
//!
//! Reads come in batches: one `recvmmsg` takes up to [`BATCH`] slots, and
//! UDP sockets ask for UDP GRO, so a slot may hold a run of datagrams of one
//! sender's port joined by the kernel (an agent's UDP GSO message arrives
//! whole), which is split again here. Each datagram is then decoded and
//! counted on its own, in the order it arrived.

use std::{
    io::{self, IoSliceMut},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::{
    cmsg_space,
    sys::socket::{
        ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, setsockopt,
        sockopt::{RcvBufForce, UdpGroSegment},
    },
};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::warn;

use super::{
    datagram::{self, Names, Tunnel},
    queue::QueueTx,
    stats::ListenerStats,
    writer::Packet,
};

/// How often a blocked receive wakes up to check for shutdown.
pub const POLL: Duration = Duration::from_millis(200);
/// Socket receive buffer asked for: bursts from many agents queue here
/// rather than being dropped by the kernel.
const RCVBUF: usize = 8 << 20;
const IPPROTO_GRE: i32 = 47;
/// The largest IP datagram, and the most UDP GRO joins into one slot.
const MAX_DATAGRAM: usize = 65_535;
/// Slots per `recvmmsg` call: with UDP GRO each holds up to 64 datagrams.
/// The buffers' pages are touched only as far as datagrams fill them.
const BATCH: usize = 32;

/// A bound datagram socket and how to read it.
pub struct DatagramSocket {
    socket: Socket,
    tunnel: Tunnel,
    /// Raw IPv4 sockets hand over the IP header too.
    ip_header: bool,
}

/// Binds the socket now, so a bad address is refused before anything runs.
pub fn bind_udp(addr: SocketAddr, tunnel: Tunnel) -> io::Result<DatagramSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&addr.into())?;
    prepare(&socket)?;
    // Older kernels (before 5.0) lack it: datagrams then come one a slot.
    if let Err(error) = setsockopt(&socket, UdpGroSegment, &true) {
        warn!(%addr, %error, "no UDP GRO on this kernel; reading datagrams one by one");
    }
    Ok(DatagramSocket {
        socket,
        tunnel,
        ip_header: false,
    })
}

/// A raw GRE socket bound to `addr`: it gets a copy of every GRE packet to
/// that address. The kernel's own GRE handling, if any, is not affected.
pub fn bind_gre(addr: IpAddr) -> io::Result<DatagramSocket> {
    let at = SocketAddr::new(addr, 0);
    let socket = Socket::new(
        Domain::for_address(at),
        Type::RAW,
        Some(Protocol::from(IPPROTO_GRE)),
    )?;
    socket.bind(&at.into())?;
    prepare(&socket)?;
    Ok(DatagramSocket {
        socket,
        tunnel: Tunnel::Gre,
        ip_header: addr.is_ipv4(),
    })
}

fn prepare(socket: &Socket) -> io::Result<()> {
    socket.set_read_timeout(Some(POLL))?;
    // Past net.core.rmem_max only with CAP_NET_ADMIN; the plain request is
    // the fallback, capped by the kernel.
    if setsockopt(socket, RcvBufForce, &RCVBUF).is_err() {
        socket.set_recv_buffer_size(RCVBUF)?;
    }
    Ok(())
}

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl DatagramSocket {
    /// Receives until `stop` is set or the writer is gone.
    pub fn run(self, stats: &ListenerStats, packets: &QueueTx, stop: &AtomicBool) {
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM]).collect();
        let mut headers =
            MultiHeaders::<SockaddrStorage>::preallocate(BATCH, Some(cmsg_space!(i32)));
        let mut got: Vec<Received> = Vec::with_capacity(BATCH);
        let mut names = Names::default();
        let mut logged = false;
        while !stop.load(Ordering::Relaxed) {
            match receive(self.socket.as_raw_fd(), &mut headers, &mut bufs, &mut got) {
                Ok(()) => stats.read(),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(error) => {
                    if !logged {
                        warn!(listener = %stats.name, %error, "receiving failed; later failures are only counted");
                        logged = true;
                    }
                    std::thread::sleep(POLL);
                    continue;
                }
            }
            for (r, buf) in got.iter().zip(&bufs) {
                let bytes = buf.get(..r.len).unwrap_or_default();
                for datagram in datagram::split_coalesced(bytes, r.segment) {
                    if !self.deliver(datagram, r.from, stats, packets, &mut names) {
                        return;
                    }
                }
            }
        }
    }

    /// Decodes one datagram and hands its packet to the writer: false
    /// once the writer is gone.
    fn deliver(
        &self,
        bytes: &[u8],
        from: Option<IpAddr>,
        stats: &ListenerStats,
        packets: &QueueTx,
        names: &mut Names,
    ) -> bool {
        let received_ns = now_ns();
        stats.received();
        let unknown = IpAddr::from([0, 0, 0, 0]);
        let (from, payload) = if self.ip_header {
            match datagram::ipv4_payload(bytes) {
                Ok(p) => p,
                Err(e) => {
                    stats.skip(e.reason(), from.unwrap_or(unknown), &e);
                    return true;
                }
            }
        } else {
            (from.unwrap_or(unknown), bytes)
        };
        match datagram::decode(self.tunnel, from, payload, received_ns, names) {
            Ok(d) => {
                let truncated = d.truncated;
                let packet = Packet {
                    interface: d.interface,
                    source: from,
                    unix_ns: d.unix_ns,
                    orig_len: d.orig_len,
                    direction: d.direction,
                    data: d.frame.to_vec(),
                };
                if packets.send_blocking(packet).is_err() {
                    return false;
                }
                stats.decoded(truncated);
            }
            Err(e) => stats.skip(e.reason(), from, &e),
        }
        true
    }
}

/// What one slot of a `recvmmsg` call received.
struct Received {
    len: usize,
    from: Option<IpAddr>,
    /// With UDP GRO, the size of each datagram the kernel joined into the
    /// slot (the last may be shorter); `None` for a single datagram.
    segment: Option<usize>,
}

/// One `recvmmsg` call: blocks (up to the socket's read timeout) for the
/// first datagram, then takes whatever else is queued, into `got`.
fn receive(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    bufs: &mut [Vec<u8>],
    got: &mut Vec<Received>,
) -> nix::Result<()> {
    got.clear();
    let mut slices: Vec<[IoSliceMut<'_>; 1]> =
        bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
    let results = recvmmsg(
        fd,
        headers,
        slices.iter_mut(),
        MsgFlags::MSG_WAITFORONE,
        None,
    )?;
    for r in results {
        let mut segment = None;
        // Unreadable control data (cut by MSG_CTRUNC) only loses the split.
        if let Ok(cmsgs) = r.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::UdpGroSegments(size) = c {
                    segment = usize::try_from(size).ok().filter(|&s| s > 0);
                }
            }
        }
        got.push(Received {
            len: r.bytes,
            from: r.address.as_ref().and_then(ip_of),
            segment,
        });
    }
    Ok(())
}

fn ip_of(addr: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(a) = addr.as_sockaddr_in() {
        return Some(IpAddr::V4(a.ip()));
    }
    addr.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip()))
}
