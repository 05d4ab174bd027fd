//! ERSPAN Types II and III (draft-foschiano-erspan-03), each behind a GRE
//! header with only the S bit and a sequence number, as Linux and Cisco send it.
//!
//! ```text
//! Type II (GRE protocol 0x88BE), Ver = 1:
//! |  Ver  |          VLAN         | COS | En|T|    Session ID     |
//! |      Reserved         |                  Index                |
//! Type III (GRE protocol 0x22EB), Ver = 2:
//! |  Ver  |          VLAN         | COS |BSO|T|     Session ID    |
//! |                          Timestamp                            |
//! |             SGT               |P|    FT   |   Hw ID   |D|Gra|O|
//! ```
//!
//! Like the Linux kernel's ERSPAN device, the encoders read VLAN and class of
//! service from the mirrored frame itself: the 802.1Q tag's VID and PCP when
//! it has one (then En = 3, "VLAN tag preserved in frame"), else VLAN 0 and the
//! IP precedence bits. Type II's Index is the low 20 bits of the hooked
//! interface's ifindex (GENEVE carries all 32). Type III sets BSO to 0 ("good
//! frame or unknown integrity": a hook on a virtual interface sees no runts
//! or CRC errors), SGT 0, P = 1 and FT = 0 (an Ethernet frame), and O = 0:
//! no platform subheader.
//!
//! Timestamp granularity: Type III stamps are Gra = 0, units of 100 µs of
//! Unix time, keeping the low 32 bits (they wrap every 4.97 days), exactly as
//! Linux does. Finer units would wrap within minutes (100 ns: 7 minutes), and
//! IEEE 1588 would need the platform subheader for its seconds.

use super::gre::{self, GreError, Sequence};
use super::{
    Cursor, EncapError, Encapsulator, PacketMeta, bounded, direction_bit, direction_from_bit,
    ethernet, take,
};
use crate::model::direction::Direction;

pub const PROTO_TYPE2: u16 = 0x88BE;
pub const PROTO_TYPE3: u16 = 0x22EB;
/// Nanoseconds per unit of the Type III timestamp (granularity 0).
pub const TIMESTAMP_UNIT_NS: u64 = 100_000;

const GRE_LEN: usize = gre::header_len(false, true);
pub const TYPE2_HEADER_LEN: usize = GRE_LEN + 8;
pub const TYPE3_HEADER_LEN: usize = GRE_LEN + 12;
const FLAG_T: u32 = 1 << 10;

bounded! {
    /// ERSPAN session id, 10 bits: the collector's name for one mirror session.
    SessionId(u16), bits = 10, field = "ERSPAN session id"
}
bounded! {
    /// ERSPAN Type III hardware id, 6 bits: which sender made the copy.
    HwId(u8), bits = 6, field = "ERSPAN hardware id"
}
bounded! {
    /// A 12-bit VLAN id.
    Vlan(u16), bits = 12, field = "VLAN"
}
bounded! {
    /// A 3-bit class of service (802.1p priority or IP precedence).
    Cos(u8), bits = 3, field = "class of service"
}

/// Encoder for an ERSPAN Type II session.
#[derive(Clone, Copy, Debug)]
pub struct Erspan2 {
    session: SessionId,
    seq: Sequence,
}

impl Erspan2 {
    pub fn new(session: SessionId) -> Self {
        Self {
            session,
            seq: Sequence::default(),
        }
    }
}

impl Encapsulator for Erspan2 {
    fn header_len(&self, _: &PacketMeta<'_>) -> usize {
        TYPE2_HEADER_LEN
    }

    fn write_header(
        &mut self,
        meta: &PacketMeta<'_>,
        inner: &[u8],
        out: &mut [u8],
    ) -> Result<usize, EncapError> {
        let mut w = Cursor::new(out, TYPE2_HEADER_LEN)?;
        gre::put_header(&mut w, PROTO_TYPE2, None, Some(self.seq.next()))?;
        let l2 = L2::of(inner);
        let en = if l2.tagged {
            FrameEncap::TagInFrame
        } else {
            FrameEncap::Untagged
        };
        w.put(&base_word(
            1,
            l2,
            en as u8,
            meta.truncated_by(inner),
            self.session,
        ))?;
        w.put(&(meta.ifindex.0 & 0xF_FFFF).to_be_bytes())?;
        Ok(w.written())
    }
}

/// Encoder for an ERSPAN Type III session.
#[derive(Clone, Copy, Debug)]
pub struct Erspan3 {
    session: SessionId,
    hw_id: HwId,
    seq: Sequence,
}

impl Erspan3 {
    pub fn new(session: SessionId, hw_id: HwId) -> Self {
        Self {
            session,
            hw_id,
            seq: Sequence::default(),
        }
    }
}

impl Encapsulator for Erspan3 {
    fn header_len(&self, _: &PacketMeta<'_>) -> usize {
        TYPE3_HEADER_LEN
    }

