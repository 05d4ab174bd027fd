//! The capture time a tunnel carries, judged by tcpdump on the pod's veth.
//!
//! The agent mirrors the veth as GENEVE (its capture-time option) and as
//! ERSPAN III (its own 100 µs timestamp) to one collector at once. The
//! collector must file each copy at the time tcpdump stamped the same frame
//! on the veth, within a stated bound, and its file must be in time order
//! (capinfos, Wireshark's own reader, is the judge of that). scapy, which
//! shares no code with our encoders, sends packets with known timestamps
//! for the decoder side. The repo's Wireshark dissector is judged on
//! tcpdump's capture of the collector's link. Addresses: 198.18.0.0/24 (pod link) and
//! 198.18.1.0/24 (node to collector).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    time::{SystemTime, UNIX_EPOCH},
};

use testbed::{
    agent::Agent,
    capture::{self, Frame},
    collector::{Collected, Collector},
    scapy,
    tcpdump::Tcpdump,
    topology::{CollectorLink, PodPair},
    traffic,
};

const NODE: &str = "node-a";
/// How far a GENEVE copy's time may be from tcpdump's for the same frame:
/// the TC hook and tcpdump's tap stamp the packet in one pass through the
/// stack, microseconds apart; the agent's boot-to-Unix clock offset is
/// read once at start. The collector's receive time is later by the agent's
/// drain, batch and send.
const GENEVE_BOUND_NS: i128 = 1_000_000;
/// ERSPAN III counts in 100 µs units (floored), so its copies may be up to
/// one unit earlier than the capture on top of the bound above.
const ERSPAN_UNIT_NS: i128 = 100_000;

fn stop_collector(collector: Collector) -> Collected {
    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exits 0");
    collected
}

/// `attach` on the pod's veth with `outputs`, each with `checksums=keep`
/// so the copies are exactly tcpdump's bytes and pair with its frames.
fn start_agent(pair: &PodPair, outputs: &[&str]) -> Agent {
    let mut args = vec!["attach", "-i", &pair.host_if, "--node-name", NODE];
    for output in outputs {
        args.extend(["--output", output]);
    }
    Agent::start(&pair.node, &args).expect("agent starts")
}

/// capinfos's answer to "Strict time order" for `file`.
fn strict_time_order(file: &std::path::Path) -> String {
    let out = std::process::Command::new("capinfos")
        .args(["-o", "-M"])
        .arg(file)
        .output()
        .expect("capinfos runs (`cargo xtask setup` installs Wireshark's tools)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "capinfos failed: {text}");
    text.lines()
        .find_map(|l| l.strip_prefix("Strict time order:"))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("capinfos printed no time order: {text}"))
}

/// Pings both ways, and two UDP flows at once from the pod (so the copies
/// of different flows interleave in the hook and travel on different lanes).
fn traffic(p: &PodPair) {
    p.flush_neighbours().expect("flush");
    traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 3).expect("ping");
    traffic::ping(&p.node, IpAddr::V4(p.pod_v4), 2).expect("ping");
    traffic::udp(
        &p.pod,
        &p.node,
        IpAddr::V4(p.node_v4),
        5001,
        &[0, 100, 1472, 4000],
    )
    .expect("udp");
    let (a, b) = (
        SocketAddr::new(IpAddr::V4(p.node_v4), 5003),
        SocketAddr::new(IpAddr::V4(p.node_v4), 5004),
    );
    let (pod_a, pod_b) = (&p.pod, &p.pod);
    std::thread::scope(|s| {
        let one = s.spawn(|| traffic::udp_flood(pod_a, a, 300, 64));
        let two = s.spawn(|| traffic::udp_flood(pod_b, b, 300, 200));
        one.join().expect("flood").expect("flood");
        two.join().expect("flood").expect("flood");
    });
}

/// For each frame of `copies`, the capture time tcpdump gave the same bytes
/// (the k-th copy of some bytes is the k-th frame tcpdump saw with them:
/// identical bytes are one flow, whose order every output keeps).
fn pair_with_tcpdump<'a>(oracle: &[Frame], copies: &[&'a Frame]) -> Vec<(&'a Frame, u128)> {
    let mut times: HashMap<&[u8], std::collections::VecDeque<u128>> = HashMap::new();
    for f in oracle {
        times.entry(&f.data).or_default().push_back(f.ts_ns);
    }
    copies
        .iter()
        .map(|c| {
            let t = times
                .get_mut(c.data.as_slice())
                .and_then(|q| q.pop_front())
                .unwrap_or_else(|| {
                    panic!(
                        "a copy tcpdump never saw (or saw fewer times): {}",
                        capture::describe(&c.data, c.orig_len)
                    )
                });
            (*c, t)
        })
        .collect()
}

