//! pcapng streams (`--listen tcp://`): the block reader over arbitrary
//! bytes, as a connection would deliver them, read until it ends or fails.
//! The bytes come in reads of varying size, as from a socket.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use mirror_agent::collect::stream::{Event, StreamReader};

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

fuzz_target!(|data: &[u8]| {
    let step = data.first().map_or(1, |&b| usize::from(b));
    let mut reader = StreamReader::new(Chunks { data, step });
    // Every call consumes at least 8 bytes or ends, so this is bounded.
    while let Ok(Some(event)) = reader.next_event() {
        if let Event::Packet(p) = event {
            assert!(p.orig_len as usize >= p.data.len());
        }
    }
});
