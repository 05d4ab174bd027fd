//! GENEVE (RFC 8926) carrying Ethernet (protocol type 0x6558) as the payload
//! of UDP port 6081, with the mirror's metadata in TLV options.
//!
//! ```text
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! |          Option Class         |      Type     |R|R|R| Length  |
//! ~                  Variable-Length Option Data                  ~
//! ```
//!
//! # Options
//!
//! All options are under one class, [`OPTION_CLASS`] = `0xFFF0`, from the
//! range RFC 8926 leaves for experimental use, so they cannot collide with a
//! registered class. No type has the critical bit (0x80): a receiver that does
//! not know them still delivers the frame. The header's C flag is clear.
//!
//! | type | name | data |
//! |---|---|---|
//! | `0x01` | original length | u32, bytes of the packet on the wire before any cut |
//! | `0x02` | direction | u32, 0 = ingress, 1 = egress, on the hooked interface (as ERSPAN's D bit) |
//! | `0x03` | ifindex | u32, the hooked interface's index on its node |
//! | `0x04` | node name | UTF-8, NUL-padded to 4 bytes, at most [`MAX_NODE_LEN`] bytes |
//! | `0x05` | pod identity | UTF-8 `namespace/name`, NUL-padded, at most [`MAX_POD_LEN`] bytes |
//! | `0x06` | capture time | u64, nanoseconds since the Unix epoch when the hook saw the packet |
//!
//! Numbers are big-endian. The four fixed options are always sent; a string
//! option is left out when empty. A longer string is cut at a character
//! boundary, so it stays valid UTF-8. The pod identity gets the RFC's
//! per-option maximum (124 bytes, a 5-bit length in words); the node name gets
//! what is left of the 252-byte total (Opt Len is 6 bits in words):
//! 3 × 8 + 12 + (4 + 84) + (4 + 124) = 252. (The node name's limit was 96
//! bytes before the capture time was added.)

use super::{
    Cursor, EncapError, Encapsulator, PacketMeta, Vni, direction_bit, direction_from_bit, ethernet,
    gre::PROTO_TEB, take,
};
use crate::model::{direction::Direction, record::IfIndex};

/// The IANA port for GENEVE.
pub const UDP_PORT: u16 = 6081;
/// The option class of every option this encoder writes (experimental range).
pub const OPTION_CLASS: u16 = 0xFFF0;
pub const OPT_ORIG_LEN: u8 = 0x01;
pub const OPT_DIRECTION: u8 = 0x02;
pub const OPT_IFINDEX: u8 = 0x03;
pub const OPT_NODE: u8 = 0x04;
pub const OPT_POD: u8 = 0x05;
pub const OPT_TIME: u8 = 0x06;
/// Longest node name carried, in bytes.
pub const MAX_NODE_LEN: usize = 84;
/// Longest pod identity carried, in bytes: RFC 8926's limit for one option.
pub const MAX_POD_LEN: usize = 124;
/// The fixed header and the most options RFC 8926 allows (63 words).
pub const MAX_HEADER_LEN: usize = FIXED_LEN + 63 * 4;

const FIXED_LEN: usize = 8;
/// The three u32 options, 8 bytes each, and the u64 capture time in 12.
const NUMERIC_OPTS_LEN: usize = 3 * 8 + 12;
// The budget above: both strings at their limits fill Opt Len exactly, and
// the limits are whole words, so padding never pushes an option past them.
const _: () = assert!(NUMERIC_OPTS_LEN + 4 + MAX_NODE_LEN + 4 + MAX_POD_LEN == 63 * 4);
const _: () = assert!(MAX_NODE_LEN.is_multiple_of(4) && MAX_POD_LEN == 31 * 4);
const FLAG_OAM: u8 = 0x80;
const CRITICAL: u8 = 0x80;

/// Encoder for one GENEVE tunnel from one node.
#[derive(Clone, Debug)]
pub struct Geneve {
    vni: Vni,
    /// Already cut to [`MAX_NODE_LEN`], once, here.
    node: Box<str>,
}

impl Geneve {
    /// `node` is this agent's node name; a longer one is cut to [`MAX_NODE_LEN`] bytes.
    pub fn new(vni: Vni, node: &str) -> Self {
        Self {
            vni,
            node: clip(node, MAX_NODE_LEN).into(),
        }
    }

    fn options_len(&self, pod: &str) -> usize {
        NUMERIC_OPTS_LEN + string_option_len(&self.node) + string_option_len(pod)
    }
}

