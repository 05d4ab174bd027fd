//! Tunnels checked by receivers we did not write: the Linux kernel's own
//! VXLAN device decapsulates the agent's VXLAN, and tcpdump on that device
//! must see exactly the frames tcpdump saw on the pod's veth.

use std::net::IpAddr;

use testbed::{
    agent::{Agent, Exit},
    capture::{self, Frame},
    scenario::assert_same_frames,
    tcpdump::{FEW_FRAMES, Tcpdump},
    topology::{CollectorLink, PodPair},
    traffic,
};

const VNI: u32 = 42;

struct Run {
    pod_veth: Vec<Frame>,
    decapsulated: Vec<Frame>,
    exit: Exit,
}

/// tcpdump on the pod's host veth and on the collector's kernel VXLAN
/// device; the agent mirrors `interfaces` to `output`; `traffic` runs.
fn run(
    pair: &PodPair,
    link: &CollectorLink,
    interfaces: &[&str],
    output: &str,
    extra: &[&str],
    traffic: impl FnOnce(&PodPair) -> anyhow::Result<()>,
) -> Run {
    testbed::require_root();
    let vxlan_dev = link.kernel_vxlan(VNI).expect("kernel vxlan device");
    let dir = tempfile::tempdir().expect("tempdir");
    // Pings and UDP only: no frame over 4 KiB.
    let at_pod = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dir.path().join("pod.pcap"),
        &FEW_FRAMES,
    )
    .expect("tcpdump on the pod veth");
    let at_collector = Tcpdump::start(
        &link.ns,
        &vxlan_dev,
        dir.path().join("vx.pcap"),
        &FEW_FRAMES,
    )
    .expect("tcpdump on the kernel vxlan device");
    let mut args = vec!["attach", "--output", output];
    for i in interfaces {
        args.extend(["-i", i]);
    }
    args.extend(extra);
    let agent = Agent::start(&pair.node, &args).expect("agent starts");
    traffic(pair).expect("traffic");
    at_pod.settle().expect("the traffic is past the hook");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let pod = at_pod.stop().expect("tcpdump pod");
    let vx = at_collector.stop().expect("tcpdump vxlan");
    Run {
        pod_veth: capture::read(&pod).expect("read"),
        decapsulated: capture::read(&vx).expect("read"),
        exit,
    }
}

fn output_field(exit: &Exit, field: &str) -> u64 {
    exit.fields_of("output summary").expect("output summary")[field]
}

fn mixed_traffic(p: &PodPair) -> anyhow::Result<()> {
    p.flush_neighbours()?;
    traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 3)?;
    traffic::udp(
        &p.pod,
        &p.node,
        IpAddr::V4(p.node_v4),
        5001,
        &[0, 100, 1472, 1473, 4000],
    )
}

/// With room for whole frames (a 9000-byte path), the kernel's decapsulated
/// frames equal the pod veth's, byte for byte.
#[test]
fn kernel_vxlan_device_decapsulates_what_tcpdump_saw() {
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    for (ns, dev) in [(&pair.node, &link.node_if), (&link.ns, &link.collector_if)] {
        ns.ip(&["link", "set", dev, "mtu", "9000"]).expect("mtu");
    }
    let output = format!("vxlan://{}?vni={VNI}&mtu=9000", link.collector_v4);
    let r = run(&pair, &link, &[&pair.host_if], &output, &[], mixed_traffic);
    assert!(r.pod_veth.len() >= 10, "too little traffic");
    assert_same_frames(&r.pod_veth, &r.decapsulated);
    assert_eq!(output_field(&r.exit, "mtu_truncated"), 0);
}

