//! Rule semantics on hand-made frames. tests/tests/filters.rs checks the
//! same rules against tcpdump.

use etherparse::{
    IpFragOffset, IpHeaders, Ipv4Header, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header,
    Ipv6RawExtHeader, PacketBuilder, ip_number,
};

use super::*;
use crate::policy::PolicyBody;

const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
const V4_A: [u8; 4] = [198, 18, 0, 1];
const V4_B: [u8; 4] = [198, 19, 1, 2];
const V6_A: [u8; 16] = [0xfd, 0, 0x01, 0x98, 0, 0x18, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_B: [u8; 16] = [0xfd, 0, 0x01, 0x98, 0, 0x18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2];

fn rules(yaml: &str) -> RuleSet {
    PolicyBody::from_yaml("t", yaml).expect("valid rules").rules
}

fn tcp4(dst_port: u16, syn: bool, ack: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .tcp(40000, dst_port, 1, 1000);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(7);
    }
    let mut out = Vec::new();
    b.write(&mut out, &[1, 2, 3]).expect("build");
    out
}

fn udp6(dst_port: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(V6_A, V6_B, 64)
        .udp(5353, dst_port)
        .write(&mut out, &[0; 8])
        .expect("build");
    out
}

fn arp() -> Vec<u8> {
    let mut f = [[0xff; 6], MAC_A].concat();
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&MAC_A);
    f.extend_from_slice(&V4_A);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&V4_B);
    f
}

/// IPv4 fragment with protocol TCP: `offset` in 8-byte units.
fn tcp4_fragment(offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4Header::new(0, 64, ip_number::TCP, V4_A, V4_B).expect("header");
    ip.fragment_offset = IpFragOffset::try_new(offset).expect("offset");
    ip.more_fragments = more;
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .write(&mut out, ip_number::TCP, payload)
        .expect("build");
    out
}

fn ipv6_with(exts: Ipv6Extensions, next: etherparse::IpNumber, payload: &[u8]) -> Vec<u8> {
    let ip = Ipv6Header {
        hop_limit: 64,
        source: V6_A,
        destination: V6_B,
        ..Default::default()
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ip(IpHeaders::Ipv6(ip, exts))
        .write(&mut out, next, payload)
        .expect("build");
    out
}

/// TCP header bytes, 20 long: ports and flags, the rest zero but the data offset.
fn tcp_header(src: u16, dst: u16, flags: u8) -> Vec<u8> {
    let mut h = [src.to_be_bytes(), dst.to_be_bytes()].concat();
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

fn vlan(frame: &[u8], id: u16) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&frame[12..]);
    f
}

fn verdict(set: &RuleSet, frame: &[u8]) -> RuleVerdict {
    let v = set.evaluate_frame(frame);
    // The kernel plan must agree with the rules on every frame tested here.
    let plan = set.prefilter_plan().expect("few rules");
    assert_eq!(
        plan.evaluate(&Headers::parse(frame)),
        v,
        "kernel plan disagrees"
    );
    v
}

#[test]
fn no_rules_mirror_everything() {
    let set = rules("{}");
    for f in [tcp4(443, true, false), udp6(53), arp(), vec![0; 3]] {
        assert_eq!(set.evaluate_frame(&f), RuleVerdict::NoRules);
        assert!(set.evaluate_frame(&f).mirrors());
    }
}

#[test]
fn first_match_decides_and_unmatched_is_not_mirrored() {
    let set = rules(
        "rules:
          - {action: Reject, protocol: TCP, destinationPorts: [{from: 443}]}
          - {action: Accept, protocol: TCP}",
    );
    assert_eq!(
        verdict(&set, &tcp4(443, true, false)),
        RuleVerdict::Rejected(0)
    );
    assert_eq!(
        verdict(&set, &tcp4(80, true, false)),
        RuleVerdict::Accepted(1)
    );
    assert_eq!(verdict(&set, &udp6(53)), RuleVerdict::Unmatched);
    assert!(!RuleVerdict::Unmatched.mirrors());
}

