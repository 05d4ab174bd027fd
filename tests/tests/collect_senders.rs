//! `mirror-agent collect` fed by senders that are not the agent: the
//! kernel's own VXLAN device (fed by `tc ... action mirred`), GENEVE, GRE/TEB
//! and ERSPAN II/III packets built by scapy, and a capture of tcpdump's
//! piped into the TCP listener. An encoder and a decoder of ours that are
//! wrong in the same way pass `collect.rs`'s round trips; they fail here.
//! The collector's files must hold exactly the frames sent, with their
//! original lengths, directions and names. Addresses: 198.18.0.0/24 (pod
//! link) and 198.18.1.0/24 (node to collector).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context;
use nix::sys::signal::Signal;
use testbed::{
    capture::{self, Frame},
    collector::{Collected, Collector},
    netns::join,
    process::Process,
    scapy,
    scenario::assert_same_frames_exact,
    tcpdump::Tcpdump,
    topology::{CollectorLink, PodPair},
    traffic,
    tshark::{Severity, Tshark},
    unique_name,
};

fn stop_collector(collector: Collector) -> Collected {
    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exits 0");
    collected
}

/// Wireshark reads the collector's files without an error.
fn assert_clean(collected: &Collected) {
    for file in collected.files().expect("files") {
        Tshark::new(&file).assert_clean(Severity::Error);
    }
}

/// The collector's frames equal `sent` in order, byte for byte, with the
/// same original length, interface name and direction.
fn assert_exactly(sent: &[Frame], got: &[Frame]) {
    let key = |f: &Frame| (f.data.clone(), f.orig_len, f.interface.clone(), f.dir);
    let (want, have): (Vec<_>, Vec<_>) = (
        sent.iter().map(key).collect(),
        got.iter().map(key).collect(),
    );
    if want != have {
        let first = want.iter().zip(&have).position(|(a, b)| a != b);
        panic!(
            "the collector's {} frames differ from the {} sent; first difference at {first:?}:\n\
             sent: {:?}\ngot:  {:?}",
            have.len(),
            want.len(),
            first
                .and_then(|i| want.get(i))
                .map(|(d, l, n, r)| (capture::describe(d, *l), n, r)),
            first
                .and_then(|i| have.get(i))
                .map(|(d, l, n, r)| (capture::describe(d, *l), n, r)),
        );
    }
}

/// scapy sends `kind` from the node to a collector listening on `listen`.
fn scapy_round_trip(kind: &str, listen: &str, listener: &str) {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let collector = Collector::start(&link.ns, &[listen], &[]).expect("collector starts");
    let sent = scapy::send_encapsulated(&pair.node, kind, "198.18.1.2").expect("scapy sends");
    assert!(sent.len() >= 11, "scapy sent only {} frames", sent.len());
    // Stopped once it has decoded as many as scapy sent (its summary,
    // below, proves they are the ones, and that nothing failed).
    collector
        .wait_decoded(&link.ns, sent.len() as u64)
        .expect("the collector decodes what scapy sent");
    let collected = stop_collector(collector);
    let counters = collected.listener(listener).expect("listener summary");
    assert_eq!(counters["errors"], 0, "{}", collected.stderr);
    assert_eq!(
        counters["decoded"],
        sent.len() as u64,
        "{}",
        collected.stderr
    );
    assert_exactly(&sent, &collected.frames().expect("collector files"));
    assert_clean(&collected);
    let cut = sent
        .iter()
        .filter(|f| f.orig_len as usize > f.data.len())
        .count();
    let directed = sent.iter().filter(|f| f.dir.is_some()).count();
    eprintln!(
        "{kind}: {} frames from scapy filed exactly ({cut} cut with their original length, \
         {directed} with a direction)",
        sent.len()
    );
}

#[test]
fn geneve_from_scapy() {
    scapy_round_trip("geneve", "geneve://198.18.1.2", "geneve://198.18.1.2:6081");
}

#[test]
fn gre_from_scapy() {
    scapy_round_trip("gre", "gre://198.18.1.2", "gre://198.18.1.2");
}

#[test]
fn erspan2_from_scapy() {
    scapy_round_trip("erspan2", "gre://198.18.1.2", "gre://198.18.1.2");
}

#[test]
fn erspan3_from_scapy() {
    scapy_round_trip("erspan3", "gre://198.18.1.2", "gre://198.18.1.2");
}

/// ARP, pings both ways, and UDP of several sizes (the larger ones as IP
/// fragments).
fn mixed_traffic(p: &PodPair) {
    p.flush_neighbours().expect("flush");
    traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 3).expect("ping");
    traffic::ping(&p.node, IpAddr::V4(p.pod_v4), 2).expect("ping");
    let sizes = [0, 100, 1472, 1473, 4000];
    traffic::udp(&p.pod, &p.node, IpAddr::V4(p.node_v4), 5001, &sizes).expect("udp");
    traffic::udp(&p.node, &p.pod, IpAddr::V4(p.pod_v4), 5002, &[300, 3000]).expect("udp");
}

