//! pcapng writer (draft-ietf-opsawg-pcapng): section header, one interface
//! block per mirrored interface, enhanced packet blocks.
//!
//! Written by hand because the packet path must not allocate: the pcap-file
//! crate's writer takes each packet's options as a `Vec` (we always need
//! `epb_flags` for the direction), one allocation per packet. The format is
//! fixed and small; tshark and tcpdump read our files in the tests.

use std::io::{self, Write};

use crate::record::Direction;

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
pub struct InterfaceId(u32);

pub struct PcapngWriter<W: Write> {
    out: W,
    interfaces: u32,
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Length of one option (header, value, padding).
fn option_len(value_len: usize) -> usize {
    4 + value_len + pad4(value_len)
}

impl<W: Write> PcapngWriter<W> {
    /// Starts a section; `application` goes in `shb_userappl`.
    pub fn new(mut out: W, application: &str) -> io::Result<Self> {
        let opts = option_len(application.len()) + 4;
        let total = 28 + opts;
        let mut head = Vec::with_capacity(total);
        head.extend_from_slice(&SHB.to_le_bytes());
        head.extend_from_slice(&(total as u32).to_le_bytes());
        head.extend_from_slice(&BYTE_ORDER_MAGIC.to_le_bytes());
        head.extend_from_slice(&1u16.to_le_bytes());
        head.extend_from_slice(&0u16.to_le_bytes());
        head.extend_from_slice(&(-1i64).to_le_bytes()); // section length unknown
        push_option(&mut head, SHB_USERAPPL, application.as_bytes());
        push_option(&mut head, OPT_END, &[]);
        head.extend_from_slice(&(total as u32).to_le_bytes());
        out.write_all(&head)?;
        Ok(Self { out, interfaces: 0 })
    }

    /// Adds an Ethernet interface block with nanosecond timestamps.
    pub fn add_interface(&mut self, name: &str, snaplen: u32) -> io::Result<InterfaceId> {
        let opts = option_len(name.len()) + option_len(1) + 4;
        let total = 20 + opts;
        let mut block = Vec::with_capacity(total);
        block.extend_from_slice(&IDB.to_le_bytes());
        block.extend_from_slice(&(total as u32).to_le_bytes());
        block.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        block.extend_from_slice(&0u16.to_le_bytes());
        block.extend_from_slice(&snaplen.to_le_bytes());
        push_option(&mut block, IF_NAME, name.as_bytes());
        push_option(&mut block, IF_TSRESOL, &[TSRESOL_NANOS]);
        push_option(&mut block, OPT_END, &[]);
        block.extend_from_slice(&(total as u32).to_le_bytes());
        self.out.write_all(&block)?;
        let id = InterfaceId(self.interfaces);
        self.interfaces += 1;
        Ok(id)
    }

    /// Writes one enhanced packet block; no allocation.
    pub fn write_packet(
        &mut self,
        interface: InterfaceId,
        unix_ns: u64,
        orig_len: u32,
        direction: Direction,
        data: &[u8],
    ) -> io::Result<()> {
        let pad = pad4(data.len());
        let total = 28 + data.len() + pad + option_len(4) + 4 + 4;
        let total = u32::try_from(total)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet too large"))?;
        let mut head = [0u8; 28];
        head[0..4].copy_from_slice(&EPB.to_le_bytes());
        head[4..8].copy_from_slice(&total.to_le_bytes());
        head[8..12].copy_from_slice(&interface.0.to_le_bytes());
        head[12..16].copy_from_slice(&((unix_ns >> 32) as u32).to_le_bytes());
        head[16..20].copy_from_slice(&(unix_ns as u32).to_le_bytes());
        head[20..24].copy_from_slice(&(data.len() as u32).to_le_bytes());
        head[24..28].copy_from_slice(&orig_len.to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(data)?;
        // Inbound = 01, outbound = 10 in the two low bits of epb_flags.
        let flags: u32 = match direction {
            Direction::Ingress => 1,
            Direction::Egress => 2,
        };
        self.out.write_all(&[0u8; 3][..pad])?;
        // epb_flags option (code, length 4, value), opt_endofopt (zero), trailing length.
        let mut tail = [0u8; 16];
        tail[0..2].copy_from_slice(&EPB_FLAGS.to_le_bytes());
        tail[2..4].copy_from_slice(&4u16.to_le_bytes());
        tail[4..8].copy_from_slice(&flags.to_le_bytes());
        tail[12..16].copy_from_slice(&total.to_le_bytes());
        self.out.write_all(&tail)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
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
        let mut w = PcapngWriter::new(Vec::new(), "mirror-agent test").expect("shb");
        let a = w.add_interface("veth-a", 262_144).expect("idb");
        let b = w.add_interface("veth-bb", 128).expect("idb");
        for (i, len) in [0usize, 1, 2, 3, 4, 5, 60, 1514].into_iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|x| x as u8).collect();
            let (iface, dir) = if i % 2 == 0 {
                (a, Direction::Ingress)
            } else {
                (b, Direction::Egress)
            };
            w.write_packet(
                iface,
                1_700_000_000_123_456_789 + i as u64,
                len as u32 + 7,
                dir,
                &data,
            )
            .expect("epb");
        }
        let bytes = w.out;
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
