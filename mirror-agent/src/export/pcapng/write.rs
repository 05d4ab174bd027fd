//! Writing pcapng, little-endian: a section header, one Ethernet interface
//! block per interface (nanosecond stamps), enhanced packet blocks. Each
//! function appends one block to `out` and only grows it when it lacks
//! capacity, so a reused buffer does not allocate per packet.

use super::{
    EPB, EPB_FLAGS, IDB, IF_NAME, IF_TSRESOL, InterfaceId, LINKTYPE_ETHERNET, OPT_END, SHB,
    SHB_USERAPPL, TSRESOL_NANOS, flags_of, pad4,
};
use crate::model::direction::Direction;

/// Length of one option (header, value, padding).
fn option_len(value_len: usize) -> usize {
    4 + value_len + pad4(value_len)
}

/// Text for an option: at most `u16::MAX` bytes, all its length field can
/// say, cut at a character boundary. Longer would corrupt the block, and
/// the collector names interfaces after what remote streams send.
fn option_text(text: &str) -> &str {
    text.get(..text.floor_char_boundary(usize::from(u16::MAX)))
        .unwrap_or_default()
}

fn push_option(out: &mut Vec<u8>, code: u16, value: &[u8]) {
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&(value.len() as u16).to_le_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + pad4(value.len()), 0);
}