/// With `gso=true`, runs of equal-size copies leave as UDP GSO messages;
/// the kernel cuts them into datagrams before its VXLAN device takes them,
/// which then decapsulates exactly the pod veth's frames.
#[test]
fn gso_copies_are_cut_into_datagrams_the_kernel_decapsulates() {
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    for (ns, dev) in [(&pair.node, &link.node_if), (&link.ns, &link.collector_if)] {
        ns.ip(&["link", "set", dev, "mtu", "9000"]).expect("mtu");
    }
    let output = format!("vxlan://{}?vni={VNI}&mtu=9000&gso=true", link.collector_v4);
    let r = run(&pair, &link, &[&pair.host_if], &output, &[], |p| {
        mixed_traffic(p)?;
        // Runs of equal sizes, so GSO has something to merge.
        traffic::udp(&p.pod, &p.node, IpAddr::V4(p.node_v4), 5002, &[200; 64])
    });
    assert!(r.pod_veth.len() >= 70, "too little traffic");
    assert_same_frames(&r.pod_veth, &r.decapsulated);
}

/// On a 1500-byte path, VXLAN over IPv4 leaves 1500 - 20 - 8 - 8 = 1464
/// bytes for the inner frame: longer copies arrive cut to exactly that, and
/// are counted.
#[test]
fn copies_longer_than_the_path_mtu_are_cut_not_fragmented() {
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    let output = format!("vxlan://{}?vni={VNI}", link.collector_v4);
    let r = run(&pair, &link, &[&pair.host_if], &output, &[], mixed_traffic);
    // Checksums are finished before a copy is cut, as on a wire.
    let cut: Vec<Frame> = testbed::wire::finished(&r.pod_veth)
        .iter()
        .map(|f| Frame {
            data: f.data[..f.data.len().min(1464)].to_vec(),
            orig_len: f.data.len().min(1464) as u32,
            ..f.clone()
        })
        .collect();
    let long = r.pod_veth.iter().filter(|f| f.data.len() > 1464).count();
    assert!(long >= 3, "the traffic had too few long frames ({long})");
    assert_same_frames(&cut, &r.decapsulated);
    assert_eq!(output_field(&r.exit, "mtu_truncated"), long as u64);
}

/// The agent mirrors the very link its tunnel leaves by. Its own VXLAN
/// packets carry its SO_MARK, so the hook passes over them: no copy of a
/// tunnel packet is ever tunnelled (which would feed back without end).
#[test]
fn the_agent_never_mirrors_its_own_tunnel() {
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    // One tunnel packet per copy, so the hook on the link sees each (UDP
    // GSO would join copies into fewer packets there).
    let output = format!("vxlan://{}?vni={VNI}&gso=false", link.collector_v4);
    let r = run(
        &pair,
        &link,
        &[&pair.host_if, &link.node_if],
        &output,
        &[],
        |p| traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 5),
    );
    let nested = r
        .decapsulated
        .iter()
        .filter(|f| {
            f.data.len() > 37
                && f.data[12..14] == [0x08, 0x00]
                && f.data[23] == 17
                && f.data[36..38] == 4789u16.to_be_bytes()
        })
        .count();
    assert_eq!(nested, 0, "tunnel packets were mirrored into the tunnel");
    let summary = r.exit.summary().expect("summary");
    assert!(
        summary["own_traffic"] >= 10,
        "own tunnel packets not seen by the hook:\n{}",
        r.exit.stderr
    );
    // Every ping frame on the pod veth still arrived.
    let pings = r
        .pod_veth
        .iter()
        .filter(|f| f.data[12..14] == [0x08, 0x00])
        .count();
    assert!(pings >= 10);
}

