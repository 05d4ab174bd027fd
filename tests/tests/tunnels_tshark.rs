//! Every tunnel, on real packets, judged by tshark: the real agent mirrors a
//! pod's veth to a collector namespace over VXLAN, GENEVE, GRE, ERSPAN II or
//! ERSPAN III, and tcpdump records the tunnel packets as they arrive there.
//! tshark must find nothing malformed and no error-level expert info, must
//! show the header fields the URI asked for, and the inner frames, cut out
//! where tshark says the inner Ethernet header starts, must equal what
//! tcpdump saw on the pod's veth.
//!
//! The path to the collector has a 9000-byte MTU and the URIs say `mtu=9000`,
//! so no copy is cut; its node end cuts UDP GSO messages (the default of
//! UDP tunnels) into datagrams, as a NIC does. TCP is left out: on veth the hook sees GSO packets of
//! up to 64 KiB, which no 9000-byte path carries whole.

use std::{
    net::{IpAddr, UdpSocket},
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use tempfile::TempDir;
use testbed::{
    agent::{self, Agent},
    capture::{self, Frame},
    netns::{Netns, join},
    scenario::assert_same_frames,
    tcpdump::Tcpdump,
    topology::{CollectorLink, PodPair},
    traffic,
    tshark::{Row, Severity, Tshark},
};

/// Passed as `--node-name`; GENEVE carries it in an option.
const NODE: &str = "tshark-node-1";
const MTU: &str = "9000";

/// What one run left behind, and what the checks need to know about it.
struct Run {
    pod_veth: Vec<Frame>,
    outer: PathBuf,
    agent_stderr: String,
    host_if: String,
    /// The host veth's index in the node namespace: the agent's ifindex.
    ifindex: u32,
    pod_mac: String,
    host_mac: String,
    /// Unix time in ns just before the agent started and just after it stopped.
    window_ns: (u128, u128),
    /// Holds the capture files.
    _dir: TempDir,
}

/// `ifindex` and MAC address of `dev` in `ns`, from `ip -o link`:
/// `5: NAME@if4: <...> ... link/ether 02:... brd ff:...`.
fn link_identity(ns: &Netns, dev: &str) -> (u32, String) {
    let line = ns
        .ip(&["-o", "link", "show", "dev", dev])
        .expect("ip link show");
    let index = line
        .split(':')
        .next()
        .and_then(|i| i.trim().parse().ok())
        .unwrap_or_else(|| panic!("no ifindex in {line}"));
    let mac = line
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {line}"));
    (index, mac.to_owned())
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// Both directions, ARP, ICMP with two precedences, and UDP from empty to
/// IP-fragmented.
fn traffic(p: &PodPair) -> anyhow::Result<()> {
    let (node, pod) = (IpAddr::V4(p.node_v4), IpAddr::V4(p.pod_v4));
    p.flush_neighbours()?;
    traffic::ping(&p.pod, node, 3)?;
    // TOS 0xb8 (DSCP EF): IP precedence 5, which ERSPAN copies into its COS.
    p.pod.exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        "2",
        "-i",
        "0.05",
        "-W",
        "2",
        "-Q",
        "0xb8",
        &node.to_string(),
    ])?;
    traffic::udp(&p.pod, &p.node, node, 5001, &[0, 100, 1472, 1473, 4000])?;
    traffic::udp(&p.node, &p.pod, pod, 5002, &[1, 1473, 4000])
}

