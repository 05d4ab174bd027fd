//! The oracle of the filter tests: tcpdump reading the frames from a pcap
//! file, and the rule sets with their meaning in tcpdump's language.

use std::{
    collections::BTreeSet,
    fs::File,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use pcap_file::{
    DataLink, Endianness,
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
};

use super::frames::Frame;

pub fn write_pcap(dir: &Path, frames: &[Frame]) -> PathBuf {
    let path = dir.join("frames.pcap");
    let file = File::create(&path).expect("create pcap");
    let header = PcapHeader {
        snaplen: 262_144,
        datalink: DataLink::ETHERNET,
        endianness: Endianness::native(),
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(file, header).expect("pcap header");
    for (i, f) in frames.iter().enumerate() {
        // The timestamp carries the frame's index through tcpdump.
        let ts = Duration::from_secs(i as u64 + 1);
        w.write_packet(&PcapPacket::new(ts, f.orig_len, &f.data))
            .expect("write packet");
    }
    path
}

/// Indexes of the frames `tcpdump -r FILE -w - EXPR` keeps.
pub fn tcpdump_keeps(file: &Path, expression: &str) -> BTreeSet<usize> {
    let mut cmd = Command::new("tcpdump");
    cmd.args(["-n", "-Z", "root", "-r"])
        .arg(file)
        .args(["-w", "-"]);
    if !expression.is_empty() {
        cmd.arg(expression);
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run tcpdump, the oracle of these tests ({e}); install it with `cargo xtask setup`"
        ),
    };
    assert!(
        out.status.success(),
        "tcpdump failed on {expression:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut reader = PcapReader::new(&out.stdout[..]).expect("tcpdump wrote pcap");
    let mut kept = BTreeSet::new();
    while let Some(p) = reader.next_packet() {
        let p = p.expect("tcpdump's packet");
        kept.insert(p.timestamp.as_secs() as usize - 1);
    }
    kept
}

/// tcpdump's expression for "E, seen through up to two VLAN tags of any
/// TPID libpcap's `vlan` knows", as the rules see packets. Each `vlan`
/// moves the offsets of the rest of the expression on by 4 bytes, across
/// `or` too: so the untagged case comes first (tested with `ether[]`, which
/// never moves), then one tag, and the second `vlan` of the last branch
/// reads the inner tag where the first left the offsets.
pub fn through_tags(e: &str) -> String {
    let tag = |at: u32| {
        format!("(ether[{at}:2] == 0x8100 or ether[{at}:2] == 0x88a8 or ether[{at}:2] == 0x9100)")
    };
    format!(
        "(not {t12} and ({e})) or (vlan and not {t16} and ({e})) or ({t12} and vlan and ({e}))",
        t12 = tag(12),
        t16 = tag(16)
    )
}

/// Rule sets and their meaning in tcpdump's language. Where tcpdump needs
/// help to see what the rules see (IPv6 extension headers, TCP flags over
/// IPv6), the expression spells it out.
pub const RULE_SETS: &[(&str, &str)] = &[
    ("{}", ""),
    (
        "rules: [{action: Accept, protocol: TCP, destinationPorts: [{from: 443}]}]",
        "tcp dst port 443",
    ),
    (
        "rules: [{action: Accept, sourceCIDRs: [198.18.0.0/24, 'fd00:198:18::/64']}]",
        "ip src net 198.18.0.0/24 or ip6 src net fd00:198:18::/64",
    ),
    (
        "rules: [{action: Reject, protocol: UDP, destinationPorts: [{from: 53}]}, \
                 {action: Accept, destinationCIDRs: [198.18.0.0/15]}]",
        "not (udp dst port 53) and (ip dst net 198.18.0.0/15)",
    ),
    (
        "rules: [{action: Accept, tcpFlags: [SYN]}]",
        "(ip and tcp[tcpflags] & tcp-syn != 0) or (ip6 and ip6[6] == 6 and ip6[53] & 0x02 != 0)",
    ),
    (
        "rules: [{action: Accept, protocol: TCP, tcpFlags: [SYN, ACK]}]",
        "(ip and tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)) \
         or (ip6 and ip6[6] == 6 and ip6[53] & 0x12 == 0x12)",
    ),
    (
        // The rules look past the hop-by-hop header (MLD sits behind one).
        "rules: [{action: Accept, protocol: ICMP}, {action: Accept, protocol: ICMPv6}]",
        "icmp or icmp6 or (ip6 and ip6[6] == 0 and ip6[40] == 58)",
    ),
    (
        "rules: [{action: Accept, protocol: 4}]",
        "ip proto 4 or ip6 proto 4",
    ),
    (
        // Ports without a protocol: TCP, UDP, SCTP, as tcpdump's `portrange`,
        // plus IPv6 first fragments and ports behind a hop-by-hop header.
        "rules: [{action: Accept, destinationPorts: [{from: 8000, to: 8100}]}]",
        "dst portrange 8000-8100 \
         or (ip6 and ip6[6] == 44 and ip6[42:2] & 0xfff8 == 0 \
             and (ip6[40] == 6 or ip6[40] == 17 or ip6[40] == 132) \
             and ip6[50:2] >= 8000 and ip6[50:2] <= 8100) \
         or (ip6 and ip6[6] == 0 and (ip6[40] == 6 or ip6[40] == 17 or ip6[40] == 132) \
             and ip6[40 + (ip6[41] + 1) * 8 + 2 : 2] >= 8000 \
             and ip6[40 + (ip6[41] + 1) * 8 + 2 : 2] <= 8100)",
    ),
    (
        "rules: [{action: Reject, protocol: TCP}, {action: Accept}]",
        "not tcp",
    ),
    (
        "rules: [{action: Accept, protocol: SCTP, destinationPorts: [{from: 443}]}]",
        "sctp dst port 443",
    ),
    (
        "rules: [{action: Accept, protocol: UDP, destinationCIDRs: [198.19.1.2], sourcePorts: [{from: 5353}]}]",
        "ip dst host 198.19.1.2 and udp src port 5353",
    ),
    (
        "rules: [{action: Reject, sourceCIDRs: [198.18.0.200]}, \
                 {action: Accept, destinationCIDRs: ['fd00:198:18:1::/64', 198.18.0.2]}]",
        "not (ip src host 198.18.0.200) and (ip6 dst net fd00:198:18:1::/64 or ip dst host 198.18.0.2)",
    ),
    (
        "rules: [{action: Accept, protocol: TCP, sourcePorts: [{from: 0}]}]",
        "tcp src port 0",
    ),
];
