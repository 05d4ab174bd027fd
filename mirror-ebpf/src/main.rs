//! TC hooks for the mirror. They read a packet, never change it, and always
//! hand it on (`TCX_NEXT`, which is `TC_ACT_UNSPEC` under netlink `cls_bpf`),
//! so production traffic is the same with or without them, whatever fails here.
#![no_std]
#![no_main]
// BPF's atomic add is reached through asm: the target has no atomic
// read-modify-write in `core` (see budget.rs).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod budget;
mod config;
mod filter;
mod ns;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_boot_ns, generated::bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{PerCpuArray, RingBuf, ring_buf::RingBufEntry},
    programs::TcContext,
};
use mirror_common::{
    Counters, DIR_EGRESS, DIR_INGRESS, FLAG_TRUNCATED, IfaceKey, MAX_INTERFACES, RINGS,
    RecordHeader, SIZE_CLASSES,
};

#[map(name = "MIRROR_COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_INTERFACES, 0);

/// The rings, one per tenant slot (`IfaceConfig::ring`), so that one
/// tenant's copies cannot take the space another's need. Their size here is
/// a placeholder: the agent sets each one's at load time (`--ring-size`
/// split over the slots it uses).
const RING_BYTES: u32 = 1 << 20;
#[map(name = "MIRROR_RECORDS_0")]
static RECORDS_0: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map(name = "MIRROR_RECORDS_1")]
static RECORDS_1: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map(name = "MIRROR_RECORDS_2")]
static RECORDS_2: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map(name = "MIRROR_RECORDS_3")]
static RECORDS_3: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map(name = "MIRROR_RECORDS_4")]
static RECORDS_4: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map(name = "MIRROR_RECORDS_5")]
static RECORDS_5: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map(name = "MIRROR_RECORDS_6")]
static RECORDS_6: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
#[map(name = "MIRROR_RECORDS_7")]
static RECORDS_7: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);
const _: () = assert!(RINGS == 8, "one static ring per slot");

/// A record's space in ring `ring`. Each arm names its map as a constant,
/// as the verifier requires of a reservation; past the last, the last.
#[inline(always)]
fn reserve<T: 'static>(ring: u32) -> Option<RingBufEntry<T>> {
    match ring {
        0 => RECORDS_0.reserve::<T>(0),
        1 => RECORDS_1.reserve::<T>(0),
        2 => RECORDS_2.reserve::<T>(0),
        3 => RECORDS_3.reserve::<T>(0),
        4 => RECORDS_4.reserve::<T>(0),
        5 => RECORDS_5.reserve::<T>(0),
        6 => RECORDS_6.reserve::<T>(0),
        _ => RECORDS_7.reserve::<T>(0),
    }
}

