//! `mirror-agent collect` end to end, judged by tcpdump on the pod's veth.
//! The agent mirrors the veth into a tunnel (or a pcapng stream over TCP);
//! the collector, in its own namespace, decapsulates into rotating pcapng
//! files. Every frame in those files must be one tcpdump saw, each one it
//! saw exactly once, filed under an interface name that tells where it came
//! from, with the direction wherever the tunnel carries one (tcpdump `-Q in`
//! and `-Q out` are the oracle for that). Garbage, rotation and a collector
//! outage are covered too. Addresses: 198.18.0.0/24 (pod link) and
//! 198.18.1.0/24 (node to collector).

use std::{
    collections::BTreeSet,
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use nix::sys::socket::{MsgFlags, SockaddrIn, sendto};
use testbed::{
    agent::{Agent, Exit},
    capture::{self, Dir, Frame},
    collector::{Collected, Collector},
    http,
    netns::{Netns, join},
    scenario::assert_same_frames,
    tcpdump::Tcpdump,
    topology::{CollectorLink, PodPair},
    traffic,
    tshark::{Severity, Tshark},
};

const NODE: &str = "node-a";
/// The node's address toward the collector: the source of every tunnel.
const FROM: &str = "198.18.1.1";
const COLLECTOR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const TCP_PORT: u16 = 7000;

/// ARP, pings both ways, and UDP of several sizes: the larger ones leave
/// the pod as IP fragments.
fn mixed_traffic(p: &PodPair) -> Result<()> {
    p.flush_neighbours()?;
    traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 3)?;
    traffic::ping(&p.node, IpAddr::V4(p.pod_v4), 2)?;
    let sizes = [0, 100, 1472, 1473, 4000, 8000];
    traffic::udp(&p.pod, &p.node, IpAddr::V4(p.node_v4), 5001, &sizes)?;
    traffic::udp(&p.node, &p.pod, IpAddr::V4(p.pod_v4), 5002, &[300, 3000])
}

fn start_agent(pair: &PodPair, output: &str, extra: &[&str]) -> Agent {
    let mut args = vec!["attach", "-i", &pair.host_if, "--node-name", NODE];
    args.extend(["--output", output]);
    args.extend_from_slice(extra);
    Agent::start(&pair.node, &args).expect("agent starts")
}

fn stop_agent(agent: Agent) -> Exit {
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "agent failed: {}", exit.stderr);
    exit
}

fn stop_collector(collector: Collector) -> Collected {
    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exits 0");
    collected
}

/// One agent-to-collector run, with both directions captured apart.
struct RoundTrip {
    ins: Vec<Frame>,
    outs: Vec<Frame>,
    frames: Vec<Frame>,
    collected: Collected,
    host_if: String,
}

fn round_trip(listen: &str, output: &str) -> RoundTrip {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let mut collector = Collector::start(&link.ns, &[listen], &[]).expect("collector starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = |q: &str| {
        let path = dir.path().join(format!("{q}.pcap"));
        Tcpdump::start(&pair.node, &pair.host_if, path, &["-Q", q]).expect("tcpdump")
    };
    let (at_in, at_out) = (tcpdump("in"), tcpdump("out"));
    let agent = start_agent(&pair, output, &[]);
    mixed_traffic(&pair).expect("traffic");
    for t in [&at_in, &at_out] {
        t.settle().expect("the traffic is past the hook");
    }
    let exit = stop_agent(agent);
    let ins = capture::read(&at_in.stop().expect("tcpdump -Q in")).expect("read");
    let outs = capture::read(&at_out.stop().expect("tcpdump -Q out")).expect("read");
    if listen.starts_with("tcp") || listen.starts_with("tls") {
        // The agent closed its stream; the collector must have read it all.
        collector
            .wait_for_line("stream closed", Duration::from_secs(10))
            .expect("the stream ends");
    } else {
        // One datagram a copy: all of them decoded.
        collector
            .wait_decoded(&link.ns, output_summary(&exit)["sent"])
            .expect("the collector decodes every copy sent");
    }
    let collected = stop_collector(collector);
    let frames = collected.frames().expect("collector files are readable");
    RoundTrip {
        ins,
        outs,
        frames,
        collected,
        host_if: pair.host_if.clone(),
    }
}

