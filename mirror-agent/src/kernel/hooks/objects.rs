//! The eBPF objects the agent ships, built by `mirror-agent/build.rs` from
//! `mirror-ebpf` and embedded here; the tests check them against every
//! name the agent uses in them.

use mirror_common::{MAP_MAINS, MAP_NS_SCRATCH};

/// The eBPF object built by build.rs from `mirror-ebpf`.
pub(super) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror"));
/// The entry programs for other namespaces, a small object of their own
/// (`mirror-ebpf/src/entry.rs`), parsed and loaded once per namespace.
pub(super) static ENTRY_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror-entry"));
/// The entry objects' maps shared through their pins: the scratch with the
/// mirror programs, the tail-call targets among all entry copies.
pub(super) const ENTRY_PINS: [&str; 2] = [MAP_NS_SCRATCH, MAP_MAINS];

#[cfg(test)]
mod tests {
    //! A map, program or global renamed or retyped on one side only would
    //! otherwise show at load time, as root, on a kernel.

    use std::{collections::HashMap as StdHashMap, mem::size_of};

    use aya::maps::lpm_trie::Key;
    use aya_obj::{Object, ParseError, generated::bpf_map_type as Kind};
    use mirror_common::{
        Budget, CONFIG_HERE_SLOTS, Counters, GLOBAL_NETNS_COOKIE, IfaceConfig, IfaceKey,
        KernelRule, Lpm4, Lpm6, MAIN_EGRESS, MAIN_INGRESS, MAP_BUDGETS, MAP_CONFIG,
        MAP_CONFIG_HERE, MAP_COUNTERS, MAP_LPM_DST4, MAP_LPM_DST6, MAP_LPM_SRC4, MAP_LPM_SRC6,
        MAP_MAINS, MAP_NS_SCRATCH, MAP_NS_SELF, MAP_POLICIES, MAP_RECORDS, MAP_RULES, MAPS,
        MAX_INTERFACES, MAX_KERNEL_RULES, MAX_POLICIES, NsScratch, PROG_EGRESS, PROG_INGRESS,
        PROG_NS_EGRESS, PROG_NS_INGRESS, PolicyFilter,
    };

    use super::{EBPF_OBJECT, ENTRY_OBJECT, ENTRY_PINS};

    fn parse(bytes: &[u8]) -> Object {
        Object::parse(bytes).expect("the embedded object parses")
    }

    /// Whether the object's map `name` is of the kind, key and value the
    /// agent's typed view of it takes, with at least the entries it uses.
    fn fits(
        obj: &Object,
        name: &str,
        kind: Kind,
        key: usize,
        value: usize,
        entries: u32,
    ) -> Result<(), String> {
        let map = obj.maps.get(name).ok_or(format!("no map {name}"))?;
        let found = (map.map_type(), map.key_size(), map.value_size());
        let want = (kind as u32, key as u32, value as u32);
        if found != want {
            return Err(format!(
                "{name}: (type, key, value) {found:?}, want {want:?}"
            ));
        }
        if map.max_entries() < entries {
            return Err(format!(
                "{name}: {} entries, want {entries}",
                map.max_entries()
            ));
        }
        Ok(())
    }

    /// Sets the global as `EbpfLoader::override_global(.., must_exist: true)`
    /// does, on a copy.
    fn set_global(obj: &Object, name: &str, value: &[u8]) -> Result<(), ParseError> {
        obj.clone()
            .patch_map_data(StdHashMap::from([(name, (value, true))]))
    }

