//! Copies an IDS accepts as if it sat on the pod's wire, on every output,
//! checked by tools we did not write. One agent sends to vxlan, geneve,
//! gre, erspan2, erspan3 and tcp at once; the receivers are the kernel's
//! VXLAN device (the only tunnel device this kernel has), tcpdump on the
//! collector's link read through tshark (GENEVE, GRE, ERSPAN II and III),
//! and the collector's file (tcp). The agent also writes a pcapng file of
//! its own. The pod's veth has TSO/GSO on, the default, so the hook sees
//! 64 KiB super-packets with partial checksums. tcpdump on that veth is the
//! reference, and for every output:
//! - every connection's frames arrive in the order tcpdump saw them, and
//!   every packet tcpdump saw arrives (a super-packet as its segments, or
//!   whole in the agent's file, as tcpdump writes it);
//! - tshark with checksum validation finds no bad checksum (outer headers
//!   included: the node's link to the collector finishes its own), or
//!   with `checksums=keep` (`--checksums keep` for the file), exactly
//!   tcpdump's bytes;
//! - tshark's TCP analysis (out-of-order, lost segments) and the HTTP
//!   requests and answers it decodes are the same as on the veth;
//! - the output's counters of super-packets, segments and checksums
//!   finished equal what tshark and the receivers count.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use testbed::{
    agent::Agent,
    capture::{self, Frame},
    collector::Collector,
    netns::join,
    tcpdump::Tcpdump,
    topology::{CollectorLink, PodPair},
    traffic,
    tshark::{self, Tshark},
    wire,
};

const VNI: u32 = 42;
const BULK: usize = 512 << 10;
const STREAM: &str = "tcp://198.18.1.2:7000";
/// The two tests take turns: each runs six outputs and three tcpdumps
/// with large buffers, too much for two at once on a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Where an output's copies are received.
#[derive(Clone, Copy)]
enum Receiver {
    /// tcpdump on the kernel's VXLAN device: the frames it decapsulated.
    KernelVxlan,
    /// tcpdump on the collector's link, packets to this address; tshark
    /// finds the inner frames.
    Sensor(Ipv4Addr),
    /// The collector's pcapng file.
    Collector,
    /// The agent's own pcapng file (super-packets whole).
    File,
}

/// The agent's own file, in the run's directory.
const FILE: &str = "agent.pcapng";

/// Each output to its own address at the collector, so one capture of the
/// collector's link splits by destination; and the agent's file.
fn outputs(keep: bool, dir: &Path) -> Vec<(&'static str, String, Receiver)> {
    let keep = if keep { "&checksums=keep" } else { "" };
    let sensor = |n| Receiver::Sensor(Ipv4Addr::new(198, 18, 1, n));
    vec![
        (
            "vxlan",
            format!("vxlan://198.18.1.2?vni={VNI}{keep}"),
            Receiver::KernelVxlan,
        ),
        (
            "geneve",
            format!("geneve://198.18.1.3?vni={VNI}{keep}"),
            sensor(3),
        ),
        ("gre", format!("gre://198.18.1.4?key=7{keep}"), sensor(4)),
        (
            "erspan2",
            format!("erspan2://198.18.1.5?session=5{keep}"),
            sensor(5),
        ),
        (
            "erspan3",
            format!("erspan3://198.18.1.6?session=6{keep}"),
            sensor(6),
        ),
        (
            "tcp",
            format!("{STREAM}{}", keep.replacen('&', "?", 1)),
            Receiver::Collector,
        ),
        (
            "file",
            format!("pcapng:{}", dir.join(FILE).display()),
            Receiver::File,
        ),
    ]
}

/// How an output is named in the agent's log: its URI up to the options.
fn log_name(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}

