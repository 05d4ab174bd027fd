//! Tunnel datagrams to packets: decapsulation with the codecs of
//! `crate::export::encap`, and the interface name each packet is filed under.
//! Pure (no sockets), so the fuzz targets and unit tests drive it directly.
//!
//! Names, so a person sees the node and the pod in Wireshark's interface list,
//! always after the address the datagram came from: the node and pod options
//! are the sender's word, so a sender can claim any node but cannot file
//! frames under another sender's interfaces.
//!
//! | tunnel | interface name |
//! |---|---|
//! | GENEVE with our options | `SOURCE-IP/node/pod`, else `SOURCE-IP/node/ifindex-N` |
//! | GENEVE without a node option | `SOURCE-IP/pod`, `SOURCE-IP/ifindex-N`, else `SOURCE-IP/vni-N` |
//! | VXLAN | `SOURCE-IP/vni-N` |
//! | GRE/TEB | `SOURCE-IP/key-N`, or `SOURCE-IP/gre` without a key |
//! | ERSPAN II and III | `SOURCE-IP/erspan-session-N` |

use std::{
    collections::HashSet,
    fmt::{self, Write as _},
    net::IpAddr,
    sync::Arc,
};

use super::stats::Reason;
use crate::{
    export::encap::{
        erspan::{self, ErspanError, Kind as ErspanKind, PROTO_TYPE2, PROTO_TYPE3},
        geneve::{self, GeneveError},
        gre::{self, GreError},
        vxlan::{self, VxlanError},
    },
    model::direction::Direction,
};

/// What a datagram listener receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    Vxlan,
    Geneve,
    /// GRE/TEB and ERSPAN II and III, told apart by the GRE protocol type.
    Gre,
}