#[classifier]
pub fn mirror_ingress(ctx: TcContext) -> i32 {
    mirror(&ctx, DIR_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn mirror_egress(ctx: TcContext) -> i32 {
    mirror(&ctx, DIR_EGRESS);
    TC_ACT_UNSPEC
}

/// One ring-buffer record of a given capture class: header, then `N` bytes.
#[repr(C)]
struct Record<const N: usize> {
    header: RecordHeader,
    data: [u8; N],
}

#[inline(always)]
fn mirror(ctx: &TcContext, direction: u32) {
    // SAFETY: the context pointer is valid for the whole program run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some((config, netns_cookie)) = config::lookup(ifindex) else {
        return;
    };
    let key = IfaceKey {
        netns_cookie,
        ifindex,
        _pad: 0,
    };
    if config.directions & direction == 0 {
        return;
    }
    let Some(counters) = COUNTERS.get_ptr_mut(config.counter_slot) else {
        return;
    };
    // SAFETY: per-CPU value; this program cannot be re-entered on this CPU.
    let counters = unsafe { &mut *counters };
    // SAFETY: the context pointer is valid for the whole program run.
    let mark = unsafe { (*ctx.skb.skb).mark };
    if config.skip_mask != 0 && mark & config.skip_mask == config.skip_mark {
        counters.own_traffic += 1;
        return;
    }
    let len = ctx.len();
    counters.seen_packets += 1;
    counters.seen_bytes += u64::from(len);

    if !filter::passes(ctx, config.policy_id) {
        counters.filtered += 1;
        return;
    }

    if config.sample_every > 1 {
        // SAFETY: helper with no arguments.
        let draw = unsafe { bpf_get_prandom_u32() };
        if draw % config.sample_every != 0 {
            counters.sampled_out += 1;
            return;
        }
    }

    // After sampling and the prefilter, so neither spends the budget; before
    // the reservation, so what is over it takes no ring space.
    let budget::Verdict::Passed { now } = budget::check(config.policy_id, len) else {
        counters.rate_limited += 1;
        return;
    };

    let cap = u64::from(if len < config.snaplen {
        len
    } else {
        config.snaplen
    });
    let out = Out {
        ctx,
        counters,
        key,
        direction,
        policy_id: config.policy_id,
        ring: config.ring,
        len,
        cap,
        now,
    };
    // The smallest class that holds `cap` bytes, one branch per class: a
    // reservation's size is in its type (`Record<N>`, a constant for the
    // verifier), so the classes are unrolled, not looped over.
    macro_rules! classes {
        ($($i:literal),*) => {
            // Every class is listed, each once and in order.
            const _: () = {
                let listed = [$($i),*];
                assert!(listed.len() == SIZE_CLASSES.len());
                let mut i = 0;
                while i < listed.len() {
                    assert!(listed[i] == i);
                    i += 1;
                }
            };
            $(
                if cap <= const { SIZE_CLASSES[$i] as u64 } {
                    return out.emit::<{ SIZE_CLASSES[$i] as usize }>();
                }
            )*
        };
    }
    classes!(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);
}

struct Out<'a> {
    ctx: &'a TcContext,
    counters: &'a mut Counters,
    key: IfaceKey,
    direction: u32,
    policy_id: u32,
    ring: u32,
    len: u32,
    cap: u64,
    /// The clock as the budget read it, or 0 if it was not read.
    now: u64,
}

impl Out<'_> {
    #[inline(always)]
    fn emit<const N: usize>(self) {
        let Some(mut entry) = reserve::<Record<N>>(self.ring) else {
            self.counters.ring_full += 1;
            return;
        };
        let record = entry.as_mut_ptr();
        // Bound the length here, on the very register passed to the helper:
        // LLVM otherwise compares a zero-extended copy and the verifier loses
        // the bound (see docs/toolchain.md). The volatile read keeps LLVM from
        // reusing what it knows from the class choice above.
        // SAFETY: reading a local.
        let cap = unsafe { core::ptr::read_volatile(&self.cap) };
        if cap > 0 {
            if cap > N as u64 {
                entry.discard(0);
                return;
            }
            // SAFETY: `data` has N bytes and 0 < cap <= N.
            let rc = unsafe {
                bpf_skb_load_bytes(
                    self.ctx.skb.skb as *const _,
                    0,
                    core::ptr::addr_of_mut!((*record).data).cast(),
                    cap as u32,
                )
            };
            if rc != 0 {
                self.counters.load_failed += 1;
                entry.discard(0);
                return;
            }
        }
        let truncated = if cap < u64::from(self.len) {
            FLAG_TRUNCATED
        } else {
            0
        };
        // SAFETY: the context pointer is valid for the whole program run.
        let (gso_size, gso_segs) =
            unsafe { ((*self.ctx.skb.skb).gso_size, (*self.ctx.skb.skb).gso_segs) };
        // SAFETY: the reservation is large enough for the header.
        unsafe {
            core::ptr::addr_of_mut!((*record).header).write(RecordHeader {
                // One clock read per packet: the budget's if it took one.
                timestamp_ns: if self.now != 0 {
                    self.now
                } else {
                    bpf_ktime_get_boot_ns()
                },
                netns_cookie: self.key.netns_cookie,
                ifindex: self.key.ifindex,
                direction: self.direction,
                policy_id: self.policy_id,
                orig_len: self.len,
                cap_len: cap as u32,
                flags: truncated,
                gso_size,
                gso_segs,
            });
        }
        self.counters.mirrored_packets += 1;
        self.counters.mirrored_bytes += u64::from(self.len);
        if truncated != 0 {
            self.counters.truncated += 1;
        }
        entry.submit(0);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