/// HTTP-like TCP both ways, UDP requests and answers, ping, each over IPv4
/// and IPv6; with `bulk`, a 512 KiB download by the pod over IPv4 and an
/// upload over IPv6 (the super-packets).
///
/// The traffic runs on one CPU (its threads and commands inherit the
/// calling thread's affinity): where two CPUs send packets of one
/// connection at the same instant (a pure ACK from softirq and one from
/// `recv`, say), the hook and tcpdump's tap may see them in either order,
/// so tcpdump's order would not be an oracle for the hook's.
fn traffic(p: &PodPair, bulk: bool) -> anyhow::Result<()> {
    use nix::{
        sched::{CpuSet, sched_getaffinity, sched_setaffinity},
        unistd::Pid,
    };
    let all = sched_getaffinity(Pid::from_raw(0))?;
    let first = (0..CpuSet::count())
        .find(|&c| all.is_set(c).unwrap_or(false))
        .ok_or_else(|| anyhow::anyhow!("this thread may run on no CPU"))?;
    let mut one = CpuSet::new();
    one.set(first)?;
    sched_setaffinity(Pid::from_raw(0), &one)?;
    let result = traffic_on_this_cpu(p, bulk);
    sched_setaffinity(Pid::from_raw(0), &all)?;
    result
}

fn traffic_on_this_cpu(p: &PodPair, bulk: bool) -> anyhow::Result<()> {
    let (node4, pod4) = (IpAddr::V4(p.node_v4), IpAddr::V4(p.pod_v4));
    let node6 = IpAddr::V6(p.node_v6.expect("dual stack"));
    let pod6 = IpAddr::V6(p.pod_v6.expect("dual stack"));
    p.flush_neighbours()?;
    traffic::ping(&p.pod, node4, 3)?;
    traffic::ping(&p.pod, node6, 2)?;
    traffic::udp_echo(&p.pod, &p.node, node4, 5301, &[20, 300, 1400])?;
    traffic::udp_echo(&p.node, &p.pod, pod6, 5302, &[40, 1200])?;
    let paths = ["/index.html", "/api/items?id=7", "/favicon.ico"];
    traffic::http(&p.pod, &p.node, node4, 8080, &paths)?;
    traffic::http(&p.node, &p.pod, pod6, 8080, &["/v6/health", "/v6/data"])?;
    if bulk {
        traffic::tcp_bulk(&p.node, &p.pod, pod4, 5010, BULK)?;
        traffic::tcp_bulk(&p.pod, &p.node, node6, 5011, BULK)?;
    }
    Ok(())
}

/// Frames in a capture tcpdump is still writing (a record cut short at
/// the end is not counted).
fn frames_so_far(path: &Path) -> usize {
    std::fs::read(path).ok().map_or(0, |bytes| {
        let Ok(mut reader) = pcap_file::pcap::PcapReader::new(&bytes[..]) else {
            return 0;
        };
        let mut n = 0;
        while let Some(Ok(_)) = reader.next_raw_packet() {
            n += 1;
        }
        n
    })
}

/// What arrived at one output's receiver: the inner frames in arrival
/// order, the file tshark validates (with any outer headers), and the
/// inner frames as a pcap for tshark's TCP analysis.
struct Arrived {
    name: &'static str,
    /// The output's counters: super-packets, segments, checksums finished.
    counters: [usize; 3],
    /// Super-packets arrive whole (the agent's file).
    whole: bool,
    frames: Vec<Frame>,
    validated: PathBuf,
    inner: PathBuf,
}

