//! The frames of the filter tests: IPv4 and IPv6, TCP with various flags
//! and ports, UDP, SCTP, ICMP and ICMPv6, ARP, LLDP, IP-in-IP and GRE, IPv4
//! and IPv6 fragments, IPv6 extension headers, VLAN tags, and frames cut by a
//! snaplen; [`stacked_frames`] and [`ipv6_chains`] add stacked VLAN tags
//! (QinQ), IPv6 routing and destination-options headers, chains of them,
//! and more fragments.
//! Addresses come only from 198.18.0.0/15 and fd00:198:18::/48.

use etherparse::{
    IpFragOffset, IpHeaders, IpNumber, Ipv4Header, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header,
    Ipv6RawExtHeader, Ipv6RoutingExtensions, PacketBuilder, TcpOptionElement, ip_number,
};

/// One test frame: what was captured, and the length on the wire.
pub struct Frame {
    pub name: &'static str,
    pub data: Vec<u8>,
    pub orig_len: u32,
}

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
const A: [u8; 4] = [198, 18, 0, 1];
const B: [u8; 4] = [198, 18, 0, 2];
const C: [u8; 4] = [198, 19, 1, 2];
const D: [u8; 4] = [198, 18, 0, 200];
const A6: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const B6: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
/// fd00:198:18:1::2, in the /48 but not in fd00:198:18::/64.
const C6: [u8; 16] = [0xfd, 0, 1, 0x98, 0, 0x18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(MAC_A, MAC_B)
}

fn done(name: &'static str, data: Vec<u8>) -> Frame {
    let orig_len = data.len() as u32;
    Frame {
        name,
        data,
        orig_len,
    }
}

/// A TCP segment over IPv4 or IPv6 with the given flags (byte 13).
fn tcp(
    name: &'static str,
    src: &[u8],
    dst: &[u8],
    ports: (u16, u16),
    flags: u8,
    len: usize,
) -> Frame {
    let ip = match (<[u8; 4]>::try_from(src), <[u8; 4]>::try_from(dst)) {
        (Ok(s), Ok(d)) => eth().ipv4(s, d, 64),
        _ => eth().ipv6(v6(src), v6(dst), 64),
    };
    let mut b = ip.tcp(ports.0, ports.1, 1000, 64000);
    for (bit, set) in [
        (0x01, 0),
        (0x02, 1),
        (0x04, 2),
        (0x08, 3),
        (0x10, 4),
        (0x20, 5),
        (0x40, 6),
        (0x80, 7),
    ] {
        if flags & bit != 0 {
            b = match set {
                0 => b.fin(),
                1 => b.syn(),
                2 => b.rst(),
                3 => b.psh(),
                4 => b.ack(77),
                5 => b.urg(1),
                6 => b.ece(),
                _ => b.cwr(),
            };
        }
    }
    if flags & SYN != 0 {
        b = b
            .options(&[
                TcpOptionElement::MaximumSegmentSize(1460),
                TcpOptionElement::SelectiveAcknowledgementPermitted,
                TcpOptionElement::WindowScale(7),
            ])
            .expect("options fit");
    }
    let mut out = Vec::new();
    b.write(&mut out, &vec![0x5a; len]).expect("build tcp");
    done(name, out)
}

fn v6(a: &[u8]) -> [u8; 16] {
    <[u8; 16]>::try_from(a).expect("an IPv6 address")
}

fn udp(name: &'static str, src: &[u8], dst: &[u8], ports: (u16, u16), len: usize) -> Frame {
    let ip = match (<[u8; 4]>::try_from(src), <[u8; 4]>::try_from(dst)) {
        (Ok(s), Ok(d)) => eth().ipv4(s, d, 64),
        _ => eth().ipv6(v6(src), v6(dst), 64),
    };
    let mut out = Vec::new();
    ip.udp(ports.0, ports.1)
        .write(&mut out, &vec![0x33; len])
        .expect("build udp");
    done(name, out)
}

/// IPv4 with a raw payload after the header: fragments, SCTP, IP-in-IP, GRE.
fn ipv4_raw(
    name: &'static str,
    proto: IpNumber,
    frag: (u16, bool),
    options: &[u8],
    payload: &[u8],
) -> Frame {
    let mut ip = Ipv4Header::new(0, 64, proto, A, B).expect("header");
    ip.identification = 0x1234;
    ip.fragment_offset = IpFragOffset::try_new(frag.0).expect("offset");
    ip.more_fragments = frag.1;
    ip.options = options.try_into().expect("options");
    let mut out = Vec::new();
    eth()
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .write(&mut out, proto, payload)
        .expect("build ipv4");
    done(name, out)
}

