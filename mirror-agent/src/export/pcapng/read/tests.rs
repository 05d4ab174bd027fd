//! The reader against streams of our writer, of pcap-file's writer (an
//! independent encoder), and of hand-made or damaged bytes.

use std::{borrow::Cow, time::Duration};

use pcap_file::{
    DataLink, Endianness,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
            interface_statistics::InterfaceStatisticsBlock,
            section_header::SectionHeaderBlock,
        },
    },
};

use super::*;
use crate::export::pcapng::{self, InterfaceId};

/// A section as the agent writes it: two interfaces, a packet on each.
pub(crate) fn agent_stream() -> Vec<u8> {
    let mut s = Vec::new();
    pcapng::section_header(&mut s, "test");
    pcapng::interface_block(&mut s, "veth-a", 262_144);
    pcapng::interface_block(&mut s, "veth-b", 262_144);
    pcapng::packet_block(
        &mut s,
        InterfaceId(1),
        1_700_000_000_000_000_001,
        99,
        Some(Direction::Egress),
        &[7; 61],
    );
    pcapng::packet_block(
        &mut s,
        InterfaceId(0),
        5,
        14,
        Some(Direction::Ingress),
        &[1; 14],
    );
    s
}

/// Every event of `bytes`, one line each, and how the stream ended.
pub(crate) fn collect(bytes: &[u8]) -> (Vec<String>, Result<(), ReadError>) {
    let mut r = StreamReader::new(bytes);
    let mut seen = Vec::new();
    loop {
        match r.next_event() {
            Ok(None) => return (seen, Ok(())),
            Ok(Some(Event::Packet(p))) => seen.push(format!(
                "{} {} {} {:?} {}",
                p.interface,
                p.unix_ns,
                p.orig_len,
                p.direction,
                p.data.len()
            )),
            Ok(Some(Event::Interface)) => {
                let i = r.interfaces().last().cloned().unwrap();
                seen.push(format!("if {}", i.name.unwrap_or_default()));
            }
            Ok(Some(Event::Skipped(e))) => seen.push(format!("skip {e}")),
            Ok(Some(Event::Section)) => seen.push("section".into()),
            Ok(Some(Event::Other)) => seen.push("other".into()),
            Err(e) => return (seen, Err(e)),
        }
    }
}

#[test]
fn reads_what_the_agent_writes() {
    let (seen, end) = collect(&agent_stream());
    assert!(end.is_ok());
    assert_eq!(
        seen,
        [
            "section",
            "if veth-a",
            "if veth-b",
            "1 1700000000000000001 99 Some(Egress) 61",
            "0 5 14 Some(Ingress) 14"
        ]
    );
}

#[test]
fn cut_anywhere_is_truncated_never_a_panic() {
    let s = agent_stream();
    for cut in 1..s.len() {
        let (_, end) = collect(&s[..cut]);
        // Cuts at block boundaries end cleanly; any other is an error.
        if let Err(e) = end {
            assert!(matches!(e, ReadError::Truncated), "{cut}: {e}");
        }
    }
}

#[test]
fn big_endian_sections_and_microseconds() {
    // SHB, IDB (no tsresol: microseconds), EPB, all big-endian.
    let mut s: Vec<u8> = Vec::new();
    let w = |s: &mut Vec<u8>, x: u32| s.extend_from_slice(&x.to_be_bytes());
    for x in [
        SHB,
        28,
        BYTE_ORDER_MAGIC,
        0x0001_0000,
        u32::MAX,
        u32::MAX,
        28,
    ] {
        w(&mut s, x);
    }
    for x in [IDB, 20, 0x0001_0000, 0, 20] {
        w(&mut s, x);
    }
    for x in [EPB, 48, 0, 0, 3_000_001, 14, 20] {
        w(&mut s, x);
    }
    s.extend_from_slice(&[9; 16]);
    w(&mut s, 48);
    let (seen, end) = collect(&s);
    assert!(end.is_ok(), "{end:?}");
    assert_eq!(seen, ["section", "if ", "0 3000001000 20 None 14"]);
}

