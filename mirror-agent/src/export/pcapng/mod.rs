//! pcapng (draft-ietf-opsawg-pcapng), the one codec of the agent and the
//! collector: [`write`] appends blocks to a buffer (the exporters' streams,
//! the collector's rotating files), [`read`] takes a stream apart block by
//! block (the collector's `tcp://` and `tls://` listeners). This module holds
//! what both sides share: block types, option codes, `epb_flags`.
//!
//! Written by hand, not on the pcap-file crate (whose reader and writer the
//! unit tests use as the independent oracle), because of what the packet
//! paths need. Writing: its `EnhancedPacketBlock` takes options as a `Vec`
//! (we always need `epb_flags` for the direction), one allocation per packet,
//! and its `Block::write_to` encodes every block twice, once into
//! `io::sink()` to learn the length. Reading: it reads every EPB timestamp as
//! nanoseconds whatever `if_tsresol` says, its `PcapNgReader` holds an 8 MB
//! buffer per stream (one per agent connection), it parses options into a
//! `Vec` per packet, and one malformed option (an `epb_flags` not 4 bytes
//! long) fails its block, which the reader then cannot get past. The format
//! is small and fixed; tshark and tcpdump read our files in the integration
//! tests.

pub mod file;
pub mod read;
pub mod write;

pub use self::file::{BlockFile, Gather, MAX_SLICES};
pub use self::write::{PacketHead, interface_block, packet_block, section_header};

use crate::model::direction::Direction;

// Block types.
const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 0x0000_0001;
const EPB: u32 = 0x0000_0006;
/// The section header's first field: how it reads says the byte order.
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;
const LINKTYPE_ETHERNET: u16 = 1;

// Option codes: `opt_endofopt` in every block, the rest per block type.
const OPT_END: u16 = 0;
const SHB_USERAPPL: u16 = 4;
const IF_NAME: u16 = 2;
const IF_TSRESOL: u16 = 9;
const EPB_FLAGS: u16 = 2;

/// `if_tsresol` of the interfaces we write: 10^-9 s, nanoseconds.
const TSRESOL_NANOS: u8 = 9;
/// `if_tsresol` of an interface block without one: 10^-6 s.
const TSRESOL_DEFAULT: u8 = 6;

/// Index of an interface block in the section, as EPBs refer to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceId(pub u32);

/// The direction bits (0-1) of `epb_flags`: inbound 01, outbound 10.
fn flags_of(direction: Direction) -> u32 {
    match direction {
        Direction::Ingress => 1,
        Direction::Egress => 2,
    }
}

/// The direction `epb_flags` gives, if any (00 is "unknown", 11 invalid).
fn direction_of(flags: u32) -> Option<Direction> {
    match flags & 3 {
        1 => Some(Direction::Ingress),
        2 => Some(Direction::Egress),
        _ => None,
    }
}

/// Padding that brings `n` bytes to a multiple of 4.
fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}
