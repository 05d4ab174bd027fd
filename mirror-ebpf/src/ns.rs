//! What the mirror programs (`main.rs`) and the entry programs of other
//! namespaces (`entry.rs`) share: the namespace a copy serves, and the
//! per-CPU slot through which an entry program tells the mirror program
//! the namespace of the packet's device.
//!
//! A TC program cannot learn its device's namespace itself
//! (`bpf_get_netns_cookie` gives the socket's, which a received packet
//! lacks), and an ifindex alone repeats across namespaces: so each copy is
//! loaded with its namespace's cookie as a read-only global.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use mirror_common::NsScratch;

/// Set by the agent at load time (`mirror_common::GLOBAL_NETNS_COOKIE`).
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;

/// See `mirror_common::NsScratch`.
#[map(name = "MIRROR_NS_SCRATCH")]
pub static NS_SCRATCH: PerCpuArray<NsScratch> = PerCpuArray::with_max_entries(1, 0);

/// The namespace this copy serves.
#[inline(always)]
pub fn own_cookie() -> u64 {
    // SAFETY: reading a global; volatile so it is not folded to its initial value.
    unsafe { core::ptr::read_volatile(&NETNS_COOKIE) }
}
