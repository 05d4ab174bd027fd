//! GRE (RFC 2784, with the key and sequence number of RFC 2890), written once
//! here for the three tunnels that ride it: transparent Ethernet bridging
//! (protocol 0x6558) and ERSPAN II and III (see `erspan.rs`).
//!
//! ```text
//! |C| |K|S| Reserved0       | Ver |         Protocol Type         |
//! |      Checksum (optional)      |       Reserved1 (Optional)    |
//! |                         Key (optional)                        |
//! |                 Sequence Number (Optional)                    |
//! ```
//!
//! The encoder never sets C: the checksum would cost a pass over every
//! mirrored frame and the outer IP and Ethernet layers already protect it.
//! The decoder accepts and verifies it, since other senders may use it.

use super::{Cursor, EncapError, Encapsulator, PacketMeta, ethernet, take};

/// Transparent Ethernet bridging: the payload is an Ethernet frame.
pub const PROTO_TEB: u16 = 0x6558;

const FLAG_C: u16 = 0x8000;
const FLAG_K: u16 = 0x2000;
const FLAG_S: u16 = 0x1000;
/// Bits 1-5 of RFC 2784, less K and S which RFC 2890 took: routing, strict
/// source route and the top recursion bit. A receiver must discard on them.
const FORBIDDEN: u16 = 0x4000 | 0x0800 | 0x0400;
const VERSION: u16 = 0x0007;

/// A GRE key (RFC 2890): 32 bits with no structure, often a tenant or session id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GreKey(pub u32);

/// Per-tunnel sequence numbers (RFC 2890), starting at 0 and wrapping.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Sequence(u32);

impl Sequence {
    pub(crate) fn next(&mut self) -> u32 {
        let n = self.0;
        self.0 = n.wrapping_add(1);
        n
    }
}

/// Length of a GRE header with the given optional fields (never a checksum).
pub(crate) const fn header_len(key: bool, seq: bool) -> usize {
    4 + 4 * key as usize + 4 * seq as usize
}

/// Writes a GRE header: the one piece of code all GRE-based encoders share.
pub(crate) fn put_header(
    w: &mut Cursor<'_>,
    proto: u16,
    key: Option<GreKey>,
    seq: Option<u32>,
) -> Result<(), EncapError> {
    let flags = key.map_or(0, |_| FLAG_K) | seq.map_or(0, |_| FLAG_S);
    w.put(&flags.to_be_bytes())?;
    w.put(&proto.to_be_bytes())?;
    if let Some(GreKey(k)) = key {
        w.put(&k.to_be_bytes())?;
    }
    if let Some(s) = seq {
        w.put(&s.to_be_bytes())?;
    }
    Ok(())
}

/// Encoder for a GRE/TEB tunnel, with an optional key and optional sequence numbers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gre {
    key: Option<GreKey>,
    seq: Option<Sequence>,
}

impl Gre {
    /// A tunnel with neither key nor sequence numbers (a 4-byte header).
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_key(self, key: GreKey) -> Self {
        Self {
            key: Some(key),
            ..self
        }
    }

    /// Numbers packets from 0, so a collector can count losses.
    pub fn with_sequence(self) -> Self {
        Self {
            seq: Some(Sequence::default()),
            ..self
        }
    }
}

impl Encapsulator for Gre {
    fn header_len(&self, _: &PacketMeta<'_>) -> usize {
        header_len(self.key.is_some(), self.seq.is_some())
    }

    fn write_header(
        &mut self,
        meta: &PacketMeta<'_>,
        _: &[u8],
        out: &mut [u8],
    ) -> Result<usize, EncapError> {
        let mut w = Cursor::new(out, self.header_len(meta))?;
        let seq = self.seq.as_mut().map(Sequence::next);
        put_header(&mut w, PROTO_TEB, self.key, seq)?;
        Ok(w.written())
    }
}