/// One agent run with every output; the pod veth's frames and what each
/// output's receiver got.
fn run(keep: bool, bulk: bool, dir: &Path) -> (PathBuf, Vec<Arrived>) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (pair, link) = CollectorLink::jumbo_with_dual_stack_pod();
    for n in 3..=6 {
        let addr = format!("198.18.1.{n}/24");
        link.ns
            .ip(&["addr", "add", &addr, "dev", &link.collector_if])
            .expect("collector address");
    }
    // The node's link finishes its own (outer) checksums, as a NIC would,
    // so tshark can validate the tunnels' headers too.
    pair.node
        .exec(&["ethtool", "-K", &link.node_if, "tx", "off"])
        .expect("ethtool (`cargo xtask setup` installs it)");
    // A socket on GENEVE's port: without one, the collector answers port
    // unreachable, and the agent's connected socket loses its next send.
    let _geneve_sink = join(link.ns.spawn(|| Ok(UdpSocket::bind(("198.18.1.3", 6081))?)))
        .expect("UDP socket at the sensor");
    let vxlan_dev = link.kernel_vxlan(VNI).expect("kernel vxlan device");
    let mut collector = Collector::start(&link.ns, &[STREAM], &[]).expect("collector starts");
    let at_pod = Tcpdump::start(&pair.node, &pair.host_if, dir.join("pod.pcap"), &[])
        .expect("tcpdump on the pod veth");
    let at_vxlan = Tcpdump::start(&link.ns, &vxlan_dev, dir.join("vxlan.pcap"), &[])
        .expect("tcpdump on the kernel vxlan device");
    let filter = "udp port 6081 or ip proto 47";
    let at_sensor = Tcpdump::start(
        &link.ns,
        &link.collector_if,
        dir.join("sensor.pcap"),
        &[filter],
    )
    .expect("tcpdump on the collector's link");

    let outs = outputs(keep, dir);
    let mut args = vec!["attach", "-i", &pair.host_if];
    for (_, uri, _) in &outs {
        args.extend(["--output", uri]);
    }
    if keep {
        args.extend(["--checksums", "keep"]);
    }
    let agent = Agent::start(&pair.node, &args).expect("agent starts");
    traffic(&pair, bulk).expect("traffic");
    // Every packet on the veth gives at least one copy: wait until the
    // kernel's VXLAN device has had as many, then stop (SIGTERM drains
    // whatever else is in the ring and the queues).
    let deadline = Instant::now() + Duration::from_secs(30);
    while frames_so_far(&dir.join("vxlan.pcap")) < frames_so_far(&dir.join("pod.pcap")) {
        assert!(Instant::now() < deadline, "copies stopped arriving");
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "agent failed: {}", exit.stderr);
    collector
        .wait_for_line("stream closed", Duration::from_secs(20))
        .expect("the stream ends");
    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exits 0");
    let pod = at_pod.stop().expect("tcpdump on the pod veth");
    let vxlan = at_vxlan.stop().expect("tcpdump on the vxlan device");
    let sensor = capture::read(&at_sensor.stop().expect("tcpdump at the sensor")).expect("read");

    let mut arrived = Vec::new();
    for (name, uri, receiver) in outs {
        let summary = exit
            .fields_with(&["output summary", log_name(&uri)])
            .expect("the output's summary");
        let counters = ["super_packets", "segments", "checksums_finished"]
            .map(|k| *summary.get(k).unwrap_or_else(|| panic!("{name}: no {k}")) as usize);
        let (frames, validated) = match receiver {
            Receiver::KernelVxlan => (capture::read(&vxlan).expect("read"), vxlan.clone()),
            Receiver::File => {
                let path = dir.join(FILE);
                (capture::read(&path).expect("read the agent's file"), path)
            }
            Receiver::Collector => {
                let files = collected.files().expect("collector files");
                assert_eq!(files.len(), 1, "one collector file: {files:?}");
                let copy = dir.join("collector.pcapng");
                std::fs::copy(&files[0], &copy).expect("copy the collector's file");
                (collected.frames().expect("collector frames"), copy)
            }
            Receiver::Sensor(addr) => {
                let outer: Vec<Frame> = sensor
                    .iter()
                    .filter(|f| f.data.get(30..34) == Some(&addr.octets()[..]))
                    .cloned()
                    .collect();
                let path = dir.join(format!("{name}.pcap"));
                capture::write(&path, &outer).expect("write");
                let inner = Tshark::new(&path)
                    .ethernet_layers()
                    .expect("tshark JSON")
                    .iter()
                    .map(|d| {
                        assert_eq!(d.ethernet_at.len(), 2, "{name}: not one inner frame");
                        Frame {
                            data: d.inner().to_vec(),
                            orig_len: d.inner().len() as u32,
                            interface: None,
                            dir: None,
                            ts_ns: 0,
                        }
                    })
                    .collect();
                (inner, path)
            }
        };
        let inner = dir.join(format!("{name}-inner.pcap"));
        capture::write(&inner, &frames).expect("write");
        arrived.push(Arrived {
            name,
            counters,
            whole: matches!(receiver, Receiver::File),
            frames,
            validated,
            inner,
        });
    }
    (pod, arrived)
}

