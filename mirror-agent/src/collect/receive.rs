//! Datagram listeners: VXLAN and GENEVE on UDP sockets, GRE (with ERSPAN)
//! on a raw `IPPROTO_GRE` socket. One blocking thread each; a short read
//! timeout lets the thread notice shutdown.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::sys::socket::{SockaddrStorage, recvfrom, setsockopt, sockopt::RcvBufForce};
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
/// The largest IP datagram.
const MAX_DATAGRAM: usize = 65_535;

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
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut names = Names::default();
        let mut logged = false;
        while !stop.load(Ordering::Relaxed) {
            let (n, from) = match recvfrom::<SockaddrStorage>(self.socket.as_raw_fd(), &mut buf) {
                Ok((n, from)) => (n, from.as_ref().and_then(ip_of)),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(error) => {
                    if !logged {
                        warn!(listener = %stats.name, %error, "receiving failed; later failures are only counted");
                        logged = true;
                    }
                    std::thread::sleep(POLL);
                    continue;
                }
            };
            let received_ns = now_ns();
            stats.received();
            let bytes = buf.get(..n).unwrap_or_default();
            let unknown = IpAddr::from([0, 0, 0, 0]);
            let (from, payload) = if self.ip_header {
                match datagram::ipv4_payload(bytes) {
                    Ok(p) => p,
                    Err(e) => {
                        stats.skip(e.reason(), from.unwrap_or(unknown), &e);
                        continue;
                    }
                }
            } else {
                (from.unwrap_or(unknown), bytes)
            };
            match datagram::decode(self.tunnel, from, payload, received_ns, &mut names) {
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
                        return;
                    }
                    stats.decoded(truncated);
                }
                Err(e) => stats.skip(e.reason(), from, &e),
            }
        }
    }
}

fn ip_of(addr: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(a) = addr.as_sockaddr_in() {
        return Some(IpAddr::V4(a.ip()));
    }
    addr.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip()))
}