/// One decapsulated packet, borrowing its frame from the datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decap<'a> {
    pub interface: Arc<str>,
    /// When the sender captured the packet where the tunnel carries it
    /// (GENEVE's capture-time option, ERSPAN III's timestamp), else when
    /// it was received; nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    pub orig_len: u32,
    /// `None` where the tunnel does not carry it (VXLAN, GRE, ERSPAN II).
    pub direction: Option<Direction>,
    /// The sender cut the frame (GENEVE original length, ERSPAN T bit).
    pub truncated: bool,
    pub frame: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatagramError {
    #[error(transparent)]
    Vxlan(#[from] VxlanError),
    #[error(transparent)]
    Geneve(#[from] GeneveError),
    #[error(transparent)]
    Gre(#[from] GreError),
    #[error(transparent)]
    Erspan(#[from] ErspanError),
    #[error("IPv4 packet of {0} bytes is shorter than its header")]
    Ipv4Short(usize),
    #[error("not an IPv4 header (version {0})")]
    Ipv4Version(u8),
    #[error("IPv4 protocol {0} is not GRE (47)")]
    Ipv4Protocol(u8),
}

impl DatagramError {
    pub fn reason(&self) -> Reason {
        use Reason::*;
        match self {
            Self::Vxlan(e) => match e {
                VxlanError::Short(_) | VxlanError::InnerTooShort(_) => Short,
                VxlanError::NoVni(_) => Foreign,
            },
            Self::Geneve(e) => match e {
                GeneveError::Short { .. } | GeneveError::InnerTooShort(_) => Short,
                GeneveError::Version(_) | GeneveError::Oam | GeneveError::Protocol(_) => Foreign,
                GeneveError::UnknownCritical { .. } => Foreign,
                GeneveError::OptionOverrun { .. }
                | GeneveError::BadOption { .. }
                | GeneveError::NotUtf8 { .. } => Garbled,
            },
            Self::Gre(e) | Self::Erspan(ErspanError::Gre(e)) => gre_reason(e),
            Self::Erspan(e) => match e {
                ErspanError::Short { .. } | ErspanError::InnerTooShort(_) => Short,
                ErspanError::Protocol(_) | ErspanError::TypeI | ErspanError::FrameType(_) => {
                    Foreign
                }
                ErspanError::Version { .. } | ErspanError::Gre(_) => Garbled,
            },
            Self::Ipv4Short(_) => Short,
            Self::Ipv4Version(_) | Self::Ipv4Protocol(_) => Foreign,
        }
    }
}

fn gre_reason(e: &GreError) -> Reason {
    match e {
        GreError::Short { .. } | GreError::InnerTooShort(_) => Reason::Short,
        GreError::Forbidden(_) | GreError::Version(_) | GreError::Protocol { .. } => {
            Reason::Foreign
        }
        GreError::Checksum => Reason::Garbled,
    }
}

/// The payload of a packet read from a raw IPv4 socket (which hands over
/// the IP header too) and its source address. The kernel has already
/// checked the header and reassembled fragments; this only finds the
/// payload, and never trusts a length beyond the bytes that came.
pub fn ipv4_payload(packet: &[u8]) -> Result<(IpAddr, &[u8]), DatagramError> {
    let short = || DatagramError::Ipv4Short(packet.len());
    let (&[vihl, _, l0, l1, _, _, _, _, _, proto, _, _, s0, s1, s2, s3], _) =
        packet.split_first_chunk::<16>().ok_or_else(short)?;
    if vihl >> 4 != 4 {
        return Err(DatagramError::Ipv4Version(vihl >> 4));
    }
    if proto != 47 {
        return Err(DatagramError::Ipv4Protocol(proto));
    }
    let header = usize::from(vihl & 0x0F) * 4;
    let total = usize::from(u16::from_be_bytes([l0, l1])).min(packet.len());
    let payload = packet.get(header.max(20)..total).ok_or_else(short)?;
    Ok((IpAddr::from([s0, s1, s2, s3]), payload))
}

/// The datagrams in what one receive returned: with UDP GRO (`segment`
/// is the size the kernel reports in its `UDP_GRO` control message) a run
/// of datagrams of that size, the last possibly shorter, back to back;
/// otherwise the one datagram.
pub fn split_coalesced(bytes: &[u8], segment: Option<usize>) -> impl Iterator<Item = &[u8]> {
    let size = segment.filter(|&s| s > 0).unwrap_or(bytes.len()).max(1);
    // An empty datagram is still one datagram (counted, then skipped as
    // short), though `chunks` yields nothing for it.
    let empty = bytes.is_empty().then_some(bytes);
    bytes.chunks(size).chain(empty)
}

/// Most distinct names one receiver remembers; past it the cache starts
/// over (names stay right, they are only allocated again), so garbage with
/// ever new names cannot grow it without end.
const MAX_NAMES: usize = 4096;

/// Interface names, each allocated once and then shared with the writer.
#[derive(Debug, Default)]
pub struct Names {
    known: HashSet<Arc<str>>,
    scratch: String,
}

impl Names {
    pub fn get(&mut self, args: fmt::Arguments<'_>) -> Arc<str> {
        self.scratch.clear();
        // Writing into a String cannot fail.
        let _ = self.scratch.write_fmt(args);
        if let Some(name) = self.known.get(self.scratch.as_str()) {
            return name.clone();
        }
        if self.known.len() >= MAX_NAMES {
            self.known.clear();
        }
        let name: Arc<str> = self.scratch.as_str().into();
        self.known.insert(name.clone());
        name
    }
}

/// Shows wire text with control characters replaced, so a name from the
/// network cannot break a line of a log or of a tool's interface list.
struct Clean<'a>(&'a str);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0
            .chars()
            .try_for_each(|c| f.write_char(if c.is_control() { '?' } else { c }))
    }
}

/// Decapsulates one datagram (for [`Tunnel::Gre`], the bytes after the IP
/// header) that came from `from` at `received_ns`.
pub fn decode<'a>(
    tunnel: Tunnel,
    from: IpAddr,
    payload: &'a [u8],
    received_ns: u64,
    names: &mut Names,
) -> Result<Decap<'a>, DatagramError> {
    match tunnel {
        Tunnel::Vxlan => {
            let d = vxlan::decode(payload)?;
            Ok(plain(
                names.get(format_args!("{from}/vni-{}", d.vni)),
                received_ns,
                d.inner,
            ))
        }
        Tunnel::Geneve => decode_geneve(from, payload, received_ns, names),
        Tunnel::Gre => match gre::parse(payload)?.0.proto {
            PROTO_TYPE2 | PROTO_TYPE3 => decode_erspan(from, payload, received_ns, names),
            // Plain GRE, and any other protocol, which it refuses by name.
            _ => {
                let d = gre::decode(payload)?;
                let name = match d.key {
                    Some(key) => names.get(format_args!("{from}/key-{}", key.0)),
                    None => names.get(format_args!("{from}/gre")),
                };
                Ok(plain(name, received_ns, d.inner))
            }
        },
    }
}