/// The kernel mirrors the pod's veth (both ways, `tc ... action mirred`)
/// into its own VXLAN device toward the collector: no code of ours sends.
/// The collector's frames equal tcpdump's on that veth.
#[test]
fn kernel_vxlan_device_fed_by_mirred() {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let vx = unique_name("mtx");
    pair.node
        .ip(&[
            "link",
            "add",
            &vx,
            "type",
            "vxlan",
            "id",
            "42",
            "remote",
            "198.18.1.2",
            "local",
            "198.18.1.1",
            "dstport",
            "4789",
            "dev",
            &link.node_if,
        ])
        .expect("vxlan device");
    pair.node.ip(&["link", "set", &vx, "up"]).expect("vxlan up");
    let tc = |args: &[&str]| {
        pair.node
            .exec(&[&["tc"], args].concat())
            .unwrap_or_else(|e| panic!("tc {args:?}: {e}"))
    };
    tc(&["qdisc", "add", "dev", &pair.host_if, "clsact"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = Collector::start(&link.ns, &["vxlan://198.18.1.2"], &[]).expect("collector");
    let tcpdump =
        Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("t.pcap"), &[]).expect("tcpdump");
    for hook in ["ingress", "egress"] {
        tc(&[
            "filter",
            "add",
            "dev",
            &pair.host_if,
            hook,
            "protocol",
            "all",
            "u32",
            "match",
            "u32",
            "0",
            "0",
            "action",
            "mirred",
            "egress",
            "mirror",
            "dev",
            &vx,
        ]);
    }
    mixed_traffic(&pair);
    // Mirroring stops before tcpdump does, so tcpdump saw all it mirrored.
    for hook in ["ingress", "egress"] {
        tc(&["filter", "del", "dev", &pair.host_if, hook]);
    }
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    let collected = stop_collector(collector);
    let frames = collected.frames().expect("collector files");
    assert!(oracle.len() >= 20, "too little traffic: {}", oracle.len());
    assert_same_frames_exact(&oracle, &frames);
    for f in &frames {
        assert_eq!(f.interface.as_deref(), Some("198.18.1.1/vni-42"));
        assert_eq!(f.dir, None, "VXLAN carries no direction");
    }
    let counters = collected
        .listener("vxlan://198.18.1.2:4789")
        .expect("listener summary");
    assert_eq!(counters["decoded"], oracle.len() as u64);
    assert_eq!(counters["errors"], 0, "{}", collected.stderr);
    assert_clean(&collected);
}

/// tcpdump's own capture of the pod's veth (`tcpdump -w -`, classic pcap),
/// put into pcapng by Wireshark's writer (`tshark -r - -F pcapng -w -`),
/// piped into the collector's TCP listener. The collector must file exactly
/// the frames of that stream.
#[test]
fn tcpdump_stream_into_tcp_listener() {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let mut collector =
        Collector::start(&link.ns, &["tcp://198.18.1.2:7000"], &[]).expect("collector");
    let mut cmd = pair.node.command("tcpdump");
    cmd.args([
        "-i",
        &pair.host_if,
        "-n",
        "-s",
        "0",
        "-U",
        "--immediate-mode",
    ])
    .args(["--time-stamp-precision=nano", "-w", "-"])
    .stdout(Stdio::piped());
    let mut tcpdump = Process::spawn("tcpdump", cmd).expect("tcpdump");
    tcpdump
        .wait_for_line("listening on", Duration::from_secs(10))
        .expect("tcpdump listens");
    let pcap = tcpdump.stdout().expect("tcpdump's stdout");
    let mut convert = Command::new("tshark");
    convert
        .args(["-r", "-", "-F", "pcapng", "-w", "-"])
        .stdin(Stdio::from(pcap))
        .stdout(Stdio::piped());
    let mut tshark = Process::spawn("tshark", convert).expect("tshark");
    let mut stream = tshark.stdout().expect("tshark's stdout");
    let forward = link.ns.spawn(move || {
        // Connect from the collector's own namespace, on loopback-free
        // addressing: the listener's address on its veth.
        let mut sock = TcpStream::connect(SocketAddr::from(([198, 18, 1, 2], 7000)))
            .context("connecting to the collector")?;
        let mut all = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            sock.write_all(&buf[..n])?;
            all.extend_from_slice(&buf[..n]);
        }
        Ok(all)
    });
    collector
        .wait_for_line("stream connected", Duration::from_secs(10))
        .expect("the collector takes the stream");
    mixed_traffic(&pair);
    // No wait: whatever tcpdump has written when it stops is the stream,
    // and the collector must file exactly that.
    let (status, stderr) = tcpdump
        .stop(Signal::SIGINT, Duration::from_secs(10))
        .expect("tcpdump stops");
    assert!(status.success(), "tcpdump: {stderr}");
    let (status, stderr) = tshark.wait(Duration::from_secs(20)).expect("tshark ends");
    assert!(status.success(), "tshark: {stderr}");
    let bytes = join(forward).expect("stream forwarded");
    collector
        .wait_for_line("stream closed", Duration::from_secs(10))
        .expect("the collector reads the stream to its end");
    let sent = capture::parse(&bytes).expect("the stream parses");
    assert!(sent.len() >= 20, "too little traffic: {}", sent.len());
    let collected = stop_collector(collector);
    let frames = collected.frames().expect("collector files");
    assert_same_frames_exact(&sent, &frames);
    let counters = collected
        .listener("tcp://198.18.1.2:7000")
        .expect("listener summary");
    assert_eq!(counters["decoded"], sent.len() as u64);
    assert_eq!(counters["errors"], 0, "{}", collected.stderr);
    assert_clean(&collected);
}
