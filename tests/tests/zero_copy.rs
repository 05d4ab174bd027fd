//! Files written straight from ring memory (issue 19): `attach --output
//! pcapng:PATH` writes packet bytes from the BPF ring with `writev`, and a
//! ring hold that times out or fills (a slow or stuck output must not stall
//! the ring) first copies what that output was lent. Here the output is a
//! FIFO nobody reads while the traffic passes through a ring small enough
//! to be overwritten several times over: every packet the file then holds
//! must be byte for byte what tcpdump saw on the link (no torn or
//! overwritten data; tshark validates the checksums the agent finished),
//! and every copy not in it must be counted.

use std::{
    fs::OpenOptions, io::Read, net::SocketAddr, os::unix::fs::OpenOptionsExt, time::Duration,
};

use anyhow::{Context, Result};
use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    sys::stat::Mode,
};
use testbed::{
    agent::Agent, capture, http::wait_accounted, netns::join, tcpdump::Tcpdump, topology::PodPair,
    tshark,
};

const METRICS: &str = "127.0.0.1:9464";
const UDP_PORT: u16 = 5556;
/// Bytes of each datagram: its number, then a pattern that differs from
/// datagram to datagram, so a record overwritten by a later one shows.
const DATAGRAM: usize = 1200;
const DATAGRAMS: u32 = 4000;
/// The ring: 4.8 MB of copies go through it about ten times over.
const RING: &str = "524288";

fn payload(seq: u32) -> Vec<u8> {
    let mut p: Vec<u8> = (0..DATAGRAM)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seq) as u8)
        .collect();
    p[..4].copy_from_slice(&seq.to_be_bytes());
    p
}

/// Sends the numbered datagrams from the pod to the node, paced so that
/// neither tcpdump nor the ring loses any while the drain keeps up.
fn send(pair: &PodPair) -> Result<()> {
    let to = SocketAddr::from((pair.node_v4, UDP_PORT));
    join(pair.pod.spawn(move || {
        let sock = std::net::UdpSocket::bind(("0.0.0.0", 0))?;
        for seq in 0..DATAGRAMS {
            sock.send_to(&payload(seq), to)?;
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }))
}

/// The datagram's number, if the frame is one of ours.
fn number(f: &capture::Frame) -> Option<u32> {
    let p = etherparse::SlicedPacket::from_ethernet(&f.data).ok()?;
    let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
        return None;
    };
    if udp.destination_port() != UDP_PORT {
        return None;
    }
    Some(u32::from_be_bytes(udp.payload().get(..4)?.try_into().ok()?))
}

/// The frame without its UDP checksum (IPv4, no options: bytes 40-41),
/// which tcpdump sees unfinished (the pod's socket leaves it to the NIC)
/// and the agent finishes; tshark checks the agent's separately.
fn without_checksum(data: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    d[40..42].fill(0);
    d
}

#[test]
fn a_stuck_file_writes_what_the_link_carried_or_counts_it_lost() {
    testbed::require_root();
    tshark::require();
    let pair = PodPair::new(false).expect("topology");
    let _receiver = join(
        pair.node
            .spawn(move || Ok(std::net::UdpSocket::bind(("198.18.0.1", UDP_PORT))?)),
    )
    .expect("receiver");
    let dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("link.pcap"), &[])
        .expect("tcpdump");
    // The FIFO's read end is opened first (without waiting for a writer),
    // so that the agent's open does not wait; its pipe as small as it goes.
    let fifo = dir.path().join("out.pcapng");
    nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");
    let mut reader = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(&fifo)
        .expect("the FIFO's read end");
    fcntl(&reader, FcntlArg::F_SETPIPE_SZ(4096)).expect("shrinking the pipe");
    let agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--ring-size",
            RING,
            "--ring-slots",
            "1",
            // Room for about a third of the copies while nobody reads.
            "--queue-bytes",
            "1600000",
            "--output",
            &format!("pcapng:{}", fifo.display()),
        ],
    )
    .expect("agent starts");

    // Nobody reads while the traffic passes: the ring's hold on what the
    // file was handed times out and fills, again and again.
    send(&pair).expect("send");
    // Longer than the hold's age limit (250 ms).
    std::thread::sleep(Duration::from_millis(500));
    // Now read all of it, in the background, until the agent closes it.
    fcntl(&reader, FcntlArg::F_SETFL(OFlag::empty())).expect("blocking reads");
    let drained = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut all = Vec::new();
        reader.read_to_end(&mut all)?;
        Ok(all)
    });
    let (mirrored, sent, full) =
        wait_accounted(&pair.node, METRICS, "queue_full", u64::from(DATAGRAMS)).expect("accounted");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let bytes = drained.join().expect("reader").expect("read the FIFO");
    let file = dir.path().join("written.pcapng");
    std::fs::write(&file, &bytes).expect("keeping what the FIFO carried");

    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("tcpdump's capture");
    let total = exit.summary().expect("summary");
    let output = exit.fields_of("output summary").expect("output summary");
    let seen: Vec<&capture::Frame> = oracle.iter().filter(|f| number(f).is_some()).collect();
    assert_eq!(seen.len() as u32, DATAGRAMS, "tcpdump saw every datagram");
    assert_eq!(total["lost_ring_full"], 0, "the ring was never the limit");
    assert_eq!(
        total["mirrored"],
        oracle.len() as u64,
        "the hook copied every frame tcpdump saw"
    );
    assert_eq!(total["mirrored"], mirrored, "summary and metrics");
    assert_eq!(output["sent"], sent, "summary and metrics");
    assert_eq!(output["lost_queue_full"], full, "summary and metrics");
    assert_eq!(output["lost_send_error"], 0);
    assert!(
        full > 0,
        "the queue never filled: the test tests nothing lost"
    );

    // Valid pcapng, every packet counted (capinfos), checksums right (tshark).
    let written = capture::read(&file).expect("the FIFO's pcapng");
    assert_eq!(written.len() as u64, sent, "written = reported sent");
    assert_eq!(
        tshark::bad_checksums(&file, "").expect("tshark"),
        0,
        "the agent's finished checksums validate"
    );
    // Every packet written is the one tcpdump saw with its number, whole,
    // in tcpdump's order; no packet appears twice.
    let mut rest = seen.iter();
    for w in &written {
        // Neighbour discovery crosses the link too.
        let Some(n) = number(w) else { continue };
        let f = rest
            .find(|f| number(f) == Some(n))
            .with_context(|| format!("datagram {n} out of order or twice"))
            .expect("in order");
        assert_eq!(
            without_checksum(&w.data),
            without_checksum(&f.data),
            "datagram {n} is not what the link carried"
        );
        assert_eq!(w.orig_len, f.orig_len);
    }
    eprintln!(
        "zero copy, stuck FIFO: tcpdump saw {}, the hook copied {mirrored}: {sent} written \
         byte for byte, {full} counted lost to the full queue",
        seen.len()
    );
}