fn ipv6_raw(name: &'static str, exts: Ipv6Extensions, proto: IpNumber, payload: &[u8]) -> Frame {
    let ip = Ipv6Header {
        hop_limit: 64,
        source: A6,
        destination: B6,
        ..Default::default()
    };
    let mut out = Vec::new();
    eth()
        .ip(IpHeaders::Ipv6(ip, exts))
        .write(&mut out, proto, payload)
        .expect("build ipv6");
    done(name, out)
}

/// The first bytes of a TCP, UDP or SCTP header: ports, then zeros, with
/// TCP's data offset and flags in place (harmless for UDP and SCTP here).
fn l4_header(src: u16, dst: u16, flags: u8) -> Vec<u8> {
    let mut h = [src.to_be_bytes(), dst.to_be_bytes()].concat();
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend_from_slice(&[0x77; 16]);
    h
}

fn frag6(offset: u16, more: bool, next: IpNumber) -> Ipv6Extensions {
    Ipv6Extensions {
        fragment: Some(Ipv6FragmentHeader::new(
            next,
            IpFragOffset::try_new(offset).expect("offset"),
            more,
            9,
        )),
        ..Default::default()
    }
}

fn hop_by_hop(next: IpNumber) -> Ipv6Extensions {
    Ipv6Extensions {
        hop_by_hop_options: Some(
            Ipv6RawExtHeader::new_raw(next, &[5, 2, 0, 0, 1, 0]).expect("router alert"),
        ),
        ..Default::default()
    }
}

fn icmp6(name: &'static str, kind: u8, exts: Option<Ipv6Extensions>) -> Frame {
    let mut out = Vec::new();
    let payload = B6;
    match exts {
        None => eth()
            .ipv6(A6, B6, 255)
            .icmpv6_raw(kind, 0, [0; 4])
            .write(&mut out, &payload)
            .expect("build icmpv6"),
        Some(exts) => {
            // ICMPv6 behind a hop-by-hop header (as MLD): checksum not needed by filters.
            let mut body = vec![kind, 0, 0, 0, 0, 0, 0, 0];
            body.extend_from_slice(&payload);
            return ipv6_raw(name, exts, ip_number::IPV6_ICMP, &body);
        }
    }
    done(name, out)
}

fn arp(name: &'static str, op: u16, sender: [u8; 4], target: [u8; 4]) -> Frame {
    let mut f = [[0xff; 6], MAC_A].concat();
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f.resize(60, 0);
    done(name, f)
}

fn vlan(name: &'static str, id: u16, inner: Frame) -> Frame {
    tagged(name, &[(0x8100, id)], inner)
}

/// `inner` behind one more tag per TPID and VLAN id in `tags`, outermost first.
fn tagged(name: &'static str, tags: &[(u16, u16)], inner: Frame) -> Frame {
    let mut f = inner.data[..12].to_vec();
    for (tpid, id) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&id.to_be_bytes());
    }
    f.extend_from_slice(&inner.data[12..]);
    done(name, f)
}

/// A routing header (an experimental type, no addresses), as raw bytes.
fn routing(next: IpNumber) -> Ipv6RoutingExtensions {
    Ipv6RoutingExtensions {
        routing: Ipv6RawExtHeader::new_raw(next, &[253, 0, 0, 0, 0, 0]).expect("routing"),
        final_destination_options: None,
    }
}

/// Destination options: one PadN option filling the header.
fn destination_options(next: IpNumber) -> Ipv6RawExtHeader {
    Ipv6RawExtHeader::new_raw(next, &[1, 4, 0, 0, 0, 0]).expect("destination options")
}

/// Keeps the first `caplen` bytes, as a snaplen does.
fn cut(name: &'static str, caplen: usize, mut frame: Frame) -> Frame {
    frame.data.truncate(caplen);
    Frame { name, ..frame }
}

