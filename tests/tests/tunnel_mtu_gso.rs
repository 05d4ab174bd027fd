//! Tunnels on paths that bound what a copy may be, judged by tshark and
//! tcpdump: GENEVE, GRE, ERSPAN II and ERSPAN III over a 1500-byte path cut
//! longer copies to exactly fit it (never IP-fragmented), keep the original
//! length where the encapsulation carries one, count each cut and log one
//! line naming the output and the MTU; GENEVE with `gso=true` sends runs of
//! copies as UDP GSO messages, which the kernel cuts into datagrams tshark
//! dissects one copy each, equal to tcpdump's frames on the pod's veth.

use std::{
    collections::HashMap,
    net::{IpAddr, UdpSocket},
    path::PathBuf,
};

use tempfile::TempDir;
use testbed::{
    agent::{Agent, Exit},
    capture::{self, Frame},
    netns::join,
    rawbpf::{self, Hook, Stats, TcProgram},
    scenario::{assert_same_frames, assert_same_frames_exact},
    tcpdump::{FEW_FRAMES, Tcpdump},
    topology::{CollectorLink, PodPair},
    traffic,
    tshark::{Dissected, Row, Severity, Tshark},
};

/// The collector link's MTU when the path is left as it is (veth's default).
const PATH_MTU: usize = 1500;

struct Run {
    pod_veth: Vec<Frame>,
    outer: PathBuf,
    exit: Exit,
    /// On [`CollectorPath::JumboSoftwareGso`]: how many packets (a GSO message is
    /// one) left the node's end of the link, as the kernel counted the
    /// runs of a program of the test's own on its tcx egress hook, which
    /// comes before the kernel cuts GSO messages into datagrams.
    egress_packets: Option<u64>,
    _dir: TempDir,
}

/// How the path to the collector is set up. Either way the node's end of
/// the link has no UDP segmentation offload: the kernel itself cuts each
/// UDP GSO message (UDP tunnels send them by default) into datagrams
/// before tcpdump and the collector see them, as a NIC would on a wire.
#[derive(Clone, Copy, PartialEq)]
enum CollectorPath {
    /// 1500 bytes, the MTU taken from the route (no `mtu=`).
    Narrow,
    /// 9000 bytes, `mtu=9000`, and a count of the packets leaving the node.
    JumboSoftwareGso,
}

/// Both directions, pings, and UDP from small to IP-fragmented, with runs
/// of equal sizes (what UDP GSO merges).
fn traffic(p: &PodPair) -> anyhow::Result<()> {
    let (node, pod) = (IpAddr::V4(p.node_v4), IpAddr::V4(p.pod_v4));
    p.flush_neighbours()?;
    traffic::ping(&p.pod, node, 3)?;
    traffic::udp(&p.pod, &p.node, node, 5001, &[0, 100, 1472, 1473, 4000])?;
    traffic::udp(&p.node, &p.pod, pod, 5002, &[1, 1473, 4000])?;
    traffic::udp(&p.pod, &p.node, node, 5003, &[200; 40])?;
    // Frames of 1492 bytes: longer than any tunnel leaves room for on 1500.
    traffic::udp(&p.node, &p.pod, pod, 5004, &[1450; 20])
}

