//! VXLAN (RFC 7348): an 8-byte header, the I flag and a 24-bit VNI, carried
//! as the payload of UDP port 4789.
//!
//! ```text
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

use super::{Cursor, EncapError, Encapsulator, PacketMeta, Vni, ethernet, take};

/// The IANA port for VXLAN, which Linux's VXLAN device and Wireshark expect.
pub const UDP_PORT: u16 = 4789;
pub const HEADER_LEN: usize = 8;
/// The "VNI is valid" flag, the only flag RFC 7348 defines.
const FLAG_I: u8 = 0x08;

/// Encoder for one VXLAN tunnel.
#[derive(Clone, Copy, Debug)]
pub struct Vxlan {
    vni: Vni,
}

impl Vxlan {
    pub fn new(vni: Vni) -> Self {
        Self { vni }
    }
}

impl Encapsulator for Vxlan {
    fn header_len(&self, _: &PacketMeta<'_>) -> usize {
        HEADER_LEN
    }

    fn write_header(
        &mut self,
        _: &PacketMeta<'_>,
        _: &[u8],
        out: &mut [u8],
    ) -> Result<usize, EncapError> {
        let mut w = Cursor::new(out, HEADER_LEN)?;
        w.put(&[FLAG_I, 0, 0, 0])?;
        w.put(&(self.vni.get() << 8).to_be_bytes())?;
        Ok(w.written())
    }
}

/// A decoded VXLAN packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded<'a> {
    pub vni: Vni,
    /// The inner Ethernet frame, borrowed from the input.
    pub inner: &'a [u8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VxlanError {
    #[error("VXLAN packet of {0} bytes is shorter than its 8-byte header")]
    Short(usize),
    #[error("VXLAN header has no I flag (flags {0:#04x}), so its VNI is not valid")]
    NoVni(u8),
    #[error("inner frame of {0} bytes is shorter than an Ethernet header")]
    InnerTooShort(usize),
}

/// Decodes a UDP payload. Reserved bits are ignored, as RFC 7348 requires of
/// a receiver.
pub fn decode(payload: &[u8]) -> Result<Decoded<'_>, VxlanError> {
    let (h, rest) = take::<HEADER_LEN>(payload).ok_or(VxlanError::Short(payload.len()))?;
    let [flags, _, _, _, v0, v1, v2, _] = *h;
    if flags & FLAG_I == 0 {
        return Err(VxlanError::NoVni(flags));
    }
    Ok(Decoded {
        vni: Vni::from_bits(u32::from_be_bytes([0, v0, v1, v2])),
        inner: ethernet(rest).ok_or(VxlanError::InnerTooShort(rest.len()))?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{encode, frame, meta};
    use super::*;

    #[test]
    fn round_trip() {
        let vni = Vni::new(0x12_3456).unwrap();
        let inner = frame(80);
        let bytes = encode(&mut Vxlan::new(vni), &meta(""), &inner);
        assert_eq!(&bytes[..8], &[0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(decode(&bytes), Ok(Decoded { vni, inner: &inner }));
    }

    #[test]
    fn rejects_foreign_headers() {
        let mut bytes = encode(&mut Vxlan::new(Vni::new(1).unwrap()), &meta(""), &frame(60));
        assert_eq!(decode(&bytes[..7]), Err(VxlanError::Short(7)));
        assert_eq!(decode(&bytes[..20]), Err(VxlanError::InnerTooShort(12)));
        bytes[0] = 0x0c ^ FLAG_I;
        assert_eq!(decode(&bytes), Err(VxlanError::NoVni(0x04)));
    }
}
