//! pcapng streams (`--listen tcp://`): the block reader over arbitrary
//! bytes, as a connection would deliver them, read until it ends or fails;
//! then the same bytes read as a section of interfaces and packets, which
//! the agent's writer writes and the reader must give back as they went
//! (`decode(encode(x)) == x`). The bytes come in reads of varying size, as
//! from a socket.
#![no_main]

use std::io::Read;

use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};
use mirror_agent::{
    collect::stream::{Event, StreamReader},
    export::pcapng::{InterfaceId, interface_block, packet_block, section_header},
    model::direction::Direction,
};

/// Hands out the input in chunks whose sizes come from the input itself.
struct Chunks<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.step = (self.step * 31 + 7) % 97 + 1;
        let n = buf.len().min(self.data.len()).min(self.step);
        let (head, rest) = self.data.split_at(n);
        buf[..n].copy_from_slice(head);
        self.data = rest;
        Ok(n)
    }
}

/// One packet as the writer takes it.
#[derive(Debug)]
struct Sent<'a> {
    interface: u32,
    unix_ns: u64,
    orig_len: u32,
    direction: Option<Direction>,
    data: &'a [u8],
}

fuzz_target!(|data: &[u8]| {
    let step = data.first().map_or(1, |&b| usize::from(b));
    let mut reader = StreamReader::new(Chunks { data, step });
    // Every call consumes at least 8 bytes or ends, so this is bounded.
    loop {
        let interface = match reader.next_event() {
            Ok(Some(Event::Packet(p))) => {
                assert!(p.orig_len as usize >= p.data.len());
                p.interface
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        };
        // A packet is only ever on an interface the section described.
        assert!((interface as usize) < reader.interfaces().len());
    }

    let mut u = Unstructured::new(data);
    let Ok(section) = section(&mut u) else {
        return;
    };
    let (application, names, packets) = section;
    let mut stream = Vec::new();
    section_header(&mut stream, application);
    for name in &names {
        interface_block(&mut stream, name, 262_144);
    }
    for p in &packets {
        packet_block(
            &mut stream,
            InterfaceId(p.interface),
            p.unix_ns,
            p.orig_len,
            p.direction,
            p.data,
        );
    }
    assert_eq!(stream.len() % 4, 0, "blocks are whole words");
    let mut reader = StreamReader::new(Chunks {
        data: &stream,
        step,
    });
    assert!(matches!(reader.next_event(), Ok(Some(Event::Section))));
    for name in &names {
        assert!(matches!(reader.next_event(), Ok(Some(Event::Interface))));
        let read = reader.interfaces().last().expect("the interface just read");
        assert_eq!(read.name.as_deref(), Some(name.trim_end_matches('\0')));
        assert_eq!(read.linktype, 1, "Ethernet");
    }
    for sent in &packets {
        let Ok(Some(Event::Packet(p))) = reader.next_event() else {
            panic!("packet {sent:?} did not come back");
        };
        assert_eq!(p.interface, sent.interface);
        assert_eq!(p.unix_ns, sent.unix_ns, "nanosecond stamps are exact");
        assert_eq!(p.orig_len, sent.orig_len.max(p.data.len() as u32));
        assert_eq!(p.direction, sent.direction);
        assert_eq!(p.data, sent.data);
    }
    assert!(
        matches!(reader.next_event(), Ok(None)),
        "the stream ends cleanly"
    );
});

/// An application name, one to four interface names and up to eight
/// packets on them, from the fuzzer's bytes.
fn section<'a>(
    u: &mut Unstructured<'a>,
) -> libfuzzer_sys::arbitrary::Result<(&'a str, Vec<&'a str>, Vec<Sent<'a>>)> {
    let application = u.arbitrary()?;
    let names = (0..u.int_in_range(1..=4u32)?)
        .map(|_| u.arbitrary())
        .collect::<Result<Vec<&str>, _>>()?;
    let mut packets = Vec::new();
    for _ in 0..u.int_in_range(0..=8u32)? {
        packets.push(Sent {
            interface: u.int_in_range(0..=names.len() as u32 - 1)?,
            unix_ns: u.arbitrary()?,
            orig_len: u.arbitrary()?,
            direction: match u.int_in_range(0..=2u8)? {
                0 => None,
                1 => Some(Direction::Ingress),
                _ => Some(Direction::Egress),
            },
            data: u.arbitrary()?,
        });
    }
    Ok((application, names, packets))
}
