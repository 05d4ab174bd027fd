//! What the agent writes in the maps (interface config, policy
//! prefilters) and reads from them (counters, the ring).

use std::collections::{BTreeSet, HashSet};

use aya::{
    Pod,
    maps::{
        Array, HashMap, PerCpuArray, PerCpuValues,
        lpm_trie::{Key, LpmTrie},
    },
};
use mirror_common::{
    Budget, CONFIG_HERE_SLOTS, Counters, IfaceConfig, IfaceKey, Lpm4, Lpm6, MAP_BUDGETS,
    MAP_CONFIG, MAP_CONFIG_HERE, MAP_COUNTERS, MAP_LPM_DST4, MAP_LPM_DST6, MAP_LPM_SRC4,
    MAP_LPM_SRC6, MAP_POLICIES, MAP_RECORDS, MAP_RULES, MAX_INTERFACES, MAX_KERNEL_RULES,
    MAX_LPM_ENTRIES, MAX_POLICIES, PolicyFilter,
};

use super::{HookError, Hooks, Interface, Slot, map_err};
use crate::{
    kernel::{inspect::HookLabel, prefilter::PrefilterMaps, ring::Ring},
    model::record::{IfaceId, PolicyId},
};

impl Hooks {
    /// Writes an interface's config (before attaching, so the hook never runs
    /// without it) and gives it a counter slot: its own if it had one (an
    /// adopted interface), else a free one, zeroed. With pins, also notes
    /// what the interface is and its policy's name, for `mirror-agent status`.
    pub fn configure(
        &mut self,
        iface: &Interface,
        policy: &str,
        mut config: IfaceConfig,
    ) -> Result<Slot, HookError> {
        if let Some(pins) = &self.pins {
            let label = HookLabel {
                policy: policy.to_owned(),
                interface: iface.name.clone(),
                label: iface.label.clone(),
            };
            pins.write_label(iface.id(), &label.to_text())?;
        }
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
        self.set_config(iface.id(), config)?;
        Ok(slot)
    }

    /// Writes an interface's config in the hash, and for one of our own
    /// namespace with a small enough index in the array too, where the hook
    /// finds it (see `mirror_common::MAP_CONFIG_HERE`).
    fn set_config(&mut self, id: IfaceId, config: IfaceConfig) -> Result<(), HookError> {
        let mut map: HashMap<_, IfaceKey, IfaceConfig> = self.map(MAP_CONFIG)?;
        map.insert(id.key(), config, 0)
            .map_err(|source| map_err(MAP_CONFIG, source))?;
        self.set_config_here(id, &config)
    }

    /// Removes an interface's config from both maps: the array's first,
    /// as that is where the hook looks. Gone already is fine (another
    /// agent removed it, or the interface was deleted).
    pub(super) fn remove_config(&mut self, id: IfaceId) -> Result<(), HookError> {
        self.set_config_here(id, &IfaceConfig::NONE)?;
        let mut map: HashMap<_, IfaceKey, IfaceConfig> = self.map(MAP_CONFIG)?;
        let _ = map.remove(&id.key());
        Ok(())
    }

    /// Clears what an agent of another namespace, sharing these pins, left
    /// in the array for its own interfaces (`ids`: every pinned config):
    /// here they would stand for ours of the same index.
    pub(super) fn clear_foreign_here(&mut self, ids: &[IfaceId]) -> Result<(), HookError> {
        let ours: HashSet<u32> = ids
            .iter()
            .filter(|id| id.netns == self.own)
            .map(|id| id.index.0)
            .collect();
        for id in ids {
            if id.netns != self.own && !ours.contains(&id.index.0) {
                let slot = IfaceId {
                    netns: self.own,
                    index: id.index,
                };
                self.set_config_here(slot, &IfaceConfig::NONE)?;
            }
        }
        Ok(())
    }