/// The fields of a GRE header, whatever its protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GreHeader {
    pub proto: u16,
    pub key: Option<GreKey>,
    pub seq: Option<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GreError {
    #[error("GRE packet of {have} bytes is shorter than its {need}-byte header")]
    Short { need: usize, have: usize },
    #[error("GRE flags {0:#06x} set routing or recursion bits that RFC 2784 rejects")]
    Forbidden(u16),
    #[error("GRE version {0} is not 0 (version 1 is PPTP)")]
    Version(u16),
    #[error("GRE checksum does not match")]
    Checksum,
    #[error("GRE protocol {found:#06x} where {expected} was expected")]
    Protocol { found: u16, expected: &'static str },
    #[error("inner frame of {0} bytes is shorter than an Ethernet header")]
    InnerTooShort(usize),
}

/// Parses the GRE header at the start of `bytes` (what follows the outer IP
/// header) and returns it with the payload after it.
pub fn parse(bytes: &[u8]) -> Result<(GreHeader, &[u8]), GreError> {
    let short = |need| GreError::Short {
        need,
        have: bytes.len(),
    };
    let (&[f0, f1, p0, p1], mut rest) = take::<4>(bytes).ok_or(short(4))?;
    let flags = u16::from_be_bytes([f0, f1]);
    if flags & FORBIDDEN != 0 {
        return Err(GreError::Forbidden(flags));
    }
    if flags & VERSION != 0 {
        return Err(GreError::Version(flags & VERSION));
    }
    let need = 4
        * (1 + [FLAG_C, FLAG_K, FLAG_S]
            .iter()
            .filter(|&&f| flags & f != 0)
            .count());
    let mut word = |present: u16| -> Result<Option<u32>, GreError> {
        if flags & present == 0 {
            return Ok(None);
        }
        let (w, r) = take::<4>(rest).ok_or(short(need))?;
        rest = r;
        Ok(Some(u32::from_be_bytes(*w)))
    };
    if word(FLAG_C)?.is_some() && internet_checksum(bytes) != 0 {
        return Err(GreError::Checksum);
    }
    let key = word(FLAG_K)?.map(GreKey);
    let seq = word(FLAG_S)?;
    let proto = u16::from_be_bytes([p0, p1]);
    Ok((GreHeader { proto, key, seq }, rest))
}

/// The one's complement of the one's complement sum of `bytes` as 16-bit
/// words: zero over data that carries a correct checksum.
fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|c| match *c {
            [hi, lo] => u64::from(u16::from_be_bytes([hi, lo])),
            [hi] => u64::from(hi) << 8,
            _ => 0,
        })
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// A decoded GRE/TEB packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub key: Option<GreKey>,
    pub seq: Option<u32>,
    /// The inner Ethernet frame, borrowed from the input.
    pub inner: &'a [u8],
}

/// Decodes a GRE packet carrying an Ethernet frame (protocol 0x6558).
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, GreError> {
    let (h, rest) = parse(bytes)?;
    if h.proto != PROTO_TEB {
        return Err(GreError::Protocol {
            found: h.proto,
            expected: "0x6558 (transparent Ethernet bridging)",
        });
    }
    Ok(Decoded {
        key: h.key,
        seq: h.seq,
        inner: ethernet(rest).ok_or(GreError::InnerTooShort(rest.len()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{encode, frame, meta};
    use super::*;

    #[test]
    fn round_trip_every_shape() {
        let inner = frame(70);
        let m = meta("");
        for (mut gre, len) in [
            (Gre::new(), 4),
            (Gre::new().with_key(GreKey(0xDEAD_BEEF)), 8),
            (Gre::new().with_sequence(), 8),
            (Gre::new().with_key(GreKey(9)).with_sequence(), 12),
        ] {
            for expected_seq in 0..3 {
                let bytes = encode(&mut gre, &m, &inner);
                assert_eq!(bytes.len(), len + inner.len());
                let d = decode(&bytes).unwrap();
                assert_eq!(d.key, gre.key);
                assert_eq!(d.seq, gre.seq.map(|_| expected_seq));
                assert_eq!(d.inner, &inner[..]);
            }
        }
    }

    #[test]
    fn wire_format() {
        let mut gre = Gre::new().with_key(GreKey(0x0102_0304)).with_sequence();
        let bytes = encode(&mut gre, &meta(""), &frame(14));
        assert_eq!(&bytes[..12], &[0x30, 0, 0x65, 0x58, 1, 2, 3, 4, 0, 0, 0, 0]);
    }

    #[test]
    fn checksums_are_verified() {
        // C bit, TEB, checksum, reserved1, then a 14-byte frame.
        let mut bytes = vec![0x80, 0, 0x65, 0x58, 0, 0, 0, 0];
        bytes.extend_from_slice(&frame(14));
        let sum = internet_checksum(&bytes);
        bytes[4..6].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(decode(&bytes).map(|d| d.inner.len()), Ok(14));
        bytes[20] ^= 1;
        assert_eq!(decode(&bytes), Err(GreError::Checksum));
    }

    #[test]
    fn rejects_foreign_headers() {
        let ok = encode(&mut Gre::new().with_sequence(), &meta(""), &frame(20));
        assert_eq!(decode(&ok[..6]), Err(GreError::Short { need: 8, have: 6 }));
        let with = |b0: u8, b1: u8| {
            let mut b = ok.clone();
            b[0] = b0;
            b[1] = b1;
            decode(&b).map(drop)
        };
        assert_eq!(with(0x50, 0), Err(GreError::Forbidden(0x5000)));
        assert_eq!(with(0x10, 1), Err(GreError::Version(1)));
        let mut other = ok.clone();
        other[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
        assert!(matches!(
            decode(&other),
            Err(GreError::Protocol { found: 0x0800, .. })
        ));
        assert_eq!(decode(&ok[..20]), Err(GreError::InnerTooShort(12)));
    }
}
