//! The kernel's own segmentation is the oracle for ours. A pod sends TCP
//! bulk and UDP GSO (IPv4 and IPv6) with TSO/GSO on its veth, so the hook
//! on the host end sees super-packets; the node's bridge forwards them to
//! a port with every offload off, where the kernel cuts them into wire
//! frames (and finishes their checksums), and tcpdump there records those
//! frames. The agent's copies of the same super-packets, received by the
//! collector over a TCP stream (which keeps each copy's original length),
//! and written by the same agent to a file with `--segment`, must be those
//! frames byte for byte; with a snaplen, every segment must still be there,
//! cut, with the kernel's headers and original length. A second agent's
//! file, without `--segment`, keeps the super-packets whole: tcpdump's on
//! the veth, checksums finished. Each output's counters (super-packets,
//! segments, checksums finished) equal what the oracles count.

use std::{collections::BTreeMap, net::IpAddr, path::PathBuf, time::Duration};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use testbed::{
    agent::{Agent, Exit},
    capture::{self, Frame},
    collector::Collector,
    tcpdump::Tcpdump,
    topology::{CollectorLink, SegmentingBridge},
    traffic, tshark, wire,
};

const BULK: usize = 256 << 10;
const COLLECTOR: &str = "tcp://198.18.1.2:7000";
/// Ethernet, IPv6 and a TCP header with timestamps (86 bytes) fit.
const SNAPLEN: usize = 128;
/// The files the two agents write.
const SEGMENTED: &str = "segmented.pcapng";
const WHOLE: &str = "whole.pcapng";

/// What one run left: the frames the kernel put on the offload-free port,
/// the super-packets the hook saw on the pod's veth, and our copies: those
/// the collector got, those of the `--segment` file, and those of the
/// other agent's plain file.
struct Run {
    kernel: Vec<Frame>,
    at_pod: Vec<Frame>,
    ours: Vec<Frame>,
    segmented: Vec<Frame>,
    whole: Vec<Frame>,
    /// tcpdump's capture on the pod veth, and the two files, for tshark.
    pod_path: PathBuf,
    segmented_path: PathBuf,
    whole_path: PathBuf,
    /// The agents' logs: the stream and `--segment` file's, the plain file's.
    segmenting: Exit,
    plain: Exit,
    _dir: tempfile::TempDir,
}

fn run(snaplen: Option<usize>) -> Run {
    testbed::require_root();
    let bridge = SegmentingBridge::new().expect("bridge topology");
    let link = CollectorLink::new(&bridge.node).expect("collector link");
    let mut collector = Collector::start(&link.ns, &[COLLECTOR], &[]).expect("collector starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = |dev: &str, q: &str, name: &str| {
        Tcpdump::start(&bridge.node, dev, dir.path().join(name), &["-Q", q]).expect("tcpdump")
    };
    let at_sink = tcpdump(&bridge.sink_if, "out", "sink.pcap");
    let at_pod = tcpdump(&bridge.host_if, "in", "pod.pcap");
    let snap = snaplen.map(|s| s.to_string());
    let (segmented_path, whole_path) = (dir.path().join(SEGMENTED), dir.path().join(WHOLE));
    let file = |path: &PathBuf| format!("pcapng:{}", path.display());
    let (segmented_out, whole_out) = (file(&segmented_path), file(&whole_path));
    let agent = |output: &str, more: &[&'static str]| {
        let mut args = vec!["attach", "-i", &bridge.host_if, "--direction", "ingress"];
        args.extend(["--output", output]);
        args.extend(more);
        if let Some(s) = &snap {
            args.extend(["--snaplen", s]);
        }
        Agent::start(&bridge.node, &args).expect("agent starts")
    };
    let segmenting = agent(&segmented_out, &["--segment", "--output", COLLECTOR]);
    // Its own hooks on the same veth: files of one agent share the flags.
    // The first agent serves the namespace's metrics port.
    let plain = agent(&whole_out, &["--metrics-addr", "off"]);
    let (v4, v6) = (IpAddr::V4(bridge.server_v4), IpAddr::V6(bridge.server_v6));
    let (pod, server) = (&bridge.pod, &bridge.server);
    traffic::tcp_bulk(pod, server, v4, 5001, BULK).expect("TCP over IPv4");
    traffic::tcp_bulk(pod, server, v6, 5002, BULK).expect("TCP over IPv6");
    // The last segment shorter than the others, as the kernel allows.
    traffic::udp_gso(pod, server, v4, 5003, 1000, 7500).expect("UDP GSO over IPv4");
    traffic::udp_gso(pod, server, v6, 5004, 1200, 5000).expect("UDP GSO over IPv6");
    // SIGTERM drains the ring and the stream before the agent exits.
    let stop = |a: Agent| {
        let exit = a.stop().expect("agent stops");
        assert!(exit.status.success(), "agent failed: {}", exit.stderr);
        exit
    };
    let (segmenting, plain) = (stop(segmenting), stop(plain));
    collector
        .wait_for_line("stream closed", Duration::from_secs(20))
        .expect("the stream ends");
    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exits 0");
    let read = |p: &PathBuf| capture::read(p).expect("read capture");
    let pod_path = at_pod.stop().expect("tcpdump on the pod veth");
    Run {
        kernel: read(&at_sink.stop().expect("tcpdump on the offload-free port")),
        at_pod: read(&pod_path),
        ours: collected.frames().expect("collector files"),
        segmented: read(&segmented_path),
        whole: read(&whole_path),
        pod_path,
        segmented_path,
        whole_path,
        segmenting,
        plain,
        _dir: dir,
    }
}