impl RoundTrip {
    /// Same frames as tcpdump, all under `interface`, and (if `directions`)
    /// each direction equal to tcpdump's `-Q in` / `-Q out`.
    fn check(&self, tunnel: &str, listener: &str, interface: &str, directions: bool) {
        let all: Vec<Frame> = self.ins.iter().chain(&self.outs).cloned().collect();
        assert!(all.len() >= 25, "too little traffic: {} frames", all.len());
        assert_same_frames(&all, &self.frames);
        let names: BTreeSet<Option<&str>> =
            self.frames.iter().map(|f| f.interface.as_deref()).collect();
        assert_eq!(names, BTreeSet::from([Some(interface)]));
        let with = |d: Option<Dir>| -> Vec<Frame> {
            self.frames.iter().filter(|f| f.dir == d).cloned().collect()
        };
        if directions {
            assert_same_frames(&self.ins, &with(Some(Dir::In)));
            assert_same_frames(&self.outs, &with(Some(Dir::Out)));
        } else {
            assert_eq!(
                with(None).len(),
                self.frames.len(),
                "a direction out of nowhere"
            );
        }
        let counters = self.collected.listener(listener).expect("listener summary");
        assert_eq!(counters["decoded"], self.frames.len() as u64);
        assert_eq!(counters["errors"], 0, "{}", self.collected.stderr);
        for file in self.collected.files().expect("files") {
            Tshark::new(&file).assert_clean(Severity::Error);
        }
        eprintln!(
            "{tunnel}: {} frames equal tcpdump's ({} in, {} out), interface {interface}, \
             directions {}",
            self.frames.len(),
            self.ins.len(),
            self.outs.len(),
            if directions { "checked" } else { "not carried" }
        );
    }
}

#[test]
fn vxlan_round_trip() {
    let r = round_trip("vxlan://198.18.1.2", "vxlan://198.18.1.2?vni=42&mtu=9000");
    r.check(
        "vxlan",
        "vxlan://198.18.1.2:4789",
        &format!("{FROM}/vni-42"),
        false,
    );
}

/// A burst comes in a few receive calls, not one per datagram: the agent's
/// UDP GSO message arrives whole (the listener asks for UDP GRO) and one
/// `recvmmsg` takes whatever has queued. The collector splits it back in
/// order: a UDP GSO send from the pod, cut by the agent into wire-size
/// segments, comes out of the collector's files as the sender's payload,
/// byte for byte.
#[test]
fn datagrams_are_read_in_batches_and_split_back_in_order() {
    const SEGMENT: u16 = 1000;
    const TOTAL: usize = 40 * 1000 - 300;
    const PORT: u16 = 5003;
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let collector =
        Collector::start(&link.ns, &["vxlan://198.18.1.2"], &[]).expect("collector starts");
    let agent = start_agent(&pair, "vxlan://198.18.1.2?vni=42&mtu=9000", &[]);
    let node = IpAddr::V4(pair.node_v4);
    traffic::udp_gso(&pair.pod, &pair.node, node, PORT, SEGMENT, TOTAL).expect("UDP GSO");
    let exit = stop_agent(agent);
    let sent = output_summary(&exit)["sent"];
    collector
        .wait_decoded(&link.ns, sent)
        .expect("the collector decodes every copy sent");
    let collected = stop_collector(collector);
    let c = collected
        .listener("vxlan://198.18.1.2:4789")
        .expect("listener summary");
    assert_eq!(c["received"], sent, "{}", collected.stderr);
    assert_eq!(c["decoded"], sent);
    assert!(
        c["reads"] < c["received"],
        "{} reads for {} datagrams: no batches",
        c["reads"],
        c["received"]
    );
    // Ethernet, a 20-byte IPv4 header (0x45), UDP to PORT: the payload at 42.
    let payload: Vec<u8> = collected
        .frames()
        .expect("collector files are readable")
        .iter()
        .filter(|f| {
            f.data.len() >= 42
                && f.data[12..15] == [0x08, 0x00, 0x45]
                && f.data[23] == 17
                && f.data[36..38] == PORT.to_be_bytes()
        })
        .flat_map(|f| f.data[42..].to_vec())
        .collect();
    // The pattern traffic::udp_gso sends.
    let sent_payload: Vec<u8> = (0..TOTAL).map(|b| (b * 7 + b / 251) as u8).collect();
    assert!(
        payload == sent_payload,
        "the segments came out of order or changed"
    );
    eprintln!("{} datagrams in {} reads", c["received"], c["reads"]);
}