impl Encapsulator for Geneve {
    fn header_len(&self, meta: &PacketMeta<'_>) -> usize {
        FIXED_LEN + self.options_len(clip(meta.pod, MAX_POD_LEN))
    }

    fn write_header(
        &mut self,
        meta: &PacketMeta<'_>,
        _: &[u8],
        out: &mut [u8],
    ) -> Result<usize, EncapError> {
        let pod = clip(meta.pod, MAX_POD_LEN);
        let options = self.options_len(pod);
        let mut w = Cursor::new(out, FIXED_LEN + options)?;
        // Version 0, Opt Len in words (at most 63 by construction), O and C clear.
        w.put(&[(options / 4) as u8, 0])?;
        w.put(&PROTO_TEB.to_be_bytes())?;
        w.put(&(self.vni.get() << 8).to_be_bytes())?;
        let direction = u32::from(direction_bit(meta.direction));
        put_option(&mut w, OPT_ORIG_LEN, &meta.orig_len.to_be_bytes())?;
        put_option(&mut w, OPT_DIRECTION, &direction.to_be_bytes())?;
        put_option(&mut w, OPT_IFINDEX, &meta.ifindex.0.to_be_bytes())?;
        put_option(&mut w, OPT_TIME, &meta.unix_ns.to_be_bytes())?;
        for (kind, text) in [(OPT_NODE, &*self.node), (OPT_POD, pod)] {
            if !text.is_empty() {
                put_option(&mut w, kind, text.as_bytes())?;
            }
        }
        Ok(w.written())
    }
}

/// The longest prefix of `s` of at most `max` bytes that is still UTF-8.
fn clip(s: &str, max: usize) -> &str {
    s.get(..s.floor_char_boundary(max)).unwrap_or_default()
}

fn string_option_len(s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        4 + s.len().next_multiple_of(4)
    }
}

/// One option of our class: `data` must be at most 124 bytes, which the
/// callers guarantee; it is NUL-padded to a whole word.
fn put_option(w: &mut Cursor<'_>, kind: u8, data: &[u8]) -> Result<(), EncapError> {
    let padded = data.len().next_multiple_of(4);
    w.put(&OPTION_CLASS.to_be_bytes())?;
    w.put(&[kind, (padded / 4) as u8])?;
    w.put(data)?;
    w.zeros(padded - data.len())
}

/// The mirror's metadata found in a packet's options; what a sender left out
/// (or a foreign sender never sends) is `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorOptions<'a> {
    pub orig_len: Option<u32>,
    pub direction: Option<Direction>,
    pub ifindex: Option<IfIndex>,
    pub node: Option<&'a str>,
    pub pod: Option<&'a str>,
    /// When the sender's hook saw the packet, in nanoseconds since the Unix epoch.
    pub captured_ns: Option<u64>,
}

/// A decoded GENEVE packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub vni: Vni,
    pub mirror: MirrorOptions<'a>,
    /// The inner Ethernet frame, borrowed from the input.
    pub inner: &'a [u8],
}

impl Decoded<'_> {
    /// Whether the sender cut the frame: its original length exceeds what came.
    pub fn truncated(&self) -> bool {
        self.mirror
            .orig_len
            .is_some_and(|n| u64::from(n) > self.inner.len() as u64)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GeneveError {
    #[error("GENEVE packet of {have} bytes is shorter than its {need}-byte header")]
    Short { need: usize, have: usize },
    #[error("GENEVE version {0} is not 0")]
    Version(u8),
    #[error("GENEVE OAM packet carries no mirrored frame")]
    Oam,
    #[error("GENEVE protocol type {0:#06x} is not Ethernet (0x6558)")]
    Protocol(u16),
    #[error("GENEVE option {class:#06x}/{kind:#04x} runs past the options")]
    OptionOverrun { class: u16, kind: u8 },
    #[error("GENEVE option {class:#06x}/{kind:#04x} is critical and unknown")]
    UnknownCritical { class: u16, kind: u8 },
    #[error("GENEVE mirror option {kind:#04x} has a bad value or length ({len} bytes)")]
    BadOption { kind: u8, len: usize },
    #[error("GENEVE mirror option {kind:#04x} is not UTF-8")]
    NotUtf8 { kind: u8 },
    #[error("inner frame of {0} bytes is shorter than an Ethernet header")]
    InnerTooShort(usize),
}

/// Decodes a UDP payload. Options of other classes are skipped unless
/// critical, which RFC 8926 says a receiver that does not know them must drop.
pub fn decode(payload: &[u8]) -> Result<Decoded<'_>, GeneveError> {
    let short = |need| GeneveError::Short {
        need,
        have: payload.len(),
    };
    let (&[b0, b1, p0, p1, v0, v1, v2, _], rest) =
        take::<FIXED_LEN>(payload).ok_or(short(FIXED_LEN))?;
    if b0 >> 6 != 0 {
        return Err(GeneveError::Version(b0 >> 6));
    }
    if b1 & FLAG_OAM != 0 {
        return Err(GeneveError::Oam);
    }
    let proto = u16::from_be_bytes([p0, p1]);
    if proto != PROTO_TEB {
        return Err(GeneveError::Protocol(proto));
    }
    let options_len = usize::from(b0 & 0x3F) * 4;
    let (options, inner) = rest
        .split_at_checked(options_len)
        .ok_or(short(FIXED_LEN + options_len))?;
    Ok(Decoded {
        vni: Vni::from_bits(u32::from_be_bytes([0, v0, v1, v2])),
        mirror: parse_options(options)?,
        inner: ethernet(inner).ok_or(GeneveError::InnerTooShort(inner.len()))?,
    })
}

