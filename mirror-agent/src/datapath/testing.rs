//! For the datapath's unit tests: records built as the hook writes them,
//! frames to put in them, pcapng file outputs, and an independent reader
//! (the pcap-file crate) for what those outputs wrote.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use etherparse::PacketBuilder;
use mirror_common::RecordHeader;
use pcap_file::pcapng::{
    Block, PcapNgReader, blocks::interface_description::InterfaceDescriptionOption,
};
use tokio::sync::Notify;

use crate::{
    export::{self, DEFAULT_QUEUE_BYTES, Exporter, SocketMark, output::Output},
    model::record::{IfIndex, IfaceId, NetnsCookie, record_bytes},
};

pub fn iface(index: u32) -> IfaceId {
    IfaceId {
        netns: NetnsCookie(4096),
        index: IfIndex(index),
    }
}

/// A ring-buffer record as the hook writes it: the header, the captured
/// bytes, and the rest of its size class (the agent must ignore it).
pub fn record(iface: IfaceId, boot_ns: u64, direction: u32, frame: &[u8]) -> Vec<u8> {
    let header = RecordHeader {
        timestamp_ns: boot_ns,
        netns_cookie: iface.netns.0,
        ifindex: iface.index.0,
        direction,
        policy_id: 1,
        orig_len: frame.len() as u32,
        cap_len: frame.len() as u32,
        flags: 0,
        gso_size: 0,
        gso_segs: 0,
    };
    let mut bytes = record_bytes(header, frame);
    bytes.resize(bytes.len().next_multiple_of(64), 0xee);
    bytes
}

/// An Ethernet frame: IPv4 from 198.18.0.1 to 198.18.0.2, then a UDP
/// header (ports 1000 to 53) or a TCP one (ports 1000 to 443, PSH ACK),
/// then `payload` bytes; built by etherparse, not by hand.
pub fn frame(udp: bool, payload: usize) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2([0; 6], [0; 6]).ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64);
    let data: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let mut f = Vec::new();
    let written = if udp {
        ip.udp(1000, 53).write(&mut f, &data)
    } else {
        ip.tcp(1000, 443, 1, 0xffff)
            .psh()
            .ack(0)
            .write(&mut f, &data)
    };
    written.expect("a frame within IPv4's size");
    f
}

/// A pcapng output to `path` for `interfaces`, as `--output pcapng:PATH`.
pub fn pcapng_output(
    path: &Path,
    interfaces: &[(IfaceId, String)],
    progress: &Arc<Notify>,
) -> Exporter {
    let ctx = export::Context {
        node: "node-a",
        interfaces,
        snaplen: 262_144,
        mark: SocketMark { value: 0, mask: 0 },
        queue_bytes: DEFAULT_QUEUE_BYTES,
        progress: progress.clone(),
        append: false,
        own: Arc::default(),
    };
    Exporter::open(&Output::PcapngFile(path.to_owned()), &ctx).expect("a pcapng file opens")
}

/// One packet block of a pcapng file: its interface's name, and its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Written {
    pub interface: String,
    pub original_len: u32,
    pub data: Vec<u8>,
}

/// Every packet block of a pcapng file, in order.
pub fn written(path: &Path) -> Vec<Written> {
    read(path).1
}

/// How many sections a pcapng file holds.
pub fn sections(path: &Path) -> usize {
    read(path).0
}

fn read(path: &Path) -> (usize, Vec<Written>) {
    let bytes = std::fs::read(path).expect("the output's file");
    let mut reader = PcapNgReader::new(&bytes[..]).expect("a section header");
    let (mut sections, mut names, mut packets) = (1, Vec::new(), Vec::new());
    while let Some(block) = reader.next_block() {
        match block.expect("a valid block") {
            Block::SectionHeader(_) => {
                sections += 1;
                names.clear();
            }
            Block::InterfaceDescription(idb) => names.push(
                idb.options
                    .iter()
                    .find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .unwrap_or_default(),
            ),
            Block::EnhancedPacket(epb) => packets.push(Written {
                interface: names[epb.interface_id as usize].clone(),
                original_len: epb.original_len,
                data: epb.data.to_vec(),
            }),
            _ => {}
        }
    }
    (sections, packets)
}

/// Waits (at most a few seconds) until `done` says so.
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
