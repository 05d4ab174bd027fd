//! The agent's own connections: each TCP or TLS output publishes the
//! addresses and ports of its connection to the collector (anew at each
//! reconnect), so copies of that connection are never mirrored, in either
//! direction. The hook already passes over what the agent sends (its
//! sockets carry the `SO_MARK`), but the collector's acknowledgements come
//! in unmarked: mirrored through an interface the connection crosses (a
//! sidecar's pod interface), they would go into the stream, which the
//! collector acknowledges again, a loop. The drain matches records against
//! these connections ([`Matcher`]) and counts what it passes over.

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

/// Connections kept per output: the live one and those before it, whose
/// last packets (a FIN, a late acknowledgement) may still come in.
const PER_OUTPUT: usize = 4;
/// Connections kept of outputs that have stopped, for the same reason.
const RETIRED: usize = 16;

/// One TCP connection of the agent's: its local end (address unspecified
/// while connecting: any local address matches) and the collector's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

impl Connection {
    /// Whether a TCP segment from `src` to `dst` belongs to it, either way.
    fn carries(&self, src: SocketAddr, dst: SocketAddr) -> bool {
        let local = |a: SocketAddr| {
            a.port() == self.local.port()
                && (self.local.ip().is_unspecified() || a.ip() == self.local.ip())
        };
        (local(src) && dst == self.peer) || (src == self.peer && local(dst))
    }
}

struct Entry {
    owner: u64,
    retired: bool,
    connection: Connection,
}

/// The connections of every output of one mirror, shared by their sender
/// threads (which write it, rarely) and the drain (which reads a copy,
/// taken again only when the generation moves).
#[derive(Default)]
pub struct OwnConnections {
    generation: AtomicU64,
    owners: AtomicU64,
    entries: Mutex<Vec<Entry>>,
}

impl OwnConnections {
    /// A handle for one output's sender.
    pub fn owner(self: &Arc<Self>) -> Owner {
        Owner {
            id: self.owners.fetch_add(1, Ordering::Relaxed),
            all: self.clone(),
        }
    }

    fn change(&self, f: impl FnOnce(&mut Vec<Entry>)) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut entries);
        // Under the lock, so a reader that sees the new generation reads
        // the new entries.
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn copy_into(&self, out: &mut Vec<Connection>) -> u64 {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        out.clear();
        out.extend(entries.iter().map(|e| e.connection));
        self.generation()
    }
}

/// One output's part of [`OwnConnections`]; its connections stay known a
/// while after it is dropped (see [`RETIRED`]).
pub struct Owner {
    id: u64,
    all: Arc<OwnConnections>,
}

impl Owner {
    /// A connection about to be made (its local port bound, before the
    /// SYN), or made (its local address known).
    pub fn connection(&self, connection: Connection) {
        let id = self.id;
        self.all.change(|entries| {
            // Made: it replaces the same connection while connecting.
            if let Some(e) = entries.iter_mut().find(|e| {
                e.owner == id
                    && e.connection.peer == connection.peer
                    && e.connection.local.port() == connection.local.port()
            }) {
                e.connection = connection;
                return;
            }
            entries.push(Entry {
                owner: id,
                retired: false,
                connection,
            });
            let mine = entries.iter().filter(|e| e.owner == id).count();
            if mine > PER_OUTPUT
                && let Some(oldest) = entries.iter().position(|e| e.owner == id)
            {
                entries.remove(oldest);
            }
        });
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let id = self.id;
        self.all.change(|entries| {
            for e in entries.iter_mut().filter(|e| e.owner == id) {
                e.retired = true;
            }
            let retired = entries.iter().filter(|e| e.retired).count();
            for _ in RETIRED..retired {
                if let Some(oldest) = entries.iter().position(|e| e.retired) {
                    entries.remove(oldest);
                }
            }
        });
    }
}

/// The drain's view of [`OwnConnections`]: a copy, refreshed when it
/// changes, so a record costs one atomic load while there are none, and a
/// header parse and a few comparisons while there are.
pub struct Matcher {
    all: Arc<OwnConnections>,
    seen: u64,
    copy: Vec<Connection>,
}

impl Matcher {
    pub fn new(all: Arc<OwnConnections>) -> Self {
        Self {
            all,
            seen: u64::MAX,
            copy: Vec::new(),
        }
    }