fn parse_options(mut options: &[u8]) -> Result<MirrorOptions<'_>, GeneveError> {
    let mut found = MirrorOptions::default();
    while let Some((&[c0, c1, kind, len], rest)) = take::<4>(options) {
        let class = u16::from_be_bytes([c0, c1]);
        let (data, rest) = rest
            .split_at_checked(usize::from(len & 0x1F) * 4)
            .ok_or(GeneveError::OptionOverrun { class, kind })?;
        options = rest;
        match (class, kind) {
            (OPTION_CLASS, OPT_ORIG_LEN) => found.orig_len = Some(word(kind, data)?),
            (OPTION_CLASS, OPT_IFINDEX) => found.ifindex = Some(IfIndex(word(kind, data)?)),
            (OPTION_CLASS, OPT_DIRECTION) => {
                found.direction = Some(match word(kind, data)? {
                    bit @ (0 | 1) => direction_from_bit(bit == 1),
                    _ => {
                        return Err(GeneveError::BadOption {
                            kind,
                            len: data.len(),
                        });
                    }
                })
            }
            (OPTION_CLASS, OPT_NODE) => found.node = Some(text(kind, data)?),
            (OPTION_CLASS, OPT_POD) => found.pod = Some(text(kind, data)?),
            (OPTION_CLASS, OPT_TIME) => {
                let bytes: [u8; 8] = data.try_into().map_err(|_| GeneveError::BadOption {
                    kind,
                    len: data.len(),
                })?;
                found.captured_ns = Some(u64::from_be_bytes(bytes));
            }
            _ if kind & CRITICAL != 0 => return Err(GeneveError::UnknownCritical { class, kind }),
            _ => {}
        }
    }
    // The options area is whole words and every option is whole words, so
    // nothing can be left over; `take` would have ended the loop otherwise.
    Ok(found)
}

fn word(kind: u8, data: &[u8]) -> Result<u32, GeneveError> {
    let bytes: [u8; 4] = data.try_into().map_err(|_| GeneveError::BadOption {
        kind,
        len: data.len(),
    })?;
    Ok(u32::from_be_bytes(bytes))
}