#[test]
fn geneve_round_trip() {
    let r = round_trip("geneve://198.18.1.2", "geneve://198.18.1.2?vni=42&mtu=9000");
    // The agent's pod identity under `attach` is the interface's name.
    let interface = format!("{FROM}/{NODE}/{}", r.host_if);
    r.check("geneve", "geneve://198.18.1.2:6081", &interface, true);
}

#[test]
fn gre_round_trip() {
    let r = round_trip(
        "gre://198.18.1.2",
        "gre://198.18.1.2?key=7&seq=true&mtu=9000",
    );
    r.check("gre", "gre://198.18.1.2", &format!("{FROM}/key-7"), false);
}

#[test]
fn erspan2_round_trip() {
    let r = round_trip(
        "gre://198.18.1.2",
        "erspan2://198.18.1.2?session=5&mtu=9000",
    );
    let interface = format!("{FROM}/erspan-session-5");
    r.check("erspan2", "gre://198.18.1.2", &interface, false);
}

#[test]
fn erspan3_round_trip() {
    let r = round_trip(
        "gre://198.18.1.2",
        "erspan3://198.18.1.2?session=6&hwid=3&mtu=9000",
    );
    let interface = format!("{FROM}/erspan-session-6");
    r.check("erspan3", "gre://198.18.1.2", &interface, true);
}

#[test]
fn tcp_round_trip() {
    let r = round_trip("tcp://198.18.1.2:7000", "tcp://198.18.1.2:7000");
    let interface = format!("{FROM}/{}", r.host_if);
    r.check("tcp", "tcp://198.18.1.2:7000", &interface, true);
}

/// pcapng over mutual TLS, from the agent's exporter to the collector's
/// TLS listener: the same frames as tcpdump, with their directions.
#[test]
fn tls_round_trip() {
    let pki = testbed::pki::Pki::new().expect("pki");
    let (listen, output) = pki.uris(&pki.main, 7443);
    let r = round_trip(&listen, &output);
    let interface = format!("{FROM}/{}", r.host_if);
    r.check("tls", "tls://198.18.1.2:7443", &interface, true);
}

/// An agent whose certificate another CA signed is refused at the
/// handshake: counted by the collector, and nothing of it is written.
#[test]
fn tls_listener_refuses_an_agent_from_another_ca() {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let pki = testbed::pki::Pki::new().expect("pki");
    let (listen, output) = pki.uris(&pki.other, 7443);
    let collector = Collector::start(&link.ns, &[&listen], &[]).expect("collector starts");
    // A one-byte queue: every copy the refused agent cannot send is counted.
    let agent = start_agent(&pair, &output, &["--queue-bytes", "1"]);
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 3).expect("ping");
    collector
        .wait_counter(&link.ns, "mirror_collect_refused_connections_total", 1)
        .expect("the agent is refused");
    let exit = stop_agent(agent);
    let collected = stop_collector(collector);
    let counters = collected
        .listener("tls://198.18.1.2:7443")
        .expect("listener summary");
    assert!(counters["refused"] >= 1, "{}", collected.stderr);
    assert_eq!(counters["decoded"], 0);
    assert!(collected.frames().expect("files").is_empty());
    let out = output_summary(&exit);
    assert_eq!(out["sent"], 0);

    // And a collector given unusable files refuses to start: exit 2, naming the flag.
    let bad = format!(
        "tls://198.18.1.2:7444?ca=/nonexistent/ca.pem&cert={}&key={}",
        pki.main.server.cert.display(),
        pki.main.server.key.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let code = link
        .ns
        .command(&testbed::agent::binary().to_string_lossy())
        .args(["collect", "--listen", &bad, "--output"])
        .arg(format!("pcapng:{}", dir.path().display()))
        .output()
        .expect("collector runs");
    let stderr = String::from_utf8_lossy(&code.stderr);
    assert_eq!(code.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--listen") && stderr.contains("/nonexistent/ca.pem"),
        "{stderr}"
    );
}