/// A frame's connection (its endpoints, sorted, and protocol: ping, and
/// the neighbour discovery that precedes it, are one), its sender, and for
/// TCP its sequence number, acknowledgement and payload length.
#[derive(Debug)]
struct Id {
    conn: String,
    from: String,
    tcp: Option<(u32, u32, usize)>,
}

fn identify(data: &[u8]) -> Id {
    let none = |what: &str| Id {
        conn: what.to_owned(),
        from: String::new(),
        tcp: None,
    };
    let Ok(p) = SlicedPacket::from_ethernet(data) else {
        return none("unparsed");
    };
    let (src, dst, proto): (IpAddr, IpAddr, u8) = match &p.net {
        Some(NetSlice::Ipv4(v4)) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
            v4.header().protocol().0,
        ),
        Some(NetSlice::Ipv6(v6)) => {
            let payload = v6.payload();
            // A neighbour solicitation goes to the target's multicast group
            // but belongs with the traffic of the host it resolves (and the
            // advertisement that host answers with): its target.
            let target = match payload.payload {
                [135, _, _, _, _, _, _, _, rest @ ..] if payload.ip_number.0 == 58 => rest
                    .get(..16)
                    .and_then(|t| <[u8; 16]>::try_from(t).ok())
                    .map(std::net::Ipv6Addr::from),
                _ => None,
            };
            (
                v6.header().source_addr().into(),
                target.unwrap_or(v6.header().destination_addr()).into(),
                payload.ip_number.0,
            )
        }
        _ => return none("not IP"),
    };
    let (sp, dp, tcp) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (
            t.source_port(),
            t.destination_port(),
            Some((
                t.sequence_number(),
                t.acknowledgment_number(),
                t.payload().len(),
            )),
        ),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port(), None),
        _ => (0, 0, None),
    };
    let (a, b) = (format!("[{src}]:{sp}"), format!("[{dst}]:{dp}"));
    let conn = if a <= b {
        format!("{proto} {a} {b}")
    } else {
        format!("{proto} {b} {a}")
    };
    Id { conn, from: a, tcp }
}

/// Whether `copy` is `packet` or, for TCP, one of its segments.
fn copy_of(copy: (&Id, &[u8]), packet: (&Id, &[u8], &[u8])) -> bool {
    let ((c, bytes), (p, raw, finished)) = (copy, packet);
    if c.conn != p.conn || c.from != p.from {
        return false;
    }
    match (c.tcp, p.tcp) {
        (Some((cs, ca, cl)), Some((ps, pa, pl))) => {
            let at = cs.wrapping_sub(ps) as usize;
            ca == pa
                && if cl == 0 {
                    pl == 0 && at == 0
                } else {
                    at + cl <= pl
                }
        }
        _ => bytes == raw || bytes == finished,
    }
}