#[test]
fn geneve_and_erspan3_carry_tcpdumps_capture_time() {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let collector = Collector::start(&link.ns, &["geneve://198.18.1.2", "gre://198.18.1.2"], &[])
        .expect("collector starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("veth.pcap"), &[])
        .expect("tcpdump");
    let agent = start_agent(
        &pair,
        &[
            "geneve://198.18.1.2?vni=42&mtu=9000&checksums=keep",
            "erspan3://198.18.1.2?session=9&mtu=9000&checksums=keep",
        ],
    );
    traffic(&pair);
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "agent failed: {}", exit.stderr);
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read tcpdump");
    let collected = stop_collector(collector);
    let files = collected.files().expect("files");
    assert_eq!(files.len(), 1, "one file expected: {files:?}");
    assert_eq!(
        strict_time_order(&files[0]),
        "True",
        "capinfos on {files:?}"
    );

    let frames = collected.frames().expect("collector files");
    let geneve_name = format!("198.18.1.1/{NODE}/{}", pair.host_if);
    let erspan_name = "198.18.1.1/erspan-session-9";
    let of = |name: &str| -> Vec<&Frame> {
        frames
            .iter()
            .filter(|f| f.interface.as_deref() == Some(name))
            .collect()
    };
    let (geneve, erspan) = (of(&geneve_name), of(erspan_name));
    assert!(oracle.len() >= 600, "too little traffic: {}", oracle.len());
    assert_eq!(geneve.len(), oracle.len(), "GENEVE copies");
    assert_eq!(erspan.len(), oracle.len(), "ERSPAN III copies");
    assert_eq!(frames.len(), 2 * oracle.len(), "no other copies");

    let mut worst = [0i128; 2];
    for (i, (copies, low, high)) in [
        (&geneve, -GENEVE_BOUND_NS, GENEVE_BOUND_NS),
        (&erspan, -GENEVE_BOUND_NS - ERSPAN_UNIT_NS, GENEVE_BOUND_NS),
    ]
    .into_iter()
    .enumerate()
    {
        for (copy, seen) in pair_with_tcpdump(&oracle, copies) {
            let delta = copy.ts_ns as i128 - seen as i128;
            assert!(
                (low..=high).contains(&delta),
                "{}: the copy's time is {delta} ns from tcpdump's ({})",
                copy.interface.as_deref().unwrap_or("?"),
                capture::describe(&copy.data, copy.orig_len)
            );
            worst[i] = worst[i].max(delta.abs());
        }
    }
    let late = collected.summary().expect("collector summary")["late"];
    eprintln!(
        "{} frames on the veth, each filed twice in strict time order; largest distance \
         from tcpdump's time: GENEVE {} ns, ERSPAN III {} ns; late {late}",
        oracle.len(),
        worst[0],
        worst[1]
    );
}

/// scapy's GENEVE with our capture-time option and ERSPAN III with
/// timestamps of both granularities, all from a known time a minute ago
/// (within the half wrap of 100 ns units, 3.5 minutes): the
/// collector files each at its time, not at its arrival (copies that old
/// are past the reorder window, so they are written as they come).
#[test]
fn scapy_timestamps_are_filed() {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let collector = Collector::start(&link.ns, &["geneve://198.18.1.2", "gre://198.18.1.2"], &[])
        .expect("collector starts");
    let base_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
        - 60_000_000_000;
    // Whole 100 µs, so every granularity can carry it exactly.
    let base_ns = base_ns / 100_000 * 100_000;
    let mut sent = Vec::new();
    // ERSPAN's times follow GENEVE's, as the kinds are sent one after the other.
    for (kind, from) in [
        ("geneve-time", base_ns),
        ("erspan3-time", base_ns + 100_000_000),
    ] {
        sent.extend(
            scapy::send_encapsulated_at(&pair.node, kind, "198.18.1.2", from).expect("scapy sends"),
        );
    }
    let summary_ok = |c: &Collected| c.summary().map(|s| s["written"]).unwrap_or(0);
    let collected = stop_collector(collector);
    let frames = collected.frames().expect("collector files");
    assert_eq!(
        frames.len(),
        sent.len(),
        "written {}: {}",
        summary_ok(&collected),
        collected.stderr
    );
    let key = |f: &Frame| (f.data.clone(), f.ts_ns, f.interface.clone());
    let want: Vec<_> = sent.iter().map(key).collect();
    let got: Vec<_> = frames.iter().map(key).collect();
    assert_eq!(
        got.iter().map(|k| k.1).collect::<Vec<_>>(),
        want.iter().map(|k| k.1).collect::<Vec<_>>(),
        "the collector's times, in file order, are the ones sent"
    );
    assert_eq!(got, want, "each frame at its own time, under its name");
    for file in collected.files().expect("files") {
        assert_eq!(strict_time_order(&file), "True");
    }
    eprintln!(
        "{} scapy frames filed at their carried times, from {base_ns} ns",
        frames.len()
    );
}