/// A 60-byte Ethernet frame, enough to be taken for one.
fn frame() -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.resize(60, 0);
    f
}

fn with_frame(header: &[u8]) -> Vec<u8> {
    [header, &frame()].concat()
}

/// Deterministic pseudo-random bytes (xorshift64).
struct Noise(u64);

impl Noise {
    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let mut next = || {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        };
        let len = (next() % (max_len as u64 + 1)) as usize;
        (0..len).map(|_| next() as u8).collect()
    }
}

/// A raw IPv4 socket for protocol 47: the kernel adds the IP header, we
/// write GRE onward.
fn gre_socket() -> Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments has no memory effects; the
    // descriptor it returns is owned by the OwnedFd from here on.
    let fd = unsafe { nix::libc::socket(nix::libc::AF_INET, nix::libc::SOCK_RAW, 47) };
    ensure!(
        fd >= 0,
        "raw GRE socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Datagrams sent to each datagram listener.
#[derive(Default)]
struct Sent {
    vxlan: u64,
    geneve: u64,
    gre: u64,
}

const NOISE_PER_LISTENER: usize = 300;

/// Crafted packets of each reason, then noise, to every datagram listener.
fn send_garbage(node: &Netns) -> Result<Sent> {
    join(node.spawn(|| {
        let udp = UdpSocket::bind("0.0.0.0:0")?;
        let gre = gre_socket()?;
        let to_gre = SockaddrIn::from(std::net::SocketAddrV4::new(COLLECTOR, 0));
        let pace = || std::thread::sleep(Duration::from_micros(300));
        let mut sent = Sent::default();
        let vxlan: Vec<Vec<u8>> = vec![
            vec![8, 0, 0],                                       // short: 3 of 8 header bytes
            vec![0; 30],                                         // foreign: no I flag
            [&[8, 0, 0, 0, 0, 0, 42, 0][..], &[0; 10]].concat(), // short: inner of 10 bytes
        ];
        let geneve: Vec<Vec<u8>> = vec![
            vec![0; 4],                                                    // short
            with_frame(&[0x40, 0, 0x65, 0x58, 0, 0, 0, 0]),                // foreign: version 1
            with_frame(&[1, 0, 0x65, 0x58, 0, 0, 0, 0, 0xFF, 0xF0, 1, 4]), // garbled: option overrun
        ];
        let gre_packets: Vec<Vec<u8>> = vec![
            vec![0],                                              // short
            with_frame(&[0, 0, 0x08, 0x00]),                      // foreign: IPv4 in GRE
            with_frame(&[0x80, 0, 0x65, 0x58, 0x12, 0x34, 0, 0]), // garbled: bad checksum
            // garbled: ERSPAN version 2 under the Type II protocol
            with_frame(&[0x10, 0, 0x88, 0xBE, 0, 0, 0, 1, 0x20, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let mut noise = Noise(0x5EED_F00D_C011_EC70);
        let send_udp = |bytes: &[u8], port: u16| -> Result<()> {
            udp.send_to(bytes, SocketAddr::from((COLLECTOR, port)))?;
            pace();
            Ok(())
        };
        let send_gre = |bytes: &[u8]| -> Result<()> {
            sendto(gre.as_raw_fd(), bytes, &to_gre, MsgFlags::empty())?;
            pace();
            Ok(())
        };
        for p in &vxlan {
            send_udp(p, 4789)?;
            sent.vxlan += 1;
        }
        for p in &geneve {
            send_udp(p, 6081)?;
            sent.geneve += 1;
        }
        for p in &gre_packets {
            send_gre(p)?;
            sent.gre += 1;
        }
        for _ in 0..NOISE_PER_LISTENER {
            let mut v = noise.bytes(200);
            // A VNI that is never the real tunnel's 42.
            if let Some(b) = v.get_mut(4) {
                *b = 0xEE;
            }
            send_udp(&v, 4789)?;
            send_udp(&noise.bytes(200), 6081)?;
            send_gre(&noise.bytes(200))?;
        }
        let n = NOISE_PER_LISTENER as u64;
        sent.vxlan += n;
        sent.geneve += n;
        sent.gre += n;
        Ok(sent)
    }))
}

/// Three connections, each broken its own way: not pcapng, a block length
/// that cannot be, and a stream cut inside a block.
fn send_bad_streams(node: &Netns) -> Result<()> {
    let mut shb = Vec::new();
    mirror_agent::export::pcapng::section_header(&mut shb, "garbage test");
    let mut cut = shb.clone();
    mirror_agent::export::pcapng::interface_block(&mut cut, "eth0", 262_144);
    cut.extend_from_slice(&[6, 0, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0]);
    let streams = vec![
        b"GET / HTTP/1.0\r\n\r\n".to_vec(),
        [&shb[..], &[6, 0, 0, 0, 13, 0, 0, 0]].concat(),
        cut,
    ];
    join(node.spawn(move || {
        for bytes in streams {
            let addr = SocketAddr::from((COLLECTOR, TCP_PORT));
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            conn.write_all(&bytes)?;
            conn.shutdown(std::net::Shutdown::Write)?;
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }))
}

/// Short, foreign and garbled packets to every listener are counted per
/// reason (the first of each logged once) and skipped; the collector keeps
/// going, and a real tunnel afterwards arrives whole.
#[test]
fn garbage_is_counted_and_skipped() {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let listens = [
        "vxlan://198.18.1.2",
        "geneve://198.18.1.2",
        "gre://198.18.1.2",
        "tcp://198.18.1.2:7000",
    ];
    let collector = Collector::start(&link.ns, &listens, &[]).expect("collector starts");
    let sent = send_garbage(&pair.node).expect("garbage sent");
    send_bad_streams(&pair.node).expect("bad streams sent");

    let dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("pod.pcap"), &[])
        .expect("tcpdump");
    let agent = start_agent(&pair, "vxlan://198.18.1.2?vni=42&mtu=9000", &[]);
    mixed_traffic(&pair).expect("traffic");
    tcpdump.settle().expect("the traffic is past the hook");
    let exit = stop_agent(agent);
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    collector
        .wait_decoded(&link.ns, output_summary(&exit)["sent"])
        .expect("the collector decodes every copy sent");
    let collected = stop_collector(collector);

    let frames = collected.frames().expect("files readable");
    let real = format!("{FROM}/vni-42");
    let tunnel: Vec<Frame> = frames
        .iter()
        .filter(|f| f.interface.as_deref() == Some(&real))
        .cloned()
        .collect();
    assert_same_frames(&oracle, &tunnel);

    let log = &collected.stderr;
    let counters = |l: &str| collected.listener(l).expect("listener summary");
    let check = |listener: &str, sent: u64, real: u64, at_least: [u64; 3]| {
        let c = counters(listener);
        assert_eq!(
            c["received"],
            sent + real,
            "{listener}: every datagram counted\n{log}"
        );
        assert_eq!(
            c["decoded"] + c["errors"],
            c["received"],
            "{listener}\n{log}"
        );
        assert_eq!(c["errors"], c["short"] + c["foreign"] + c["garbled"]);
        for (reason, min) in ["short", "foreign", "garbled"].iter().zip(at_least) {
            assert!(
                c[*reason] >= min,
                "{listener}: {reason} {} < {min}\n{log}",
                c[*reason]
            );
            // The first of each reason is logged, and only the first.
            let warned = log
                .lines()
                .filter(|l| {
                    l.contains("skipped;")
                        && l.contains(&format!("listener={listener} "))
                        && l.contains(&format!("reason={reason} "))
                })
                .count();
            assert_eq!(
                warned,
                usize::from(c[*reason] > 0),
                "{listener} {reason}\n{log}"
            );
        }
        eprintln!(
            "{listener}: received {} decoded {} short {} foreign {} garbled {}",
            c["received"], c["decoded"], c["short"], c["foreign"], c["garbled"]
        );
    };
    check(
        "vxlan://198.18.1.2:4789",
        sent.vxlan,
        oracle.len() as u64,
        [2, 1, 0],
    );
    check("geneve://198.18.1.2:6081", sent.geneve, 0, [1, 1, 1]);
    check("gre://198.18.1.2", sent.gre, 0, [1, 1, 2]);
    let tcp = counters("tcp://198.18.1.2:7000");
    assert_eq!(
        (
            tcp["connections"],
            tcp["foreign"],
            tcp["garbled"],
            tcp["short"],
            tcp["decoded"]
        ),
        (3, 1, 1, 1, 0),
        "{log}"
    );
    eprintln!(
        "garbage: {} datagrams and 3 bad streams skipped and counted; {} real frames after it \
         equal tcpdump's",
        sent.vxlan + sent.geneve + sent.gre,
        tunnel.len()
    );
}

/// A small --rotate-size makes several files; --max-files keeps the newest
/// few, each a complete capture tshark reads cleanly.
#[test]
fn files_rotate_by_size_and_the_oldest_are_deleted() {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let extra = ["--rotate-size", "20000", "--max-files", "3"];
    let collector =
        Collector::start(&link.ns, &["vxlan://198.18.1.2"], &extra).expect("collector starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("pod.pcap"), &[])
        .expect("tcpdump");
    let agent = start_agent(&pair, "vxlan://198.18.1.2?vni=42&mtu=9000", &[]);
    let sizes = vec![1400; 80];
    traffic::udp(
        &pair.pod,
        &pair.node,
        IpAddr::V4(pair.node_v4),
        5001,
        &sizes,
    )
    .expect("traffic");
    tcpdump.settle().expect("the traffic is past the hook");
    let exit = stop_agent(agent);
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    collector
        .wait_decoded(&link.ns, output_summary(&exit)["sent"])
        .expect("the collector decodes every copy sent");
    let collected = stop_collector(collector);

    let files = collected.files().expect("files");
    let summary = collected.summary().expect("collector summary");
    assert_eq!(files.len(), 3, "{}", collected.stderr);
    assert!(summary["files_written"] >= 5, "{}", collected.stderr);
    assert_eq!(summary["files_deleted"], summary["files_written"] - 3);
    let mut kept = Vec::new();
    for file in &files {
        let size = std::fs::metadata(file).expect("size").len();
        // A file closes with the packet that takes it past the size.
        assert!(size < 20_000 + 2_000, "{} is {size} bytes", file.display());
        Tshark::new(file).assert_clean(Severity::Error);
        let frames = capture::read(file).expect("readable");
        assert!(!frames.is_empty(), "{} holds no packet", file.display());
        kept.extend(frames);
    }
    // What is kept is a part of what tcpdump saw, and the newest part.
    let diff = capture::difference(&oracle, &kept);
    assert!(
        diff.extra.is_empty(),
        "frames tcpdump never saw: {}",
        diff.extra.len()
    );
    assert!(kept.len() < oracle.len());
    // Compared as a wire carries it: the agent finishes offloaded checksums.
    let finished = testbed::wire::finished(&oracle);
    let last = finished.last().expect("traffic");
    assert!(
        kept.iter().any(|f| f.data == last.data),
        "the newest frames were deleted"
    );
    eprintln!(
        "rotation: {} files written, {} deleted, {} kept with {} of {} frames",
        summary["files_written"],
        summary["files_deleted"],
        files.len(),
        kept.len(),
        oracle.len()
    );
}

/// --rotate-seconds starts a new file once the current one is that old.
#[test]
fn files_rotate_by_age() {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let collector = Collector::start(
        &link.ns,
        &["vxlan://198.18.1.2"],
        &["--rotate-seconds", "1"],
    )
    .expect("collector starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("pod.pcap"), &[])
        .expect("tcpdump");
    let agent = start_agent(&pair, "vxlan://198.18.1.2?vni=42&mtu=9000", &[]);
    for i in 0..4 {
        let port = 5001 + i;
        traffic::udp(
            &pair.pod,
            &pair.node,
            IpAddr::V4(pair.node_v4),
            port,
            &[200],
        )
        .expect("udp");
        // The point: each datagram more than --rotate-seconds after the last.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let exit = stop_agent(agent);
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    collector
        .wait_decoded(&link.ns, output_summary(&exit)["sent"])
        .expect("the collector decodes every copy sent");
    let collected = stop_collector(collector);
    let files = collected.files().expect("files");
    assert!(
        files.len() >= 3,
        "{} files:\n{}",
        files.len(),
        collected.stderr
    );
    assert_same_frames(&oracle, &collected.frames().expect("readable"));
    eprintln!(
        "age rotation: {} files for {} frames",
        files.len(),
        oracle.len()
    );
}

fn output_summary(exit: &Exit) -> std::collections::HashMap<String, u64> {
    exit.fields_of("output summary").expect("output summary")
}

fn wait_connected(collector: &mut Collector) -> Result<()> {
    // The exporter retries with backoff up to 10 s between attempts.
    collector
        .wait_for_line("stream connected", Duration::from_secs(25))
        .context("the agent did not reconnect")
        .map(drop)
}

/// With no collector listening, the agent keeps mirroring and counts what
/// it cannot send; once a collector comes up, the agent connects, and what
/// the pod sends from then on arrives.
#[test]
fn agent_survives_a_collector_outage() {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let output = format!("tcp://{COLLECTOR}:{TCP_PORT}");
    // A small queue (64 KiB), so the outage overflows it and drops are
    // counted; still larger than any one batch the traffic after it makes.
    let agent = start_agent(&pair, &output, &["--queue-bytes", "65536"]);
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 10).expect("ping during the outage");
    let sizes = vec![1400; 80];
    traffic::udp(
        &pair.pod,
        &pair.node,
        IpAddr::V4(pair.node_v4),
        5001,
        &sizes,
    )
    .expect("udp");
    // The outage lasts until the agent has counted copies it could not
    // send (its /metrics, at the default address in its namespace).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = http::get(&pair.node, "127.0.0.1:9464", "/metrics")
            .expect("/metrics")
            .body;
        let lost: u64 = ["queue_full", "send_error"]
            .iter()
            .filter_map(|r| {
                let label = format!("reason=\"{r}\"");
                http::sample(&body, "mirror_dropped_packets_total", &[&label]).ok()
            })
            .sum();
        if lost > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing counted lost:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }

    let listen = format!("tcp://{COLLECTOR}:{TCP_PORT}");
    let mut collector = Collector::start(&link.ns, &[&listen], &[]).expect("collector starts");
    wait_connected(&mut collector).expect("reconnect");
    let dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("pod.pcap"), &[])
        .expect("tcpdump");
    mixed_traffic(&pair).expect("traffic after the outage");
    tcpdump.settle().expect("the traffic is past the hook");
    let exit = stop_agent(agent);
    let after = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    collector
        .wait_for_line("stream closed", Duration::from_secs(10))
        .expect("stream ends");
    let collected = stop_collector(collector);

    let out = output_summary(&exit);
    let lost = out["lost_queue_full"] + out["lost_send_error"];
    assert!(
        lost > 0,
        "no drop counted during the outage:\n{}",
        exit.stderr
    );
    let frames = collected.frames().expect("readable");
    let diff = capture::difference(&after, &frames);
    assert!(
        diff.missing.is_empty(),
        "{} of {} frames sent after the collector came up are missing",
        diff.missing.len(),
        after.len()
    );
    eprintln!(
        "outage: agent counted {lost} lost (queue full {}, send errors {}); all {} frames after \
         the collector came up arrived ({} frames collected in all)",
        out["lost_queue_full"],
        out["lost_send_error"],
        after.len(),
        frames.len()
    );
}
