//! Copies an IDS accepts as if it sat on the pod's wire, checked
//! by tools we did not write: the kernel's VXLAN device decapsulates, and
//! tshark, with checksum validation on, reads what arrived and what tcpdump
//! saw on the pod's veth (TSO/GSO on, the default: the hook sees 64 KiB
//! super-packets with partial checksums).

use std::{collections::HashMap, net::IpAddr, path::Path, time::Duration};

use testbed::{
    agent::Agent,
    tcpdump::Tcpdump,
    topology::{CollectorLink, PodPair},
    traffic,
    tshark::Tshark,
};

const VNI: u32 = 42;
const BULK: usize = 512 << 10;

/// One frame as tshark reads it: its connection (the sorted endpoint pair),
/// its sender, and what it carries.
#[derive(Clone, Debug)]
struct Seen {
    conn: (String, String),
    from: String,
    /// TCP: sequence number, acknowledgement, payload length; others: IP id
    /// and fragment offset (seq) with length 0.
    seq: u64,
    ack: u64,
    len: u64,
    tcp: bool,
}

fn first(row: &HashMap<String, Vec<String>>, name: &str) -> Option<String> {
    row.get(name).and_then(|v| v.first().cloned())
}

fn num(row: &HashMap<String, Vec<String>>, name: &str) -> u64 {
    first(row, name)
        .and_then(|v| {
            v.strip_prefix("0x")
                .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
        .unwrap_or(0)
}

fn read(file: &Path) -> Vec<Seen> {
    let rows = Tshark::new(file)
        .fields(&[
            "ip.src",
            "ip.dst",
            "ip.id",
            "ip.frag_offset",
            "tcp.srcport",
            "tcp.dstport",
            "tcp.seq_raw",
            "tcp.ack_raw",
            "tcp.len",
            "udp.srcport",
            "udp.dstport",
        ])
        .expect("tshark reads the capture");
    rows.iter()
        .filter_map(|r| {
            let (src, dst) = (first(r, "ip.src")?, first(r, "ip.dst")?);
            let tcp = first(r, "tcp.srcport").is_some();
            let (sp, dp) = if tcp {
                (num(r, "tcp.srcport"), num(r, "tcp.dstport"))
            } else {
                (num(r, "udp.srcport"), num(r, "udp.dstport"))
            };
            let a = format!("{src}:{sp}");
            let b = format!("{dst}:{dp}");
            let conn = if a <= b {
                (a.clone(), b)
            } else {
                (b, a.clone())
            };
            Some(if tcp {
                Seen {
                    conn,
                    from: a,
                    seq: num(r, "tcp.seq_raw"),
                    ack: num(r, "tcp.ack_raw"),
                    len: num(r, "tcp.len"),
                    tcp,
                }
            } else {
                Seen {
                    conn,
                    from: a,
                    seq: num(r, "ip.id") << 16 | num(r, "ip.frag_offset"),
                    ack: 0,
                    len: 0,
                    tcp,
                }
            })
        })
        .collect()
}

/// For every connection, the copies arrive in the order tcpdump saw the
/// packets on the pod veth: each copy (a whole packet or one of its wire
/// segments) maps to the packet it came from, and those never go back.
/// Returns how many copies were compared.
fn assert_flow_order(oracle: &[Seen], arrived: &[Seen]) -> usize {
    let mut last: HashMap<&(String, String), usize> = HashMap::new();
    for (n, s) in arrived.iter().enumerate() {
        let at = oracle
            .iter()
            .position(|o| {
                o.conn == s.conn
                    && o.from == s.from
                    && o.tcp == s.tcp
                    && o.ack == s.ack
                    && if s.tcp {
                        s.seq >= o.seq && s.seq < o.seq + o.len.max(1)
                    } else {
                        s.seq == o.seq
                    }
            })
            .unwrap_or_else(|| {
                let same: Vec<&Seen> = oracle.iter().filter(|o| o.conn == s.conn).collect();
                panic!(
                    "copy {n} ({s:?}) matches no packet tcpdump saw; of its connection: {same:?}"
                )
            });
        let prev = last.entry(&s.conn).or_insert(0);
        assert!(
            at >= *prev,
            "copy {n} ({s:?}) is of packet {at}, after a copy of packet {prev} of its connection"
        );
        *prev = at;
    }
    arrived.len()
}

fn count(file: &Path, filter: &str) -> usize {
    Tshark::new(file)
        .check_checksums(&["ip", "tcp", "udp"])
        .run(&["-Y", filter])
        .expect("tshark filters")
        .lines()
        .count()
}

/// VXLAN with its defaults, to the kernel's own VXLAN device: every
/// connection in order, no bad checksum, super-packets as wire segments
/// (whole: tshark finds no lost segment and every byte of the bulk), and
/// the MTU of the route towards the collector (9000 here) taken.
#[test]
fn vxlan_copies_keep_flow_order_finished_checksums_and_wire_segments() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    for (ns, dev) in [(&pair.node, &link.node_if), (&link.ns, &link.collector_if)] {
        ns.ip(&["link", "set", dev, "mtu", "9000"]).expect("mtu");
    }
    let vxlan_dev = link.kernel_vxlan(VNI).expect("kernel vxlan device");
    let dir = tempfile::tempdir().expect("tempdir");
    let at_pod = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("pod.pcap"), &[])
        .expect("tcpdump on the pod veth");
    let at_sensor = Tcpdump::start(&link.ns, &vxlan_dev, dir.path().join("vx.pcap"), &[])
        .expect("tcpdump on the kernel vxlan device");
    // No mtu=: the tunnel takes the 9000 bytes of its route's device.
    let output = format!("vxlan://{}?vni={VNI}", link.collector_v4);
    let agent = Agent::start(
        &pair.node,
        &["attach", "--output", &output, "-i", &pair.host_if],
    )
    .expect("agent starts");
    let node = IpAddr::V4(pair.node_v4);
    pair.flush_neighbours().expect("flush");
    traffic::ping(&pair.pod, node, 3).expect("ping");
    for port in [5001, 5002, 5003] {
        traffic::udp(&pair.pod, &pair.node, node, port, &[20, 300, 4000]).expect("udp");
    }
    traffic::tcp_bulk(&pair.pod, &pair.node, node, 5010, BULK).expect("tcp");
    traffic::tcp_bulk(&pair.node, &pair.pod, IpAddr::V4(pair.pod_v4), 5011, BULK).expect("tcp");
    std::thread::sleep(Duration::from_millis(300));
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let pod = at_pod.stop().expect("tcpdump pod");
    let vx = at_sensor.stop().expect("tcpdump vxlan");
    let out = exit.fields_of("output summary").expect("output summary");

    let oracle = read(&pod);
    let arrived = read(&vx);
    let compared = assert_flow_order(&oracle, &arrived);
    eprintln!(
        "{compared} copies in connection order ({} packets on the veth)",
        oracle.len()
    );

    let bad = "ip.checksum.status == 0 || tcp.checksum.status == 0 || udp.checksum.status == 0";
    let bad_at_pod = count(&pod, bad);
    assert!(
        bad_at_pod > 0,
        "tcpdump saw no partial checksum: the test proves nothing"
    );
    assert_eq!(count(&vx, bad), 0, "bad checksums arrived");
    eprintln!("{bad_at_pod} partial checksums on the veth, none at the sensor");

    // Super-packets were there, and arrived as wire segments.
    let big = count(&pod, "frame.len > 9000");
    assert!(big > 0, "no super-packet on the veth: TSO/GSO is off?");
    assert_eq!(
        count(&vx, "frame.len > 1514"),
        0,
        "a super-packet arrived whole"
    );
    assert_eq!(
        count(
            &vx,
            "tcp.analysis.lost_segment || tcp.analysis.out_of_order"
        ),
        0
    );
    let payload: u64 = Tshark::new(&vx)
        .fields(&["tcp.len"])
        .expect("tshark")
        .iter()
        .map(|r| num(r, "tcp.len"))
        .sum();
    assert_eq!(payload, 2 * BULK as u64, "TCP payload at the sensor");
    assert_eq!(
        out["mtu_truncated"], 0,
        "the route's 9000-byte MTU was not taken"
    );
    let segments = out.get("segments").copied().unwrap_or(0);
    assert!(
        segments > big as u64,
        "segments made: {segments}, super-packets: {big}"
    );
    eprintln!("{big} super-packets cut into {segments} segments");
}

