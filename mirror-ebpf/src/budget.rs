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
//! for a whole burst's time) is moved up to `now` by a plain store, which
//! can overwrite one concurrent charge per other CPU: at most that many
//! packets more each time the bucket fills. Under a sustained flood the
//! bucket never fills and only the first bound applies.

use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, macros::map, maps::Array};
use mirror_common::{Bucket, Budget, MAX_POLICIES};

#[map(name = "MIRROR_BUDGETS")]
static BUDGETS: Array<Budget> = Array::with_max_entries(MAX_POLICIES, 0);

const NS_PER_SEC: u64 = 1_000_000_000;

/// Whether policy `policy_id`'s budget lets a packet of `len` bytes be
/// copied; if so, it is charged for it.
#[inline(always)]
pub fn allows(policy_id: u32, len: u32) -> bool {
    let Some(budget) = BUDGETS.get_ptr_mut(policy_id) else {
        return true;
    };
    // SAFETY: a map value, valid for the whole program run; the agent
    // rewrites it whole, and a torn read only misjudges one packet.
    if unsafe { core::ptr::read_volatile(&(*budget).limited) } == 0 {
        return true;
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
        return false;
    };
    let Some(b) = room(bytes, u64::from(len), now) else {
        return false;
    };
    p.charge(now);
    b.charge(now);
    true
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
            // A full bucket: its time moves up to now (see the module note).
            // SAFETY: `tat` points into a map value (see `allows`), 8-aligned
            // (`Bucket` is `#[repr(C)]` of u64s at 8-byte offsets in `Budget`).
            // An aligned 8-byte store is single-copy atomic in BPF.
            unsafe { core::ptr::write_volatile(self.tat, now) };
        }
        add(self.tat, self.ns);
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
    // SAFETY: as in `allows`.
    let (rate, depth, tat) = unsafe {
        (
            core::ptr::read_volatile(&(*bucket).rate),
            core::ptr::read_volatile(&(*bucket).depth_ns),
            core::ptr::addr_of_mut!((*bucket).tat_ns),
        )
    };
    if rate == 0 {
        return Some(Charge {
            tat,
            was: now,
            ns: 0,
        });
    }
    // Rounded up: rounding never lets more through than the rate.
    let ns = (cost * NS_PER_SEC + rate - 1) / rate;
    // SAFETY: as in `Charge::charge`; an aligned 8-byte load is
    // single-copy atomic in BPF (LLVM's generic CPU selects no atomic load).
    let was = unsafe { core::ptr::read_volatile(tat) };
    let start = if was < now { now } else { was };
    (start + ns <= now + depth).then_some(Charge { tat, was, ns })
}