    fn set_config_here(&mut self, id: IfaceId, config: &IfaceConfig) -> Result<(), HookError> {
        if id.netns != self.own || id.index.0 >= CONFIG_HERE_SLOTS {
            return Ok(());
        }
        let mut here: Array<_, IfaceConfig> = self.map(MAP_CONFIG_HERE)?;
        here.set(id.index.0, config, 0)
            .map_err(|source| map_err(MAP_CONFIG_HERE, source))
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
    ///
    /// Its prefixes go in before its old ones come out, so a running hook
    /// never sees the policy with neither; unless a table could not hold
    /// both for a moment: then its prefilter is switched off first (the
    /// agent decides every packet exactly meanwhile), and the old ones go
    /// first.
    pub fn configure_policy(
        &mut self,
        id: PolicyId,
        compiled: &PrefilterMaps,
    ) -> Result<(), HookError> {
        if id.0 >= MAX_POLICIES {
            return Err(HookError::TooManyPolicies(id.0));
        }
        let crowded = self.lpm_crowded(MAP_LPM_SRC4, &compiled.src4, ident4)?
            || self.lpm_crowded(MAP_LPM_DST4, &compiled.dst4, ident4)?
            || self.lpm_crowded(MAP_LPM_SRC6, &compiled.src6, ident6)?
            || self.lpm_crowded(MAP_LPM_DST6, &compiled.dst6, ident6)?;
        if crowded {
            self.set_filter(id, PolicyFilter::default())?;
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
            self.lpm_replace(name, id, entries, ident4, crowded)?;
        }
        for (name, entries) in [
            (MAP_LPM_SRC6, &compiled.src6),
            (MAP_LPM_DST6, &compiled.dst6),
        ] {
            self.lpm_replace(name, id, entries, ident6, crowded)?;
        }
        self.set_filter(id, compiled.filter)
    }

    /// Takes the prefixes of every policy id but `keep` out of the tables,
    /// their prefilters switched off first: what a plan no longer has
    /// (or an earlier agent's plan, in pinned maps) must not take the room
    /// of what it has. Before the plan's own policies are written.
    pub fn retire_policies(&mut self, keep: &[PolicyId]) -> Result<(), HookError> {
        let kept = |policy: [u8; 4]| keep.iter().any(|id| id.0.to_be_bytes() == policy);
        let mut retired = BTreeSet::new();
        retired.extend(self.lpm_others(MAP_LPM_SRC4, &kept, ident4)?);
        retired.extend(self.lpm_others(MAP_LPM_DST4, &kept, ident4)?);
        retired.extend(self.lpm_others(MAP_LPM_SRC6, &kept, ident6)?);
        retired.extend(self.lpm_others(MAP_LPM_DST6, &kept, ident6)?);
        for id in &retired {
            self.set_filter(PolicyId(*id), PolicyFilter::default())?;
        }
        for id in retired {
            let none = PrefilterMaps::default();
            self.lpm_replace(MAP_LPM_SRC4, PolicyId(id), &none.src4, ident4, true)?;
            self.lpm_replace(MAP_LPM_DST4, PolicyId(id), &none.dst4, ident4, true)?;
            self.lpm_replace(MAP_LPM_SRC6, PolicyId(id), &none.src6, ident6, true)?;
            self.lpm_replace(MAP_LPM_DST6, PolicyId(id), &none.dst6, ident6, true)?;
        }
        Ok(())
    }

    /// Writes a policy's budget, its buckets full, unless the map holds
    /// this very budget already (rates and depths): a new plan, or the
    /// next agent on pinned maps, then leaves its buckets as they are,
    /// rather than granting a fresh burst on every change elsewhere.
    pub fn configure_budget(&mut self, id: PolicyId, budget: Budget) -> Result<(), HookError> {
        if id.0 >= MAX_POLICIES {
            return Err(HookError::TooManyPolicies(id.0));
        }
        let mut budgets: Array<_, Budget> = self.map(MAP_BUDGETS)?;
        let held = budgets
            .get(&id.0, 0)
            .map_err(|source| map_err(MAP_BUDGETS, source))?;
        let same = |a: &Budget, b: &Budget| {
            let dims = |x: &Budget| {
                (
                    x.limited,
                    x.packets.ns_per_unit,
                    x.packets.burst,
                    x.packets.depth_ns,
                    x.bytes.ns_per_unit,
                    x.bytes.burst,
                    x.bytes.depth_ns,
                )
            };
            dims(a) == dims(b)
        };
        if same(&held, &budget) {
            return Ok(());
        }
        budgets
            .set(id.0, budget, 0)
            .map_err(|source| map_err(MAP_BUDGETS, source))
    }

    fn set_filter(&mut self, id: PolicyId, filter: PolicyFilter) -> Result<(), HookError> {
        let mut policies: Array<_, PolicyFilter> = self.map(MAP_POLICIES)?;
        policies
            .set(id.0, filter, 0)
            .map_err(|source| map_err(MAP_POLICIES, source))
    }

    /// The policy ids in table `name` that `kept` does not keep.
    fn lpm_others<K: Pod>(
        &mut self,
        name: &'static str,
        kept: &dyn Fn([u8; 4]) -> bool,
        ident: fn(&K) -> Ident,
    ) -> Result<BTreeSet<u32>, HookError> {
        let trie: LpmTrie<_, K, u64> = self.map(name)?;
        Ok(trie
            .keys()
            .filter_map(Result::ok)
            .map(|k| ident(&k.data()).0)
            .filter(|p| !kept(*p))
            .map(u32::from_be_bytes)
            .collect())
    }

    /// Whether table `name` could not hold policy `id`'s new prefixes
    /// beside all it holds now.
    fn lpm_crowded<K: Pod>(
        &mut self,
        name: &'static str,
        entries: &[(u32, K, u64)],
        ident: fn(&K) -> Ident,
    ) -> Result<bool, HookError> {
        let trie: LpmTrie<_, K, u64> = self.map(name)?;
        // The key carries the policy id: an entry of another policy never
        // equals one of these.
        let held: HashSet<(u32, Ident)> = trie
            .keys()
            .filter_map(Result::ok)
            .map(|k| (k.prefix_len(), ident(&k.data())))
            .collect();
        let new = entries
            .iter()
            .filter(|(len, key, _)| !held.contains(&(*len, ident(key))))
            .count();
        Ok(held.len() + new > MAX_LPM_ENTRIES as usize)
    }

    /// Puts a policy's prefixes in table `name` and takes out any others of
    /// that policy (left by its previous plan, or an earlier agent's, in
    /// pinned maps); the old ones first if `old_first`.
    fn lpm_replace<K: Pod>(
        &mut self,
        name: &'static str,
        id: PolicyId,
        entries: &[(u32, K, u64)],
        ident: fn(&K) -> Ident,
        old_first: bool,
    ) -> Result<(), HookError> {
        let mut trie: LpmTrie<_, K, u64> = self.map(name)?;
        let wanted: HashSet<(u32, Ident)> = entries
            .iter()
            .map(|(len, key, _)| (*len, ident(key)))
            .collect();
        let stale: Vec<Key<K>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                let i = ident(&k.data());
                i.0 == id.0.to_be_bytes() && !wanted.contains(&(k.prefix_len(), i))
            })
            .collect();
        let remove = |trie: &mut LpmTrie<_, K, u64>| {
            stale
                .iter()
                .try_for_each(|key| trie.remove(key).map_err(|source| map_err(name, source)))
        };
        if old_first {
            remove(&mut trie)?;
        }
        for (prefix_len, key, bits) in entries {
            trie.insert(&Key::new(*prefix_len, *key), bits, 0)
                .map_err(|source| map_err(name, source))?;
        }
        if !old_first {
            remove(&mut trie)?;
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

    /// Hands the ring buffers to their reader, every one, in slot order
    /// (a pinned one may hold records of an earlier agent's tenants).
    pub fn take_rings(&mut self) -> Result<Vec<Ring>, HookError> {
        MAP_RECORDS
            .iter()
            .map(|name| {
                let map = self.ebpf.take_map(name).ok_or(HookError::Missing(name))?;
                let aya::maps::Map::RingBuf(data) = map else {
                    return Err(HookError::Missing(name));
                };
                Ok(Ring::new(data)?)
            })
            .collect()
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

/// A prefix table key, hashable: the policy id, then the address (an IPv4
/// one in the first 4 bytes).
type Ident = ([u8; 4], [u8; 16]);

fn ident4(k: &Lpm4) -> Ident {
    let mut addr = [0; 16];
    addr[..4].copy_from_slice(&k.addr);
    (k.policy, addr)
}

fn ident6(k: &Lpm6) -> Ident {
    (k.policy, k.addr)
}