    fn write_header(
        &mut self,
        meta: &PacketMeta<'_>,
        inner: &[u8],
        out: &mut [u8],
    ) -> Result<usize, EncapError> {
        let mut w = Cursor::new(out, TYPE3_HEADER_LEN)?;
        gre::put_header(&mut w, PROTO_TYPE3, None, Some(self.seq.next()))?;
        let bso = Bso::Good as u8;
        let t = meta.truncated_by(inner);
        w.put(&base_word(2, L2::of(inner), bso, t, self.session))?;
        // Low 32 bits on purpose: the field wraps, as on every ERSPAN sender.
        w.put(&((meta.unix_ns / TIMESTAMP_UNIT_NS) as u32).to_be_bytes())?;
        let p_ft: u16 = 1 << 15; // P = 1, FT = 0: an Ethernet frame.
        let hw = u16::from(self.hw_id.get()) << 4;
        let d = u16::from(direction_bit(meta.direction)) << 3;
        let gra = (Granularity::Micros100 as u16) << 1;
        w.put(&[0, 0])?; // SGT
        w.put(&(p_ft | hw | d | gra).to_be_bytes())?;
        Ok(w.written())
    }
}

/// VLAN and class of service of a mirrored frame, for the first header word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct L2 {
    vlan: Vlan,
    cos: Cos,
    tagged: bool,
}

impl L2 {
    fn of(frame: &[u8]) -> Self {
        // Bytes past the end read as zero: a short frame is simply untagged.
        let at = |i: usize| frame.get(i).copied().unwrap_or(0);
        let be16 = |i: usize| {
            let bytes = frame.get(i..i + 2).and_then(|b| b.try_into().ok());
            bytes.map_or(0, u16::from_be_bytes)
        };
        let (vlan, cos, tagged) = match be16(12) {
            0x8100 | 0x88a8 => {
                let tci = be16(14);
                (tci, (tci >> 13) as u8, true)
            }
            // IP precedence: the top 3 bits of the TOS or traffic class.
            0x0800 => (0, at(15) >> 5, false),
            0x86dd => (0, (at(14) & 0x0F) >> 1, false),
            _ => (0, 0, false),
        };
        Self {
            vlan: Vlan::from_bits(vlan),
            cos: Cos::from_bits(cos),
            tagged,
        }
    }
}

/// The first word, common to both types: `Ver|VLAN|COS|En or BSO|T|Session`.
fn base_word(version: u32, l2: L2, en_bso: u8, truncated: bool, session: SessionId) -> [u8; 4] {
    let word = version << 28
        | u32::from(l2.vlan.get()) << 16
        | u32::from(l2.cos.get()) << 13
        | u32::from(en_bso & 3) << 11
        | if truncated { FLAG_T } else { 0 }
        | u32::from(session.get());
    word.to_be_bytes()
}

/// Defines a two-bit header field as an enum whose four values all have a
/// meaning, so decoding it cannot fail.
macro_rules! two_bits {
    ($(#[$doc:meta])* $name:ident { $v0:ident, $v1:ident, $v2:ident, $v3:ident }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $v0 = 0,
            $v1 = 1,
            $v2 = 2,
            $v3 = 3,
        }

        impl $name {
            fn from_bits(bits: u32) -> Self {
                match bits & 3 {
                    0 => Self::$v0,
                    1 => Self::$v1,
                    2 => Self::$v2,
                    _ => Self::$v3,
                }
            }
        }
    };
}

two_bits! {
    /// Type II "En": how the original frame carried its VLAN.
    FrameEncap { Untagged, Isl, Dot1Q, TagInFrame }
}
two_bits! {
    /// Type III "BSO": the integrity of the original frame.
    Bso { Good, Short, Oversized, Bad }
}
two_bits! {
    /// Type III "Gra": the unit of the timestamp.
    Granularity { Micros100, Nanos100, Ieee1588, Custom }
}

impl Granularity {
    /// Nanoseconds per unit of a Type III stamp of this granularity, for
    /// the two that count from the Unix epoch in one 32-bit field.
    pub const fn unit_ns(self) -> Option<u64> {
        match self {
            Self::Micros100 => Some(TIMESTAMP_UNIT_NS),
            Self::Nanos100 => Some(100),
            // IEEE 1588 keeps its seconds in a platform subheader, and
            // "custom" is the sender's own: neither is read here.
            Self::Ieee1588 | Self::Custom => None,
        }
    }
}