/// Builds a pod pair and a 9000-byte collector link, captures the pod veth
/// and the collector's end of the link (only packets matching `filter`),
/// and runs the agent with `SCHEME://COLLECTOR?PARAMS&mtu=9000` while
/// [`traffic`] runs. `udp_port` is the tunnel's port for a UDP tunnel.
fn run(scheme: &str, params: &str, filter: &str, udp_port: Option<u16>) -> Run {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    for (ns, dev) in [(&pair.node, &link.node_if), (&link.ns, &link.collector_if)] {
        ns.ip(&["link", "set", dev, "mtu", MTU]).expect("mtu");
    }
    // UDP tunnels send GSO messages by default: cut on the way out, as a NIC
    // would, so tcpdump at the collector sees the datagrams a wire carries.
    link.segment_like_a_nic(&pair.node)
        .expect("software UDP segmentation");
    // A collector listens on its port. Without a socket there, the collector
    // namespace answers with ICMP port unreachable, which the agent's
    // connected UDP socket reports as ECONNREFUSED on its next send, losing
    // that packet. (GRE goes over a raw socket, which ignores such errors.)
    let _sink: Option<UdpSocket> = udp_port.map(|port| {
        join(
            link.ns
                .spawn(move || Ok(UdpSocket::bind(("0.0.0.0", port))?)),
        )
        .expect("UDP socket at the collector")
    });
    let (ifindex, host_mac) = link_identity(&pair.node, &pair.host_if);
    let (_, pod_mac) = link_identity(&pair.pod, &pair.pod_if);

    let dir = tempfile::tempdir().expect("tempdir");
    let at_pod = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("pod.pcap"), &[])
        .expect("tcpdump on the pod veth");
    let at_collector = Tcpdump::start(
        &link.ns,
        &link.collector_if,
        dir.path().join("outer.pcap"),
        &[filter],
    )
    .expect("tcpdump at the collector");
    let output = format!("{scheme}://{}?{params}&mtu={MTU}", link.collector_v4);
    let args = [
        "attach",
        "-i",
        &pair.host_if,
        "--output",
        &output,
        "--node-name",
        NODE,
    ];
    let start = now_ns();
    let agent = Agent::start(&pair.node, &args).expect("agent starts");
    traffic(&pair).expect("traffic");
    at_pod.settle().expect("the traffic is past the hook");
    let exit = agent.stop().expect("agent stops");
    let end = now_ns();
    assert!(exit.status.success(), "{}", exit.stderr);
    let pod = at_pod.stop().expect("tcpdump pod");
    let outer = at_collector.stop().expect("tcpdump collector");
    Run {
        pod_veth: capture::read(&pod).expect("read"),
        outer,
        agent_stderr: exit.stderr,
        host_if: pair.host_if.clone(),
        ifindex,
        pod_mac,
        host_mac,
        window_ns: (start, end),
        _dir: dir,
    }
}

/// One tunnel packet: tshark's fields and the inner frame it found.
struct Packet {
    row: Row,
    inner: Vec<u8>,
    /// The frame entered the host veth (it came from the pod): the hook's
    /// ingress. Otherwise it left the host veth toward the pod.
    ingress: bool,
}

impl Packet {
    /// The outermost occurrence of `field`.
    fn outer(&self, field: &str) -> &str {
        self.nth(field, 0)
    }

    /// The `n`th occurrence of `field`, or "" if it has fewer.
    fn nth(&self, field: &str, n: usize) -> &str {
        self.row[field].get(n).map_or("", String::as_str)
    }

    fn all(&self, field: &str) -> &[String] {
        &self.row[field]
    }
}

const COMMON_FIELDS: [&str; 10] = [
    "eth.src",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ip.flags.mf",
    "ip.frag_offset",
    "ip.dsfield",
    "udp.srcport",
    "udp.dstport",
    "gre.sequence_number",
];

