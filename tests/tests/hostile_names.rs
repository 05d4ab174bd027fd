//! Names a remote sender chooses (issue 17): a sender that churns VNIs
//! cannot push a real agent's captures out under `--max-files`, and one
//! that claims another node's GENEVE identity is shown with its own
//! address. The oracle for the real agent's copies is tcpdump on the pod's
//! veth; the files are read with the pcap-file crate.
//! Addresses: 198.18.0.0/24 (pod link), 198.18.1.0/24 (node to collector).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use mirror_agent::{
    export::encap::{Encapsulator, MAX_HEADER_LEN, PacketMeta, Vni, geneve::Geneve},
    model::{direction::Direction, record::IfIndex},
};
use testbed::{
    agent::Agent,
    capture::{self, Frame},
    collector::Collector,
    netns::{Netns, join},
    tcpdump::Tcpdump,
    topology::CollectorLink,
    traffic,
};

#[path = "hostile/peers.rs"]
mod peers;

const COLLECTOR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const NODE_ADDR: &str = "198.18.1.1";

/// An Ethernet frame of the local experimental EtherType carrying `seq`.
fn marked_frame(seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[12..14].copy_from_slice(&0x88B5u16.to_be_bytes());
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Sends `datagrams` from inside `ns` to `to`, a little at a time so the
/// local socket buffers are not the bottleneck of the test.
fn send_udp(ns: &Netns, to: SocketAddr, datagrams: Vec<Vec<u8>>) {
    join(ns.spawn(move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for (i, d) in datagrams.iter().enumerate() {
            s.send_to(d, to)?;
            if i % 256 == 255 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    }))
    .expect("udp sender");
}

/// The real agent's copies of the pod's traffic, compared with tcpdump's.
fn assert_agent_frames_whole(oracle: &[Frame], frames: &[Frame], interface: &str) {
    let ours: Vec<Frame> = frames
        .iter()
        .filter(|f| f.interface.as_deref() == Some(interface))
        .cloned()
        .collect();
    let diff = capture::difference(oracle, &ours);
    assert!(
        !oracle.is_empty() && diff.is_empty(),
        "the agent's frames under {interface} differ from tcpdump's: {} missing, {} extra of {}",
        diff.missing.len(),
        diff.extra.len(),
        oracle.len()
    );
}

/// 30,000 VXLAN datagrams, each with a new VNI, from the collector's own
/// address while a real agent streams over tcp:// into a collector keeping
/// `--max-files 2`. Before, a file closed at 10,000 interfaces and the
/// agent's first file was deleted; now the churner's interfaces past 1024
/// are folded into one counted interface, no file is deleted, and every
/// frame tcpdump saw is on disk.
#[test]
fn a_vni_churning_sender_cannot_delete_an_agents_captures() {
    const CHURN: u32 = 30_000;
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let tcp = format!("tcp://{COLLECTOR}:7000");
    let vxlan = format!("vxlan://{COLLECTOR}");
    let mut collector = Collector::start(&link.ns, &[&tcp, &vxlan], &["--max-files", "2"])
        .expect("collector starts");
    let dump_dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dump_dir.path().join("pod.pcap"),
        &[],
    )
    .expect("tcpdump");
    let agent = Agent::start(
        &pair.node,
        &["attach", "-i", &pair.host_if, "--output", &tcp],
    )
    .expect("agent starts");
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 3).expect("ping");
    let churn: Vec<Vec<u8>> = (0..CHURN)
        .map(|i| {
            // RFC 7348: flags (I), reserved, VNI, reserved; then the frame.
            let mut d = vec![0x08, 0, 0, 0];
            d.extend_from_slice(&(i << 8).to_be_bytes());
            d.extend_from_slice(&marked_frame(i));
            d
        })
        .collect();
    send_udp(&link.ns, SocketAddr::from((COLLECTOR, 4789)), churn);
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 3).expect("ping");
    traffic::udp(
        &pair.pod,
        &pair.node,
        IpAddr::V4(pair.node_v4),
        5001,
        &[100, 1400, 8000],
    )
    .expect("udp");
    tcpdump.settle().expect("the traffic is past the hook");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "agent failed: {}", exit.stderr);
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    // The agent closed its stream; the collector has read it all once it says so.
    collector
        .wait_for_line("stream closed", Duration::from_secs(10))
        .expect("the collector reads the stream to its end");
    let hwm = peers::peak_rss_kib(collector.pid().expect("pid")).expect("VmHWM");

    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exits 0");
    let summary = collected.summary().expect("summary");
    // 30,000 interfaces asked for, 1,024 kept.
    assert!(
        hwm < 96 * 1024,
        "collector peak RSS {hwm} KiB, above 96 MiB"
    );
    let churned = collected
        .listener(&format!("{vxlan}:4789"))
        .expect("listener")["decoded"];
    assert!(churned > 2000, "too few churn datagrams arrived: {churned}");
    assert_eq!(summary["files_deleted"], 0, "{summary:?}");
    assert_eq!(summary["files_written"], 1, "{summary:?}");
    assert_eq!(summary["folded"], churned - 1024, "{summary:?}");
    let frames = collected.frames().expect("readable");
    let interface = format!("{NODE_ADDR}/{}", pair.host_if);
    assert_agent_frames_whole(&oracle, &frames, &interface);
    let folded_name = format!("{COLLECTOR}/other-interfaces");
    assert_eq!(
        frames
            .iter()
            .filter(|f| f.interface.as_deref() == Some(&folded_name))
            .count() as u64,
        churned - 1024
    );
    eprintln!(
        "churn: {churned} datagrams of new VNIs, {} folded, 0 files deleted, {} agent frames \
         whole; collector peak RSS {hwm} KiB",
        summary["folded"],
        oracle.len()
    );
}

