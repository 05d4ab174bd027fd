//! The per-CPU slot through which an entry program of another namespace
//! (`entry.rs`) tells the mirror program (`main.rs`) the namespace of the
//! packet's device. A TC program cannot learn its device's namespace itself
//! (`bpf_get_netns_cookie` gives the socket's, which a received packet
//! lacks), and an ifindex alone repeats across namespaces.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use mirror_common::NsScratch;

/// See `mirror_common::NsScratch`.
#[map(name = "MIRROR_NS_SCRATCH")]
pub static NS_SCRATCH: PerCpuArray<NsScratch> = PerCpuArray::with_max_entries(1, 0);
