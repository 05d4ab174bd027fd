//! How the ring space is split among tenants: `--ring-size` is the node's
//! total, `--ring-slots` how many rings (tenant slots) it is split into,
//! each a power of two of at least [`RING_FLOOR`]. A total too small to
//! give every slot the floor makes fewer slots.

use std::{fmt, str::FromStr};

use mirror_common::RINGS;

use crate::model::values::RingSize;

/// The least a tenant's ring gets (unless the whole total is smaller):
/// room for a few hundred full-size frames, a few milliseconds of a
/// 10 Gb/s burst.
pub const RING_FLOOR: u32 = 1 << 20;
/// The size of a ring no slot uses: the kernel's least (a page).
pub const UNUSED_RING: u32 = 4096;

/// How many ring slots to split the ring space into: 1..=8 (1: one ring
/// shared by every tenant, as before rings were per tenant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingSlots(u32);

impl RingSlots {
    pub const ALL: Self = Self(RINGS);

    pub fn get(self) -> u32 {
        self.0
    }

    /// No more slots than `tenants` (at least one): `attach` and `sidecar`
    /// know their tenants (policies) from the start, and a single one then
    /// keeps the whole ring space, as before rings were per tenant.
    pub fn at_most(self, tenants: usize) -> Self {
        let tenants = u32::try_from(tenants).unwrap_or(u32::MAX).max(1);
        Self(self.0.min(tenants))
    }
}

impl FromStr for RingSlots {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: u32 = s
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number"))?;
        if (1..=RINGS).contains(&n) {
            Ok(Self(n))
        } else {
            Err(format!("must be from 1 to {RINGS}, not {n}"))
        }
    }
}

impl fmt::Display for RingSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The rings to make: the first `slots` of size `each`, the others unused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingLayout {
    slots: u32,
    each: u32,
}

impl RingLayout {
    pub fn new(total: RingSize, slots: RingSlots) -> Self {
        let total = total.get();
        let fit = (total / RING_FLOOR).max(1);
        let slots = slots.get().min(fit);
        // A power of two (the kernel's rule), so the sum stays within the total.
        let each = 1u32 << (total / slots).ilog2();
        Self { slots, each }
    }

    pub fn slots(self) -> u32 {
        self.slots
    }

    /// Bytes of all the slots' rings.
    pub fn total(self) -> u64 {
        u64::from(self.slots) * u64::from(self.each)
    }

    /// Each ring's size, index by index (`RINGS` of them).
    pub fn sizes(self) -> [u32; RINGS as usize] {
        std::array::from_fn(|i| {
            if (i as u32) < self.slots {
                self.each
            } else {
                UNUSED_RING
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(total: u32, slots: u32) -> (u32, u32) {
        let l = RingLayout::new(
            total.to_string().parse().expect("size"),
            slots.to_string().parse().expect("slots"),
        );
        (l.slots(), l.each)
    }

    #[test]
    fn the_total_is_split_evenly_in_powers_of_two() {
        assert_eq!(layout(64 << 20, 8), (8, 8 << 20));
        assert_eq!(layout(64 << 20, 1), (1, 64 << 20));
        // 64 MiB / 3 is not a power of two: 16 MiB each, 48 MiB in all.
        assert_eq!(layout(64 << 20, 3), (3, 16 << 20));
    }

    #[test]
    fn a_small_total_makes_fewer_slots_rather_than_go_below_the_floor() {
        assert_eq!(layout(4 << 20, 8), (4, 1 << 20));
        assert_eq!(layout(1 << 20, 8), (1, 1 << 20));
        // Smaller than the floor: one ring, all of it.
        assert_eq!(layout(65536, 8), (1, 65536));
    }

    #[test]
    fn unused_rings_take_a_page() {
        let l = RingLayout::new("8388608".parse().expect("size"), RingSlots(2));
        assert_eq!(l.sizes()[..3], [4 << 20, 4 << 20, UNUSED_RING]);
    }

    #[test]
    fn no_more_slots_than_tenants() {
        assert_eq!(RingSlots::ALL.at_most(1), RingSlots(1));
        assert_eq!(RingSlots::ALL.at_most(0), RingSlots(1));
        assert_eq!(RingSlots::ALL.at_most(3), RingSlots(3));
        assert_eq!(RingSlots(2).at_most(5), RingSlots(2));
    }

    #[test]
    fn slots_out_of_range_are_refused_by_name() {
        assert!("0".parse::<RingSlots>().is_err());
        assert!(
            "9".parse::<RingSlots>()
                .unwrap_err()
                .contains("from 1 to 8")
        );
        assert_eq!("8".parse::<RingSlots>(), Ok(RingSlots::ALL));
    }
}
