//! A sidecar's memory, shared out from its container's limit: the ring
//! buffer and the outputs' queues are the two large allocations the agent
//! makes, so both are sized from the limit and the rest (the binary, the
//! batches in flight, the runtime) keeps the remainder.

use super::values::RingSize;

/// Smallest ring a budget gives: room for a few whole 64 KiB GSO packets.
pub const MIN_RING: u32 = 256 << 10;
/// Largest ring a budget gives, as `run`'s default: a pod's own traffic
/// needs no more than a node's.
pub const MAX_RING: u32 = 32 << 20;
/// The ring without a limit to size it from (memory.max is `max`).
pub const UNLIMITED_RING: RingSize = RingSize::of(16 << 20);
/// The queues' bound without a limit, as `attach`'s default.
pub const UNLIMITED_QUEUE: usize = 64 << 20;

/// What a memory limit allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    pub ring: RingSize,
    /// Bound of each output's queue in bytes.
    pub queue_bytes: usize,
}

impl MemoryBudget {
    /// A quarter of `limit` for the ring (charged to the container's memory
    /// cgroup when the map is made; its pages count once there, though the
    /// agent maps them twice), rounded down to a power of two within
    /// [`MIN_RING`, `MAX_RING`], and a quarter for the queues; the other half
    /// is left for the agent itself (about 20 MiB) and its batches.
    /// `None`: no limit.
    pub fn of(limit: Option<u64>) -> Self {
        let Some(limit) = limit else {
            return Self {
                ring: UNLIMITED_RING,
                queue_bytes: UNLIMITED_QUEUE,
            };
        };
        let quarter = limit / 4;
        let ring = if quarter < u64::from(MIN_RING) {
            MIN_RING
        } else {
            // The largest power of two not above the quarter.
            let floor = 1u64 << (63 - quarter.leading_zeros());
            u32::try_from(floor).unwrap_or(MAX_RING).min(MAX_RING)
        };
        Self {
            ring: RingSize::of(ring),
            queue_bytes: usize::try_from(quarter)
                .unwrap_or(UNLIMITED_QUEUE)
                .clamp(1 << 20, UNLIMITED_QUEUE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_quarter_of_the_limit_rounded_down_to_a_power_of_two() {
        let b = MemoryBudget::of(Some(64 * MIB));
        assert_eq!((b.ring.get(), b.queue_bytes), (16 << 20, 16 << 20));
        // 100 MiB: a quarter is 25 MiB, the ring 16 MiB, the queues 25 MiB.
        let b = MemoryBudget::of(Some(100 * MIB));
        assert_eq!((b.ring.get(), b.queue_bytes), (16 << 20, 25 << 20));
    }

    #[test]
    fn the_ring_stays_within_its_bounds() {
        assert_eq!(MemoryBudget::of(Some(MIB)).ring.get(), MIN_RING);
        assert_eq!(MemoryBudget::of(Some(64 << 30)).ring.get(), MAX_RING);
        assert_eq!(
            MemoryBudget::of(Some(64 << 30)).queue_bytes,
            UNLIMITED_QUEUE
        );
        assert_eq!(MemoryBudget::of(Some(MIB)).queue_bytes, 1 << 20);
    }

    #[test]
    fn no_limit_gives_the_defaults() {
        let b = MemoryBudget::of(None);
        assert_eq!((b.ring, b.queue_bytes), (UNLIMITED_RING, UNLIMITED_QUEUE));
    }

    #[test]
    fn the_ring_and_queues_fit_in_half_the_limit() {
        for limit in [24 * MIB, 48 * MIB, 64 * MIB, 96 * MIB, 128 * MIB, 200 * MIB] {
            let b = MemoryBudget::of(Some(limit));
            assert!(
                u64::from(b.ring.get()) + b.queue_bytes as u64 <= limit / 2,
                "{limit}: {b:?}"
            );
        }
    }
}