fn plain(interface: Arc<str>, received_ns: u64, frame: &[u8]) -> Decap<'_> {
    Decap {
        interface,
        unix_ns: received_ns,
        orig_len: frame_len(frame),
        direction: None,
        truncated: false,
        frame,
    }
}

fn frame_len(frame: &[u8]) -> u32 {
    u32::try_from(frame.len()).unwrap_or(u32::MAX)
}

fn decode_geneve<'a>(
    from: IpAddr,
    payload: &'a [u8],
    received_ns: u64,
    names: &mut Names,
) -> Result<Decap<'a>, DatagramError> {
    let d = geneve::decode(payload)?;
    let m = d.mirror;
    let interface = match (m.node, m.pod, m.ifindex) {
        (Some(node), Some(pod), _) => {
            names.get(format_args!("{from}/{}/{}", Clean(node), Clean(pod)))
        }
        (Some(node), None, Some(i)) => {
            names.get(format_args!("{from}/{}/ifindex-{}", Clean(node), i.0))
        }
        (None, Some(pod), _) => names.get(format_args!("{from}/{}", Clean(pod))),
        (None, None, Some(i)) => names.get(format_args!("{from}/ifindex-{}", i.0)),
        (Some(node), None, None) => names.get(format_args!("{from}/{}/vni-{}", Clean(node), d.vni)),
        (None, None, None) => names.get(format_args!("{from}/vni-{}", d.vni)),
    };
    let caplen = frame_len(d.inner);
    Ok(Decap {
        interface,
        unix_ns: m.captured_ns.unwrap_or(received_ns),
        // A sender claiming less than it sent is wrong; what came is the floor.
        orig_len: m.orig_len.unwrap_or(caplen).max(caplen),
        direction: m.direction,
        truncated: d.truncated(),
        frame: d.inner,
    })
}

fn decode_erspan<'a>(
    from: IpAddr,
    payload: &'a [u8],
    received_ns: u64,
    names: &mut Names,
) -> Result<Decap<'a>, DatagramError> {
    let d = erspan::decode(payload)?;
    let (direction, unix_ns) = match d.kind {
        ErspanKind::TypeIII {
            direction,
            timestamp,
            granularity,
            ..
        } => (
            Some(direction),
            erspan::unix_ns_near(timestamp, granularity, received_ns),
        ),
        ErspanKind::TypeII { .. } => (None, None),
    };
    let caplen = frame_len(d.inner);
    // ERSPAN says only *that* the frame was cut; for IP the original
    // length is still in the inner header, so recover it from there.
    let orig_len = if d.truncated {
        inner_ip_len(d.inner).map_or(caplen, |n| n.max(caplen))
    } else {
        caplen
    };
    Ok(Decap {
        interface: names.get(format_args!("{from}/erspan-session-{}", d.session)),
        unix_ns: unix_ns.unwrap_or(received_ns),
        orig_len,
        direction,
        truncated: d.truncated,
        frame: d.inner,
    })
}

/// The VLAN tag protocol ids looked through: 802.1Q, 802.1ad and the older
/// QinQ 0x9100, the three the kernel prefilter and the policy's parser
/// (etherparse) know.
const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];

/// The length of an Ethernet frame as its IPv4 or IPv6 header gives it (up
/// to two VLAN tags), or `None` for other frames and for lengths the header
/// leaves open (0: a GSO packet or an IPv6 jumbogram).
pub fn inner_ip_len(frame: &[u8]) -> Option<u32> {
    let be16 = |at: usize| -> Option<u16> {
        let b = frame.get(at..at + 2)?;
        Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
    };
    let mut l3 = 14;
    let mut ethertype = be16(12)?;
    for _ in 0..2 {
        if VLAN_TPIDS.contains(&ethertype) {
            ethertype = be16(l3 + 2)?;
            l3 += 4;
        }
    }
    let ip_len = match ethertype {
        0x0800 => u32::from(be16(l3 + 2)?),
        0x86dd => match be16(l3 + 4)? {
            0 => 0,
            n => 40 + u32::from(n),
        },
        _ => return None,
    };
    (ip_len != 0).then(|| l3 as u32 + ip_len)
}

#[cfg(test)]
mod tests;