    #[test]
    fn the_mirror_object_has_every_map_program_and_global_the_agent_names() {
        let obj = parse(EBPF_OBJECT);
        for prog in [PROG_INGRESS, PROG_EGRESS] {
            assert!(obj.programs.contains_key(prog), "no program {prog}");
        }
        let (lpm4, lpm6) = (size_of::<Key<Lpm4>>(), size_of::<Key<Lpm6>>());
        for (name, kind, key, value, entries) in [
            (
                MAP_CONFIG,
                Kind::BPF_MAP_TYPE_HASH,
                size_of::<IfaceKey>(),
                size_of::<IfaceConfig>(),
                MAX_INTERFACES,
            ),
            (
                MAP_CONFIG_HERE,
                Kind::BPF_MAP_TYPE_ARRAY,
                4,
                size_of::<IfaceConfig>(),
                CONFIG_HERE_SLOTS,
            ),
            (
                MAP_COUNTERS,
                Kind::BPF_MAP_TYPE_PERCPU_ARRAY,
                4,
                size_of::<Counters>(),
                MAX_INTERFACES,
            ),
            (
                MAP_POLICIES,
                Kind::BPF_MAP_TYPE_ARRAY,
                4,
                size_of::<PolicyFilter>(),
                MAX_POLICIES,
            ),
            (
                MAP_RULES,
                Kind::BPF_MAP_TYPE_ARRAY,
                4,
                size_of::<KernelRule>(),
                MAX_POLICIES * MAX_KERNEL_RULES,
            ),
            (
                MAP_BUDGETS,
                Kind::BPF_MAP_TYPE_ARRAY,
                4,
                size_of::<Budget>(),
                MAX_POLICIES,
            ),
            (MAP_LPM_SRC4, Kind::BPF_MAP_TYPE_LPM_TRIE, lpm4, 8, 1),
            (MAP_LPM_DST4, Kind::BPF_MAP_TYPE_LPM_TRIE, lpm4, 8, 1),
            (MAP_LPM_SRC6, Kind::BPF_MAP_TYPE_LPM_TRIE, lpm6, 8, 1),
            (MAP_LPM_DST6, Kind::BPF_MAP_TYPE_LPM_TRIE, lpm6, 8, 1),
            (
                MAP_NS_SCRATCH,
                Kind::BPF_MAP_TYPE_PERCPU_ARRAY,
                4,
                size_of::<NsScratch>(),
                1,
            ),
        ] {
            assert_eq!(fits(&obj, name, kind, key, value, entries), Ok(()));
        }
        // Their sizes are the loader's (`--ring-size`, `--ring-slots`).
        for name in MAP_RECORDS {
            assert_eq!(
                fits(&obj, name, Kind::BPF_MAP_TYPE_RINGBUF, 0, 0, 0),
                Ok(())
            );
        }
        if let Err(e) = set_global(&obj, GLOBAL_NETNS_COOKIE, &0u64.to_ne_bytes()) {
            panic!("the global {GLOBAL_NETNS_COOKIE}, a u64: {e}");
        }
    }

    #[test]
    fn the_entry_object_has_every_map_and_program_the_agent_names() {
        let obj = parse(ENTRY_OBJECT);
        for prog in [PROG_NS_INGRESS, PROG_NS_EGRESS] {
            assert!(obj.programs.contains_key(prog), "no program {prog}");
        }
        assert_eq!(
            fits(&obj, MAP_NS_SELF, Kind::BPF_MAP_TYPE_ARRAY, 4, 8, 1),
            Ok(())
        );
        // The agent sets the mirror programs at these indexes.
        for index in [MAIN_INGRESS, MAIN_EGRESS] {
            assert_eq!(
                fits(
                    &obj,
                    MAP_MAINS,
                    Kind::BPF_MAP_TYPE_PROG_ARRAY,
                    4,
                    4,
                    index + 1
                ),
                Ok(())
            );
        }
    }

    /// A map pinned under one name by both loaders must be defined alike in
    /// both objects; and every name the agent pins is in one of them.
    #[test]
    fn maps_shared_through_pins_agree() {
        let (main, entry) = (parse(EBPF_OBJECT), parse(ENTRY_OBJECT));
        let def = |obj: &Object, name: &str| {
            obj.maps.get(name).map(|m| {
                (
                    m.map_type(),
                    m.key_size(),
                    m.value_size(),
                    m.max_entries(),
                    m.map_flags(),
                )
            })
        };
        // The entry programs note the namespace there for the mirror programs.
        assert!(def(&main, MAP_NS_SCRATCH).is_some());
        for name in ENTRY_PINS {
            assert!(def(&entry, name).is_some(), "entry object: no map {name}");
            if let Some(ours) = def(&main, name) {
                assert_eq!(Some(ours), def(&entry, name), "{name} differs");
            }
        }
        for name in MAPS {
            assert!(
                main.maps.contains_key(name) || entry.maps.contains_key(name),
                "no object has {name}"
            );
        }
    }

    #[test]
    fn what_is_not_there_or_not_so_is_caught() {
        let (main, entry) = (parse(EBPF_OBJECT), parse(ENTRY_OBJECT));
        assert!(!main.programs.contains_key("mirror_no_such_program"));
        assert!(!entry.programs.contains_key(PROG_INGRESS));
        assert_eq!(
            fits(
                &main,
                "MIRROR_NO_SUCH_MAP",
                Kind::BPF_MAP_TYPE_HASH,
                4,
                4,
                1
            ),
            Err("no map MIRROR_NO_SUCH_MAP".into())
        );
        let (key, value) = (size_of::<IfaceKey>(), size_of::<IfaceConfig>());
        let hash = Kind::BPF_MAP_TYPE_HASH;
        assert!(fits(&main, MAP_CONFIG, hash, key + 1, value, 1).is_err());
        assert!(fits(&main, MAP_CONFIG, hash, key, value, MAX_INTERFACES + 1).is_err());
        assert!(fits(&main, MAP_CONFIG, Kind::BPF_MAP_TYPE_ARRAY, key, value, 1).is_err());
        assert!(matches!(
            set_global(&main, "NO_SUCH_GLOBAL", &0u64.to_ne_bytes()),
            Err(ParseError::SymbolNotFound { .. })
        ));
        assert!(matches!(
            set_global(&main, GLOBAL_NETNS_COOKIE, &0u32.to_ne_bytes()),
            Err(ParseError::InvalidGlobalData { .. })
        ));
    }
}
