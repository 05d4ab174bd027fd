//! What the agent writes in the maps (interface config, policy
//! prefilters) and reads from them (counters, the ring).

use std::collections::BTreeSet;

use aya::{
    Pod,
    maps::{
        Array, HashMap, PerCpuArray, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
    },
};
use mirror_common::{
    Counters, IfaceConfig, IfaceKey, MAP_CONFIG, MAP_COUNTERS, MAP_LPM_DST4, MAP_LPM_DST6,
    MAP_LPM_SRC4, MAP_LPM_SRC6, MAP_POLICIES, MAP_RECORDS, MAP_RULES, MAX_INTERFACES,
    MAX_KERNEL_RULES, MAX_POLICIES,
};

use super::{HookError, Hooks, Interface, Slot, map_err};
use crate::{
    kernel::{prefilter::PrefilterMaps, ring::Ring},
    model::record::PolicyId,
};

impl Hooks {
    /// Writes an interface's config (before attaching, so the hook never runs
    /// without it) and gives it a counter slot: its own if it had one (an
    /// adopted interface), else a free one, zeroed.
    pub fn configure(
        &mut self,
        iface: &Interface,
        mut config: IfaceConfig,
    ) -> Result<Slot, HookError> {
        let slot = match self.slots.get(&iface.id()) {
            Some(slot) => *slot,
            None => {
                let used: BTreeSet<u32> = self.slots.values().map(|s| s.0).collect();
                let free = (0..MAX_INTERFACES)
                    .find(|s| !used.contains(s))
                    .ok_or(HookError::TooManyInterfaces)?;
                self.zero_counters(free)?;
                self.slots.insert(iface.id(), Slot(free));
                Slot(free)
            }
        };
        config.counter_slot = slot.0;
        let mut map: HashMap<_, IfaceKey, IfaceConfig> = self.map(MAP_CONFIG)?;
        map.insert(iface.id().key(), config, 0)
            .map_err(|source| map_err(MAP_CONFIG, source))?;
        Ok(slot)
    }

    fn zero_counters(&mut self, slot: u32) -> Result<(), HookError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| HookError::Cpus(e))?;
        let zeros =
            PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(HookError::Cpus)?;
        let mut counters: PerCpuArray<_, Counters> = self.map(MAP_COUNTERS)?;
        counters
            .set(slot, zeros, 0)
            .map_err(|source| map_err(MAP_COUNTERS, source))
    }

    /// Writes a policy's kernel prefilter (before any of its interfaces is
    /// attached, so the hook never runs with half of it).
    pub fn configure_policy(
        &mut self,
        id: PolicyId,
        compiled: &PrefilterMaps,
    ) -> Result<(), HookError> {
        if id.0 >= MAX_POLICIES {
            return Err(HookError::TooManyPolicies(id.0));
        }
        for (i, rule) in compiled.rules.iter().enumerate() {
            let mut rules: Array<_, mirror_common::KernelRule> = self.map(MAP_RULES)?;
            rules
                .set(id.0 * MAX_KERNEL_RULES + i as u32, rule, 0)
                .map_err(|source| map_err(MAP_RULES, source))?;
        }
        for (name, entries) in [
            (MAP_LPM_SRC4, &compiled.src4),
            (MAP_LPM_DST4, &compiled.dst4),
        ] {
            self.lpm_replace(name, id, entries, |k| k.policy)?;
        }
        for (name, entries) in [
            (MAP_LPM_SRC6, &compiled.src6),
            (MAP_LPM_DST6, &compiled.dst6),
        ] {
            self.lpm_replace(name, id, entries, |k| k.policy)?;
        }
        let mut policies: Array<_, mirror_common::PolicyFilter> = self.map(MAP_POLICIES)?;
        policies
            .set(id.0, compiled.filter, 0)
            .map_err(|source| map_err(MAP_POLICIES, source))
    }

    /// Inserts a policy's prefixes, then removes any others of that policy
    /// (left by an earlier agent's version of it, in pinned maps): in that
    /// order, a running hook never sees the policy with none.
    fn lpm_replace<K: Pod + PartialEq>(
        &mut self,
        name: &'static str,
        id: PolicyId,
        entries: &[(u32, K, u64)],
        policy_of: impl Fn(&K) -> [u8; 4],
    ) -> Result<(), HookError> {
        let mut trie: LpmTrie<_, K, u64> = self.map(name)?;
        for (prefix_len, key, bits) in entries {
            trie.insert(&Key::new(*prefix_len, *key), bits, 0)
                .map_err(|source| map_err(name, source))?;
        }
        let stale: Vec<Key<K>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                policy_of(&k.data()) == id.0.to_be_bytes()
                    && !entries
                        .iter()
                        .any(|(len, key, _)| *len == k.prefix_len() && *key == k.data())
            })
            .collect();
        for key in stale {
            trie.remove(&key).map_err(|source| map_err(name, source))?;
        }
        Ok(())
    }

    pub(super) fn map_ref<'a, T>(&'a self, name: &'static str) -> Result<T, HookError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map(name).ok_or(HookError::Missing(name))?;
        T::try_from(map).map_err(|source| map_err(name, source))
    }

    /// A typed view of one of our maps.
    pub(super) fn map<'a, T>(&'a mut self, name: &'static str) -> Result<T, HookError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(HookError::Missing(name))?;
        T::try_from(map).map_err(|source| map_err(name, source))
    }

    /// Hands the ring buffer to its reader.
    pub fn take_ring(&mut self) -> Result<Ring, HookError> {
        let map = self
            .ebpf
            .take_map(MAP_RECORDS)
            .ok_or(HookError::Missing(MAP_RECORDS))?;
        let aya::maps::Map::RingBuf(data) = map else {
            return Err(HookError::Missing(MAP_RECORDS));
        };
        Ok(Ring::new(data)?)
    }

    /// One interface's counters, summed over CPUs.
    pub fn counters(&self, slot: Slot) -> Result<Counters, HookError> {
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or(HookError::Missing(MAP_COUNTERS))?;
        let array: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(map).map_err(|source| map_err(MAP_COUNTERS, source))?;
        let per_cpu = array
            .get(&slot.0, 0)
            .map_err(|source| map_err(MAP_COUNTERS, source))?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }
}