pub fn frames() -> Vec<Frame> {
    let icmp4 = |name, src, dst, reply: bool| {
        let mut out = Vec::new();
        let b = eth().ipv4(src, dst, 64);
        let b = if reply {
            b.icmpv4_echo_reply(7, 1)
        } else {
            b.icmpv4_echo_request(7, 1)
        };
        b.write(&mut out, &[0x11; 32]).expect("build icmp");
        done(name, out)
    };
    let lldp = {
        let mut f = [[0x01, 0x80, 0xc2, 0, 0, 0x0e], MAC_A].concat();
        f.extend_from_slice(&[0x88, 0xcc, 0x02, 0x07, 0x04]);
        f.extend_from_slice(&MAC_A);
        f.resize(60, 0);
        done("lldp", f)
    };
    let ip_in_ip = {
        let mut inner = Vec::new();
        PacketBuilder::ipv4([198, 18, 0, 9], [198, 18, 0, 10], 64)
            .udp(1, 2)
            .write(&mut inner, &[0; 4])
            .expect("inner");
        ipv4_raw("ipv4-in-ipv4", ip_number::IPV4, (0, false), &[], &inner)
    };
    let sctp_init = |dst: u16| {
        let mut h = [5000u16.to_be_bytes(), dst.to_be_bytes()].concat();
        h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 20]);
        h.extend_from_slice(&[0; 16]);
        h
    };
    vec![
        tcp("tcp4 syn a->b:443", &A, &B, (40000, 443), SYN, 0),
        tcp("tcp4 syn-ack b:443->a", &B, &A, (443, 40000), SYN | ACK, 0),
        tcp("tcp4 ack a->b:443", &A, &B, (40000, 443), ACK, 100),
        tcp(
            "tcp4 psh-ack a->c:8080 big",
            &A,
            &C,
            (40001, 8080),
            0x18,
            1200,
        ),
        tcp("tcp4 fin-ack c:8080->a", &C, &A, (8080, 40001), 0x11, 0),
        tcp("tcp4 rst a->b:22", &A, &B, (40002, 22), 0x04, 0),
        tcp("tcp4 urg-ack a->b:23", &A, &B, (40003, 23), 0x30, 10),
        tcp("tcp4 syn-ece-cwr d->b:443", &D, &B, (40004, 443), 0xc2, 0),
        tcp("tcp4 port 0", &A, &B, (0, 0), ACK, 0),
        ipv4_raw(
            "tcp4 ip-options syn a->b:443",
            ip_number::TCP,
            (0, false),
            &[1, 1, 1, 0],
            &l4_header(40005, 443, SYN),
        ),
        udp("udp4 dns a->b:53", &A, &B, (5353, 53), 30),
        udp("udp4 a->b:8000", &A, &B, (5353, 8000), 10),
        udp("udp4 a->c:8100", &A, &C, (5353, 8100), 10),
        udp("udp4 a->b:8101", &A, &B, (5353, 8101), 10),
        udp("udp4 a->b:7999", &A, &B, (5353, 7999), 10),
        udp("udp4 c:8050->a big", &C, &A, (8050, 9000), 1400),
        icmp4("icmp4 echo a->b", A, B, false),
        icmp4("icmp4 reply b->a", B, A, true),
        tcp("tcp6 syn a->b:443", &A6, &B6, (40000, 443), SYN, 0),
        tcp("tcp6 ack b:443->a", &B6, &A6, (443, 40000), ACK, 50),
        tcp(
            "tcp6 syn-ack a->c:8050",
            &A6,
            &C6,
            (40001, 8050),
            SYN | ACK,
            0,
        ),
        udp("udp6 a->c:8050", &A6, &C6, (5353, 8050), 20),
        udp("udp6 a->b:53", &A6, &B6, (5353, 53), 20),
        icmp6("icmp6 echo a->b", 128, None),
        icmp6("icmp6 neighbour solicitation", 135, None),
        icmp6(
            "icmp6 behind hop-by-hop (mld)",
            143,
            Some(hop_by_hop(ip_number::IPV6_ICMP)),
        ),
        ipv6_raw(
            "udp6 behind hop-by-hop :8050",
            hop_by_hop(ip_number::UDP),
            ip_number::UDP,
            &l4_header(5353, 8050, 0),
        ),
        ipv6_raw(
            "udp6 first fragment :8050",
            frag6(0, true, ip_number::UDP),
            ip_number::UDP,
            &l4_header(5353, 8050, 0),
        ),
        // Its data looks like ports 8050 and 443: only a parser that ignores
        // the fragment offset would see ports here.
        ipv6_raw(
            "udp6 later fragment",
            frag6(100, false, ip_number::UDP),
            ip_number::UDP,
            &l4_header(8050, 443, 0),
        ),
        ipv4_raw(
            "tcp4 first fragment syn :443",
            ip_number::TCP,
            (0, true),
            &[],
            &l4_header(40006, 443, SYN),
        ),
        ipv4_raw(
            "tcp4 later fragment",
            ip_number::TCP,
            (185, false),
            &[],
            &l4_header(443, 443, SYN),
        ),
        arp("arp request a->b", 1, A, B),
        arp("arp reply b->a", 2, B, A),
        vlan(
            "vlan100 udp4 a->b:8050",
            100,
            udp("", &A, &B, (5353, 8050), 10),
        ),
        vlan(
            "vlan100 tcp4 syn a->b:443",
            100,
            tcp("", &A, &B, (40007, 443), SYN, 0),
        ),
        vlan(
            "vlan200 tcp6 syn-ack a->b:443",
            200,
            tcp("", &A6, &B6, (40008, 443), SYN | ACK, 0),
        ),
        vlan("vlan100 arp", 100, arp("", 1, A, B)),
        ipv4_raw(
            "sctp4 init a->b:443",
            ip_number::SCTP,
            (0, false),
            &[],
            &sctp_init(443),
        ),
        ipv6_raw(
            "sctp6 init a->b:8050",
            Default::default(),
            ip_number::SCTP,
            &sctp_init(8050),
        ),
        ip_in_ip,
        ipv4_raw(
            "gre4 a->b",
            ip_number::GRE,
            (0, false),
            &[],
            &[0, 0, 0x65, 0x58, 0, 0, 0, 0],
        ),
        lldp,
        // Cut by a snaplen: captured bytes, original length larger.
        cut(
            "tcp4 syn :443 cut to 64 of 1246",
            64,
            tcp("", &A, &B, (40009, 443), SYN, 1180),
        ),
        cut(
            "tcp4 ack :443 cut to 38 (ports, no flags)",
            38,
            tcp("", &A, &B, (40010, 443), ACK, 10),
        ),
        cut(
            "udp6 :8050 cut to 58 (no ports)",
            58,
            udp("", &A6, &B6, (5353, 8050), 100),
        ),
    ]
}

