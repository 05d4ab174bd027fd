//! Tunnel encapsulation codecs for the exporters and the collector: VXLAN,
//! GENEVE, GRE (transparent Ethernet bridging) and ERSPAN Types II and III.
//!
//! This module is pure: no sockets, no clocks, no allocation per packet.
//! Encoders write only the tunnel header into a buffer the caller owns, so an
//! exporter can send `[header, frame]` as two iovecs without copying the
//! mirrored frame. The kernel adds what lies outside: for VXLAN and GENEVE the
//! UDP socket adds IP and UDP, so the header is the UDP payload; for GRE and
//! ERSPAN a raw `IPPROTO_GRE` socket adds the IP header, so the header is what
//! follows it.
//!
//! Decoders take those same bytes and return the inner Ethernet frame as a
//! slice of the input plus typed metadata. They never panic: foreign, short
//! or garbled input is an error value, because a collector listens on the open
//! network.
//!
//! Written by hand because no maintained Rust crate encodes these tunnel
//! headers into caller-provided buffers (packet crates parse them, or build
//! whole owned packets); each format is a few fixed fields anyway.

pub mod erspan;
pub mod geneve;
pub mod gre;
pub mod vxlan;

use crate::model::{direction::Direction, record::IfIndex};

/// Length of an Ethernet II header: every decoder requires at least this much
/// inner frame, since the collector's output is Ethernet.
pub const ETH_HLEN: usize = 14;

/// The longest header any encoder here writes (GENEVE with the full 252
/// bytes of options), so a caller can keep one stack buffer for all of them.
pub const MAX_HEADER_LEN: usize = geneve::MAX_HEADER_LEN;

/// What the encoders need to know about one mirrored packet, besides its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketMeta<'a> {
    /// When the hook saw the packet, in nanoseconds since the Unix epoch
    /// (ERSPAN III carries it).
    pub unix_ns: u64,
    /// The hooked interface.
    pub ifindex: IfIndex,
    /// Which way the packet crossed the hooked interface.
    pub direction: Direction,
    /// Length of the packet on the wire, before any snaplen or MTU cut. The
    /// copy is truncated when the inner frame handed to the encoder is shorter.
    pub orig_len: u32,
    /// Pod identity, conventionally `namespace/name`; empty when unknown.
    /// GENEVE carries it; it is borrowed so no packet allocates.
    pub pod: &'a str,
}

impl PacketMeta<'_> {
    /// Whether `inner` is a cut copy of this packet.
    pub fn truncated_by(&self, inner: &[u8]) -> bool {
        (inner.len() as u64) < u64::from(self.orig_len)
    }
}

/// An encoder for one tunnel to one collector. It holds that tunnel's
/// configuration and state (GRE and ERSPAN sequence numbers).
pub trait Encapsulator {
    /// Bytes of header [`Encapsulator::write_header`] will write for `meta`,
    /// so the caller can cut the inner frame to the path MTU first.
    fn header_len(&self, meta: &PacketMeta<'_>) -> usize;

    /// Writes the tunnel header for `inner` (the frame bytes that will follow
    /// it, already cut if they had to be) at the start of `out`, and returns
    /// how many bytes it wrote, always [`Encapsulator::header_len`]. The frame
    /// is only read (ERSPAN takes VLAN and class of service from it), never
    /// copied. On error nothing is consumed, not even a sequence number.
    fn write_header(
        &mut self,
        meta: &PacketMeta<'_>,
        inner: &[u8],
        out: &mut [u8],
    ) -> Result<usize, EncapError>;
}

/// Why an encoder could not write a header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncapError {
    #[error("header needs {need} bytes but the buffer holds {have}")]
    BufferTooSmall { need: usize, have: usize },
}

/// A configuration value that does not fit its header field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field} {value} is out of range (at most {max})")]
pub struct RangeError {
    pub field: &'static str,
    pub value: u64,
    pub max: u64,
}