/// The checks every tunnel gets; returns the packets for its own checks.
/// `ip_proto` is the outer IP protocol (17 UDP, 47 GRE).
fn check_common(r: &Run, ip_proto: u8, extra: &[&str]) -> Vec<Packet> {
    // IP header checksums only. UDP (and TCP) checksums on a veth are left
    // for an offload that never happens: the kernel sends them holding only
    // the pseudo-header sum, and tshark would call them bad ("Bad checksum",
    // an error) both in the outer UDP, which the kernel writes, and in the
    // inner frames, which are byte for byte what tcpdump saw on the pod veth.
    let ts = Tshark::new(&r.outer).check_checksums(&["ip"]);
    // The issue asks for no error-level expert info. Warnings are refused
    // too: none is legitimate here (these captures carry no expert info at
    // all, not even notes).
    ts.assert_clean(Severity::Warning);

    let dissected = ts.ethernet_layers().expect("tshark JSON");
    let mut names = COMMON_FIELDS.to_vec();
    names.extend(extra);
    let rows = ts.fields(&names).expect("tshark fields");
    assert_eq!(rows.len(), dissected.len(), "tshark read two packet counts");
    assert!(
        r.pod_veth.len() >= 20,
        "too little traffic ({} frames on the pod veth)",
        r.pod_veth.len()
    );

    // The inner frames as tshark cut them out equal the pod veth's frames.
    for (i, d) in dissected.iter().enumerate() {
        assert_eq!(
            d.ethernet_at.len(),
            2,
            "packet {i}: tshark found Ethernet headers at {:?}, not an outer and an inner one",
            d.ethernet_at
        );
    }
    let inner: Vec<Frame> = dissected
        .iter()
        .map(|d| Frame {
            data: d.inner().to_vec(),
            orig_len: d.inner().len() as u32,
            interface: None,
            dir: None,
            ts_ns: 0,
        })
        .collect();
    assert_same_frames(&r.pod_veth, &inner);

    let packets: Vec<Packet> = rows
        .into_iter()
        .zip(dissected)
        .map(|(row, d)| {
            let mut p = Packet {
                row,
                inner: d.inner().to_vec(),
                ingress: false,
            };
            let src = p.nth("eth.src", 1).to_owned();
            p.ingress = src == r.pod_mac;
            assert!(
                p.ingress || src == r.host_mac,
                "inner source MAC {src} is neither the pod's {} nor the host veth's {}",
                r.pod_mac,
                r.host_mac
            );
            p
        })
        .collect();
    for (i, p) in packets.iter().enumerate() {
        let ctx = format!("packet {i}: {:?}", p.row);
        assert_eq!(p.outer("ip.src"), "198.18.1.1", "{ctx}");
        assert_eq!(p.outer("ip.dst"), "198.18.1.2", "{ctx}");
        assert_eq!(p.outer("ip.proto"), ip_proto.to_string(), "{ctx}");
        // Copies are never IP-fragmented (the rule for the path MTU).
        assert_eq!(p.outer("ip.flags.mf"), "0", "{ctx}");
        assert_eq!(p.outer("ip.frag_offset"), "0", "{ctx}");
    }
    assert!(
        packets.iter().any(|p| p.ingress) && packets.iter().any(|p| !p.ingress),
        "traffic in only one direction"
    );

    let line = r
        .agent_stderr
        .lines()
        .find(|l| l.contains("output summary"))
        .unwrap_or_else(|| panic!("no output summary:\n{}", r.agent_stderr));
    let summary = agent::fields(line);
    for counter in ["mtu_truncated", "lost_queue_full", "lost_send_error"] {
        assert_eq!(summary[counter], 0, "{counter}: {line}");
    }
    assert_eq!(summary["sent"], packets.len() as u64, "{line}");
    packets
}

/// The class of service ERSPAN should carry: the inner IPv4 precedence
/// (tshark's second `ip.dsfield`), or 0 for a frame without IP.
fn precedence(p: &Packet) -> String {
    let ds = p.nth("ip.dsfield", 1);
    if ds.is_empty() {
        return "0".into();
    }
    let ds = u8::from_str_radix(ds.trim_start_matches("0x"), 16).expect("hex dsfield");
    (ds >> 5).to_string()
}

/// GRE sequence numbers (plain GRE with `seq=true`, and ERSPAN's) count
/// from 0, one per packet, in the order the packets arrived: one raw socket
/// sends them in order and none is lost.
fn assert_sequence_counts_up(packets: &[Packet]) {
    let seqs: Vec<&str> = packets
        .iter()
        .map(|p| p.outer("gre.sequence_number"))
        .collect();
    let expected: Vec<String> = (0..packets.len()).map(|i| i.to_string()).collect();
    assert_eq!(seqs, expected, "GRE sequence numbers");
}

/// One inner UDP flow (pod to node, port 5001, its unfragmented datagrams)
/// leaves by one outer source port: RFC 7348's entropy is per flow.
fn assert_one_source_port_per_flow(packets: &[Packet], tunnel_port: u16) {
    let flow: Vec<&Packet> = packets
        .iter()
        .filter(|p| {
            p.nth("udp.dstport", 1) == "5001"
                && p.nth("ip.flags.mf", 1) == "0"
                && p.nth("ip.frag_offset", 1) == "0"
        })
        .collect();
    assert!(flow.len() >= 3, "too few packets of the 5001 flow");
    for p in &flow {
        assert_eq!(p.outer("udp.dstport"), tunnel_port.to_string());
        assert_eq!(p.outer("udp.srcport"), flow[0].outer("udp.srcport"));
    }
}

