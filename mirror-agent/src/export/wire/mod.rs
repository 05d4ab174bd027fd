//! Copies as a wire would carry them, for receivers that validate what
//! they get (an IDS drops a packet whose checksum is wrong, and reads a
//! 64 KiB super-packet cut to the tunnel MTU as a reassembly gap).
//!
//! The hook sees packets before the NIC (or the kernel, for a virtual
//! link) finishes them: locally sent TCP and UDP carry a partial checksum
//! (`CHECKSUM_PARTIAL`: the field holds only the pseudo-header's sum), and
//! GSO/GRO super-packets are not cut into segments yet. Here, in the agent
//! and off the production path, [`Shaper`] finishes checksums
//! ([`finish`]) and cuts super-packets into the segments the kernel would
//! make ([`segment`]).
//!
//! A TC program cannot read `skb->ip_summed` (`__sk_buff` does not have
//! it, and `bpf_csum_level` answers only for `CHECKSUM_UNNECESSARY`), so a
//! partial checksum is recognised by its value: the field equals the folded
//! pseudo-header sum and the whole sum does not verify. Only such fields
//! are rewritten: a packet whose checksum verifies, or is wrong in any
//! other way, is passed on as it was seen.

mod segment;

use std::num::NonZeroU16;

use etherparse::{LaxNetSlice, LaxSlicedPacket, checksum::u64_16bit_word as sum};

pub use segment::segment;

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;

/// What an output does to the bytes the hook saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wire {
    /// Finish partial checksums (the default; `checksums=keep` turns it off).
    pub finish_checksums: bool,
    /// Cut GSO/GRO super-packets into wire-size segments (the default for
    /// tunnels and streams; files only with `--segment`).
    pub segment: bool,
}

impl Wire {
    /// As a wire would carry them: the default of tunnels and streams.
    pub const WIRE: Self = Self {
        finish_checksums: true,
        segment: true,
    };
    /// Checksums finished, super-packets whole: the default of files, as
    /// tcpdump writes them but checksums as a wire carries them.
    pub const FILE: Self = Self {
        finish_checksums: true,
        segment: false,
    };
    /// Exactly as the hook saw them (`checksums=keep`).
    pub const KEEP: Self = Self {
        finish_checksums: false,
        segment: false,
    };
}

/// Where a frame's layers start, found by etherparse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Offset of the IP header.
    pub l3: usize,
    pub ipv6: bool,
    /// Offset of the transport header.
    pub l4: usize,
    /// Length of the transport header and payload, as the IP header says
    /// (the captured bytes may hold fewer).
    pub l4_len: usize,
    pub protocol: u8,
}

impl Layout {
    /// The layers of an Ethernet frame carrying an unfragmented IP packet.
    pub fn of(frame: &[u8]) -> Option<Self> {
        let packet = LaxSlicedPacket::from_ethernet(frame).ok()?;
        let at = |s: &[u8]| (s.as_ptr() as usize).checked_sub(frame.as_ptr() as usize);
        let (l3, ipv6, end, payload) = match packet.net.as_ref()? {
            LaxNetSlice::Ipv4(v4) => {
                let h = v4.header();
                let l3 = at(h.slice())?;
                (l3, false, l3 + usize::from(h.total_len()), v4.payload())
            }
            LaxNetSlice::Ipv6(v6) => {
                let h = v6.header();
                let l3 = at(h.slice())?;
                (
                    l3,
                    true,
                    l3 + 40 + usize::from(h.payload_length()),
                    v6.payload(),
                )
            }
            LaxNetSlice::Arp(_) => return None,
        };
        if payload.fragmented {
            return None;
        }
        let l4 = at(payload.payload)?;
        Some(Self {
            l3,
            ipv6,
            l4,
            l4_len: end.checked_sub(l4)?,
            protocol: payload.ip_number.0,
        })
    }

    /// Offset of the transport checksum within the transport header.
    fn checksum_at(&self) -> Option<usize> {
        match self.protocol {
            TCP => Some(16),
            UDP => Some(6),
            ICMPV6 if self.ipv6 => Some(2),
            _ => None,
        }
    }

    /// The pseudo-header's sum (RFC 793, RFC 768, RFC 8200 section 8.1).
    fn pseudo_sum(&self, frame: &[u8]) -> u64 {
        let (addrs, n) = if self.ipv6 {
            (self.l3 + 8, 32)
        } else {
            (self.l3 + 12, 8)
        };
        let s = sum::add_slice(0, &frame[addrs..addrs + n]);
        let s = sum::add_4bytes(s, (self.l4_len as u32).to_be_bytes());
        sum::add_2bytes(s, [0, self.protocol])
    }
}

/// Writes the transport checksum of a whole captured segment.
fn write_checksum(frame: &mut [u8], layout: &Layout, at: usize) {
    frame[at..at + 2].fill(0);
    let s = sum::add_slice(
        layout.pseudo_sum(frame),
        &frame[layout.l4..layout.l4 + layout.l4_len],
    );
    put_checksum(frame, layout, at, s);
}