fn text(kind: u8, data: &[u8]) -> Result<&str, GeneveError> {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let unpadded = data.get(..end).unwrap_or_default();
    std::str::from_utf8(unpadded).map_err(|_| GeneveError::NotUtf8 { kind })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{encode, frame, meta};
    use super::*;

    fn vni() -> Vni {
        Vni::new(0x00_1234).unwrap()
    }

    #[test]
    fn round_trip() {
        let inner = frame(100);
        let m = meta("default/web-0");
        let mut enc = Geneve::new(vni(), "node-a");
        let bytes = encode(&mut enc, &m, &inner);
        // 8 fixed, 24 numeric, 12 time, 4 + 8 node, 4 + 16 pod.
        assert_eq!(bytes.len() - inner.len(), 76);
        assert_eq!(&bytes[..8], &[17, 0, 0x65, 0x58, 0, 0x12, 0x34, 0]);
        // The capture time, big-endian, after the three u32 options.
        assert_eq!(&bytes[32..36], &[0xFF, 0xF0, OPT_TIME, 2]);
        assert_eq!(&bytes[36..44], &m.unix_ns.to_be_bytes());
        let d = decode(&bytes).unwrap();
        assert_eq!(
            d,
            Decoded {
                vni: vni(),
                mirror: MirrorOptions {
                    orig_len: Some(1500),
                    direction: Some(Direction::Egress),
                    ifindex: Some(IfIndex(42)),
                    node: Some("node-a"),
                    pod: Some("default/web-0"),
                    captured_ns: Some(1_700_000_000_123_456_789),
                },
                inner: &inner,
            }
        );
        assert!(d.truncated());
    }

    #[test]
    fn empty_strings_are_left_out() {
        let inner = frame(60);
        let bytes = encode(&mut Geneve::new(vni(), ""), &meta(""), &inner);
        assert_eq!(bytes.len() - inner.len(), FIXED_LEN + NUMERIC_OPTS_LEN);
        let m = decode(&bytes).unwrap().mirror;
        assert_eq!((m.node, m.pod, m.orig_len), (None, None, Some(1500)));
    }

    #[test]
    fn long_names_are_cut_at_char_boundaries_within_the_limits() {
        // 'é' is two bytes, so the limits fall inside a character.
        let node = "é".repeat(100);
        let pod = format!("n{}", "é".repeat(100));
        let inner = frame(60);
        let mut enc = Geneve::new(vni(), &node);
        let bytes = encode(&mut enc, &meta(&pod), &inner);
        assert_eq!(bytes.len() - inner.len(), MAX_HEADER_LEN);
        let m = decode(&bytes).unwrap().mirror;
        assert_eq!(m.node, Some(&node[..MAX_NODE_LEN]));
        assert_eq!(m.pod, Some(&pod[..MAX_POD_LEN - 1]));
        let ascii = "x".repeat(500);
        let full = encode(&mut Geneve::new(vni(), &ascii), &meta(&ascii), &inner);
        assert_eq!(full.len() - inner.len(), MAX_HEADER_LEN);
        assert_eq!(full[0], 63);
    }

    #[test]
    fn foreign_options_are_skipped_unless_critical() {
        let inner = frame(60);
        let mut bytes = encode(&mut Geneve::new(vni(), ""), &meta(""), &inner);
        // Append one foreign option of one word after ours.
        bytes[0] += 2;
        bytes.splice(44..44, [0x01, 0x02, 0x03, 0x01, 9, 9, 9, 9]);
        assert_eq!(decode(&bytes).map(|d| d.inner), Ok(&inner[..]));
        bytes[46] |= CRITICAL;
        assert_eq!(
            decode(&bytes),
            Err(GeneveError::UnknownCritical {
                class: 0x0102,
                kind: 0x83
            })
        );
    }

    #[test]
    fn rejects_foreign_headers() {
        let ok = encode(&mut Geneve::new(vni(), "n"), &meta("p"), &frame(60));
        let with = |i: usize, v: u8| {
            let mut b = ok.clone();
            b[i] = v;
            decode(&b).map(drop)
        };
        assert_eq!(with(0, ok[0] | 0x40), Err(GeneveError::Version(1)));
        assert_eq!(with(1, 0x80), Err(GeneveError::Oam));
        assert_eq!(with(2, 0x08), Err(GeneveError::Protocol(0x0858)));
        assert_eq!(
            with(0, 63),
            Err(GeneveError::Short {
                need: 260,
                have: ok.len()
            })
        );
        // The direction option's value must be 0 or 1.
        assert_eq!(
            with(23, 2),
            Err(GeneveError::BadOption {
                kind: OPT_DIRECTION,
                len: 4
            })
        );
        // The orig-len option claims two words.
        assert_eq!(
            with(11, 2),
            Err(GeneveError::BadOption {
                kind: OPT_ORIG_LEN,
                len: 8
            })
        );
        // The capture time claims one word.
        assert_eq!(
            with(35, 1),
            Err(GeneveError::BadOption {
                kind: OPT_TIME,
                len: 4
            })
        );
        // Invalid UTF-8 in the node name.
        assert_eq!(with(48, 0xFF), Err(GeneveError::NotUtf8 { kind: OPT_NODE }));
        assert_eq!(
            decode(&ok[..ok.len() - 50]),
            Err(GeneveError::InnerTooShort(10))
        );
    }
}