/// A frame cut inside its IPv4 header: libpcap reads the protocol byte, the
/// rules treat the frame as not IP (they need the whole IP header), so it
/// is in the pcap-filter comparisons only.
pub fn cut_inside_ip() -> Frame {
    cut(
        "tcp4 cut to 30 (inside the ip header)",
        30,
        tcp("", &A, &B, (40011, 443), ACK, 10),
    )
}

/// Frames behind stacked VLAN tags (QinQ with each TPID the kernel and
/// libpcap know, and one 802.1ad tag alone) and IPv4 fragments, first and
/// later: the rules and tcpdump read these alike.
pub fn stacked_frames() -> Vec<Frame> {
    const QINQ: (u16, u16) = (0x88a8, 10);
    const DOT1Q: (u16, u16) = (0x8100, 20);
    vec![
        tagged(
            "qinq 88a8/8100 tcp4 syn a->b:443",
            &[QINQ, DOT1Q],
            tcp("", &A, &B, (40020, 443), SYN, 0),
        ),
        tagged(
            "qinq 8100/8100 udp4 a->b:8000",
            &[(0x8100, 30), DOT1Q],
            udp("", &A, &B, (5353, 8000), 10),
        ),
        tagged(
            "qinq 9100/8100 tcp4 syn a->b:443",
            &[(0x9100, 40), DOT1Q],
            tcp("", &A, &B, (40021, 443), SYN, 0),
        ),
        tagged(
            "vlan 88a8 udp4 a->c:8100",
            &[QINQ],
            udp("", &A, &C, (5353, 8100), 10),
        ),
        tagged(
            "qinq 88a8/8100 udp6 a->c:8050",
            &[QINQ, DOT1Q],
            udp("", &A6, &C6, (5353, 8050), 20),
        ),
        tagged(
            "qinq 88a8/8100 tcp6 syn-ack a->b:443",
            &[QINQ, DOT1Q],
            tcp("", &A6, &B6, (40022, 443), SYN | ACK, 0),
        ),
        tagged("qinq 88a8/8100 arp", &[QINQ, DOT1Q], arp("", 1, A, B)),
        tagged(
            "qinq 88a8/8100 icmp4 later fragment",
            &[QINQ, DOT1Q],
            ipv4_raw("", ip_number::ICMP, (50, false), &[], &[0; 16]),
        ),
        tagged(
            "vlan100 udp6 behind hop-by-hop :8050",
            &[(0x8100, 100)],
            ipv6_raw(
                "",
                hop_by_hop(ip_number::UDP),
                ip_number::UDP,
                &l4_header(5353, 8050, 0),
            ),
        ),
        ipv4_raw(
            "udp4 first fragment :8050",
            ip_number::UDP,
            (0, true),
            &[],
            &l4_header(5353, 8050, 0),
        ),
        ipv4_raw(
            "udp4 later fragment",
            ip_number::UDP,
            (100, false),
            &[],
            &l4_header(8050, 8050, 0),
        ),
        ipv4_raw(
            "icmp4 later fragment",
            ip_number::ICMP,
            (64, false),
            &[],
            &[8, 0, 0, 0, 0, 7, 0, 1],
        ),
        tagged(
            "vlan100 tcp4 later fragment",
            &[(0x8100, 100)],
            ipv4_raw(
                "",
                ip_number::TCP,
                (185, false),
                &[],
                &l4_header(443, 443, SYN),
            ),
        ),
        tagged(
            "vlan100 udp4 first fragment :8000",
            &[(0x8100, 100)],
            ipv4_raw(
                "",
                ip_number::UDP,
                (0, true),
                &[1, 1, 1, 0],
                &l4_header(5353, 8000, 0),
            ),
        ),
    ]
}