#[test]
fn only_unconditional_rules_match_non_ip() {
    let set = rules("rules: [{action: Reject, sourceCIDRs: [198.18.0.0/15]}, {action: Accept}]");
    assert_eq!(verdict(&set, &arp()), RuleVerdict::Accepted(1));
    assert_eq!(
        verdict(&set, &tcp4(1, false, false)),
        RuleVerdict::Rejected(0)
    );
    let set = rules("rules: [{action: Accept, protocol: 0x11}]");
    assert_eq!(verdict(&set, &arp()), RuleVerdict::Unmatched);
}

#[test]
fn cidrs_by_family_and_side() {
    let set = rules("rules: [{action: Accept, sourceCIDRs: [198.18.0.0/24, 'fd00:198:18::/64']}]");
    assert!(verdict(&set, &tcp4(1, false, false)).mirrors());
    assert!(verdict(&set, &udp6(1)).mirrors());
    let set = rules("rules: [{action: Accept, destinationCIDRs: [198.18.0.0/24]}]");
    assert!(
        !verdict(&set, &tcp4(1, false, false)).mirrors(),
        "destination is 198.19.1.2"
    );
    assert!(
        !verdict(&set, &udp6(1)).mirrors(),
        "an IPv4 list never matches IPv6"
    );
}

#[test]
fn nested_prefixes_in_the_lpm_tables() {
    let set = rules(
        "rules:
          - {action: Reject, sourceCIDRs: [198.18.0.0/24], protocol: UDP}
          - {action: Accept, sourceCIDRs: [198.18.0.0/15]}
          - {action: Accept, destinationCIDRs: [198.19.1.2]}",
    );
    let plan = set.prefilter_plan().expect("few rules");
    let table = plan.lpm_v4(Side::Source);
    let entries: Vec<(String, u64)> = table
        .entries
        .iter()
        .map(|(n, b)| (n.to_string(), *b))
        .collect();
    assert_eq!(
        entries,
        [
            ("198.18.0.0/15".into(), 0b010),
            ("198.18.0.0/24".into(), 0b011)
        ]
    );
    assert_eq!(table.any, 0b100);
    assert_eq!(
        verdict(&set, &tcp4(1, false, false)),
        RuleVerdict::Accepted(1)
    );
}

#[test]
fn ports_without_protocol_mean_tcp_udp_sctp() {
    let set = rules("rules: [{action: Accept, destinationPorts: [{from: 50, to: 60}]}]");
    assert!(verdict(&set, &udp6(53)).mirrors());
    assert!(verdict(&set, &tcp4(60, false, false)).mirrors());
    assert!(!verdict(&set, &tcp4(61, false, false)).mirrors());
    let mut sctp = [40000u16.to_be_bytes(), 53u16.to_be_bytes()].concat();
    sctp.extend_from_slice(&[0; 8]);
    assert!(verdict(&set, &ipv6_with(Default::default(), ip_number::SCTP, &sctp)).mirrors());
    let mut icmp = Vec::new();
    PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(V4_A, V4_B, 64)
        .icmpv4_echo_request(53, 53)
        .write(&mut icmp, &[])
        .expect("build");
    assert!(!verdict(&set, &icmp).mirrors(), "ICMP has no ports");
}

#[test]
fn tcp_flags_must_all_be_set() {
    let set = rules("rules: [{action: Accept, tcpFlags: [SYN, ACK]}]");
    assert!(verdict(&set, &tcp4(1, true, true)).mirrors());
    assert!(!verdict(&set, &tcp4(1, true, false)).mirrors());
    assert!(!verdict(&set, &udp6(1)).mirrors());
}

#[test]
fn vlan_tags_are_looked_through() {
    let set = rules("rules: [{action: Accept, protocol: TCP, destinationPorts: [{from: 443}]}]");
    let tagged = vlan(&tcp4(443, false, false), 100);
    assert!(verdict(&set, &tagged).mirrors());
    assert!(verdict(&set, &vlan(&tagged, 200)).mirrors(), "QinQ");
}