/// IP version and transport protocol of a frame (etherparse).
fn kind(data: &[u8]) -> Option<(u8, u8)> {
    let p = SlicedPacket::from_ethernet(data).ok()?;
    let version = match p.net.as_ref()? {
        NetSlice::Ipv4(_) => 4,
        NetSlice::Ipv6(_) => 6,
        NetSlice::Arp(_) => return None,
    };
    let proto = match p.transport.as_ref()? {
        TransportSlice::Tcp(_) => 6,
        TransportSlice::Udp(_) => 17,
        _ => return None,
    };
    Some((version, proto))
}

/// Super-packets the hook saw (frames longer than the 1500-byte MTU),
/// by IP version and protocol; fails unless each of the four kinds the
/// test sends is there, so the comparison cannot pass without segmenting.
fn super_packets(at_pod: &[Frame]) -> BTreeMap<(u8, u8), usize> {
    let mut seen = BTreeMap::new();
    for f in at_pod.iter().filter(|f| f.orig_len > 1514) {
        *seen
            .entry(kind(&f.data).expect("an IP super-packet"))
            .or_default() += 1;
    }
    for k in [(4, 6), (6, 6), (4, 17), (6, 17)] {
        assert!(
            seen.contains_key(&k),
            "no super-packet of IPv{} protocol {} on the pod veth (TSO/GSO off?): {seen:?}",
            k.0,
            k.1
        );
    }
    seen
}

fn described(frames: &[(Vec<u8>, u32)]) -> Vec<String> {
    frames
        .iter()
        .take(3)
        .map(|(d, l)| capture::describe(d, *l))
        .collect()
}

fn assert_no_difference(what: &str, diff: &capture::Difference) {
    assert!(
        diff.is_empty(),
        "{what} differ from the kernel's frames: {} missing, {} extra\nmissing: {:?}\nextra: {:?}",
        diff.missing.len(),
        diff.extra.len(),
        described(&diff.missing),
        described(&diff.extra),
    );
}

/// The wire frames the kernel made of super-packets: all its frames but
/// those the pod sent as they were.
fn segments(r: &Run) -> usize {
    r.kernel.len() - r.at_pod.iter().filter(|f| f.orig_len <= 1514).count()
}

