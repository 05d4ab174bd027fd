//! TC hooks for the mirror. They read a packet, never change it, and always
//! hand it on (`TCX_NEXT`, which is `TC_ACT_UNSPEC` under netlink `cls_bpf`),
//! so production traffic is the same with or without them, whatever fails here.
#![no_std]
#![no_main]

mod filter;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_boot_ns, generated::bpf_skb_load_bytes},
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray, ProgramArray, RingBuf},
    programs::TcContext,
};
use mirror_common::{
    Counters, DEFAULT_RING_BYTES, DIR_EGRESS, DIR_INGRESS, FLAG_TRUNCATED, IfaceConfig, IfaceKey,
    MAIN_EGRESS, MAIN_INGRESS, MAX_INTERFACES, NsScratch, RecordHeader,
};

#[map(name = "MIRROR_CONFIG")]
static CONFIG: HashMap<IfaceKey, IfaceConfig> = HashMap::with_max_entries(MAX_INTERFACES, 0);

#[map(name = "MIRROR_COUNTERS")]
static COUNTERS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_INTERFACES, 0);

/// The network namespace (its cookie) this copy of the programs serves, set
/// by the agent at load time (`mirror_common::GLOBAL_NETNS_COOKIE`). Each
/// namespace with hooked interfaces gets its own copy of the entry
/// programs, sharing the maps: a TC program cannot learn its device's
/// namespace itself (`bpf_get_netns_cookie` gives the socket's, which a
/// received packet lacks), and an ifindex alone repeats across namespaces.
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;

#[map(name = "MIRROR_NS_SCRATCH")]
static NS_SCRATCH: PerCpuArray<NsScratch> = PerCpuArray::with_max_entries(1, 0);

/// The mirror programs, at `MAIN_INGRESS` and `MAIN_EGRESS`, for the entry
/// programs of other namespaces to tail-call.
#[map(name = "MIRROR_MAINS")]
static MAINS: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// The agent resizes this at load time (`--ring-size`).
#[map(name = "MIRROR_RECORDS")]
static RECORDS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

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

/// Entry programs for a pod's namespace: note the namespace, then run the
/// mirror program. A failed tail call (no mirror program yet) only leaves
/// the packet unmirrored.
#[classifier]
pub fn mirror_ns_ingress(ctx: TcContext) -> i32 {
    enter(&ctx, MAIN_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn mirror_ns_egress(ctx: TcContext) -> i32 {
    enter(&ctx, MAIN_EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn enter(ctx: &TcContext, main: u32) {
    let Some(scratch) = NS_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value; the tail call runs on this CPU right after,
    // with nothing in between. The global is read volatile so it is not
    // folded to its initial value.
    unsafe {
        (*scratch).netns_cookie = core::ptr::read_volatile(&NETNS_COOKIE);
        (*scratch).set = 1;
        MAINS.tail_call(ctx, main);
        // Reached only if the tail call failed: take the note back.
        (*scratch).set = 0;
    }
}

/// The namespace of the packet's device: noted by an entry program that
/// tail-called us, else our own.
#[inline(always)]
fn netns_cookie() -> u64 {
    if let Some(scratch) = NS_SCRATCH.get_ptr_mut(0) {
        // SAFETY: per-CPU value; see `enter`.
        unsafe {
            if (*scratch).set != 0 {
                (*scratch).set = 0;
                return (*scratch).netns_cookie;
            }
        }
    }
    // SAFETY: reading a global; volatile so it is not folded to its initial value.
    unsafe { core::ptr::read_volatile(&NETNS_COOKIE) }
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
    let netns_cookie = netns_cookie();
    let key = IfaceKey {
        netns_cookie,
        ifindex,
        _pad: 0,
    };
    // SAFETY: the value is only read; the agent replaces entries whole.
    let Some(config) = (unsafe { CONFIG.get(&key) }) else {
        return;
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
        len,
        cap,
    };
    // The smallest class that holds `cap` bytes (classes as mirror_common::SIZE_CLASSES).
    macro_rules! classes {
        ($($n:literal),*) => {
            $( if cap <= $n { return out.emit::<$n>(); } )*
        };
    }
    classes!(
        64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144
    );
}

struct Out<'a> {
    ctx: &'a TcContext,
    counters: &'a mut Counters,
    key: IfaceKey,
    direction: u32,
    policy_id: u32,
    len: u32,
    cap: u64,
}

impl Out<'_> {
    #[inline(always)]
    fn emit<const N: usize>(self) {
        let Some(mut entry) = RECORDS.reserve::<Record<N>>(0) else {
            self.counters.ring_full += 1;
            return;
        };
        let record = entry.as_mut_ptr();
        // Bound the length here, on the very register passed to the helper:
        // LLVM otherwise compares a zero-extended copy and the verifier loses
        // the bound (see TOOLCHAIN.md). The volatile read keeps LLVM from
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
        // SAFETY: the reservation is large enough for the header.
        unsafe {
            core::ptr::addr_of_mut!((*record).header).write(RecordHeader {
                timestamp_ns: bpf_ktime_get_boot_ns(),
                netns_cookie: self.key.netns_cookie,
                ifindex: self.key.ifindex,
                direction: self.direction,
                policy_id: self.policy_id,
                orig_len: self.len,
                cap_len: cap as u32,
                flags: truncated,
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