/// Defines a newtype for an unsigned header field narrower than its integer,
/// so an out-of-range value is rejected once, at configuration, with the
/// field's name, instead of being silently masked on every packet.
macro_rules! bounded {
    ($(#[$doc:meta])* $name:ident($repr:ty), bits = $bits:expr, field = $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name($repr);

        impl $name {
            /// The largest value the field holds.
            pub const MAX: $repr = (1 << $bits) - 1;

            pub fn new(value: $repr) -> Result<Self, $crate::export::encap::RangeError> {
                if value <= Self::MAX {
                    Ok(Self(value))
                } else {
                    Err($crate::export::encap::RangeError {
                        field: $field,
                        value: value.into(),
                        max: Self::MAX.into(),
                    })
                }
            }

            pub const fn get(self) -> $repr {
                self.0
            }

            /// Keeps the field's low bits: for decoders reading the wire.
            pub(crate) const fn from_bits(value: $repr) -> Self {
                Self(value & Self::MAX)
            }
        }

        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}
pub(crate) use bounded;

bounded! {
    /// A 24-bit virtual network identifier (VXLAN and GENEVE).
    Vni(u32), bits = 24, field = "VNI"
}

/// One-bit wire form of a direction, shared by ERSPAN III's D bit and the
/// GENEVE direction option: 0 is ingress, 1 egress, as in ERSPAN.
pub(crate) fn direction_bit(direction: Direction) -> u8 {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

pub(crate) fn direction_from_bit(bit: bool) -> Direction {
    if bit {
        Direction::Egress
    } else {
        Direction::Ingress
    }
}

/// Sequential writes into a buffer already checked to hold the header, so
/// encoders need no index arithmetic (and cannot panic if a length is wrong).
pub(crate) struct Cursor<'a> {
    rest: &'a mut [u8],
    written: usize,
}

impl<'a> Cursor<'a> {
    /// Takes the first `need` bytes of `out`, or says how short it is.
    pub(crate) fn new(out: &'a mut [u8], need: usize) -> Result<Self, EncapError> {
        let have = out.len();
        let rest = out
            .get_mut(..need)
            .ok_or(EncapError::BufferTooSmall { need, have })?;
        Ok(Self { rest, written: 0 })
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) -> Result<(), EncapError> {
        let rest = std::mem::take(&mut self.rest);
        let have = self.written + rest.len();
        let Some((head, tail)) = rest.split_at_mut_checked(bytes.len()) else {
            return Err(EncapError::BufferTooSmall {
                need: self.written + bytes.len(),
                have,
            });
        };
        head.copy_from_slice(bytes);
        self.rest = tail;
        self.written += bytes.len();
        Ok(())
    }

    pub(crate) fn zeros(&mut self, n: usize) -> Result<(), EncapError> {
        (0..n).try_for_each(|_| self.put(&[0]))
    }

    pub(crate) fn written(&self) -> usize {
        self.written
    }
}

/// Splits `N` bytes off the front of `bytes`, for decoders.
pub(crate) fn take<const N: usize>(bytes: &[u8]) -> Option<(&[u8; N], &[u8])> {
    bytes.split_first_chunk::<N>()
}

/// The inner frame, if it is long enough to be Ethernet.
pub(crate) fn ethernet(inner: &[u8]) -> Option<&[u8]> {
    (inner.len() >= ETH_HLEN).then_some(inner)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A small but real inner frame: Ethernet, IPv4 (TOS 0xb8), UDP, payload.
    pub fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0xb8]);
        f.extend((0..len.saturating_sub(16)).map(|i| i as u8));
        f.truncate(len.max(ETH_HLEN));
        f
    }

    pub fn meta(pod: &str) -> PacketMeta<'_> {
        PacketMeta {
            unix_ns: 1_700_000_000_123_456_789,
            ifindex: IfIndex(42),
            direction: Direction::Egress,
            orig_len: 1500,
            pod,
        }
    }

    /// Encodes `inner` behind `enc`'s header, checking the length contract.
    pub fn encode(enc: &mut dyn Encapsulator, meta: &PacketMeta<'_>, inner: &[u8]) -> Vec<u8> {
        let mut buf = [0u8; MAX_HEADER_LEN];
        let n = enc.write_header(meta, inner, &mut buf).expect("encode");
        assert_eq!(n, enc.header_len(meta));
        assert!(n <= MAX_HEADER_LEN);
        let mut out = buf[..n].to_vec();
        out.extend_from_slice(inner);
        out
    }

    /// Deterministic xorshift64, enough to shake decoders without a new dependency.
    pub struct XorShift(pub u64);

    impl XorShift {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn range_errors_name_the_field() {
        let e = Vni::new(1 << 24).unwrap_err();
        assert_eq!(e.field, "VNI");
        assert_eq!(
            e.to_string(),
            "VNI 16777216 is out of range (at most 16777215)"
        );
        assert_eq!(Vni::new(Vni::MAX).map(Vni::get), Ok(0xFF_FFFF));
    }

    #[test]
    fn short_buffers_are_errors_and_consume_nothing() {
        let inner = frame(100);
        let m = meta("ns/pod");
        let mut encoders = encoders();
        for (enc, _) in &mut encoders {
            let need = enc.header_len(&m);
            let mut small = vec![0u8; need - 1];
            assert_eq!(
                enc.write_header(&m, &inner, &mut small),
                Err(EncapError::BufferTooSmall {
                    need,
                    have: need - 1
                })
            );
        }
        // The failures consumed no sequence number.
        let bytes = encode(encoders[2].0.as_mut(), &m, &inner);
        assert_eq!(gre::decode(&bytes).unwrap().seq, Some(0));
    }

    /// Whether the decoder matching an encoder accepts some bytes.
    type Accepts = fn(&[u8]) -> bool;

    fn encoders() -> Vec<(Box<dyn Encapsulator>, Accepts)> {
        let vni = Vni::new(0xABCDE).unwrap();
        let session = erspan::SessionId::new(0x3FF).unwrap();
        let hw = erspan::HwId::new(5).unwrap();
        vec![
            (Box::new(vxlan::Vxlan::new(vni)), |b| {
                vxlan::decode(b).is_ok()
            }),
            (Box::new(geneve::Geneve::new(vni, &"n".repeat(300))), |b| {
                geneve::decode(b).is_ok()
            }),
            (
                Box::new(gre::Gre::new().with_key(gre::GreKey(7)).with_sequence()),
                |b| gre::decode(b).is_ok(),
            ),
            (Box::new(erspan::Erspan2::new(session)), |b| {
                erspan::decode(b).is_ok()
            }),
            (Box::new(erspan::Erspan3::new(session, hw)), |b| {
                erspan::decode(b).is_ok()
            }),
        ]
    }

    /// Every decoder must return (not panic) on any input: random bytes,
    /// valid packets cut at every length, and valid packets with flipped bits.
    #[test]
    fn decoders_never_panic() {
        fn all(bytes: &[u8]) {
            let _ = vxlan::decode(bytes);
            let _ = geneve::decode(bytes);
            let _ = gre::decode(bytes);
            let _ = gre::parse(bytes);
            let _ = erspan::decode(bytes);
        }
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let len = rng.below(320);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            all(&bytes);
        }
        let long_pod = "p".repeat(200);
        let m = meta(&long_pod);
        for (enc, _) in &mut encoders() {
            let valid = encode(enc.as_mut(), &m, &frame(64));
            for cut in 0..valid.len() {
                all(&valid[..cut]);
            }
            for _ in 0..5_000 {
                let mut garbled = valid.clone();
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(garbled.len());
                    garbled[i] ^= 1 << rng.below(8);
                }
                all(&garbled);
            }
        }
    }

    /// A valid packet cut anywhere inside its header or inner Ethernet header
    /// is rejected, never returned as a shorter frame.
    #[test]
    fn cut_headers_are_errors() {
        let m = meta("ns/pod");
        let inner = frame(ETH_HLEN);
        for (enc, accepts) in &mut encoders() {
            let valid = encode(enc.as_mut(), &m, &inner);
            assert!(accepts(&valid));
            for cut in 0..valid.len() {
                assert!(!accepts(&valid[..cut]), "a {cut}-byte prefix decoded");
            }
        }
    }
}
