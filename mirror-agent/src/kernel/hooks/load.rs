//! Loading the embedded objects: the mirror programs once, with every map;
//! the entry programs once per namespace other than the agent's, sharing
//! the maps through their pins.

use std::{collections::HashMap as StdHashMap, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, ProgramArray},
    programs::SchedClassifier,
};
use mirror_common::{
    GLOBAL_NETNS_COOKIE, IfaceConfig, IfaceKey, MAIN_EGRESS, MAIN_INGRESS, MAP_CONFIG, MAP_MAINS,
    MAP_NS_SELF, MAP_RECORDS, MAPS, PROG_EGRESS, PROG_INGRESS, PROG_NS_EGRESS, PROG_NS_INGRESS,
};
use tracing::debug;

use super::{
    HookError, Hooks, Interface, Slot, map_err,
    objects::{EBPF_OBJECT, ENTRY_OBJECT, ENTRY_PINS},
};
use crate::{
    kernel::{netns, pin::PinDir},
    model::{
        record::{IfaceId, NetnsCookie},
        rings::RingLayout,
    },
};

impl Hooks {
    /// Loads the object and both programs; attaches nothing yet. With a pin
    /// directory, maps already pinned there for this ABI version are used
    /// (with what they hold: config, counters, records not yet read), and
    /// new ones are pinned.
    pub fn load(rings: RingLayout, pins: Option<PinDir>) -> Result<Self, HookError> {
        let own = netns::current_cookie().map_err(HookError::OwnNetns)?;
        let mut ebpf = load_object(rings, pins.as_ref(), own)?;
        // An earlier agent's entry programs, pinned in pods' namespaces,
        // run these mirror programs from now on.
        let mut mains_set = false;
        if let Some(path) = pins.as_ref().map(|p| p.map(MAP_MAINS))
            && path.exists()
        {
            let map = MapData::from_pin(&path).map_err(|source| map_err(MAP_MAINS, source))?;
            set_mains(&mut ebpf, aya::maps::Map::ProgramArray(map))?;
            mains_set = true;
        }
        let mut hooks = Self {
            ebpf,
            entry: None,
            own,
            attachments: Vec::new(),
            slots: StdHashMap::new(),
            pins,
            keep_pins: false,
            adopted: 0,
            mains_set,
            entry_loader: None,
        };
        let config: HashMap<_, IfaceKey, IfaceConfig> = hooks.map_ref(MAP_CONFIG)?;
        let pinned = config
            .iter()
            .map(|e| e.map(|(key, c)| (IfaceId::from_key(key), Slot(c.counter_slot))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| map_err(MAP_CONFIG, source))?;
        let ids: Vec<IfaceId> = pinned.iter().map(|(id, _)| *id).collect();
        hooks.slots.extend(pinned);
        hooks.clear_foreign_here(&ids)?;
        Ok(hooks)
    }

    /// The program to attach for `prog` in the interface's namespace: the
    /// mirror program itself in the agent's own, else the entry program of
    /// a copy for that namespace, loaded if it has none yet.
    pub(super) fn program(
        &mut self,
        iface: &Interface,
        prog: &'static str,
    ) -> Result<&mut SchedClassifier, HookError> {
        if iface.netns == self.own {
            return classifier(&mut self.ebpf, prog);
        }
        let prog = if prog == PROG_INGRESS {
            PROG_NS_INGRESS
        } else {
            PROG_NS_EGRESS
        };
        let own_programs = &mut self.ebpf;
        let mains_set = &mut self.mains_set;
        let entry_loader = &mut self.entry_loader;
        if self.entry.as_ref().is_none_or(|(n, _)| *n != iface.netns) {
            let Some(pins) = &self.pins else {
                return Err(HookError::ForeignNeedsPins {
                    interface: iface.to_string(),
                });
            };
            let loader = entry_loader.get_or_insert_with(|| entry_loader_for(pins));
            let mut loaded = load_entry(loader, iface.netns)?;
            if !*mains_set {
                let mains = loaded
                    .take_map(MAP_MAINS)
                    .ok_or(HookError::Missing(MAP_MAINS))?;
                set_mains(own_programs, mains)?;
                *mains_set = true;
            }
            debug!(
                netns = iface.netns.0,
                "loaded the programs for another namespace"
            );
            self.entry = Some((iface.netns, loaded));
        }
        match &mut self.entry {
            Some((_, ebpf)) => classifier(ebpf, prog),
            None => Err(HookError::Missing(prog)),
        }
    }
}

/// Points the entry programs' tail calls at our mirror programs.
fn set_mains(own: &mut Ebpf, mains: aya::maps::Map) -> Result<(), HookError> {
    let mut mains = ProgramArray::try_from(mains).map_err(|source| map_err(MAP_MAINS, source))?;
    for (index, prog) in [(MAIN_INGRESS, PROG_INGRESS), (MAIN_EGRESS, PROG_EGRESS)] {
        let fd = classifier(own, prog)?
            .fd()
            .map_err(|source| HookError::Program { prog, source })?;
        mains
            .set(index, fd, 0)
            .map_err(|source| map_err(MAP_MAINS, source))?;
    }
    Ok(())
}

/// The loader of entry objects: sharing the pinned maps, with no kernel
/// BTF (there is no CO-RE to relocate; this drops what `new` parsed).
fn entry_loader_for(pins: &PinDir) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    give_back_freed_memory();
    for name in ENTRY_PINS {
        loader.map_pin_path(name, pins.map(name));
    }
    loader
}

