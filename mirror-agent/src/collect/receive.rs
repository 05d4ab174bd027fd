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
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, RawFd},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::{
    errno::Errno,
    libc,
    sys::socket::{
        SockaddrLike, SockaddrStorage, setsockopt,
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
    // Older kernels (before 5.0) lack it: datagrams then come one per slot.
    if let Err(error) = setsockopt(&socket, UdpGroSegment, &true) {
        warn!(%addr, %error, "no UDP GRO on this kernel; reading one datagram per slot");
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
        let mut slots = Slots::new();
        let mut names = Names::default();
        let mut logged = false;
        while !stop.load(Ordering::Relaxed) {
            let n = match slots.receive(self.socket.as_raw_fd()) {
                Ok(n) => n,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(error) => {
                    if !logged {
                        warn!(listener = %stats.name, %error, "receiving failed; later failures are only counted");
                        logged = true;
                    }
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            stats.read();
            for i in 0..n {
                let (bytes, from, segment) = slots.get(i);
                for datagram in datagram::split_coalesced(bytes, segment) {
                    if !self.deliver(datagram, from, stats, packets, &mut names) {
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

/// The `UDP_GRO` control message (`CMSG_SPACE(sizeof(int))` bytes).
#[repr(C)]
#[derive(Clone, Copy)]
struct GroCmsg {
    header: libc::cmsghdr,
    segment: i32,
    _pad: [u8; 4],
}

/// The buffers of one `recvmmsg` call, reused for every call. The headers
/// point into the other vectors, which never grow after [`Slots::new`].
/// Called through libc rather than nix: nix's `MultiHeaders` keeps the
/// control length the kernel wrote back into each header, so from the
/// second call on a datagram's `UDP_GRO` segment size had no room and was
/// lost (coalesced datagrams then read as one).
struct Slots {
    data: Vec<u8>,
    iov: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<GroCmsg>,
    headers: Vec<libc::mmsghdr>,
}

impl Slots {
    fn new() -> Self {
        Self {
            data: vec![0; BATCH * MAX_DATAGRAM],
            iov: Vec::with_capacity(BATCH),
            // SAFETY: all-zero bytes are valid for these plain C structs.
            addrs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            cmsgs: (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect(),
            headers: Vec::with_capacity(BATCH),
        }
    }

    /// One `recvmmsg` call: blocks (up to the socket's read timeout) for
    /// the first datagram, then takes whatever else is queued. Returns how
    /// many slots were filled.
    fn receive(&mut self, fd: RawFd) -> Result<usize, Errno> {
        // Lengths are set again each call: the kernel writes back what it used.
        self.iov.clear();
        self.iov.extend(
            self.data
                .chunks_exact_mut(MAX_DATAGRAM)
                .map(|b| libc::iovec {
                    iov_base: b.as_mut_ptr().cast(),
                    iov_len: b.len(),
                }),
        );
        self.headers.clear();
        for ((iov, addr), cmsg) in self
            .iov
            .iter_mut()
            .zip(self.addrs.iter_mut())
            .zip(self.cmsgs.iter_mut())
        {
            // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
            let mut h: libc::msghdr = unsafe { std::mem::zeroed() };
            h.msg_name = std::ptr::from_mut(addr).cast();
            h.msg_namelen = size_of::<libc::sockaddr_storage>() as _;
            h.msg_iov = std::ptr::from_mut(iov);
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::from_mut(cmsg).cast();
            h.msg_controllen = size_of::<GroCmsg>() as _;
            self.headers.push(libc::mmsghdr {
                msg_hdr: h,
                msg_len: 0,
            });
        }
        // SAFETY: each header points at its own address, iovec (into
        // `data`) and control buffer, all live and unmoved for the call.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                self.headers.len() as _,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            Err(Errno::last())
        } else {
            Ok(rc as usize)
        }
    }

    /// Slot `i` of the last call: its bytes, where they came from, and the
    /// UDP GRO segment size if the kernel joined several datagrams into it.
    fn get(&self, i: usize) -> (&[u8], Option<IpAddr>, Option<usize>) {
        let h = &self.headers[i];
        let start = i * MAX_DATAGRAM;
        let len = (h.msg_len as usize).min(MAX_DATAGRAM);
        let bytes = &self.data[start..start + len];
        // SAFETY: the kernel wrote a socket address of `msg_namelen` bytes
        // into the slot's storage, which is large enough for any.
        let from = unsafe {
            SockaddrStorage::from_raw(
                std::ptr::from_ref(&self.addrs[i]).cast(),
                Some(h.msg_hdr.msg_namelen),
            )
        };
        let c = &self.cmsgs[i];
        // Only one control message is asked for; a cut or other one is
        // ignored, and the slot is then taken as one datagram.
        let segment = (h.msg_hdr.msg_controllen >= size_of::<libc::cmsghdr>() as _
            && c.header.cmsg_level == libc::SOL_UDP
            && c.header.cmsg_type == libc::UDP_GRO)
            .then(|| usize::try_from(c.segment).ok())
            .flatten()
            .filter(|&s| s > 0);
        (bytes, from.as_ref().and_then(ip_of), segment)
    }
}

fn ip_of(addr: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(a) = addr.as_sockaddr_in() {
        return Some(IpAddr::V4(a.ip()));
    }
    addr.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip()))
}