/// `checksums=keep`: the copies are exactly tcpdump's bytes, partial
/// checksums and all (the kernel's VXLAN device decapsulates them).
#[test]
fn checksums_keep_sends_the_bytes_as_the_hook_saw_them() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    for (ns, dev) in [(&pair.node, &link.node_if), (&link.ns, &link.collector_if)] {
        ns.ip(&["link", "set", dev, "mtu", "9000"]).expect("mtu");
    }
    let vxlan_dev = link.kernel_vxlan(VNI).expect("kernel vxlan device");
    let dir = tempfile::tempdir().expect("tempdir");
    let at_pod = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("pod.pcap"), &[])
        .expect("tcpdump on the pod veth");
    let at_sensor = Tcpdump::start(&link.ns, &vxlan_dev, dir.path().join("vx.pcap"), &[])
        .expect("tcpdump on the kernel vxlan device");
    let output = format!(
        "vxlan://{}?vni={VNI}&mtu=9000&checksums=keep",
        link.collector_v4
    );
    let agent = Agent::start(
        &pair.node,
        &["attach", "--output", &output, "-i", &pair.host_if],
    )
    .expect("agent starts");
    let node = IpAddr::V4(pair.node_v4);
    pair.flush_neighbours().expect("flush");
    traffic::ping(&pair.pod, node, 2).expect("ping");
    traffic::udp(&pair.pod, &pair.node, node, 5021, &[20, 300, 1000, 4000]).expect("udp");
    std::thread::sleep(Duration::from_millis(300));
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let pod = at_pod.stop().expect("tcpdump pod");
    let vx = at_sensor.stop().expect("tcpdump vxlan");
    let oracle = testbed::capture::read(&pod).expect("read");
    let arrived = testbed::capture::read(&vx).expect("read");
    let diff = testbed::capture::difference_exact(&oracle, &arrived);
    assert!(diff.is_empty(), "keep changed bytes: {diff:?}");
    let bad = "ip.checksum.status == 0 || tcp.checksum.status == 0 || udp.checksum.status == 0";
    let partial = count(&vx, bad);
    assert!(partial > 0, "no partial checksum was kept");
    assert_eq!(partial, count(&pod, bad));
    eprintln!(
        "{} frames exactly tcpdump's, {partial} partial checksums kept",
        arrived.len()
    );
}
