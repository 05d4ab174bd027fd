//! The header fields rules look at, read from a frame once, without
//! allocating, by etherparse's lax slicer: it tolerates frames cut short by
//! the snaplen and IP lengths that do not match the bytes captured, keeping
//! whatever was parsed before the cut.

use std::net::IpAddr;

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice, ip_number};

use crate::policy::{Protocol, TcpFlag, TcpFlags};

/// What the rules need from one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// `None` for anything but IPv4 and IPv6 (ARP, LLDP, a frame too short
    /// for its IP header).
    pub ip: Option<IpFields>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpFields {
    pub source: IpAddr,
    pub destination: IpAddr,
    /// The transport protocol, after IPv6 extension headers and AH.
    pub protocol: u8,
    pub fragment: Fragment,
    /// Source and destination port, for TCP, UDP and SCTP when the first
    /// four bytes of the transport header were captured and this is not a
    /// later fragment.
    pub ports: Option<(u16, u16)>,
    /// TCP only, when byte 13 of the TCP header was captured and this is
    /// not a later fragment.
    pub tcp_flags: Option<TcpFlags>,
}

/// Ordered by how little of the transport header is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fragment {
    /// Not fragmented.
    Whole,
    /// Offset 0 with more fragments to come: it starts with the transport
    /// header.
    First,
    /// Offset above 0: no transport header, so no ports and no flags.
    Later,
}

impl Headers {
    pub fn parse(frame: &[u8]) -> Self {
        Self {
            ip: LaxSlicedPacket::from_ethernet(frame)
                .ok()
                .and_then(|p| ip_fields(&p)),
        }
    }
}

fn ip_fields(packet: &LaxSlicedPacket<'_>) -> Option<IpFields> {
    let (source, destination, payload, fragment) = match packet.net.as_ref()? {
        LaxNetSlice::Ipv4(v4) => {
            let h = v4.header();
            let offset = h.fragments_offset().value();
            let fragment = fragment(offset, h.more_fragments());
            (
                h.source_addr().into(),
                h.destination_addr().into(),
                v4.payload(),
                fragment,
            )
        }
        LaxNetSlice::Ipv6(v6) => {
            let h = v6.header();
            // Of several fragment headers (never seen in practice), the one
            // saying "later" wins: then there is no transport header.
            let fragment = v6
                .extensions()
                .clone()
                .into_iter()
                .filter_map(|ext| match ext {
                    etherparse::Ipv6ExtensionSlice::Fragment(f) => {
                        Some(fragment(f.fragment_offset().value(), f.more_fragments()))
                    }
                    _ => None,
                })
                .max()
                .unwrap_or(Fragment::Whole);
            (
                h.source_addr().into(),
                h.destination_addr().into(),
                v6.payload(),
                fragment,
            )
        }
        LaxNetSlice::Arp(_) => return None,
    };
    let protocol = payload.ip_number;
    let mut fields = IpFields {
        source,
        destination,
        protocol: protocol.0,
        fragment,
        ports: None,
        tcp_flags: None,
    };
    let has_ports = Protocol::from_number(protocol.0).is_some_and(Protocol::carries_ports);
    if fragment == Fragment::Later || !has_ports {
        return Some(fields);
    }
    // etherparse slices TCP and UDP only when the whole header was captured
    // and the packet is not fragmented. Otherwise (a snaplen cut inside the
    // TCP options, a first fragment, SCTP, which it does not parse) the
    // fields are read where all three protocols keep them: ports in bytes
    // 0..4, TCP flags in byte 13, as tcpdump's `port` and `tcp[13]` do.
    match &packet.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            fields.ports = Some((tcp.source_port(), tcp.destination_port()));
            let set = [
                (tcp.fin(), TcpFlag::Fin),
                (tcp.syn(), TcpFlag::Syn),
                (tcp.rst(), TcpFlag::Rst),
                (tcp.psh(), TcpFlag::Psh),
                (tcp.ack(), TcpFlag::Ack),
                (tcp.urg(), TcpFlag::Urg),
                (tcp.ece(), TcpFlag::Ece),
                (tcp.cwr(), TcpFlag::Cwr),
            ];
            let flags = set
                .into_iter()
                .filter(|(on, _)| *on)
                .fold(TcpFlags::default(), |f, (_, flag)| f.with(flag));
            fields.tcp_flags = Some(flags);
        }
        Some(TransportSlice::Udp(udp)) => {
            fields.ports = Some((udp.source_port(), udp.destination_port()));
        }
        _ => {
            let bytes = payload.payload;
            if let Some(&[s0, s1, d0, d1]) = bytes.get(..4) {
                fields.ports = Some((u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1])));
            }
            if protocol == ip_number::TCP {
                fields.tcp_flags = bytes.get(13).map(|b| TcpFlags::from_bits(*b));
            }
        }
    }
    Some(fields)
}

fn fragment(offset: u16, more: bool) -> Fragment {
    match (offset, more) {
        (0, false) => Fragment::Whole,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    }
}
