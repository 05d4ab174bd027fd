//! pcapng writer (draft-ietf-opsawg-pcapng): section header, one interface
//! block per mirrored interface, enhanced packet blocks.
//!
//! Written by hand because the packet path must not allocate: the pcap-file
//! crate's writer takes each packet's options as a `Vec` (we always need
//! `epb_flags` for the direction), one allocation per packet. The format is
//! fixed and small; tshark and tcpdump read our files in the tests.

use crate::model::direction::Direction;

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 0x0000_0001;
const EPB: u32 = 0x0000_0006;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const LINKTYPE_ETHERNET: u16 = 1;
const OPT_END: u16 = 0;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;
/// Timestamps are nanoseconds: if_tsresol = 10^-9.
const TSRESOL_NANOS: u8 = 9;

/// Index of an interface block in the section, as EPBs refer to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceId(pub u32);

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Length of one option (header, value, padding).
fn option_len(value_len: usize) -> usize {
    4 + value_len + pad4(value_len)
}

/// Appends a section header block; `application` goes in `shb_userappl`.
pub fn section_header(out: &mut Vec<u8>, application: &str) {
    let total = 28 + option_len(application.len()) + 4;
    out.extend_from_slice(&SHB.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(-1i64).to_le_bytes()); // section length unknown
    push_option(out, SHB_USERAPPL, application.as_bytes());
    push_option(out, OPT_END, &[]);
    out.extend_from_slice(&(total as u32).to_le_bytes());
}

/// Appends an Ethernet interface description block with nanosecond stamps.
/// Blocks are numbered in the order they are written, from 0.
pub fn interface_block(out: &mut Vec<u8>, name: &str, snaplen: u32) {
    let total = 20 + option_len(name.len()) + option_len(1) + 4;
    out.extend_from_slice(&IDB.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&snaplen.to_le_bytes());
    push_option(out, IF_NAME, name.as_bytes());
    push_option(out, IF_TSRESOL, &[TSRESOL_NANOS]);
    push_option(out, OPT_END, &[]);
    out.extend_from_slice(&(total as u32).to_le_bytes());
}

/// Appends one enhanced packet block with its direction in `epb_flags`.
/// Grows `out` only when it lacks capacity, so a reused buffer does not
/// allocate per packet.
pub fn packet_block(
    out: &mut Vec<u8>,
    interface: InterfaceId,
    unix_ns: u64,
    orig_len: u32,
    direction: Direction,
    data: &[u8],
) {
    let pad = pad4(data.len());
    // Callers pass at most MAX_SNAPLEN bytes, so this fits in u32.
    let total = (28 + data.len() + pad + option_len(4) + 4 + 4) as u32;
    let words = [
        EPB,
        total,
        interface.0,
        (unix_ns >> 32) as u32,
        unix_ns as u32,
        data.len() as u32,
        orig_len,
    ];
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(data);
    out.extend_from_slice(&[0u8; 3][..pad]);
    // Inbound = 01, outbound = 10 in the two low bits of epb_flags.
    let flags: u32 = match direction {
        Direction::Ingress => 1,
        Direction::Egress => 2,
    };
    out.extend_from_slice(&EPB_FLAGS.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]); // opt_endofopt
    out.extend_from_slice(&total.to_le_bytes());
}

fn push_option(buf: &mut Vec<u8>, code: u16, value: &[u8]) {
    buf.extend_from_slice(&code.to_le_bytes());
    buf.extend_from_slice(&(value.len() as u16).to_le_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + pad4(value.len()), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcapng::{Block, PcapNgReader, blocks::enhanced_packet::EnhancedPacketOption};

    /// The pcap-file crate's reader is the oracle: an independent parser.
    #[test]
    fn readable_by_pcap_file() {
        let mut bytes = Vec::new();
        section_header(&mut bytes, "mirror-agent test");
        interface_block(&mut bytes, "veth-a", 262_144);
        interface_block(&mut bytes, "veth-bb", 128);
        for (i, len) in [0usize, 1, 2, 3, 4, 5, 60, 1514].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|x| x as u8).collect();
            let (iface, dir) = if i % 2 == 0 {
                (InterfaceId(0), Direction::Ingress)
            } else {
                (InterfaceId(1), Direction::Egress)
            };
            let ts = 1_700_000_000_123_456_789 + i as u64;
            packet_block(&mut bytes, iface, ts, len as u32 + 7, dir, &data);
        }
        let mut reader = PcapNgReader::new(&bytes[..]).expect("section header");
        let mut packets = 0;
        while let Some(block) = reader.next_block() {
            match block.expect("valid block") {
                Block::InterfaceDescription(idb) => {
                    assert!(idb.snaplen == 262_144 || idb.snaplen == 128)
                }
                Block::EnhancedPacket(epb) => {
                    assert_eq!(epb.original_len, epb.data.len() as u32 + 7);
                    assert!(epb.data.iter().enumerate().all(|(i, b)| *b == i as u8));
                    let want = if epb.interface_id == 0 { 1 } else { 2 };
                    assert!(
                        epb.options
                            .iter()
                            .any(|o| matches!(o, EnhancedPacketOption::Flags(f) if *f == want))
                    );
                    packets += 1;
                }
                _ => {}
            }
        }
        assert_eq!(packets, 8);
    }
}