/// For every connection, the copies arrive in the order tcpdump saw the
/// packets on the pod veth (each copy, a whole packet or one of its wire
/// segments, maps to the packet it came from, and those never go back),
/// and every packet has a copy. Returns the TCP payload bytes that arrived.
fn assert_flow_order(name: &str, oracle: &[Frame], arrived: &[Frame]) -> usize {
    let finished = wire::finished(oracle);
    let ids: Vec<Id> = oracle.iter().map(|f| identify(&f.data)).collect();
    let mut covered = vec![false; oracle.len()];
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut payload = 0;
    for (n, f) in arrived.iter().enumerate() {
        let id = identify(&f.data);
        payload += id.tcp.map_or(0, |t| t.2);
        let from = last.get(&id.conn).copied().unwrap_or(0);
        let matches = |i: &usize| {
            copy_of(
                (&id, &f.data),
                (&ids[*i], &oracle[*i].data, &finished[*i].data),
            )
        };
        let at = (from..oracle.len())
            .filter(matches)
            .find(|i| !covered[*i])
            .or_else(|| (from..oracle.len()).find(matches))
            .unwrap_or_else(|| match (0..oracle.len()).find(matches) {
                Some(i) => panic!(
                    "{name}: copy {n} ({id:?}) is of packet {i}, after a copy of packet {from} of \
                     its connection"
                ),
                None => {
                    panic!("{name}: copy {n} ({id:?}) matches no packet tcpdump saw on the veth")
                }
            });
        covered[at] = true;
        last.insert(id.conn, at);
    }
    let missing: Vec<(usize, &Id)> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| !covered[*i])
        .collect();
    assert!(missing.is_empty(), "{name}: no copy of {missing:?}");
    payload
}

/// tshark's view of the TCP and HTTP in a capture (checksums unchecked,
/// its default, as an analyser would run it on a veth).
#[derive(Debug, PartialEq, Eq)]
struct Analysis {
    out_of_order: usize,
    lost_segment: usize,
    /// `METHOD URI` of each request, or `CODE` of each answer, sorted.
    http: Vec<String>,
}

/// One tshark pass: the frames it flags or decodes as HTTP, the flags
/// told apart by their expert messages (the analysis fields themselves
/// have no value to print).
fn analyse(file: &Path) -> Analysis {
    let rows = Tshark::new(file)
        .run(&[
            "-Y",
            "tcp.analysis.out_of_order || tcp.analysis.lost_segment || http.request || http.response",
            "-T",
            "fields",
            "-E",
            "separator=\t",
            "-E",
            "occurrence=a",
            "-E",
            "aggregator=|",
            "-e",
            "_ws.expert.message",
            "-e",
            "http.request.method",
            "-e",
            "http.request.uri",
            "-e",
            "http.response.code",
        ])
        .expect("tshark analyses");
    let mut a = Analysis {
        out_of_order: 0,
        lost_segment: 0,
        http: Vec::new(),
    };
    for row in rows.lines() {
        let f: Vec<Vec<&str>> = row
            .split('\t')
            .map(|v| v.split('|').filter(|s| !s.is_empty()).collect())
            .chain(std::iter::repeat(Vec::new()))
            .take(4)
            .collect();
        a.out_of_order += usize::from(f[0].iter().any(|m| m.contains("out-of-order")));
        a.lost_segment += usize::from(f[0].iter().any(|m| m.contains("not captured")));
        a.http
            .extend(f[1].iter().zip(&f[2]).map(|(m, u)| format!("{m} {u}")));
        a.http.extend(f[3].iter().map(|c| (*c).to_owned()));
    }
    a.http.sort();
    a
}

fn bad_checksums(file: &Path) -> usize {
    tshark::bad_checksums(file, "").expect("tshark filters")
}

