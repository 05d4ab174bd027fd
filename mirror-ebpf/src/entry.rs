//! Entry programs for an interface in another network namespace (a pod's):
//! a copy of this small object per namespace, whose `MIRROR_NS_SELF` the
//! agent sets to that namespace's cookie (a map, not a global, so that one
//! loader serves every copy). Each notes the namespace and tail-calls the
//! mirror program of
//! `main.rs`, which is loaded and verified once: it takes the verifier far
//! longer than is affordable per pod, and this object parses and verifies
//! in a moment. A failed tail call (no mirror program yet) only leaves the
//! packet unmirrored; like the mirror programs, these always hand the packet
//! on unchanged.
#![no_std]
#![no_main]

mod ns;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    macros::{classifier, map},
    maps::{Array, ProgramArray},
    programs::TcContext,
};
use mirror_common::{MAIN_EGRESS, MAIN_INGRESS};

/// This copy's namespace (its cookie), at index 0: each copy's own map.
#[map(name = "MIRROR_NS_SELF")]
static NS_SELF: Array<u64> = Array::with_max_entries(1, 0);

/// The mirror programs, at `MAIN_INGRESS` and `MAIN_EGRESS`, set by the agent.
#[map(name = "MIRROR_MAINS")]
static MAINS: ProgramArray = ProgramArray::with_max_entries(2, 0);

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
    let (Some(scratch), Some(cookie)) = (ns::NS_SCRATCH.get_ptr_mut(0), NS_SELF.get(0)) else {
        return;
    };
    // SAFETY: per-CPU value; the tail call runs on this CPU right after,
    // with nothing in between.
    unsafe {
        (*scratch).netns_cookie = *cookie;
        (*scratch).set = 1;
        MAINS.tail_call(ctx, main);
        // Reached only if the tail call failed: take the note back.
        (*scratch).set = 0;
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
