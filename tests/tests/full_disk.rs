//! A full disk (issue 17): the collector, and `attach --output pcapng:PATH`,
//! write into a small tmpfs of the test's own while a filler file takes
//! most of it. Every frame must be either in a file or counted lost, every
//! file left must be valid pcapng (capinfos, Wireshark's own tool, is the
//! oracle for validity and counts), and once space is freed writing
//! resumes. The collector's sender is the test itself, writing pcapng with
//! the pcap-file crate over TCP, so the count sent is exact; the agent's
//! reference is tcpdump on the veth it mirrors.

use std::{
    borrow::Cow,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::EnhancedPacketBlock,
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};
use testbed::{
    agent::Agent,
    capture,
    collector::Collector,
    http::{get, sample, wait_accounted},
    netns::{Netns, join},
    tcpdump::Tcpdump,
    tmpfs::Tmpfs,
    topology::PodPair,
};

const PORT: u16 = 7000;
const METRICS: &str = "127.0.0.1:9464";
const FRAME: usize = 600;

/// A frame that carries its number, so the files can be checked frame by frame.
fn frame(seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; FRAME];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    // IEEE 802 local experimental EtherType.
    f[12..14].copy_from_slice(&0x88B5u16.to_be_bytes());
    f[14..18].copy_from_slice(&seq.to_be_bytes());
    f
}

fn seq_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(data.get(14..18)?.try_into().ok()?))
}

/// Streams frames `seqs` to the collector over one TCP connection, as a
/// pcapng section written by pcap-file.
fn send(ns: &Netns, seqs: std::ops::Range<u32>) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
    join(ns.spawn(move || {
        let stream = TcpStream::connect(addr)?;
        let mut w = PcapNgWriter::new(stream)?;
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: vec![InterfaceDescriptionOption::IfName("disk".into())],
        })?;
        for seq in seqs {
            let data = frame(seq);
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::from_secs(1_700_000_000),
                original_len: FRAME as u32,
                data: Cow::Borrowed(&data),
                options: vec![],
            })?;
        }
        w.into_inner().shutdown(std::net::Shutdown::Write)?;
        Ok(())
    }))
}

/// (written, write_errors) once the writer has accounted for `sent` frames.
fn accounted(ns: &Netns, sent: u64) -> Result<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let body = get(ns, METRICS, "/metrics")?.body;
        let written = sample(&body, "mirror_collect_written_packets_total", &[])?;
        let lost = sample(&body, "mirror_collect_write_errors_total", &[])?;
        if written + lost >= sent {
            ensure!(
                written + lost == sent,
                "{written} written + {lost} lost, but {sent} sent"
            );
            return Ok((written, lost));
        }
        ensure!(
            Instant::now() < deadline,
            "only {written} written + {lost} lost of {sent} sent:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// capinfos' packet count; an error unless it reads the whole file.
fn capinfos_packets(file: &Path) -> Result<u64> {
    let out = Command::new("capinfos")
        .args(["-c", "-M"])
        .arg(file)
        .output()
        .context("capinfos (wireshark-common) must be installed")?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && out.stderr.is_empty(),
        "capinfos finds {} invalid: {text}{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Number of packets:"))
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("no packet count from capinfos: {text}"))
}

