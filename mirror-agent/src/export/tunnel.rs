//! Tunnel exporters: VXLAN and GENEVE over UDP sockets, GRE and ERSPAN over
//! a raw `IPPROTO_GRE` socket, sent in batches with `sendmmsg`.
//!
//! UDP tunnels use a small pool of sockets, each on its own source port, and
//! pick one by a hash of the inner flow: RFC 7348's source-port entropy for
//! ECMP, without crafting UDP headers ourselves, and one flow always takes
//! one port, so it is never reordered.

use std::{
    io::{self, IoSlice},
    net::{SocketAddr, ToSocketAddrs},
};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use socket2::{Domain, Protocol, Socket, Type};
use std::os::fd::AsRawFd;
use tracing::warn;

use super::{
    Context, Stats,
    queue::{Batch, Inbox, Span},
};
use crate::{
    encap::{
        Encapsulator, PacketMeta,
        erspan::{Erspan2, Erspan3},
        geneve::Geneve,
        gre::Gre,
        vxlan::Vxlan,
    },
    output::{Endpoint, Tunnel},
    record::Record,
};

/// Source ports per UDP tunnel.
const UDP_LANES: u32 = 8;
/// Messages per `sendmmsg` call (the kernel's UIO_MAXIOV is 1024).
const MAX_MSGS: usize = 256;
const IPPROTO_GRE: i32 = 47;
const UDP_HEADER: usize = 8;

/// The drain thread's half: encodes packets into batches.
pub struct Encode {
    encoder: Box<dyn Encapsulator + Send>,
    /// Bytes of tunnel header plus inner frame that fit the path MTU.
    max_payload: usize,
    lanes: u32,
}

/// The sender thread's half: owns the sockets.
pub struct Sender {
    name: String,
    sockets: Vec<Socket>,
    to: SocketAddr,
}

pub fn open(
    tunnel: &Tunnel,
    to: &Endpoint,
    mtu: u16,
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
        },
        Sender {
            name: format!("{tunnel:?} to {to}"),
            sockets,
            to: addr,
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
    pub fn push(
        &mut self,
        batch: &mut Batch,
        record: &Record<'_>,
        unix_ns: u64,
        interface: &str,
        stats: &Stats,
    ) {
        let meta = PacketMeta {
            unix_ns,
            ifindex: record.ifindex,
            direction: record.direction,
            orig_len: record.orig_len,
            pod: interface,
        };
        let header = self.encoder.header_len(&meta);
        let room = self.max_payload.saturating_sub(header);
        let inner = &record.data[..record.data.len().min(room)];
        if inner.len() < record.data.len() {
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
    pub fn run(self, inbox: &Inbox, stats: &Stats) {
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(MAX_MSGS, None);
        let to = SockaddrStorage::from(self.to);
        let addrs = vec![Some(to); MAX_MSGS];
        let mut logged = false;
        while let Some(batch) = inbox.recv() {
            for (lane, socket) in self.sockets.iter().enumerate() {
                let slices: Vec<[IoSlice<'_>; 1]> = batch
                    .packets
                    .iter()
                    .filter(|p| p.lane as usize == lane)
                    .map(|p| [IoSlice::new(batch.bytes(*p))])
                    .collect();
                let mut at = 0;
                while at < slices.len() {
                    let chunk = &slices[at..slices.len().min(at + MAX_MSGS)];
                    match sendmmsg(
                        socket.as_raw_fd(),
                        &mut headers,
                        chunk,
                        &addrs[..chunk.len()],
                        [],
                        MsgFlags::empty(),
                    ) {
                        Ok(results) => {
                            let (mut n, mut bytes) = (0, 0);
                            for r in results {
                                n += 1;
                                bytes += r.bytes;
                            }
                            stats.add_sent(n, bytes);
                            // A short count means the next message failed: skip it.
                            at += n.max(1);
                            if n < chunk.len() {
                                stats.add_send_errors(1);
                            }
                        }
                        Err(nix::errno::Errno::EINTR) => {}
                        Err(error) => {
                            if !logged {
                                warn!(output = %self.name, %error, "sending failed; later failures are only counted");
                                logged = true;
                            }
                            stats.add_send_errors(1);
                            at += 1;
                        }
                    }
                }
            }
            inbox.done(batch);
        }
    }
}

/// A hash of the inner frame's flow (addresses, protocol and, when present,
/// ports), so one flow always leaves by one source port. FNV-1a over the
/// fields; fragments and non-IP frames hash by what they have.
pub fn flow_hash(frame: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut mix = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
        }
    };
    let mut at = 12;
    let mut ethertype = frame
        .get(12..14)
        .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
    if ethertype == 0x8100 {
        at = 16;
        ethertype = frame
            .get(16..18)
            .map_or(0, |t| u16::from_be_bytes([t[0], t[1]]));
    }
    let l3 = at + 2;
    let ports = |start: usize| frame.get(start..start + 4).unwrap_or(&[]);
    match ethertype {
        0x0800 => {
            let ihl = frame.get(l3).map_or(20, |b| usize::from(b & 0x0f) * 4);
            let fragment = frame
                .get(l3 + 6..l3 + 8)
                .is_some_and(|f| u16::from_be_bytes([f[0], f[1]]) & 0x1fff != 0);
            mix(frame.get(l3 + 9..l3 + 10).unwrap_or(&[]));
            mix(frame.get(l3 + 12..l3 + 20).unwrap_or(&[]));
            if !fragment {
                mix(ports(l3 + ihl));
            }
        }
        0x86dd => {
            mix(frame.get(l3 + 6..l3 + 7).unwrap_or(&[]));
            mix(frame.get(l3 + 8..l3 + 40).unwrap_or(&[]));
            mix(ports(l3 + 40));
        }
        _ => mix(frame.get(..12).unwrap_or(frame)),
    }
    h
}

#[cfg(test)]
mod tests {
    use super::flow_hash;

    fn udp4(src_port: u16, id: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f[23] = 17;
        f[26..30].copy_from_slice(&[198, 18, 0, 1]);
        f[30..34].copy_from_slice(&[198, 18, 0, 2]);
        f[34..36].copy_from_slice(&src_port.to_be_bytes());
        f
    }

    #[test]
    fn same_flow_same_hash_other_flow_other_hash() {
        // The IP id changes per packet; the flow's hash must not.
        assert_eq!(flow_hash(&udp4(1000, 1)), flow_hash(&udp4(1000, 2)));
        assert_ne!(flow_hash(&udp4(1000, 1)), flow_hash(&udp4(1001, 1)));
        assert_eq!(flow_hash(&[]), flow_hash(&[]));
    }
}
