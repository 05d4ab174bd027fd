//! Per-policy budgets: token buckets for packets and bytes, checked before a
//! copy takes ring space (see `mirror_common::Budget` for the arithmetic).
//!
//! The buckets are shared by every CPU, and BPF offers a fetching atomic
//! (or a compare-and-swap) only from Linux 5.12 and LLVM's `v3` CPU; this
//! uses only what every kernel with a ring buffer has: plain loads, plain
//! stores and the non-fetching atomic add. A packet passes when the bucket
//! as read has room, and is then charged with an atomic add, so charges are
//! never lost while the bucket is draining; but another CPU may pass on the
//! same read before the charge lands. That overshoot does not accumulate
//! (every later check sees every charge): at any moment at most one packet
//! per other CPU is beyond the limit. A bucket that is full (nothing charged
//! for a whole burst's time) is moved up to `now` plus the charge by a plain
//! store, which can overwrite one concurrent charge per other CPU: at most
//! that many packets more each time the bucket fills. Under a sustained
//! flood the bucket never fills and only the first bound applies.
//!
//! The cost of a packet is a multiplication by the agent's precomputed
//! nanoseconds per unit, not a division, and a budget that never runs out
//! (its bucket full at every packet) costs a clock read, which the record's
//! timestamp then reuses, and one store per limited dimension.

use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, macros::map, maps::Array};
use mirror_common::{BUDGET_UNIT_SHIFT, Bucket, Budget, MAX_POLICIES};

#[map(name = "MIRROR_BUDGETS")]
static BUDGETS: Array<Budget> = Array::with_max_entries(MAX_POLICIES, 0);

/// What a budget says of a packet.
pub enum Verdict {
    /// Over the budget: not copied.
    Over,
    /// Copied; the clock as read for the check, or 0 if the policy has no
    /// budget and so none was read.
    Passed { now: u64 },
}

/// Whether policy `policy_id`'s budget lets a packet of `len` bytes be
/// copied; if so, it is charged for it.
#[inline(always)]
pub fn check(policy_id: u32, len: u32) -> Verdict {
    let Some(budget) = BUDGETS.get_ptr_mut(policy_id) else {
        return Verdict::Passed { now: 0 };
    };
    // SAFETY: a map value, valid for the whole program run; the agent
    // rewrites it whole, and a torn read only misjudges one packet.
    if unsafe { core::ptr::read_volatile(&(*budget).limited) } == 0 {
        return Verdict::Passed { now: 0 };
    }
    // SAFETY: helper with no arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: fields of the map value above.
    let (packets, bytes) = unsafe {
        (
            core::ptr::addr_of_mut!((*budget).packets),
            core::ptr::addr_of_mut!((*budget).bytes),
        )
    };
    let Some(p) = room(packets, 1, now) else {
        return Verdict::Over;
    };
    let Some(b) = room(bytes, u64::from(len), now) else {
        return Verdict::Over;
    };
    p.charge(now);
    b.charge(now);
    Verdict::Passed { now }
}

/// A charge the bucket has room for.
struct Charge {
    tat: *mut u64,
    /// The arrival time as read.
    was: u64,
    ns: u64,
}

impl Charge {
    #[inline(always)]
    fn charge(self, now: u64) {
        if self.ns == 0 {
            return;
        }
        if self.was < now {
            // A full bucket: its time moves up to now, charged in the same
            // store (see the module note).
            // SAFETY: `tat` points into a map value (see `check`), 8-aligned
            // (`Bucket` is `#[repr(C)]` of u64s at 8-byte offsets in `Budget`).
            // An aligned 8-byte store is single-copy atomic in BPF.
            unsafe { core::ptr::write_volatile(self.tat, now + self.ns) };
        } else {
            add(self.tat, self.ns);
        }
    }
}

/// BPF's atomic add without fetch (`BPF_ATOMIC | BPF_ADD`, once `XADD`),
/// which every kernel with a ring buffer has; `core` offers no atomic
/// read-modify-write on this target (its `atomic-cas` is off).
#[inline(always)]
fn add(at: *mut u64, value: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: `at` is an 8-aligned u64 in a map value (see `Charge::charge`);
    // the instruction touches nothing else.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({at} + 0) += {value}",
            at = in(reg) at,
            value = in(reg) value,
            options(nostack),
        );
    }
    #[cfg(not(target_arch = "bpf"))]
    let _ = (at, value);
}

/// The charge for `cost` units, if `bucket` has room for it; an unlimited
/// dimension has room for anything, at no charge.
#[inline(always)]
fn room(bucket: *mut Bucket, cost: u64, now: u64) -> Option<Charge> {
    // SAFETY: as in `check`.
    let (per_unit, burst, depth, tat) = unsafe {
        (
            core::ptr::read_volatile(&(*bucket).ns_per_unit),
            core::ptr::read_volatile(&(*bucket).burst),
            core::ptr::read_volatile(&(*bucket).depth_ns),
            core::ptr::addr_of_mut!((*bucket).tat_ns),
        )
    };
    if per_unit == 0 {
        return Some(Charge {
            tat,
            was: now,
            ns: 0,
        });
    }
    // More than the whole burst never fits; refusing it here also keeps
    // the product below within 64 bits (see `Bucket::ns_per_unit`).
    if cost > burst {
        return None;
    }
    // Rounded up: rounding never lets more through than the rate.
    let ns = (cost * per_unit + (1 << BUDGET_UNIT_SHIFT) - 1) >> BUDGET_UNIT_SHIFT;
    // SAFETY: as in `Charge::charge`; an aligned 8-byte load is
    // single-copy atomic in BPF (LLVM's generic CPU selects no atomic load).
    let was = unsafe { core::ptr::read_volatile(tat) };
    let start = if was < now { now } else { was };
    (start + ns <= now + depth).then_some(Charge { tat, was, ns })
}