/// Appends a section header block; `application` goes in `shb_userappl`.
pub fn section_header(out: &mut Vec<u8>, application: &str) {
    let application = option_text(application);
    let total = 28 + option_len(application.len()) + 4;
    out.extend_from_slice(&SHB.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&super::BYTE_ORDER_MAGIC.to_le_bytes());
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
    let name = option_text(name);
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

/// Appends one enhanced packet block. A known direction goes in
/// `epb_flags`; an unknown one writes no options at all, since flags saying
/// "inbound" for a packet of unknown direction would be a lie (most tunnels
/// the collector receives do not carry it).
pub fn packet_block(
    out: &mut Vec<u8>,
    interface: InterfaceId,
    unix_ns: u64,
    orig_len: u32,
    direction: Option<Direction>,
    data: &[u8],
) {
    let head = PacketHead {
        interface,
        unix_ns,
        orig_len,
        direction,
    };
    head.write(out, data.len());
    out.extend_from_slice(data);
    head.write_tail(out, data.len());
}

/// An enhanced packet block, but its bytes: written as what comes before
/// them and what comes after, for a writer that has them elsewhere (lent
/// from the ring, see [`crate::export::loan`]).
#[derive(Clone, Copy, Debug)]
pub struct PacketHead {
    pub interface: InterfaceId,
    pub unix_ns: u64,
    pub orig_len: u32,
    pub direction: Option<Direction>,
}

impl PacketHead {
    /// The block's length, with `len` bytes of packet.
    fn total(&self, len: usize) -> u32 {
        // epb_flags, then opt_endofopt.
        let options = if self.direction.is_some() {
            option_len(4) + 4
        } else {
            0
        };
        // Callers pass at most MAX_SNAPLEN bytes, so this fits in u32.
        (28 + len + pad4(len) + options + 4) as u32
    }

    /// Appends the block up to its `len` bytes of packet.
    pub fn write(&self, out: &mut Vec<u8>, len: usize) {
        let words = [
            EPB,
            self.total(len),
            self.interface.0,
            (self.unix_ns >> 32) as u32,
            self.unix_ns as u32,
            len as u32,
            self.orig_len,
        ];
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }

    /// Appends the rest of the block, after its `len` bytes of packet.
    pub fn write_tail(&self, out: &mut Vec<u8>, len: usize) {
        out.extend_from_slice(&[0u8; 3][..pad4(len)]);
        if let Some(direction) = self.direction {
            push_option(out, EPB_FLAGS, &flags_of(direction).to_le_bytes());
            push_option(out, OPT_END, &[]);
        }
        out.extend_from_slice(&self.total(len).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, time::Duration};

    use pcap_file::{
        DataLink, Endianness,
        pcapng::{
            Block, PcapNgReader, PcapNgWriter,
            blocks::{
                enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
                interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
                section_header::{SectionHeaderBlock, SectionHeaderOption},
            },
        },
    };

    use super::*;

    /// `epb_flags` as the format spells them, not as our code does:
    /// inbound 01, outbound 10.
    fn spec_flags(direction: Direction) -> u32 {
        match direction {
            Direction::Ingress => 0b01,
            Direction::Egress => 0b10,
        }
    }

    /// Interface, timestamp, original length, direction, bytes.
    type Sent = (InterfaceId, u64, u32, Option<Direction>, Vec<u8>);

    /// Packets of every padding, on two interfaces, of every direction.
    fn packets() -> Vec<Sent> {
        [0usize, 1, 2, 3, 4, 5, 60, 1514]
            .into_iter()
            .enumerate()
            .map(|(i, len)| {
                let data: Vec<u8> = (0..len).map(|x| x as u8).collect();
                let direction = [Some(Direction::Ingress), Some(Direction::Egress), None][i % 3];
                let ts = 1_700_000_000_123_456_789 + i as u64;
                (
                    InterfaceId(i as u32 % 2),
                    ts,
                    len as u32 + 7,
                    direction,
                    data,
                )
            })
            .collect()
    }

    fn ours() -> Vec<u8> {
        let mut bytes = Vec::new();
        section_header(&mut bytes, "mirror-agent test");
        interface_block(&mut bytes, "veth-a", 262_144);
        interface_block(&mut bytes, "veth-bb", 128);
        for (iface, ts, orig, direction, data) in packets() {
            packet_block(&mut bytes, iface, ts, orig, direction, &data);
        }
        bytes
    }

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
            packet_block(&mut bytes, iface, ts, len as u32 + 7, Some(dir), &data);
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

    /// Every field read back by pcap-file, unknown directions included.
    #[test]
    fn pcap_file_reads_every_field() {
        use InterfaceDescriptionOption::{IfName, IfTsResol};
        let bytes = ours();
        let mut reader = PcapNgReader::new(&bytes[..]).expect("section header");
        assert_eq!(
            reader.section().options,
            [SectionHeaderOption::UserApplication(
                "mirror-agent test".into()
            )]
        );
        let mut interfaces = Vec::new();
        let mut seen = Vec::new();
        while let Some(block) = reader.next_block() {
            match block.expect("valid block") {
                Block::InterfaceDescription(idb) => {
                    assert_eq!(idb.linktype, DataLink::ETHERNET);
                    let [IfName(name), IfTsResol(9)] = &idb.options[..] else {
                        panic!("options {:?}", idb.options);
                    };
                    interfaces.push((name.to_string(), idb.snaplen));
                }
                Block::EnhancedPacket(epb) => {
                    let flags = epb.options.iter().find_map(|o| match o {
                        EnhancedPacketOption::Flags(f) => Some(*f),
                        _ => None,
                    });
                    seen.push((
                        InterfaceId(epb.interface_id),
                        epb.timestamp.as_nanos() as u64,
                        epb.original_len,
                        [Direction::Ingress, Direction::Egress]
                            .into_iter()
                            .find(|d| flags == Some(spec_flags(*d))),
                        epb.data.into_owned(),
                    ));
                }
                other => panic!("unexpected block {other:?}"),
            }
        }
        assert_eq!(
            interfaces,
            [("veth-a".into(), 262_144), ("veth-bb".into(), 128)]
        );
        assert_eq!(seen, packets());
    }

    /// Text longer than an option can hold is cut, at a character
    /// boundary, and the blocks stay readable.
    #[test]
    fn overlong_text_is_cut() {
        let long = format!("{}é{}", "a".repeat(65_534), "b".repeat(10_000));
        let mut bytes = Vec::new();
        section_header(&mut bytes, &long);
        interface_block(&mut bytes, &long, 1);
        interface_block(&mut bytes, "next", 2);
        let mut reader = PcapNgReader::new(&bytes[..]).expect("section header");
        let cut = "a".repeat(65_534);
        assert_eq!(
            reader.section().options,
            [SectionHeaderOption::UserApplication(cut.as_str().into())]
        );
        let mut names = Vec::new();
        while let Some(block) = reader.next_block() {
            if let Block::InterfaceDescription(idb) = block.expect("valid block") {
                names.push((idb.options[0].clone().into_owned(), idb.snaplen));
            }
        }
        assert_eq!(
            names,
            [
                (InterfaceDescriptionOption::IfName(cut.into()), 1),
                (InterfaceDescriptionOption::IfName("next".into()), 2)
            ]
        );
    }

    /// The same section through pcap-file's writer gives the same bytes.
    #[test]
    fn same_bytes_as_pcap_file_writes() {
        let shb = SectionHeaderBlock {
            endianness: Endianness::Little,
            options: vec![SectionHeaderOption::UserApplication(
                "mirror-agent test".into(),
            )],
            ..Default::default()
        };
        let mut w = PcapNgWriter::with_section_header(Vec::new(), shb).unwrap();
        for (name, snaplen) in [("veth-a", 262_144), ("veth-bb", 128)] {
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype: DataLink::ETHERNET,
                snaplen,
                options: vec![
                    InterfaceDescriptionOption::IfName(name.into()),
                    InterfaceDescriptionOption::IfTsResol(9),
                ],
            })
            .unwrap();
        }
        for (iface, ts, orig, direction, data) in packets() {
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: iface.0,
                timestamp: Duration::from_nanos(ts),
                original_len: orig,
                data: Cow::Borrowed(&data),
                options: direction
                    .map(|d| EnhancedPacketOption::Flags(spec_flags(d)))
                    .into_iter()
                    .collect(),
            })
            .unwrap();
        }
        assert_eq!(ours(), w.into_inner());
    }
}