#[test]
fn later_fragments_have_no_ports() {
    let set = rules("rules: [{action: Accept, protocol: TCP, destinationPorts: [{from: 443}]}]");
    let first = tcp4_fragment(0, true, &tcp_header(40000, 443, 0x02));
    assert_eq!(
        Headers::parse(&first).ip.map(|ip| ip.fragment),
        Some(Fragment::First)
    );
    assert!(
        verdict(&set, &first).mirrors(),
        "a first fragment has its ports"
    );
    // A later fragment whose data happens to look like port 443.
    let later = tcp4_fragment(185, false, &tcp_header(443, 443, 0x02));
    assert_eq!(Headers::parse(&later).ip.and_then(|ip| ip.ports), None);
    assert!(!verdict(&set, &later).mirrors());
    let by_protocol = rules("rules: [{action: Accept, protocol: TCP, sourceCIDRs: [198.18.0.1]}]");
    assert!(
        verdict(&by_protocol, &later).mirrors(),
        "protocol and CIDRs still match"
    );
}

#[test]
fn ipv6_extension_headers_are_looked_past() {
    let set = rules("rules: [{action: Accept, protocol: TCP, destinationPorts: [{from: 443}]}]");
    let hop = Ipv6RawExtHeader::new_raw(ip_number::TCP, &[0; 6]).expect("ext");
    let exts = Ipv6Extensions {
        hop_by_hop_options: Some(hop),
        ..Default::default()
    };
    assert!(
        verdict(
            &set,
            &ipv6_with(exts, ip_number::TCP, &tcp_header(1, 443, 0))
        )
        .mirrors()
    );
    let frag = |offset, more| Ipv6Extensions {
        fragment: Some(Ipv6FragmentHeader::new(
            ip_number::TCP,
            IpFragOffset::try_new(offset).expect("offset"),
            more,
            7,
        )),
        ..Default::default()
    };
    let first = ipv6_with(frag(0, true), ip_number::TCP, &tcp_header(1, 443, 0));
    assert!(verdict(&set, &first).mirrors());
    let later = ipv6_with(frag(100, false), ip_number::TCP, &tcp_header(443, 443, 0));
    let ip = Headers::parse(&later).ip.expect("ipv6");
    assert_eq!(
        (ip.protocol, ip.fragment, ip.ports),
        (6, Fragment::Later, None)
    );
    assert!(!verdict(&set, &later).mirrors());
}

#[test]
fn truncated_frames_meet_only_the_conditions_they_carry() {
    let port = rules("rules: [{action: Accept, protocol: TCP, destinationPorts: [{from: 443}]}]");
    let flags = rules("rules: [{action: Reject, tcpFlags: [SYN]}, {action: Accept}]");
    let frame = tcp4(443, true, false);
    // 14 Ethernet + 20 IPv4 + 4 bytes of TCP: ports, no flags.
    let cut = &frame[..38];
    assert!(verdict(&port, cut).mirrors());
    assert_eq!(
        verdict(&flags, cut),
        RuleVerdict::Accepted(1),
        "flags unknown: not rejected"
    );
    assert_eq!(
        verdict(&flags, &frame[..48]),
        RuleVerdict::Rejected(0),
        "byte 13 captured"
    );
    assert!(!verdict(&port, &frame[..36]).mirrors(), "ports cut off");
}

#[test]
fn long_rule_sets_get_no_prefilter_plan() {
    let many: String = (0..=PrefilterPlan::MAX_RULES)
        .map(|i| format!("  - {{action: Accept, destinationPorts: [{{from: {i}}}]}}\n"))
        .collect();
    let set = rules(&format!("rules:\n{many}"));
    assert!(set.prefilter_plan().is_none());
    assert!(set.evaluate_frame(&tcp4(64, false, false)).mirrors());
}