/// Framing errors end the stream; a packet block that cannot be used
/// is skipped.
#[test]
fn garbage_is_refused() {
    let mut s = agent_stream();
    let at = s.len() - 4;
    s[at] ^= 4; // the last trailer
    assert!(matches!(collect(&s).1, Err(ReadError::Trailer { .. })));
    // A packet on an interface never described is skipped, not fatal.
    let mut s = Vec::new();
    pcapng::section_header(&mut s, "t");
    pcapng::packet_block(
        &mut s,
        InterfaceId(3),
        0,
        14,
        Some(Direction::Ingress),
        &[0; 14],
    );
    let (seen, end) = collect(&s);
    assert!(end.is_ok());
    assert_eq!(
        seen[1],
        "skip packet on interface 3, which the section does not describe"
    );
    // A block claiming more than MAX_BLOCK is refused before any read.
    let mut s = Vec::new();
    pcapng::section_header(&mut s, "t");
    s.extend_from_slice(&EPB.to_le_bytes());
    s.extend_from_slice(&u32::MAX.wrapping_sub(3).to_le_bytes());
    assert!(matches!(collect(&s).1, Err(ReadError::Length { .. })));
}

/// A stream made by pcap-file's writer, an independent encoder, in both
/// byte orders: two sections, interfaces of three time resolutions and
/// one not Ethernet, options before `epb_flags`, a statistics block.
#[test]
fn reads_what_pcap_file_writes() {
    use EnhancedPacketOption::{Comment, DropCount, Flags};
    use InterfaceDescriptionOption::{IfName, IfTsResol};
    let mut bytes = Vec::new();
    for endianness in [Endianness::Big, Endianness::Little] {
        let shb = SectionHeaderBlock {
            endianness,
            ..Default::default()
        };
        let mut w = PcapNgWriter::with_section_header(Vec::new(), shb).unwrap();
        let interfaces = [
            (Some("eth0"), DataLink::ETHERNET, None), // microseconds
            (None, DataLink::ETHERNET, Some(9)),
            (Some("bin"), DataLink::ETHERNET, Some(0x80 | 10)), // 2^-10 s
            (Some("lo"), DataLink::RAW, Some(9)),
        ];
        for (name, linktype, tsresol) in interfaces {
            let name = name.map(|n| IfName(n.into()));
            let options = name.into_iter().chain(tsresol.map(IfTsResol)).collect();
            w.write_pcapng_block(InterfaceDescriptionBlock {
                linktype,
                snaplen: 65_535,
                options,
            })
            .unwrap();
        }
        let packets = [
            (0, 3_000_001, vec![Flags(1)]),
            (
                1,
                1_700_000_000_000_000_001,
                vec![Comment("hi".into()), DropCount(3), Flags(2)],
            ),
            (2, 5 * 1024, vec![]),
            (3, 7, vec![Flags(1)]),
        ];
        for (interface_id, units, options) in packets {
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id,
                // Written as is: the units of the interface's if_tsresol.
                timestamp: Duration::from_nanos(units),
                original_len: 100,
                data: Cow::Borrowed(&[0xab; 42]),
                options,
            })
            .unwrap();
        }
        w.write_pcapng_block(InterfaceStatisticsBlock {
            interface_id: 0,
            timestamp: 0,
            options: vec![],
        })
        .unwrap();
        bytes.extend(w.into_inner());
    }
    let (seen, end) = collect(&bytes);
    assert!(end.is_ok(), "{end:?}");
    let section = [
        "section",
        "if eth0",
        "if ",
        "if bin",
        "if lo",
        "0 3000001000 100 Some(Ingress) 42",
        "1 1700000000000000001 100 Some(Egress) 42",
        "2 5000000000 100 None 42",
        "skip packet on interface 3 of link type 101, not Ethernet",
        "other",
    ];
    assert_eq!(seen, [section, section].concat());
}

#[test]
fn timestamp_resolutions() {
    let at = |tsresol| Interface {
        name: None,
        linktype: 1,
        tsresol,
    };
    assert_eq!(at(9).nanos(5), 5);
    assert_eq!(at(6).nanos(5), 5_000);
    assert_eq!(at(12).nanos(5_000), 5);
    assert_eq!(at(0x80 | 10).nanos(1024), 1_000_000_000);
    assert_eq!(at(127).nanos(u64::MAX), 0);
    assert_eq!(at(0xFF).nanos(u64::MAX), 0);
    assert_eq!(at(0).nanos(u64::MAX), u64::MAX);
}
