//! Names and volume a remote sender chooses (issue 17): a sender that
//! churns VNIs, or floods, cannot push a real agent's captures out under
//! `--max-files` or `--max-total-bytes`, and one that claims another
//! node's GENEVE identity is shown with its own address. The oracles for
//! the real agent's copies are tcpdump on the pod's veth and the numbered
//! stream's own count; the files are read with the pcap-file crate.
//! Addresses: 198.18.0.0/24 (pod link), 198.18.1.0/24 (node to collector;
//! 198.18.1.3 a second flooding address on the collector's host).

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
    collector::{Collected, Collector},
    netns::{Netns, join},
    numbered::{self, NumberedStream},
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
    send_udp_paced(ns, to, datagrams, 256);
}

/// [`send_udp`], pausing 2 ms after each `burst` datagrams.
fn send_udp_paced(ns: &Netns, to: SocketAddr, datagrams: Vec<Vec<u8>>, burst: usize) {
    join(ns.spawn(move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for (i, d) in datagrams.iter().enumerate() {
            s.send_to(d, to)?;
            if i % burst == burst - 1 {
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
/// are folded into one counted interface, no file is deleted (one per
/// sender), and every frame tcpdump saw is on disk.
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
    assert_eq!(summary["files_written"], 2, "one per sender: {summary:?}");
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

/// VXLAN datagrams of `size`-byte frames, a new VNI each, numbered from
/// `first`.
fn flood(first: u32, count: u32, size: usize) -> Vec<Vec<u8>> {
    (first..first + count)
        .map(|i| {
            // RFC 7348: flags (I), reserved, VNI, reserved; then the frame.
            let mut d = vec![0x08, 0, 0, 0];
            d.extend_from_slice(&((i % 0xFF_FFFF) << 8).to_be_bytes());
            let mut frame = marked_frame(i);
            frame.resize(size, 0);
            d.extend_from_slice(&frame);
            d
        })
        .collect()
}

/// The files of one sender (by the address in their names), and their frames.
fn sender_files(collected: &Collected, sender: &str) -> (Vec<std::path::PathBuf>, Vec<Frame>) {
    let prefix = format!("collect-{sender}-");
    let files: Vec<_> = collected
        .files()
        .expect("files")
        .into_iter()
        .filter(|f| {
            f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect();
    let frames = files
        .iter()
        .flat_map(|f| capture::read(f).expect("readable"))
        .collect();
    (files, frames)
}

/// When the flood comes: during the agent's stream, or once it is over.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FloodAt {
    During,
    After,
}

/// What a flood next to a real agent left.
struct Flooded {
    collected: Collected,
    summary: std::collections::HashMap<String, u64>,
    /// Numbers the agent's stream sent, all in its files.
    sent: u32,
    /// The agent's frames, all of them what the collector decoded from it.
    agent_frames: usize,
    /// Datagrams of the flood the collector decoded.
    flooded: u64,
    flood_files: Vec<std::path::PathBuf>,
    flood_frames: usize,
}

const FLOOD_PORT: u16 = 5301;
const FLOOD: u32 = 2000;

/// A real agent mirrors a numbered stream over tcp:// into a collector with
/// `extra`; a sender at the collector's own address floods VXLAN, 2,000
/// frames of 8 KB with a new VNI each (16 MB), `at` the given time. Checks
/// what holds whatever the limits: every number the stream sent is in the
/// agent's files, which hold exactly the frames the collector decoded from
/// it, no file of the agent's was deleted, and nothing failed to write.
fn agent_next_to_a_flood(extra: &[&str], at: FloodAt) -> Flooded {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let tcp = format!("tcp://{COLLECTOR}:7000");
    let vxlan = format!("vxlan://{COLLECTOR}");
    let mut collector =
        Collector::start(&link.ns, &[&tcp, &vxlan], extra).expect("collector starts");
    let agent = Agent::start(
        &pair.node,
        &["attach", "-i", &pair.host_if, "--output", &tcp],
    )
    .expect("agent starts");
    let stream = NumberedStream::start(
        &pair.node,
        &pair.pod,
        SocketAddr::from((pair.pod_v4, FLOOD_PORT)),
    )
    .expect("numbered stream");
    // 128 KB every 2 ms at most: the collector's socket buffer takes it.
    let flood_now = || {
        send_udp_paced(
            &link.ns,
            SocketAddr::from((COLLECTOR, 4789)),
            flood(0, FLOOD, 8000),
            16,
        )
    };
    stream.wait_for(200);
    if at == FloodAt::During {
        flood_now();
    }
    stream.wait_for(200);
    let sent = stream.finish().expect("the stream arrives");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "agent failed: {}", exit.stderr);
    collector
        .wait_for_line("stream closed", Duration::from_secs(10))
        .expect("the collector reads the agent's stream to its end");
    if at == FloodAt::After {
        let before = collector.wait_decoded(&link.ns, 0).expect("metrics");
        flood_now();
        // Read from the socket before the collector stops.
        collector
            .wait_decoded(&link.ns, before + u64::from(FLOOD))
            .expect("the collector decodes the whole flood");
    }
    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exits 0");
    let summary = collected.summary().expect("summary");
    let decoded = |listener: &str| collected.listener(listener).expect("listener")["decoded"];
    assert_eq!(summary["write_errors"], 0, "{summary:?}");

    let (agent_files, agent_frames) = sender_files(&collected, NODE_ADDR);
    assert!(!agent_files.is_empty());
    let numbers = numbered::sequence_numbers(&agent_frames, FLOOD_PORT);
    let missing: Vec<u32> = (0..sent).filter(|n| !numbers.contains_key(n)).collect();
    assert!(
        missing.is_empty(),
        "{} of {sent} numbers missing from the agent's files, first {:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(
        agent_frames.len() as u64,
        decoded(&tcp),
        "the agent's frames on disk are those decoded from it"
    );
    let deletions: Vec<&str> = collected
        .stderr
        .lines()
        .filter(|l| l.contains("deleted an old file"))
        .collect();
    assert_eq!(summary["files_deleted"], deletions.len() as u64);
    assert!(
        deletions
            .iter()
            .all(|l| l.contains(&format!("collect-{COLLECTOR}-"))),
        "only the flood's files are deleted:\n{}",
        deletions.join("\n")
    );
    let (flood_files, flood_frames) = sender_files(&collected, &COLLECTOR.to_string());
    let flooded = decoded(&format!("{vxlan}:4789"));
    assert!(flooded > 1000, "too few flood datagrams arrived: {flooded}");
    Flooded {
        summary,
        sent,
        agent_frames: agent_frames.len(),
        flooded,
        flood_files,
        flood_frames: flood_frames.len(),
        collected,
    }
}

/// The flood, during the agent's stream, into `--max-files 2` of
/// `--rotate-size 1000000` per sender: it rotates out its own files only.
#[test]
fn a_flooding_sender_rotates_out_only_its_own_files() {
    let extra = ["--rotate-size", "1000000", "--max-files", "2"];
    let f = agent_next_to_a_flood(&extra, FloodAt::During);
    assert!(f.flood_files.len() <= 2, "{:?}", f.flood_files);
    assert!(f.summary["files_deleted"] >= 10, "{:?}", f.summary);
    assert!((f.flood_frames as u64) < f.flooded);
    assert_eq!(f.summary["dropped_retention"], 0, "{:?}", f.summary);
    eprintln!(
        "flood: {} datagrams of 8 KB, {} files deleted (all the flood's), {} frames kept in {} \
         files; agent: {} numbers all on disk, {} frames = decoded",
        f.flooded,
        f.summary["files_deleted"],
        f.flood_frames,
        f.flood_files.len(),
        f.sent,
        f.agent_frames
    );
}

/// The flood, once the agent's stream is on disk, into `--max-total-bytes
/// 1000000` with files too large to close meanwhile: it fills what is left
/// under the total, has no closed file of its own to give up, and the rest
/// is dropped and counted; the agent's file is untouched.
#[test]
fn a_flood_at_the_total_is_dropped_and_counted_not_written_over_others() {
    const MAX_TOTAL: u64 = 1_000_000;
    let max_total = MAX_TOTAL.to_string();
    let extra = ["--rotate-size", "50000000", "--max-total-bytes", &max_total];
    let f = agent_next_to_a_flood(&extra, FloodAt::After);
    let dropped = f.summary["dropped_retention"];
    assert_eq!(f.summary["files_deleted"], 0, "{:?}", f.summary);
    assert!(dropped > 1000, "{:?}", f.summary);
    assert_eq!(f.flooded, u64::from(FLOOD));
    assert_eq!(
        f.flood_frames as u64 + dropped,
        f.flooded,
        "written + dropped = decoded for the flood"
    );
    let on_disk: u64 = f
        .collected
        .files()
        .expect("files")
        .iter()
        .map(|p| std::fs::metadata(p).expect("size").len())
        .sum();
    assert!(on_disk <= MAX_TOTAL, "{on_disk} bytes on disk");
    eprintln!(
        "flood at the total: {} datagrams of 8 KB, {} written, {dropped} dropped; agent: {} \
         numbers all on disk, {} frames = decoded; {on_disk} of {MAX_TOTAL} bytes on disk",
        f.flooded, f.flood_frames, f.sent, f.agent_frames
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