/// `--socket-mark 0x42/0xff`, judged by the kernel. The node reaches the
/// collector only by policy routing on that mark (`ip rule fwmark
/// 0x42/0xff`, no route in the main table), so every copy arrives only if
/// the kernel saw the mark on it. The hook passes over the node's pings
/// marked 0x42 to the pod and mirrors those marked with the default mark
/// (0x00dd0000), which is now nobody's: the kernel's VXLAN device hands
/// back every frame tcpdump saw on the pod's veth but the 0x42 ones.
#[test]
fn a_custom_socket_mark_is_on_every_copy_and_only_it_is_passed_over() {
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    let net = "198.18.1.0/24";
    for args in [
        &["route", "del", net, "dev", &link.node_if][..],
        &["route", "add", net, "dev", &link.node_if, "table", "142"],
        &["rule", "add", "fwmark", "0x42/0xff", "table", "142"],
    ] {
        pair.node.ip(args).expect("policy routing");
    }
    let collector = link.collector_v4.to_string();
    let ping = |mark: Option<&str>, size: &str, count: &str, dst: &str| {
        let mut argv = vec!["ping", "-n", "-q", "-c", count, "-i", "0.05", "-W", "1"];
        argv.extend(["-s", size]);
        if let Some(m) = mark {
            argv.extend(["-m", m]);
        }
        argv.push(dst);
        pair.node.exec(&argv)
    };
    // The gate works: unmarked, the collector is unreachable; marked, not.
    assert!(
        ping(None, "56", "1", &collector).is_err(),
        "routed without the mark"
    );
    ping(Some("66"), "56", "1", &collector).expect("routed with the mark");
    let output = format!("vxlan://{collector}?vni={VNI}&mtu=1500");
    let pod = pair.pod_v4.to_string();
    let r = run(
        &pair,
        &link,
        &[&pair.host_if],
        &output,
        &["--socket-mark", "0x42/0xff"],
        |p| {
            p.flush_neighbours()?;
            traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 3)?;
            // 0x00dd0000 and 0x1142 (0x42 under the mask), in decimal for ping.
            ping(Some("14483456"), "123", "3", &pod)?;
            ping(Some("4418"), "77", "3", &pod)?;
            Ok(())
        },
    );
    // Echo requests of the node's pings: ICMP type 8 from the node.
    let requests_of = |payload: usize| {
        move |f: &&Frame| {
            f.data.len() == 14 + 20 + 8 + payload && f.data[23] == 1 && f.data[34] == 8
        }
    };
    let passed_over = r.pod_veth.iter().filter(requests_of(77)).count();
    assert_eq!(
        passed_over, 3,
        "tcpdump saw {passed_over} pings marked 0x1142"
    );
    let default_marked = r.decapsulated.iter().filter(requests_of(123)).count();
    assert_eq!(
        default_marked, 3,
        "pings with the default mark not mirrored"
    );
    let expected: Vec<Frame> = r
        .pod_veth
        .iter()
        .filter(|f| !requests_of(77)(f))
        .cloned()
        .collect();
    assert_same_frames(&expected, &r.decapsulated);
    assert_eq!(
        output_field(&r.exit, "lost_send_error"),
        0,
        "{}",
        r.exit.stderr
    );
    let summary = r.exit.summary().expect("summary");
    assert_eq!(summary["own_traffic"], 3, "{}", r.exit.stderr);
}

/// A receiver that only sniffs its link (no socket on 4789, as Wireshark,
/// Zeek or a packet broker) answers each datagram with ICMP port
/// unreachable. The agent must still send every copy: none lost to errors.
#[test]
fn a_sniffing_receiver_with_no_socket_gets_every_copy() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    // A sniffer sees datagrams where a NIC cuts the agent's GSO messages.
    link.segment_like_a_nic(&pair.node)
        .expect("software UDP segmentation");
    let dir = tempfile::tempdir().expect("tempdir");
    let at_pod = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dir.path().join("pod.pcap"),
        &FEW_FRAMES,
    )
    .expect("tcpdump on the pod veth");
    let outer = Tcpdump::start(
        &link.ns,
        &link.collector_if,
        dir.path().join("outer.pcap"),
        &[&FEW_FRAMES[..], &["udp", "dst", "port", "4789"]].concat(),
    )
    .expect("tcpdump at the collector");
    let output = format!("vxlan://{}?vni={VNI}", link.collector_v4);
    let agent = Agent::start(
        &pair.node,
        &["attach", "-i", &pair.host_if, "--output", &output],
    )
    .expect("agent starts");
    for _ in 0..5 {
        traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 2).expect("ping");
    }
    at_pod.settle().expect("the traffic is past the hook");
    let exit = agent.stop().expect("agent stops");
    let pod = capture::read(&at_pod.stop().expect("tcpdump")).expect("read");
    let outer = capture::read(&outer.stop().expect("tcpdump")).expect("read");
    assert!(pod.len() >= 20, "too little traffic");
    assert_eq!(outer.len(), pod.len(), "copies lost:\n{}", exit.stderr);
    assert_eq!(output_field(&exit, "lost_send_error"), 0, "{}", exit.stderr);
}