/// Mirrors the pod's veth to `SCHEME://COLLECTOR?PARAMS` over `path`;
/// tcpdump records the pod's veth and, at the collector, packets matching
/// `filter`. `udp_port`: the tunnel's port, where a socket listens (without
/// one the collector answers with ICMP, as a sniffing receiver would).
fn run(
    scheme: &str,
    params: &str,
    path: CollectorPath,
    filter: &str,
    udp_port: Option<u16>,
) -> Run {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    if path == CollectorPath::JumboSoftwareGso {
        for (ns, dev) in [(&pair.node, &link.node_if), (&link.ns, &link.collector_if)] {
            ns.ip(&["link", "set", dev, "mtu", "9000"]).expect("mtu");
        }
    }
    // UDP tunnels send GSO messages by default, on the narrow path too.
    link.segment_like_a_nic(&pair.node)
        .expect("software UDP segmentation");
    let counting = (path == CollectorPath::JumboSoftwareGso).then(|| {
        let stats = Stats::enable().expect("BPF run statistics");
        let prog = TcProgram::pass().expect("a counting program");
        let attached = prog
            .attach(&pair.node, &link.node_if, Hook::Egress)
            .expect("attach the counting program");
        (stats, prog, attached)
    });
    let _sink: Option<UdpSocket> = udp_port.map(|port| {
        join(
            link.ns
                .spawn(move || Ok(UdpSocket::bind(("0.0.0.0", port))?)),
        )
        .expect("UDP socket at the collector")
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let small = FEW_FRAMES;
    let at_pod = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dir.path().join("pod.pcap"),
        &small,
    )
    .expect("tcpdump on the pod veth");
    let at_collector = Tcpdump::start(
        &link.ns,
        &link.collector_if,
        dir.path().join("outer.pcap"),
        &[&small[..], &[filter]].concat(),
    )
    .expect("tcpdump at the collector");
    let output = format!("{scheme}://{}?{params}", link.collector_v4);
    let agent = Agent::start(
        &pair.node,
        &["attach", "-i", &pair.host_if, "--output", &output],
    )
    .expect("agent starts");
    // Every datagram and ping arrived, so every frame passed the hook; the
    // agent drains its ring and sends what it holds before it exits.
    traffic(&pair).expect("traffic");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let pod = at_pod.stop().expect("tcpdump pod");
    let outer = at_collector.stop().expect("tcpdump collector");
    let egress_packets = counting.map(|(_stats, prog, _attached)| {
        let chain = rawbpf::chain(&pair.node, &link.node_if, Hook::Egress).expect("tcx query");
        chain
            .iter()
            .find(|p| p.id == prog.id())
            .unwrap_or_else(|| panic!("the counting program left the chain: {chain:?}"))
            .run_count
    });
    Run {
        pod_veth: capture::read(&pod).expect("read"),
        outer,
        exit,
        egress_packets,
        _dir: dir,
    }
}

fn output_field(exit: &Exit, field: &str) -> u64 {
    exit.fields_of("output summary").expect("output summary")[field]
}

/// The kernel took the output's GSO messages: fewer packets left the node
/// than there were `copies`, every copy was sent, and none failed.
fn assert_sent_as_gso_messages(r: &Run, copies: usize) {
    assert!(
        !r.exit.stderr.contains("UDP GSO refused"),
        "the kernel refused the GSO messages:\n{}",
        r.exit.stderr
    );
    let egress = r.egress_packets.expect("counted");
    assert!(
        egress < copies as u64,
        "{egress} packets left for {copies} copies: no GSO messages"
    );
    eprintln!("{copies} copies left the node in {egress} packets");
    assert_eq!(output_field(&r.exit, "sent"), copies as u64);
    assert_eq!(output_field(&r.exit, "lost_send_error"), 0);
}

/// Each packet tshark dissected, with `fields`: every one holds exactly
/// an outer and an inner Ethernet frame, and the counts agree.
fn dissect(r: &Run, fields: &[&str]) -> Vec<(Row, Dissected)> {
    let ts = Tshark::new(&r.outer).check_checksums(&["ip"]);
    let dissected = ts.ethernet_layers().expect("tshark JSON");
    let rows = ts.fields(fields).expect("tshark fields");
    assert_eq!(rows.len(), dissected.len(), "tshark read two packet counts");
    for (i, d) in dissected.iter().enumerate() {
        assert_eq!(
            d.ethernet_at.len(),
            2,
            "packet {i}: Ethernet headers at {:?}, not an outer and an inner one",
            d.ethernet_at
        );
    }
    assert!(
        r.pod_veth.len() >= 60,
        "too little traffic ({} frames on the pod veth)",
        r.pod_veth.len()
    );
    rows.into_iter().zip(dissected).collect()
}

/// The inner frames as tshark cut them out, each whole as far as it goes.
fn inner_frames(packets: &[(Row, Dissected)]) -> Vec<Frame> {
    packets
        .iter()
        .map(|(_, d)| Frame {
            data: d.inner().to_vec(),
            orig_len: d.inner().len() as u32,
            interface: None,
            dir: None,
            ts_ns: 0,
        })
        .collect()
}

/// A 1500-byte path: every copy's outer IP packet fits it, copies of
/// longer frames fill it exactly and hold the frame's first bytes (its
/// checksums finished, as on a wire), every other copy is the whole frame;
/// the cuts are counted and logged once, naming the output and the MTU.
/// `field` names tshark's field for the original length or truncation
/// flag of the encapsulation, and `carried` says what it must hold for a
/// copy of a frame of `orig` bytes cut to `inner` bytes.
fn cut_at_the_path_mtu(
    scheme: &str,
    params: &str,
    filter: &str,
    udp_port: Option<u16>,
    field: Option<&str>,
    carried: impl Fn(usize, usize) -> String,
) {
    let r = run(scheme, params, CollectorPath::Narrow, filter, udp_port);
    let mut names = vec!["ip.len", "ip.flags.mf", "ip.frag_offset"];
    names.extend(field);
    let packets = dissect(&r, &names);
    // The encapsulation's overhead: outer IP length less the inner frame.
    let overhead: Vec<usize> = packets
        .iter()
        .map(|(row, d)| row["ip.len"][0].parse::<usize>().expect("ip.len") - d.inner().len())
        .collect();
    assert!(
        overhead.iter().all(|o| *o == overhead[0]),
        "the header length varies: {overhead:?}"
    );
    let room = PATH_MTU - overhead[0];
    let wire = testbed::wire::finished(&r.pod_veth);
    let expected: Vec<Frame> = wire
        .iter()
        .map(|f| {
            let n = f.data.len().min(room);
            Frame {
                data: f.data[..n].to_vec(),
                orig_len: n as u32,
                ..f.clone()
            }
        })
        .collect();
    let inner = inner_frames(&packets);
    assert_same_frames_exact(&expected, &inner);
    let long = wire.iter().filter(|f| f.data.len() > room).count();
    assert!(
        long >= 20,
        "too few frames longer than {room} bytes: {long}"
    );
    // What each cut copy may carry: the original lengths of frames whose
    // first `room` bytes it holds.
    let mut origs: HashMap<&[u8], Vec<usize>> = HashMap::new();
    for f in &wire {
        origs
            .entry(&f.data[..f.data.len().min(room)])
            .or_default()
            .push(f.data.len());
    }
    for (i, (row, d)) in packets.iter().enumerate() {
        let ctx = format!("packet {i}: {row:?}");
        let ip_len: usize = row["ip.len"][0].parse().expect("ip.len");
        assert!(ip_len <= PATH_MTU, "{ctx}");
        assert_eq!(row["ip.flags.mf"][0], "0", "{ctx}");
        assert_eq!(row["ip.frag_offset"][0], "0", "{ctx}");
        let inner = d.inner();
        let cut = inner.len() == room && origs[inner].iter().any(|&o| o > room);
        if cut {
            assert_eq!(ip_len, PATH_MTU, "a cut copy must fill the path: {ctx}");
        }
        if let Some(field) = field {
            let options: Vec<String> = origs[inner]
                .iter()
                .map(|&orig| carried(orig, inner.len()))
                .collect();
            assert!(
                options.contains(&row[field][0]),
                "{field} is {:?}, not one of {options:?}: {ctx}",
                row[field]
            );
        }
    }
    assert_eq!(output_field(&r.exit, "mtu_truncated"), long as u64);
    assert_eq!(output_field(&r.exit, "sent"), packets.len() as u64);
    assert_eq!(output_field(&r.exit, "lost_send_error"), 0);
    let logged: Vec<&str> = r
        .exit
        .stderr
        .lines()
        .filter(|l| l.contains("cut to fit the tunnel's MTU"))
        .collect();
    assert_eq!(logged.len(), 1, "one line for the cuts:\n{}", r.exit.stderr);
    assert!(
        logged[0].contains("mtu=1500") && logged[0].contains("198.18.1.2"),
        "the line names neither the output nor the MTU: {}",
        logged[0]
    );
    eprintln!(
        "{scheme}: {} copies, {long} cut to {room} bytes of frame",
        packets.len()
    );
}

/// GENEVE's first option is the original length, as 4 bytes of hex.
#[test]
fn geneve_cuts_at_the_path_mtu_and_carries_the_original_length() {
    cut_at_the_path_mtu(
        "geneve",
        "vni=42",
        "udp port 6081",
        Some(6081),
        Some("geneve.option.unknown.data"),
        |orig, _| format!("{orig:08x}"),
    );
}

/// GRE carries no length: the cut copies are the frames' first bytes.
#[test]
fn gre_cuts_at_the_path_mtu() {
    cut_at_the_path_mtu("gre", "key=7&seq=true", "proto gre", None, None, |_, _| {
        String::new()
    });
}

/// ERSPAN's T bit says a copy was cut.
fn truncated(orig: usize, inner: usize) -> String {
    u8::from(inner < orig).to_string()
}

#[test]
fn erspan2_cuts_at_the_path_mtu_and_sets_the_truncated_bit() {
    cut_at_the_path_mtu(
        "erspan2",
        "session=5",
        "proto gre",
        None,
        Some("erspan.truncated"),
        truncated,
    );
}

#[test]
fn erspan3_cuts_at_the_path_mtu_and_sets_the_truncated_bit() {
    cut_at_the_path_mtu(
        "erspan3",
        "session=6&hwid=3",
        "proto gre",
        None,
        Some("erspan.truncated"),
        truncated,
    );
}

/// `gso=true`: the kernel takes the agent's UDP GSO messages (no "refused"
/// fallback, and fewer packets than copies reach the link's egress hook),
/// cuts them into datagrams, and each is one GENEVE copy that
/// tshark dissects cleanly, whose inner frame is one tcpdump saw on the
/// pod's veth, all of them there, with its own original length.
#[test]
fn geneve_gso_messages_arrive_as_one_clean_copy_per_datagram() {
    let r = run(
        "geneve",
        "vni=42&mtu=9000&gso=true",
        CollectorPath::JumboSoftwareGso,
        "udp port 6081",
        Some(6081),
    );
    Tshark::new(&r.outer)
        .check_checksums(&["ip"])
        .assert_clean(Severity::Warning);
    let packets = dissect(&r, &["geneve.option.unknown.data"]);
    let inner = inner_frames(&packets);
    assert_same_frames(&r.pod_veth, &inner);
    for (i, (row, d)) in packets.iter().enumerate() {
        assert_eq!(
            row["geneve.option.unknown.data"][0],
            format!("{:08x}", d.inner().len()),
            "packet {i}: {row:?}"
        );
    }
    // Several copies per packet before the kernel cut them: GSO was used.
    assert_sent_as_gso_messages(&r, packets.len());
    assert_eq!(output_field(&r.exit, "mtu_truncated"), 0);
}

/// The URI as a user types it (no `gso=`): VXLAN sends UDP GSO messages,
/// which the kernel cuts into datagrams that tshark dissects cleanly, one
/// copy of a frame of the pod's veth each, all of them there.
#[test]
fn vxlan_sends_gso_messages_by_default() {
    let r = run(
        "vxlan",
        "vni=42&mtu=9000",
        CollectorPath::JumboSoftwareGso,
        "udp port 4789",
        Some(4789),
    );
    Tshark::new(&r.outer)
        .check_checksums(&["ip"])
        .assert_clean(Severity::Warning);
    let packets = dissect(&r, &["vxlan.vni"]);
    assert_same_frames(&r.pod_veth, &inner_frames(&packets));
    assert_sent_as_gso_messages(&r, packets.len());
}

/// `gso=false`: one packet leaves the node per copy.
#[test]
fn gso_false_sends_one_datagram_per_copy() {
    let r = run(
        "vxlan",
        "vni=42&mtu=9000&gso=false",
        CollectorPath::JumboSoftwareGso,
        "udp port 4789",
        Some(4789),
    );
    let packets = dissect(&r, &["vxlan.vni"]);
    assert_same_frames(&r.pod_veth, &inner_frames(&packets));
    // The hook also runs for the node's own ARP and the like on this
    // link: at least one packet per copy.
    let egress = r.egress_packets.expect("counted");
    assert!(
        egress >= packets.len() as u64,
        "{egress} packets left for {} copies: GSO was used",
        packets.len()
    );
}