    /// Whether the Ethernet frame is a TCP segment of one of the agent's
    /// own connections.
    pub fn is_own(&mut self, frame: &[u8]) -> bool {
        if self.all.generation() != self.seen {
            self.seen = self.all.copy_into(&mut self.copy);
        }
        if self.copy.is_empty() {
            return false;
        }
        let Some((src, dst)) = tcp_ends(frame) else {
            return false;
        };
        self.copy.iter().any(|c| c.carries(src, dst))
    }
}

/// The source and destination of a TCP segment in an Ethernet frame, by
/// etherparse's lax slicer (as `export/wire` reads frames): VLAN tags and
/// IPv6 extension headers skipped, later fragments and frames cut inside
/// the TCP header not TCP.
fn tcp_ends(frame: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let packet = LaxSlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match packet.net.as_ref()? {
        LaxNetSlice::Ipv4(v4) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
        ),
        LaxNetSlice::Ipv6(v6) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
        ),
        LaxNetSlice::Arp(_) => return None,
    };
    match packet.transport.as_ref()? {
        TransportSlice::Tcp(tcp) => Some((
            SocketAddr::new(src, tcp.source_port()),
            SocketAddr::new(dst, tcp.destination_port()),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IP/TCP frame from `src` to `dst`, built by etherparse.
    fn tcp(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        let eth = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6]);
        let ip = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
            _ => panic!("one IP version"),
        };
        let builder = ip.tcp(src.port(), dst.port(), 1, 1024);
        let mut f = Vec::with_capacity(builder.size(0));
        builder.write(&mut f, &[]).expect("writes to a Vec");
        f
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("a socket address")
    }

    #[test]
    fn both_directions_of_a_connection_and_nothing_else() {
        let all = Arc::new(OwnConnections::default());
        let mut matcher = Matcher::new(all.clone());
        let (me, collector) = (addr("198.18.0.2:40000"), addr("198.18.0.1:7000"));
        assert!(!matcher.is_own(&tcp(me, collector)), "nothing known yet");
        let owner = all.owner();
        owner.connection(Connection {
            local: addr("0.0.0.0:40000"),
            peer: collector,
        });
        // While connecting, any local address with that port.
        assert!(matcher.is_own(&tcp(me, collector)));
        assert!(matcher.is_own(&tcp(collector, me)));
        owner.connection(Connection {
            local: me,
            peer: collector,
        });
        assert!(matcher.is_own(&tcp(collector, me)));
        for (src, dst) in [
            // Another port of ours, another collector port, another host.
            (addr("198.18.0.2:40001"), collector),
            (me, addr("198.18.0.1:7001")),
            (addr("198.18.0.3:40000"), collector),
            // Both ends ours, or both the collector's: not this connection.
            (me, me),
        ] {
            assert!(!matcher.is_own(&tcp(src, dst)), "{src} -> {dst}");
            assert!(!matcher.is_own(&tcp(dst, src)), "{dst} -> {src}");
        }
        // UDP between the same ends is someone else's.
        let mut udp = tcp(me, collector);
        udp[23] = 17;
        assert!(!matcher.is_own(&udp));
        // Behind a VLAN tag, and over IPv6.
        let mut tagged = tcp(collector, me);
        tagged.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        assert!(matcher.is_own(&tagged));
        let (me6, collector6) = (
            addr("[fd00:198:18::2]:40002"),
            addr("[fd00:198:18::1]:7000"),
        );
        assert!(!matcher.is_own(&tcp(collector6, me6)));
        owner.connection(Connection {
            local: me6,
            peer: collector6,
        });
        assert!(matcher.is_own(&tcp(collector6, me6)));
        // Short frames are nobody's.
        assert!(!matcher.is_own(&tcp(me, collector)[..30]));
    }

    #[test]
    fn old_connections_are_let_go_a_few_reconnects_later() {
        let all = Arc::new(OwnConnections::default());
        let mut matcher = Matcher::new(all.clone());
        let collector = addr("198.18.0.1:7000");
        let local = |port: u16| SocketAddr::from(([198, 18, 0, 2], port));
        let owner = all.owner();
        let other = all.owner();
        other.connection(Connection {
            local: local(1),
            peer: collector,
        });
        for port in 100..110 {
            owner.connection(Connection {
                local: local(port),
                peer: collector,
            });
        }
        let kept: Vec<u16> = (100..110)
            .filter(|p| matcher.is_own(&tcp(collector, local(*p))))
            .collect();
        assert_eq!(kept, [106, 107, 108, 109]);
        // Another output's connection is not pushed out by this one's.
        assert!(matcher.is_own(&tcp(collector, local(1))));
        // A stopped output's connections stay known, for their last packets.
        drop(owner);
        assert!(matcher.is_own(&tcp(collector, local(109))));
    }
}