/// The Unix time, in nanoseconds, of a Type III `timestamp` that wrapped
/// (only its low 32 bits are sent), taken as the one of its wraps closest to
/// `near_ns` (the receiver's clock): right while the sender's clock is
/// within half a wrap of it (2.5 days at the usual 100 µs unit, 3.5 minutes
/// at 100 ns). `None` for granularities that do not count from the epoch.
pub fn unix_ns_near(timestamp: u32, granularity: Granularity, near_ns: u64) -> Option<u64> {
    const WRAP: i128 = 1 << 32;
    let unit = i128::from(granularity.unit_ns()?);
    let near = i128::from(near_ns) / unit;
    let base = near - near.rem_euclid(WRAP) + i128::from(timestamp);
    let units = [base - WRAP, base, base + WRAP]
        .into_iter()
        .filter(|u| *u >= 0)
        .min_by_key(|u| (u - near).abs())?;
    u64::try_from(units * unit).ok()
}

/// The part of a decoded header that differs between the types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    TypeII {
        encap: FrameEncap,
        index: u32,
    },
    TypeIII {
        bso: Bso,
        /// Raw stamp, in units given by `granularity`.
        timestamp: u32,
        granularity: Granularity,
        sgt: u16,
        hw_id: HwId,
        direction: Direction,
    },
}

/// A decoded ERSPAN packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The GRE sequence number.
    pub seq: u32,
    pub session: SessionId,
    pub vlan: Vlan,
    pub cos: Cos,
    /// The sender cut the mirrored frame.
    pub truncated: bool,
    pub kind: Kind,
    /// The inner Ethernet frame, borrowed from the input.
    pub inner: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ErspanError {
    #[error(transparent)]
    Gre(#[from] GreError),
    #[error("GRE protocol {0:#06x} is not ERSPAN (0x88be or 0x22eb)")]
    Protocol(u16),
    #[error("ERSPAN Type I (no GRE sequence number) is not supported")]
    TypeI,
    #[error("ERSPAN header of {need} bytes, but {have} bytes follow GRE")]
    Short { need: usize, have: usize },
    #[error("ERSPAN version {version} under GRE protocol {proto:#06x}")]
    Version { proto: u16, version: u32 },
    #[error("ERSPAN Type III frame type {0} is not Ethernet")]
    FrameType(u16),
    #[error("inner frame of {0} bytes is shorter than an Ethernet header")]
    InnerTooShort(usize),
}

/// Decodes an ERSPAN II or III packet: the bytes after the outer IP header.
/// A Type III platform subheader is skipped.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, ErspanError> {
    let (gre, rest) = gre::parse(bytes)?;
    let expected = match gre.proto {
        PROTO_TYPE2 => 1,
        PROTO_TYPE3 => 2,
        other => return Err(ErspanError::Protocol(other)),
    };
    let seq = gre.seq.ok_or(ErspanError::TypeI)?;
    let short = |need| ErspanError::Short {
        need,
        have: rest.len(),
    };
    let (w0, after) = take::<4>(rest).ok_or(short(4))?;
    let w0 = u32::from_be_bytes(*w0);
    let version = w0 >> 28;
    if version != expected {
        return Err(ErspanError::Version {
            proto: gre.proto,
            version,
        });
    }
    let (kind, inner) = if version == 1 {
        let (w1, inner) = take::<4>(after).ok_or(short(8))?;
        let encap = FrameEncap::from_bits(w0 >> 11);
        let index = u32::from_be_bytes(*w1) & 0xF_FFFF;
        (Kind::TypeII { encap, index }, inner)
    } else {
        type3(w0, after)?
    };
    Ok(Decoded {
        seq,
        session: SessionId::from_bits(w0 as u16),
        vlan: Vlan::from_bits((w0 >> 16) as u16),
        cos: Cos::from_bits((w0 >> 13) as u8),
        truncated: w0 & FLAG_T != 0,
        kind,
        inner: ethernet(inner).ok_or(ErspanError::InnerTooShort(inner.len()))?,
    })
}

/// The Type III words after the first `w0`, and the optional platform
/// subheader (skipped: its layout is vendor-specific).
fn type3(w0: u32, after: &[u8]) -> Result<(Kind, &[u8]), ErspanError> {
    let short = |need| ErspanError::Short {
        need,
        have: after.len() + 4,
    };
    let (&[t0, t1, t2, t3, s0, s1, b0, b1], inner) = take::<8>(after).ok_or(short(12))?;
    let w2 = u16::from_be_bytes([b0, b1]);
    let ft = (w2 >> 10) & 0x1F;
    if ft != 0 {
        return Err(ErspanError::FrameType(ft));
    }
    let inner = match w2 & 1 {
        0 => inner,
        _ => take::<8>(inner).ok_or(short(20))?.1,
    };
    let kind = Kind::TypeIII {
        bso: Bso::from_bits(w0 >> 11),
        timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
        granularity: Granularity::from_bits(u32::from(w2 >> 1)),
        sgt: u16::from_be_bytes([s0, s1]),
        hw_id: HwId::from_bits((w2 >> 4) as u8),
        direction: direction_from_bit(w2 & 0x8 != 0),
    };
    Ok((kind, inner))
}

#[cfg(test)]
mod tests;