#[test]
fn vxlan_real_packets_dissect_cleanly_and_carry_the_pod_frames() {
    let r = run("vxlan", "vni=42", "udp port 4789", Some(4789));
    let packets = check_common(&r, 17, &["vxlan.vni", "vxlan.flag_i"]);
    for p in &packets {
        assert_eq!(p.all("vxlan.vni"), ["42"]);
        assert_eq!(p.all("vxlan.flag_i"), ["1"]);
    }
    assert_one_source_port_per_flow(&packets, 4789);
}

#[test]
fn geneve_real_packets_dissect_cleanly_with_our_options() {
    let r = run("geneve", "vni=4242", "udp port 6081", Some(6081));
    let names = [
        "geneve.vni",
        "geneve.proto_type",
        "geneve.flags.critical",
        "geneve.flags.oam",
        "geneve.option.class",
        "geneve.option.type",
        "geneve.option.type.critical",
        "geneve.option.length",
        "geneve.option.unknown.data",
        "geneve.option.length.invalid",
        "frame.time_epoch",
    ];
    let packets = check_common(&r, 17, &names);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    // NUL-padded to a whole 4-byte word, as the option format requires.
    let padded = |s: &str| {
        let mut b = s.as_bytes().to_vec();
        b.resize(s.len().next_multiple_of(4), 0);
        hex(&b)
    };
    // The pod identity the agent knows here is the hooked interface's name.
    let pod = &r.host_if;
    for p in &packets {
        let ctx = format!("{:?}", p.row);
        assert_eq!(p.all("geneve.vni"), ["0x001092"], "{ctx}");
        assert_eq!(p.all("geneve.proto_type"), ["0x6558"], "{ctx}");
        assert_eq!(p.all("geneve.flags.critical"), ["0"], "{ctx}");
        assert_eq!(p.all("geneve.flags.oam"), ["0"], "{ctx}");
        assert_eq!(p.all("geneve.option.class"), ["0xfff0"; 6], "{ctx}");
        assert_eq!(
            p.all("geneve.option.type"),
            ["0x01", "0x02", "0x03", "0x06", "0x04", "0x05"],
            "{ctx}"
        );
        assert_eq!(p.all("geneve.option.type.critical"), ["0"; 6], "{ctx}");
        assert!(p.all("geneve.option.length.invalid").is_empty(), "{ctx}");
        // Opt Len in bytes, then each option's length with its 4-byte header.
        let strings = |s: &str| 4 + s.len().next_multiple_of(4);
        let lengths: Vec<String> = [3 * 8 + 12 + strings(NODE) + strings(pod), 8, 8, 8, 12]
            .into_iter()
            .chain([strings(NODE), strings(pod)])
            .map(|n| n.to_string())
            .collect();
        assert_eq!(p.all("geneve.option.length"), lengths, "{ctx}");
        // Original length (nothing was cut, so the inner frame's), direction
        // (0 ingress, 1 egress), ifindex, capture time, node, pod.
        let all = p.all("geneve.option.unknown.data");
        assert_eq!(all.len(), 6, "{ctx}");
        // The capture time (u64 ns) came before the copy reached the
        // sensor, where tcpdump stamped it, and not by much.
        let carried = u64::from_str_radix(&all[3], 16).expect("time option") as f64 / 1e9;
        let at_sensor: f64 = p.all("frame.time_epoch")[0]
            .parse()
            .expect("frame.time_epoch");
        assert!(
            carried <= at_sensor + 0.001 && at_sensor - carried < 1.0,
            "carried {carried} vs sensor {at_sensor}: {ctx}"
        );
        let data = [
            format!("{:08x}", p.inner.len()),
            format!("{:08x}", u8::from(!p.ingress)),
            format!("{:08x}", r.ifindex),
            all[3].clone(),
            padded(NODE),
            padded(pod),
        ];
        assert_eq!(all, data, "{ctx}");
    }
    assert_one_source_port_per_flow(&packets, 6081);
}

#[test]
fn gre_real_packets_dissect_cleanly_with_our_key_and_sequence() {
    let r = run("gre", "key=12648430&seq=true", "proto gre", None);
    let names = ["gre.proto", "gre.key", "gre.flags.checksum"];
    let packets = check_common(&r, 47, &names);
    for p in &packets {
        assert_eq!(p.all("gre.proto"), ["0x6558"]);
        assert_eq!(p.all("gre.key"), ["0x00c0ffee"]);
        assert_eq!(p.all("gre.flags.checksum"), ["0"]);
    }
    assert_sequence_counts_up(&packets);
}