/// A sender at the collector's own address claims the real agent's GENEVE
/// identity (node `node-a`, the same pod name). Its frames are filed under
/// its own address, the agent's under the agent's, and the agent's are
/// exactly tcpdump's.
#[test]
fn a_spoofed_geneve_identity_is_shown_with_its_true_source() {
    const SPOOFED: u32 = 50;
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let geneve = format!("geneve://{COLLECTOR}");
    let collector = Collector::start(&link.ns, &[&geneve], &[]).expect("collector starts");
    let dump_dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dump_dir.path().join("pod.pcap"),
        &[],
    )
    .expect("tcpdump");
    let output = format!("geneve://{COLLECTOR}?vni=42&mtu=9000");
    let agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--node-name",
            "node-a",
            "--output",
            &output,
        ],
    )
    .expect("agent starts");
    let vni = Vni::new(42).expect("vni");
    let pod = pair.host_if.clone();
    let spoofed: Vec<Vec<u8>> = (0..SPOOFED)
        .map(|i| {
            let inner = marked_frame(i);
            let meta = PacketMeta {
                unix_ns: 1,
                ifindex: IfIndex(2),
                direction: Direction::Ingress,
                orig_len: inner.len() as u32,
                pod: &pod,
            };
            let mut buf = [0u8; MAX_HEADER_LEN];
            let n = Geneve::new(vni, "node-a")
                .write_header(&meta, &inner, &mut buf)
                .expect("header");
            [&buf[..n], &inner[..]].concat()
        })
        .collect();
    send_udp(&link.ns, SocketAddr::from((COLLECTOR, 6081)), spoofed);
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 3).expect("ping");
    tcpdump.settle().expect("the traffic is past the hook");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "agent failed: {}", exit.stderr);
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    // Every copy the agent sent, and every spoofed datagram, decoded.
    let sent = exit.fields_of("output summary").expect("output summary")["sent"];
    collector
        .wait_decoded(&link.ns, sent + u64::from(SPOOFED))
        .expect("the collector decodes every datagram");
    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exits 0");
    let frames = collected.frames().expect("readable");
    let real = format!("{NODE_ADDR}/node-a/{}", pair.host_if);
    let fake = format!("{COLLECTOR}/node-a/{}", pair.host_if);
    assert_agent_frames_whole(&oracle, &frames, &real);
    let shown: Vec<&Frame> = frames
        .iter()
        .filter(|f| f.interface.as_deref() == Some(&fake))
        .collect();
    assert_eq!(
        shown.len() as u32,
        SPOOFED,
        "every spoofed frame under {fake}"
    );
    assert!(
        shown
            .iter()
            .all(|f| f.data.get(12..14) == Some(&[0x88, 0xB5][..]))
    );
    let names: std::collections::BTreeSet<_> =
        frames.iter().filter_map(|f| f.interface.clone()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}
