//! Which interface a packet is on, and its config. Interfaces in the
//! agent's own namespace are found by ifindex in an array, which the
//! verifier turns into a bounds check and an add (a hash lookup is a
//! call that hashes the key: a quarter of what the idle hook costs);
//! others, and indexes beyond the array, by namespace and index in the hash.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use mirror_common::{CONFIG_HERE_SLOTS, IfaceConfig, IfaceKey, MAX_INTERFACES};

use crate::ns;

/// Every interface's config (the agent's record of what it hooks).
#[map(name = "MIRROR_CONFIG")]
static CONFIG: HashMap<IfaceKey, IfaceConfig> = HashMap::with_max_entries(MAX_INTERFACES, 0);

/// The same config for interfaces of the agent's own namespace, at their
/// ifindex; an all-zero entry mirrors no direction (see
/// `mirror_common::MAP_CONFIG_HERE`).
#[map(name = "MIRROR_CONFIG_HERE")]
static CONFIG_HERE: Array<IfaceConfig> = Array::with_max_entries(CONFIG_HERE_SLOTS, 0);

/// The agent's own network namespace (its cookie), set at load time
/// (`mirror_common::GLOBAL_NETNS_COOKIE`): that of the interfaces these
/// programs are attached to directly.
#[unsafe(no_mangle)]
static NETNS_COOKIE: u64 = 0;

/// The config of the interface `ifindex` of the packet's device, and the
/// cookie of that device's namespace; `None` if it has none.
#[inline(always)]
pub fn lookup(ifindex: u32) -> Option<(&'static IfaceConfig, u64)> {
    if let Some(cookie) = entry_netns() {
        let key = IfaceKey {
            netns_cookie: cookie,
            ifindex,
            _pad: 0,
        };
        // SAFETY: the value is only read; the agent replaces entries whole.
        return unsafe { CONFIG.get(&key) }.map(|c| (c, cookie));
    }
    // SAFETY: reading a global; volatile so it is not folded to its initial value.
    let own = unsafe { core::ptr::read_volatile(&NETNS_COOKIE) };
    if let Some(config) = CONFIG_HERE.get(ifindex) {
        return Some((config, own));
    }
    let key = IfaceKey {
        netns_cookie: own,
        ifindex,
        _pad: 0,
    };
    // SAFETY: as above.
    unsafe { CONFIG.get(&key) }.map(|c| (c, own))
}

/// The namespace noted by an entry program that tail-called us
/// (`entry.rs`), taken; `None` when we were attached directly.
#[inline(always)]
fn entry_netns() -> Option<u64> {
    let scratch = ns::NS_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU value; the entry program set it on this CPU just
    // before its tail call, with nothing in between.
    unsafe {
        if (*scratch).set == 0 {
            return None;
        }
        (*scratch).set = 0;
        Some((*scratch).netns_cookie)
    }
}
