//! What the hook's prefilter maps hold for one policy, in the kernel's own
//! types; `policy::kfilter` compiles a policy's rules into it, and
//! [`super::hooks::Hooks::configure_policy`] writes it.

use mirror_common::{KernelRule, Lpm4, Lpm6, PolicyFilter};

/// Everything the maps get for one policy: its filter entry, its rules, and
/// the LPM entries of its CIDRs as (key prefix length, key, rule bit set).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PrefilterMaps {
    pub filter: PolicyFilter,
    pub rules: Vec<KernelRule>,
    pub src4: Vec<(u32, Lpm4, u64)>,
    pub dst4: Vec<(u32, Lpm4, u64)>,
    pub src6: Vec<(u32, Lpm6, u64)>,
    pub dst6: Vec<(u32, Lpm6, u64)>,
}