/// Parsing the kernel's BTF leaves megabytes freed but scattered in the
/// heap, which glibc keeps (20 MiB of RSS here): hand them back.
fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages; nothing is in use.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Loads the entry object and its two programs for interfaces of the
/// namespace `netns`, and tells them which namespace that is.
fn load_entry(loader: &mut EbpfLoader<'static>, netns: NetnsCookie) -> Result<Ebpf, HookError> {
    let mut ebpf = loader.load(ENTRY_OBJECT)?;
    let map = ebpf
        .map_mut(MAP_NS_SELF)
        .ok_or(HookError::Missing(MAP_NS_SELF))?;
    Array::<_, u64>::try_from(map)
        .and_then(|mut own| own.set(0, netns.0, 0))
        .map_err(|source| map_err(MAP_NS_SELF, source))?;
    for prog in [PROG_NS_INGRESS, PROG_NS_EGRESS] {
        classifier(&mut ebpf, prog)?
            .load()
            .map_err(|source| HookError::Program { prog, source })?;
    }
    Ok(ebpf)
}

/// Loads the object and its two mirror programs, for interfaces of the
/// namespace `netns`, with the maps pinned under `pins` (made there if
/// missing).
fn load_object(
    rings: RingLayout,
    pins: Option<&PinDir>,
    netns: NetnsCookie,
) -> Result<Ebpf, HookError> {
    let mut loader = EbpfLoader::new();
    for (name, size) in MAP_RECORDS.iter().zip(rings.sizes()) {
        loader.map_max_entries(name, size);
    }
    let cookie = netns.0;
    loader.override_global(GLOBAL_NETNS_COOKIE, &cookie, true);
    let paths: Vec<(&str, PathBuf)> = match pins {
        Some(p) => MAPS.iter().map(|m| (*m, p.map(m))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    for prog in [PROG_INGRESS, PROG_EGRESS] {
        classifier(&mut ebpf, prog)?
            .load()
            .map_err(|source| HookError::Program { prog, source })?;
    }
    Ok(ebpf)
}

pub(super) fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    prog: &'static str,
) -> Result<&'a mut SchedClassifier, HookError> {
    ebpf.program_mut(prog)
        .ok_or(HookError::Missing(prog))?
        .try_into()
        .map_err(|source| HookError::Program { prog, source })
}