/// Each output's counters, by value: the segmenting outputs (the stream
/// and the `--segment` file) made one segment per wire frame the kernel
/// cut from the super-packets tcpdump saw, and finished the checksum of
/// every frame whole within `limit` bytes that the kernel's differs from
/// the hook's (those it had to finish too); the plain file cut nothing and
/// finished what tshark calls bad on the veth within `limit`. Returns the
/// checksums finished by each kind of output.
fn assert_counters(r: &Run, limit: usize) -> (usize, usize) {
    let supers = r.at_pod.iter().filter(|f| f.orig_len > 1514).count();
    let within = |frames: &[Frame]| -> Vec<Frame> {
        frames
            .iter()
            .filter(|f| f.orig_len as usize <= limit)
            .cloned()
            .collect()
    };
    let kernel_finished = capture::difference_exact(&within(&r.kernel), &within(&r.at_pod))
        .missing
        .len();
    let counters = |exit: &Exit, output: &str| -> [usize; 3] {
        let f = exit
            .fields_with(&["output summary", output])
            .expect("the output's summary");
        ["super_packets", "segments", "checksums_finished"]
            .map(|k| *f.get(k).unwrap_or_else(|| panic!("no {k} in {f:?}")) as usize)
    };
    for output in [COLLECTOR, SEGMENTED] {
        assert_eq!(
            counters(&r.segmenting, output),
            [supers, segments(r), kernel_finished],
            "{output}: super-packets, segments, checksums finished"
        );
    }
    let only = if limit == usize::MAX {
        String::new()
    } else {
        format!("frame.len <= {limit}")
    };
    let bad_at_pod = tshark::bad_checksums(&r.pod_path, &only).expect("tshark");
    assert_eq!(
        counters(&r.plain, WHOLE),
        [0, 0, bad_at_pod],
        "{WHOLE}: super-packets, segments, checksums finished"
    );
    (kernel_finished, bad_at_pod)
}

#[test]
fn our_segments_are_the_kernels_byte_for_byte() {
    let r = run(None);
    let supers = super_packets(&r.at_pod);
    assert!(
        r.kernel.iter().all(|f| f.orig_len <= 1514),
        "the kernel left a super-packet whole on the offload-free port"
    );
    let diff = capture::difference_exact(&r.kernel, &r.ours);
    assert_no_difference("our copies", &diff);
    let diff = capture::difference_exact(&r.kernel, &r.segmented);
    assert_no_difference("the --segment file's copies", &diff);
    // Without --segment, a file keeps tcpdump's super-packets whole.
    let diff = capture::difference_exact(&wire::finished(&r.at_pod), &r.whole);
    assert!(
        diff.is_empty(),
        "the plain file differs from tcpdump's frames on the veth (checksums finished): \
         {} missing, {} extra\nmissing: {:?}\nextra: {:?}",
        diff.missing.len(),
        diff.extra.len(),
        described(&diff.missing),
        described(&diff.extra),
    );
    let whole_supers = r.whole.iter().filter(|f| f.orig_len > 1514).count();
    assert_eq!(
        whole_supers,
        supers.values().sum::<usize>(),
        "super-packets in the plain file"
    );
    for file in [&r.segmented_path, &r.whole_path] {
        let bad = tshark::bad_checksums(file, "").expect("tshark");
        assert_eq!(bad, 0, "{}: bad checksums", file.display());
    }
    let (finished, finished_whole) = assert_counters(&r, usize::MAX);
    eprintln!(
        "{} frames equal the kernel's, {} of them segments of super-packets {supers:?} \
         ((IP version, protocol): count), at the collector and in the --segment file \
         ({finished} checksums finished); the plain file: tcpdump's {} frames with \
         {whole_supers} super-packets whole, {finished_whole} checksums finished, none bad",
        r.kernel.len(),
        segments(&r),
        r.at_pod.len(),
    );
}

/// Where a frame's payload starts (after Ethernet, IP and TCP or UDP
/// headers), from its first bytes; `None` for a frame that is not TCP or
/// UDP over IP.
fn headers_end(data: &[u8]) -> Option<(usize, usize, u8)> {
    let (l4, proto) = match data.get(12..14)? {
        [0x08, 0x00] => (14 + usize::from(data.get(14)? & 0x0f) * 4, *data.get(23)?),
        [0x86, 0xdd] => (14 + 40, *data.get(20)?),
        _ => return None,
    };
    match proto {
        6 => Some((l4 + usize::from(data.get(l4 + 12)? >> 4) * 4, l4 + 16, 6)),
        17 => Some((l4 + 8, l4 + 6, 17)),
        _ => None,
    }
}

