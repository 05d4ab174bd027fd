//! Ring-buffer records, read in place: a typed view over the bytes the hook
//! wrote, with the header checked once here.

use std::num::NonZeroU16;

use mirror_common::{FLAG_TRUNCATED, RECORD_HEADER_LEN, RecordHeader};

use crate::model::direction::Direction;

/// Kernel interface index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfIndex(pub u32);

/// The kernel's cookie for a network namespace: unique while the machine
/// runs, never reused, stable while the namespace lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetnsCookie(pub u64);

/// A hooked interface as the hook and its records name it: an index is only
/// unique within its network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IfaceId {
    pub netns: NetnsCookie,
    pub index: IfIndex,
}

impl IfaceId {
    /// The key of this interface in the kernel's config map.
    pub fn key(self) -> mirror_common::IfaceKey {
        mirror_common::IfaceKey {
            netns_cookie: self.netns.0,
            ifindex: self.index.0,
            _pad: 0,
        }
    }

    pub fn from_key(k: mirror_common::IfaceKey) -> Self {
        Self {
            netns: NetnsCookie(k.netns_cookie),
            index: IfIndex(k.ifindex),
        }
    }
}

/// Opaque policy id, chosen by the agent and carried by each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PolicyId(pub u32);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("record says {claimed} captured bytes but holds {held}")]
    Length { claimed: u32, held: usize },
    #[error("record has unknown direction {0}")]
    Direction(u32),
}

/// One mirrored packet, borrowed from the ring buffer.
#[derive(Debug)]
pub struct Record<'a> {
    /// `CLOCK_BOOTTIME` nanoseconds.
    pub boot_ns: u64,
    pub iface: IfaceId,
    pub direction: Direction,
    pub policy: PolicyId,
    pub orig_len: u32,
    pub truncated: bool,
    /// Payload bytes per wire segment of a GSO/GRO super-packet (`skb->gso_size`,
    /// the MSS for TCP); `None` for a packet that goes on the wire as it is.
    pub gso_size: Option<NonZeroU16>,
    pub data: &'a [u8],
}

impl<'a> Record<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RecordError> {
        let Some((head, rest)) = bytes.split_first_chunk::<RECORD_HEADER_LEN>() else {
            return Err(RecordError::Short(bytes.len()));
        };
        // SAFETY: RecordHeader is plain `#[repr(C)]` data of exactly this size,
        // and read_unaligned makes no alignment assumption.
        let h: RecordHeader = unsafe { head.as_ptr().cast::<RecordHeader>().read_unaligned() };
        // The reservation is a size class, so the record may hold more than captured.
        let data = rest.get(..h.cap_len as usize).ok_or(RecordError::Length {
            claimed: h.cap_len,
            held: rest.len(),
        })?;
        let direction =
            Direction::from_bits(h.direction).ok_or(RecordError::Direction(h.direction))?;
        Ok(Self {
            boot_ns: h.timestamp_ns,
            iface: IfaceId {
                netns: NetnsCookie(h.netns_cookie),
                index: IfIndex(h.ifindex),
            },
            direction,
            policy: PolicyId(h.policy_id),
            orig_len: h.orig_len,
            truncated: h.flags & FLAG_TRUNCATED != 0,
            // The kernel's gso_size is 16 bits wide; a wider value is not one.
            gso_size: u16::try_from(h.gso_size).ok().and_then(NonZeroU16::new),
            data,
        })
    }
}

/// Converts `CLOCK_BOOTTIME` stamps to wall-clock nanoseconds since the epoch.
/// The offset is taken once: both clocks advance together, and boottime also
/// counts suspend, so the only drift is a later settimeofday, which tcpdump
/// would not follow either.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    offset_ns: i128,
}

impl WallClock {
    pub fn now() -> Result<Self, nix::Error> {
        use nix::time::{ClockId, clock_gettime};
        let ns = |t: nix::sys::time::TimeSpec| {
            i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
        };
        let real = ns(clock_gettime(ClockId::CLOCK_REALTIME)?);
        let boot = ns(clock_gettime(ClockId::CLOCK_BOOTTIME)?);
        Ok(Self {
            offset_ns: real - boot,
        })
    }

    pub fn unix_ns(self, boot_ns: u64) -> u64 {
        u64::try_from(i128::from(boot_ns) + self.offset_ns).unwrap_or(0)
    }
}

/// A record's bytes as the hook writes them: the header, then `data`. For
/// the tests of every layer that reads records.
#[cfg(test)]
pub(crate) fn record_bytes(h: RecordHeader, data: &[u8]) -> Vec<u8> {
    // SAFETY: RecordHeader is plain `#[repr(C)]` data of exactly this size,
    // without padding (mirror-common asserts its size).
    let head: [u8; RECORD_HEADER_LEN] = unsafe { core::mem::transmute(h) };
    let mut v = head.to_vec();
    v.extend_from_slice(data);
    v
}

#[cfg(test)]
mod tests {
    use mirror_common::{DIR_EGRESS, DIR_INGRESS};

    use super::*;

    fn bytes(h: RecordHeader, data: &[u8]) -> Vec<u8> {
        record_bytes(h, data)
    }

    fn header(cap_len: u32, direction: u32) -> RecordHeader {
        RecordHeader {
            timestamp_ns: 5,
            netns_cookie: 4096,
            ifindex: 7,
            direction,
            policy_id: 3,
            orig_len: 100,
            cap_len,
            flags: FLAG_TRUNCATED,
            gso_size: 1448,
            gso_segs: 2,
        }
    }

    #[test]
    fn parses_and_ignores_class_padding() {
        let raw = bytes(header(3, DIR_EGRESS), &[1, 2, 3, 0, 0, 0]);
        let r = Record::parse(&raw).expect("valid record");
        assert_eq!(r.data, &[1, 2, 3]);
        assert_eq!(r.direction, Direction::Egress);
        assert_eq!(
            (r.iface, r.policy, r.orig_len),
            (
                IfaceId {
                    netns: NetnsCookie(4096),
                    index: IfIndex(7)
                },
                PolicyId(3),
                100
            )
        );
        assert!(r.truncated);
        assert_eq!(r.gso_size.map(NonZeroU16::get), Some(1448));
    }

    #[test]
    fn rejects_bad_records() {
        assert_eq!(Record::parse(&[0; 8]).err(), Some(RecordError::Short(8)));
        let raw = bytes(header(9, DIR_INGRESS), &[1]);
        assert!(matches!(
            Record::parse(&raw),
            Err(RecordError::Length { .. })
        ));
        let raw = bytes(header(0, 9), &[]);
        assert_eq!(Record::parse(&raw).err(), Some(RecordError::Direction(9)));
    }
}