/// IPv6 behind extension chains: routing and destination-options headers
/// alone and chained with hop-by-hop and fragment headers, and TCP and UDP
/// fragments, first and later. The rules walk every chain; tcpdump's
/// `tcp`, `udp` and `port` look only at the fixed header's next header.
pub fn ipv6_chains() -> Vec<Frame> {
    let ext = |hop: bool, route: bool, dest: bool, frag: Option<(u16, bool)>, next: IpNumber| {
        // Each header names the next: fragment last, then the payload.
        let mut chain = Vec::new();
        if hop {
            chain.push(0);
        }
        if dest {
            chain.push(60);
        }
        if route {
            chain.push(43);
        }
        if frag.is_some() {
            chain.push(44);
        }
        let after = |i: usize| chain.get(i + 1).map(|n| IpNumber(*n)).unwrap_or(next);
        let mut exts = Ipv6Extensions::default();
        for (i, kind) in chain.iter().enumerate() {
            match kind {
                0 => exts.hop_by_hop_options = hop_by_hop(after(i)).hop_by_hop_options,
                60 => exts.destination_options = Some(destination_options(after(i))),
                43 => exts.routing = Some(routing(after(i))),
                _ => {
                    let (offset, more) = frag.expect("a fragment");
                    exts.fragment = frag6(offset, more, after(i)).fragment;
                }
            }
        }
        exts
    };
    vec![
        ipv6_raw(
            "tcp6 behind routing syn :443",
            ext(false, true, false, None, ip_number::TCP),
            ip_number::TCP,
            &l4_header(40023, 443, SYN),
        ),
        ipv6_raw(
            "udp6 behind routing :8050",
            ext(false, true, false, None, ip_number::UDP),
            ip_number::UDP,
            &l4_header(5353, 8050, 0),
        ),
        ipv6_raw(
            "udp6 behind destination options :53",
            ext(false, false, true, None, ip_number::UDP),
            ip_number::UDP,
            &l4_header(5353, 53, 0),
        ),
        ipv6_raw(
            "tcp6 behind hop-by-hop, routing, first fragment syn :443",
            ext(true, true, false, Some((0, true)), ip_number::TCP),
            ip_number::TCP,
            &l4_header(40024, 443, SYN),
        ),
        ipv6_raw(
            "udp6 behind hop-by-hop, dest-opts, routing, first fragment :8050",
            ext(true, true, true, Some((0, true)), ip_number::UDP),
            ip_number::UDP,
            &l4_header(5353, 8050, 0),
        ),
        ipv6_raw(
            "icmp6 behind routing (echo)",
            ext(false, true, false, None, ip_number::IPV6_ICMP),
            ip_number::IPV6_ICMP,
            &[128, 0, 0, 0, 0, 7, 0, 1],
        ),
        ipv6_raw(
            "tcp6 first fragment syn :443",
            frag6(0, true, ip_number::TCP),
            ip_number::TCP,
            &l4_header(40025, 443, SYN),
        ),
        // Data that looks like ports 443 and 8050: a later fragment has none.
        ipv6_raw(
            "tcp6 later fragment",
            frag6(200, false, ip_number::TCP),
            ip_number::TCP,
            &l4_header(443, 8050, SYN),
        ),
        ipv6_raw(
            "udp6 behind routing, later fragment",
            ext(false, true, false, Some((300, false)), ip_number::UDP),
            ip_number::UDP,
            &l4_header(8050, 53, 0),
        ),
    ]
}