/// Every output with its defaults: every connection in order and whole,
/// no bad checksum, super-packets as wire segments (no frame over 1514
/// bytes, every payload byte there; in the file, whole: tcpdump's frames,
/// checksums finished), the same TCP analysis and HTTP as on the veth.
/// Every partial checksum on the veth (tshark's count) was finished, and
/// every segment (frames received beyond the packets tcpdump saw whole).
#[test]
fn every_output_keeps_flow_order_finished_checksums_and_tcp_analysis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pod, arrived) = run(false, true, dir.path());
    let oracle = capture::read(&pod).expect("read");
    let bad_at_pod = bad_checksums(&pod);
    assert!(
        bad_at_pod > 0,
        "no partial checksum on the veth: the test proves nothing"
    );
    let supers = oracle.iter().filter(|f| f.data.len() > 1514).count();
    assert!(supers > 0, "no super-packet on the veth: TSO/GSO is off?");
    // Neighbour solicitations (to multicast) must keep their place among
    // the packets of the hosts they resolve: there must be some.
    let solicitations = Tshark::new(&pod)
        .run(&["-Y", "icmpv6.type == 135 && ipv6.dst == ff02::/16"])
        .expect("tshark filters")
        .lines()
        .count();
    assert!(solicitations > 0, "no neighbour solicitation on the veth");
    let reference = analyse(&pod);
    let requests = reference
        .http
        .iter()
        .filter(|h| h.starts_with("GET"))
        .count();
    assert_eq!(
        requests, 5,
        "tshark decoded {:?} on the veth",
        reference.http
    );
    let veth_payload: usize = oracle
        .iter()
        .filter_map(|f| identify(&f.data).tcp)
        .map(|t| t.2)
        .sum();
    for a in &arrived {
        let payload = assert_flow_order(a.name, &oracle, &a.frames);
        assert_eq!(payload, veth_payload, "{}: TCP payload bytes", a.name);
        if a.whole {
            let diff = capture::difference_exact(&wire::finished(&oracle), &a.frames);
            assert!(
                diff.is_empty(),
                "{}: not tcpdump's frames with checksums finished: {diff:?}",
                a.name
            );
            assert_eq!(a.counters, [0, 0, bad_at_pod], "{}: counters", a.name);
        } else {
            let longest = a.frames.iter().map(|f| f.data.len()).max().unwrap_or(0);
            assert!(
                longest <= 1514,
                "{}: a {longest}-byte frame arrived",
                a.name
            );
            // Every super-packet on the veth had a partial checksum, and
            // every segment of it got a finished one.
            let segments = a.frames.len() - (oracle.len() - supers);
            assert_eq!(
                a.counters,
                [supers, segments, bad_at_pod - supers + segments],
                "{}: counters (super-packets, segments, checksums finished)",
                a.name
            );
        }
        assert_eq!(
            bad_checksums(&a.validated),
            0,
            "{}: bad checksums arrived",
            a.name
        );
        assert_eq!(
            analyse(&a.inner),
            reference,
            "{}: tshark's analysis",
            a.name
        );
        eprintln!(
            "{}: {} frames in connection order for {} on the veth ({supers} super-packets), \
             no bad checksum (veth: {bad_at_pod}), {payload} TCP payload bytes, analysis {:?}, \
             counters (super-packets, segments, checksums finished) {:?}, \
             {solicitations} neighbour solicitations to multicast in order",
            a.name,
            a.frames.len(),
            oracle.len(),
            reference,
            a.counters
        );
    }
}

/// `checksums=keep` on every output (`--checksums keep` for the file): the
/// copies are exactly tcpdump's bytes, partial checksums and all, and
/// nothing is counted as finished or cut (no bulk: kept whole, a
/// super-packet would be cut to the MTU).
#[test]
fn checksums_keep_sends_the_bytes_as_the_hook_saw_them_on_every_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (pod, arrived) = run(true, false, dir.path());
    let oracle = capture::read(&pod).expect("read");
    let partial = bad_checksums(&pod);
    assert!(
        partial > 0,
        "no partial checksum on the veth: the test proves nothing"
    );
    let mut kept = BTreeMap::new();
    for a in &arrived {
        assert_flow_order(a.name, &oracle, &a.frames);
        let diff = capture::difference_exact(&oracle, &a.frames);
        assert!(diff.is_empty(), "{}: keep changed bytes: {diff:?}", a.name);
        assert_eq!(
            bad_checksums(&a.inner),
            partial,
            "{}: partial checksums kept",
            a.name
        );
        assert_eq!(a.counters, [0, 0, 0], "{}: counters", a.name);
        kept.insert(a.name, a.frames.len());
    }
    eprintln!(
        "exactly tcpdump's {} frames ({partial} partial checksums) at {kept:?}",
        oracle.len()
    );
}