#[test]
fn a_full_disk_loses_only_counted_frames_and_leaves_valid_files() {
    testbed::require_root();
    const FIRST: u32 = 3000;
    const ROUND: u32 = 100;
    let disk = Tmpfs::mount(2 << 20).expect("tmpfs");
    // Most of the disk taken, so the first frames fill the rest.
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 1280 << 10]).expect("filler");
    let ns = Netns::new("mtdisk").expect("namespace");
    let listen = format!("tcp://127.0.0.1:{PORT}");
    let collector =
        Collector::start_in(&ns, disk.path(), &[&listen], &[]).expect("collector starts");

    // About 1.9 MB of frames into about 768 KiB of room.
    send(&ns, 0..FIRST).expect("send");
    let (written, lost) = accounted(&ns, u64::from(FIRST)).expect("accounted");
    assert!(written > 0, "nothing was written before the disk filled");
    assert!(lost > 0, "the disk never filled: {written} written");

    // Room again: rounds of frames until one is written whole (the writer
    // tries a new file at most once a second after a failure).
    std::fs::remove_file(&filler).expect("free space");
    let mut sent = u64::from(FIRST);
    let mut last = FIRST..FIRST;
    let mut resumed = false;
    let (mut prev_written, mut prev_lost) = (written, lost);
    for _ in 0..20 {
        last = sent as u32..sent as u32 + ROUND;
        send(&ns, last.clone()).expect("send");
        sent += u64::from(ROUND);
        let (w, l) = accounted(&ns, sent).expect("accounted");
        if l == prev_lost {
            assert_eq!(w, prev_written + u64::from(ROUND));
            resumed = true;
            break;
        }
        (prev_written, prev_lost) = (w, l);
    }
    assert!(resumed, "writing never resumed after space came back");
    let body = get(&ns, METRICS, "/metrics").expect("metrics").body;
    let final_written =
        sample(&body, "mirror_collect_written_packets_total", &[]).expect("written");
    let final_lost = sample(&body, "mirror_collect_write_errors_total", &[]).expect("lost");

    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exits 0");
    let summary = collected.summary().expect("summary");
    assert_eq!(summary["written"], final_written, "summary and metrics");
    assert_eq!(summary["write_errors"], final_lost, "summary and metrics");
    assert_eq!(
        collected.listener(&listen).expect("listener")["decoded"],
        sent,
        "TCP delivers every frame"
    );
    let warnings = collected
        .stderr
        .lines()
        .filter(|l| l.contains("writing failed"))
        .count();
    assert_eq!(
        warnings, 1,
        "one warning for the outage:\n{}",
        collected.stderr
    );

    let files = collected.files().expect("files");
    let mut on_disk = 0;
    let mut newest_seqs = Vec::new();
    for f in &files {
        let size = std::fs::metadata(f).expect("stat").len();
        assert!(size > 0, "{} is empty", f.display());
        on_disk += capinfos_packets(f).expect("capinfos");
        newest_seqs = capture::read(f)
            .expect("readable")
            .iter()
            .filter_map(|fr| seq_of(&fr.data))
            .collect();
    }
    assert_eq!(
        on_disk, final_written,
        "capinfos counts what was reported written"
    );
    assert_eq!(on_disk + final_lost, sent, "on disk + counted lost = sent");
    // The last round is whole, in a file of its own that no frame from
    // before the outage shares.
    assert!(
        last.clone().all(|s| newest_seqs.contains(&s)),
        "the last round is not whole in the newest file"
    );
    assert!(
        newest_seqs.iter().all(|&s| s >= FIRST),
        "the newest file holds frames from before the outage: writing did not resume in a new file"
    );
    eprintln!(
        "full disk: {sent} sent, {on_disk} on disk in {} files, {final_lost} counted lost",
        files.len()
    );
}

/// The port the pod's numbered datagrams go to, on the node.
const UDP_PORT: u16 = 5555;
/// Bytes of each datagram: its number, then padding.
const DATAGRAM: usize = 1000;

/// Sends datagrams `seqs` from the pod to the node, each carrying its
/// number, paced so neither the ring nor tcpdump's buffer is the limit.
fn send_numbered(pair: &PodPair, seqs: std::ops::Range<u32>) -> Result<()> {
    let to = SocketAddr::from((pair.node_v4, UDP_PORT));
    join(pair.pod.spawn(move || {
        let sock = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
        let mut payload = vec![0u8; DATAGRAM];
        for seq in seqs {
            payload[..4].copy_from_slice(&seq.to_be_bytes());
            sock.send_to(&payload, to)?;
            std::thread::sleep(Duration::from_micros(300));
        }
        Ok(())
    }))
}

/// The numbers of the datagrams among `frames`.
fn numbers(frames: &[capture::Frame]) -> Vec<u32> {
    frames
        .iter()
        .filter_map(|f| {
            let p = etherparse::SlicedPacket::from_ethernet(&f.data).ok()?;
            let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
                return None;
            };
            if udp.destination_port() != UDP_PORT {
                return None;
            }
            Some(u32::from_be_bytes(udp.payload().get(..4)?.try_into().ok()?))
        })
        .collect()
}