/// A frame of `orig_len` bytes cut to [`SNAPLEN`], its transport checksum
/// zeroed if the cut left out part of what that checksum covers: nobody
/// can compute it without the payload, so it is not compared.
fn cut(data: &[u8], orig_len: u32) -> Vec<u8> {
    let mut out = data[..data.len().min(SNAPLEN)].to_vec();
    if orig_len as usize > SNAPLEN
        && let Some((_, at, _)) = headers_end(data)
        && let Some(field) = out.get_mut(at..at + 2)
    {
        field.fill(0);
    }
    out
}

/// [`cut`], and then only the headers: a segment after the first of a
/// super-packet cut by the snaplen carries no payload in our copy (the
/// hook captured only the start of the super-packet).
fn cut_headers(data: &[u8], orig_len: u32) -> Vec<u8> {
    let mut out = cut(data, orig_len);
    if let Some((end, _, _)) = headers_end(data) {
        out.truncate(end);
    }
    out
}

#[test]
fn with_a_snaplen_every_segment_is_there_with_the_kernels_headers() {
    let r = run(Some(SNAPLEN));
    let supers = super_packets(&r.at_pod);
    let each = |frames: &[Frame], f: fn(&[u8], u32) -> Vec<u8>| -> Vec<Frame> {
        frames
            .iter()
            .map(|x| Frame {
                data: f(&x.data, x.orig_len),
                ..x.clone()
            })
            .collect()
    };
    let mut with_payload = 0;
    for (what, ours) in [
        ("the collector's", &r.ours),
        ("the --segment file's", &r.segmented),
    ] {
        let longest = ours.iter().map(|f| f.data.len()).max().unwrap_or(0);
        assert!(longest <= SNAPLEN, "{what}: a copy of {longest} bytes");
        // Every segment there, with the kernel's headers and original length.
        let diff =
            capture::difference_exact(&each(&r.kernel, cut_headers), &each(ours, cut_headers));
        assert_no_difference(&format!("the headers of {what} cut copies"), &diff);
        // And whatever payload a copy carries is the kernel's.
        let carrying: Vec<Frame> = ours
            .iter()
            .filter(|f| headers_end(&f.data).is_none_or(|(end, _, _)| f.data.len() > end))
            .cloned()
            .collect();
        let diff = capture::difference_exact(&each(&r.kernel, cut), &each(&carrying, cut));
        assert!(
            diff.extra.is_empty(),
            "{what} copies with payload the kernel did not send: {:?}",
            described(&diff.extra)
        );
        with_payload = carrying.len();
    }
    // Without --segment: tcpdump's frames on the veth, cut as `tcpdump -s`
    // would, checksums finished where the whole segment was captured.
    let diff =
        capture::difference_exact(&each(&wire::finished(&r.at_pod), cut), &each(&r.whole, cut));
    assert!(
        diff.is_empty(),
        "the plain file differs from tcpdump's cut frames on the veth: {} missing, {} extra\n\
         missing: {:?}\nextra: {:?}",
        diff.missing.len(),
        diff.extra.len(),
        described(&diff.missing),
        described(&diff.extra),
    );
    let cut_copies = r
        .ours
        .iter()
        .filter(|f| f.orig_len as usize > SNAPLEN)
        .count();
    let (finished, finished_whole) = assert_counters(&r, SNAPLEN);
    eprintln!(
        "{} frames with the kernel's headers and original length ({cut_copies} cut to \
         {SNAPLEN} bytes, transport checksum aside; {with_payload} carrying payload, equal to \
         the kernel's), {} of them segments of super-packets {supers:?}, at the collector and \
         in the --segment file ({finished} checksums finished); the plain file: tcpdump's {} \
         frames cut, {finished_whole} checksums finished",
        r.kernel.len(),
        segments(&r),
        r.at_pod.len(),
    );
}