/// Writes the checksum of `s`, the sum of the pseudo-header and the
/// transport bytes with the checksum field counted as zero.
fn put_checksum(frame: &mut [u8], layout: &Layout, at: usize, s: u64) {
    frame[at..at + 2].copy_from_slice(&checksum_bytes(layout, s));
}

/// The checksum field's bytes for `s` (see [`put_checksum`]).
fn checksum_bytes(layout: &Layout, s: u64) -> [u8; 2] {
    let value = if layout.protocol == UDP {
        sum::ones_complement_with_no_zero(s)
    } else {
        sum::ones_complement(s)
    };
    value.to_ne_bytes()
}

/// Two bytes a copy has in place of the captured ones at `at`: a finished
/// checksum, for a writer that takes the rest from where it was captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patch {
    pub at: usize,
    pub bytes: [u8; 2],
}

/// Where a partial transport checksum is to be finished, if the frame has
/// one: its layout, the checksum's offset, and the sum it is to be
/// finished from (see [`put_checksum`]). A frame not captured whole
/// (snaplen) cannot be finished.
fn partial(frame: &[u8]) -> Option<(Layout, usize, u64)> {
    let layout = Layout::of(frame)?;
    let at = layout.l4 + layout.checksum_at()?;
    if layout.l4 + layout.l4_len > frame.len() || at + 2 > frame.len() {
        return None;
    }
    let pseudo = layout.pseudo_sum(frame);
    // CHECKSUM_PARTIAL leaves ~csum_tcpudp_magic(): the folded pseudo sum.
    let field = [frame[at], frame[at + 1]];
    if u16::from_ne_bytes(field) != !sum::ones_complement(pseudo) {
        return None;
    }
    let whole = sum::add_slice(pseudo, &frame[layout.l4..layout.l4 + layout.l4_len]);
    // Adding the field's complement takes it back out (one's complement
    // arithmetic), so the bytes are summed once, not again to write it.
    let without_field = sum::add_2bytes(whole, [!field[0], !field[1]]);
    (sum::ones_complement(whole) != 0).then_some((layout, at, without_field))
}

/// Finishes a partial transport checksum in place; true when it did.
pub fn finish(frame: &mut [u8]) -> bool {
    match partial(frame) {
        Some((layout, at, s)) => {
            put_checksum(frame, &layout, at, s);
            true
        }
        None => false,
    }
}

/// What shaping did to one record, for the output's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shaped {
    /// Copies handed on: 1, or the number of segments.
    pub copies: usize,
    /// Segments made of a super-packet (0 when it was not cut).
    pub segments: usize,
    /// Checksums finished.
    pub finished: usize,
}

/// Shapes records into copies, reusing one buffer.
#[derive(Debug)]
pub struct Shaper {
    wire: Wire,
    snaplen: usize,
    scratch: Vec<u8>,
    /// A copy with its [`Patch`] in, for [`Shaper::shape`].
    patched: Vec<u8>,
}

impl Shaper {
    pub fn new(wire: Wire, snaplen: u32) -> Self {
        Self {
            wire,
            snaplen: snaplen as usize,
            scratch: Vec::new(),
            patched: Vec::new(),
        }
    }

    /// Calls `each` with every copy of one captured frame (`data`, of a
    /// packet of `orig_len` bytes): its bytes and its own original length.
    pub fn shape(
        &mut self,
        data: &[u8],
        orig_len: u32,
        gso_size: Option<NonZeroU16>,
        mut each: impl FnMut(&[u8], u32),
    ) -> Shaped {
        let mut patched = std::mem::take(&mut self.patched);
        let shaped = self.shape_patched(data, orig_len, gso_size, |d, o, patch| match patch {
            None => each(d, o),
            Some(p) => {
                patched.clear();
                patched.extend_from_slice(d);
                patched[p.at..p.at + 2].copy_from_slice(&p.bytes);
                each(&patched, o);
            }
        });
        self.patched = patched;
        shaped
    }

    /// As [`Shaper::shape`], but a copy that differs from the captured
    /// frame only by a finished checksum is handed over as the captured
    /// bytes and the [`Patch`] to put in them: a writer can then take the
    /// rest from where the frame was captured, uncopied.
    pub fn shape_patched(
        &mut self,
        data: &[u8],
        orig_len: u32,
        gso_size: Option<NonZeroU16>,
        mut each: impl FnMut(&[u8], u32, Option<Patch>),
    ) -> Shaped {
        if self.wire.segment
            && let Some(mss) = gso_size
        {
            let made = segment(
                data,
                orig_len,
                mss,
                self.snaplen,
                self.wire.finish_checksums,
                &mut self.scratch,
                &mut |d: &[u8], o| each(d, o, None),
            );
            if let Some(made) = made {
                return made;
            }
        }
        let todo = if self.wire.finish_checksums {
            partial(data)
        } else {
            None
        };
        let Some((layout, at, s)) = todo else {
            each(data, orig_len, None);
            return Shaped {
                copies: 1,
                ..Shaped::default()
            };
        };
        let bytes = checksum_bytes(&layout, s);
        each(data, orig_len, Some(Patch { at, bytes }));
        Shaped {
            copies: 1,
            segments: 0,
            finished: 1,
        }
    }
}

#[cfg(test)]
mod tests;