/// `attach --output pcapng:PATH` on a full tmpfs: copies on disk + copies
/// counted lost (metrics and the summary) = copies the hook made = frames
/// tcpdump saw on the veth; the file stays valid pcapng throughout
/// (capinfos); once space is freed, writing resumes in the same file
/// (attach writes one PATH; every write lands whole or is cut back, so the
/// file never holds a torn block).
#[test]
fn attach_on_a_full_disk_counts_every_lost_copy_and_keeps_its_file_valid() {
    testbed::require_root();
    const FIRST: u32 = 2000;
    const ROUND: u32 = 100;
    let disk = Tmpfs::mount(2 << 20).expect("tmpfs");
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0u8; 1280 << 10]).expect("filler");
    let pair = PodPair::new(false).expect("topology");
    // The datagrams' receiver: no ICMP unreachable joins the traffic.
    let _receiver = join(
        pair.node
            .spawn(move || Ok(std::net::UdpSocket::bind(("198.18.0.1", UDP_PORT))?)),
    )
    .expect("receiver");
    let dump_dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dump_dir.path().join("pod.pcap"),
        &[],
    )
    .expect("tcpdump");
    let out = disk.path().join("attach.pcapng");
    let agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--output",
            &format!("pcapng:{}", out.display()),
        ],
    )
    .expect("agent starts");

    // About 2 MB of copies into about 768 KiB of room.
    send_numbered(&pair, 0..FIRST).expect("send");
    let (_, written, lost) =
        wait_accounted(&pair.node, METRICS, "send_error", u64::from(FIRST)).expect("accounted");
    assert!(written > 0, "nothing was written before the disk filled");
    assert!(lost > 0, "the disk never filled: {written} written");
    // Valid while the agent runs, with the disk full.
    assert_eq!(capinfos_packets(&out).expect("capinfos"), written);

    std::fs::remove_file(&filler).expect("free space");
    let mut next = FIRST;
    let mut last = FIRST..FIRST;
    let mut resumed = false;
    let (mut prev_written, mut prev_lost) = (written, lost);
    for _ in 0..20 {
        last = next..next + ROUND;
        send_numbered(&pair, last.clone()).expect("send");
        next += ROUND;
        let (_, w, l) =
            wait_accounted(&pair.node, METRICS, "send_error", u64::from(next)).expect("accounted");
        if l == prev_lost && w >= prev_written + u64::from(ROUND) {
            resumed = true;
            break;
        }
        (prev_written, prev_lost) = (w, l);
    }
    assert!(resumed, "writing never resumed after space came back");
    let (mirrored, sent, lost) =
        wait_accounted(&pair.node, METRICS, "send_error", u64::from(next)).expect("accounted");

    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    let total = exit.summary().expect("summary");
    let output = exit.fields_of("output summary").expect("output summary");
    assert_eq!(total["lost_ring_full"], 0, "the ring was never the limit");
    assert_eq!(
        total["mirrored"],
        oracle.len() as u64,
        "the hook copied every frame tcpdump saw"
    );
    assert_eq!(total["mirrored"], mirrored, "summary and metrics");
    assert_eq!(output["sent"], sent, "summary and metrics");
    assert_eq!(output["lost_send_error"], lost, "summary and metrics");
    assert_eq!(output["lost_queue_full"], 0);
    let on_disk = capinfos_packets(&out).expect("capinfos");
    assert_eq!(on_disk, sent, "capinfos counts what was reported written");
    assert_eq!(
        on_disk + lost,
        oracle.len() as u64,
        "on disk + counted lost = frames tcpdump saw"
    );
    // What is on disk is what tcpdump saw, in its order, with holes only.
    let in_file = numbers(&capture::read(&out).expect("readable"));
    let seen = numbers(&oracle);
    let mut rest = seen.iter();
    assert!(
        in_file.iter().all(|n| rest.any(|s| s == n)),
        "the file's datagrams are not tcpdump's in order"
    );
    assert!(
        last.clone().all(|s| in_file.contains(&s)),
        "the last round is not whole in the file"
    );
    let lines = |needle: &str| exit.stderr.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(lines("writing failed"), 1, "{}", exit.stderr);
    assert_eq!(lines("writing works again"), 1, "{}", exit.stderr);
    eprintln!(
        "attach on a full disk: tcpdump saw {}, the hook copied {mirrored}: {on_disk} in the file \
         (valid per capinfos), {lost} counted lost",
        oracle.len()
    );
}