/// The repo's Wireshark dissector (`deploy/wireshark/mirror-geneve.lua`),
/// loaded into tshark, on tcpdump's capture of the collector's link: every
/// option of every copy by name, with the values tcpdump on the veth gives
/// (the interface name is the veth's, the capture time tcpdump's within the
/// bound above), and nothing unknown or malformed.
#[test]
fn wireshark_names_every_geneve_option() {
    let (pair, link) = CollectorLink::jumbo_with_pod();
    // GENEVE sends UDP GSO messages: cut into datagrams on the way out, as
    // on a wire, for tcpdump at the collector.
    link.segment_like_a_nic(&pair.node)
        .expect("software UDP segmentation");
    let collector =
        Collector::start(&link.ns, &["geneve://198.18.1.2"], &[]).expect("collector starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let veth = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("veth.pcap"), &[])
        .expect("tcpdump on the veth");
    let wire = Tcpdump::start(
        &link.ns,
        &link.collector_if,
        dir.path().join("wire.pcap"),
        &["udp", "port", "6081"],
    )
    .expect("tcpdump on the collector's link");
    let agent = start_agent(
        &pair,
        &["geneve://198.18.1.2?vni=42&mtu=9000&checksums=keep"],
    );
    pair.flush_neighbours().expect("flush");
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 3).expect("ping");
    traffic::ping(&pair.node, IpAddr::V4(pair.pod_v4), 2).expect("ping");
    traffic::udp(
        &pair.pod,
        &pair.node,
        IpAddr::V4(pair.node_v4),
        5001,
        &[10, 1400],
    )
    .expect("udp");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "agent failed: {}", exit.stderr);
    let oracle = capture::read(&veth.stop().expect("tcpdump")).expect("read");
    let wire_path = wire.stop().expect("tcpdump");
    stop_collector(collector);

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/wireshark/mirror-geneve.lua"
    );
    let lua = format!("lua_script:{script}");
    let tshark = testbed::tshark::Tshark::new(&wire_path);
    let fields = [
        "mirror_geneve.orig_len",
        "mirror_geneve.direction",
        "mirror_geneve.ifindex",
        "mirror_geneve.node",
        "mirror_geneve.pod",
        "mirror_geneve.capture_ns",
    ];
    let mut args = vec!["-X", &lua, "-T", "fields", "-E", "separator=/t"];
    for f in &fields {
        args.extend(["-e", f]);
    }
    let rows = tshark.run(&args).expect("tshark with the dissector");
    let verbose = tshark.run(&["-X", &lua, "-V"]).expect("tshark -V");
    for bad in ["Unknown", "unknown", "Malformed", "does not know"] {
        assert!(
            !verbose.contains(bad),
            "tshark -V says {bad:?}:\n{}",
            verbose
                .lines()
                .filter(|l| l.contains(bad))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    for name in [
        "Original length: ",
        "Direction: ",
        "Interface index: ",
        "Node name: ",
        "Pod (or interface) name: ",
        "Capture time: ",
    ] {
        assert!(verbose.contains(name), "no {name:?} in tshark -V");
    }

    let ifindex: u32 = pair
        .node
        .ip(&["-o", "link", "show", "dev", &pair.host_if])
        .expect("ip link")
        .split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("the veth's ifindex");
    // The inner frames, after Ethernet, IPv4 (20 bytes from a UDP socket),
    // UDP and GENEVE with its options: tcpdump's bytes (checksums=keep).
    let packets = capture::read(&wire_path).expect("read the link's capture");
    let inner: Vec<Frame> = packets
        .iter()
        .map(|p| {
            let geneve = 14 + 20 + 8;
            let header = geneve + 8 + usize::from(p.data[geneve] & 0x3F) * 4;
            Frame {
                data: p.data[header..].to_vec(),
                ..p.clone()
            }
        })
        .collect();
    let refs: Vec<&Frame> = inner.iter().collect();
    let paired = pair_with_tcpdump(&oracle, &refs);
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), packets.len(), "one row per GENEVE packet");
    assert_eq!(
        packets.len(),
        oracle.len(),
        "one copy per frame on the veth"
    );
    let mut directions = std::collections::BTreeSet::new();
    let mut worst = 0i128;
    for (row, (copy, seen)) in rows.iter().zip(&paired) {
        let [orig, dir, index, node, pod, ns] = row[..] else {
            panic!("a row without all six options: {row:?}");
        };
        let original = oracle
            .iter()
            .find(|f| f.data == copy.data)
            .map(|f| f.orig_len)
            .expect("the frame");
        assert_eq!(orig.parse::<u32>().ok(), Some(original), "{row:?}");
        assert_eq!(index.parse::<u32>().ok(), Some(ifindex), "{row:?}");
        assert_eq!((node, pod), (NODE, pair.host_if.as_str()), "{row:?}");
        directions.insert(dir.to_owned());
        let delta = ns.parse::<i128>().expect("capture_ns") - *seen as i128;
        assert!(
            delta.abs() <= GENEVE_BOUND_NS,
            "capture time {delta} ns from tcpdump's: {row:?}"
        );
        worst = worst.max(delta.abs());
    }
    // Pings both ways: both directions appear.
    assert_eq!(
        directions,
        ["0", "1"].into_iter().map(String::from).collect(),
        "directions"
    );
    eprintln!(
        "{} GENEVE packets dissected by the Lua script: six named options each, the \
         capture time at most {worst} ns from tcpdump's on the veth",
        rows.len()
    );
}