#[test]
fn erspan2_real_packets_dissect_cleanly_with_our_session() {
    let r = run("erspan2", "session=1000", "proto gre", None);
    let names = [
        "gre.proto",
        "erspan.version",
        "erspan.spanid",
        "erspan.truncated",
        "erspan.index",
        "erspan.encap",
        "erspan.vlan",
        "erspan.cos",
    ];
    let packets = check_common(&r, 47, &names);
    for p in &packets {
        let ctx = format!("{:?}", p.row);
        assert_eq!(p.all("gre.proto"), ["0x88be"], "{ctx}");
        assert_eq!(p.all("erspan.version"), ["1"], "{ctx}");
        assert_eq!(p.all("erspan.spanid"), ["1000"], "{ctx}");
        assert_eq!(p.all("erspan.truncated"), ["0"], "{ctx}");
        assert_eq!(p.all("erspan.index"), [r.ifindex.to_string()], "{ctx}");
        // Untagged frames: En 0, VLAN 0, COS the IP precedence.
        assert_eq!(p.all("erspan.encap"), ["0"], "{ctx}");
        assert_eq!(p.all("erspan.vlan"), ["0"], "{ctx}");
        assert_eq!(p.all("erspan.cos"), [precedence(p)], "{ctx}");
    }
    assert!(
        packets.iter().any(|p| precedence(p) == "5"),
        "no packet with precedence 5"
    );
    assert_sequence_counts_up(&packets);
}

#[test]
fn erspan3_real_packets_dissect_cleanly_with_direction_hw_id_and_time() {
    let r = run("erspan3", "session=1023&hwid=42", "proto gre", None);
    let names = [
        "gre.proto",
        "erspan.version",
        "erspan.spanid",
        "erspan.truncated",
        "erspan.bso",
        "erspan.timestamp",
        "erspan.gra",
        "erspan.hw",
        "erspan.direction",
        "erspan.o",
        "erspan.p",
        "erspan.ft",
        "erspan.sgt",
        "erspan.vlan",
        "erspan.cos",
    ];
    let packets = check_common(&r, 47, &names);
    // Granularity 0: units of 100 µs of Unix time, low 32 bits.
    let units = |ns: u128| (ns / 100_000) as u32;
    let (lo, hi) = (units(r.window_ns.0), units(r.window_ns.1));
    for p in &packets {
        let ctx = format!("{:?}", p.row);
        assert_eq!(p.all("gre.proto"), ["0x22eb"], "{ctx}");
        assert_eq!(p.all("erspan.version"), ["2"], "{ctx}");
        assert_eq!(p.all("erspan.spanid"), ["1023"], "{ctx}");
        assert_eq!(p.all("erspan.truncated"), ["0"], "{ctx}");
        assert_eq!(p.all("erspan.bso"), ["0"], "{ctx}");
        assert_eq!(p.all("erspan.gra"), ["0"], "{ctx}");
        assert_eq!(p.all("erspan.hw"), ["42"], "{ctx}");
        // D: 0 for a frame the host veth received (from the pod), 1 for one it sent.
        let d = if p.ingress { "0" } else { "1" };
        assert_eq!(p.all("erspan.direction"), [d], "{ctx}");
        assert_eq!(p.all("erspan.o"), ["0"], "{ctx}");
        assert_eq!(p.all("erspan.p"), ["1"], "{ctx}");
        assert_eq!(p.all("erspan.ft"), ["0"], "{ctx}");
        assert_eq!(p.all("erspan.sgt"), ["0"], "{ctx}");
        assert_eq!(p.all("erspan.vlan"), ["0"], "{ctx}");
        assert_eq!(p.all("erspan.cos"), [precedence(p)], "{ctx}");
        // Taken while the agent ran (wrapping: the low 32 bits roll over).
        let stamp: u32 = p.outer("erspan.timestamp").parse().expect("timestamp");
        assert!(
            stamp.wrapping_sub(lo) <= hi.wrapping_sub(lo),
            "timestamp {stamp} outside the run [{lo}, {hi}]: {ctx}"
        );
    }
    assert_sequence_counts_up(&packets);
}
