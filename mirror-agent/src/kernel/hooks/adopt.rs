//! The pins: taking over the hooks an earlier agent pinned, pinning new
//! ones, and removing those, and the maps of other ABI versions, that are
//! no longer wanted.

use std::collections::HashSet;

use aya::{
    maps::MapData,
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
    },
};
use mirror_common::{MAP_RECORDS, MAP_RECORDS_SHARED};
use tracing::{debug, info, warn};

use super::{Adopted, Attachment, HookError, Hooks, Interface, Mode};
use crate::{
    kernel::{
        pin::{LinkKey, PinDir, PinError},
        ring::Ring,
    },
    model::record::IfaceId,
};

impl Hooks {
    /// Takes over a hook an earlier agent pinned for this interface and
    /// direction, moving it onto our program in one atomic link update: the
    /// interface is never without a hook. A pin whose link is gone (its
    /// interface was deleted and this index reused) is removed instead.
    pub(super) fn adopt(
        &mut self,
        iface: &Interface,
        prog: &'static str,
        key: LinkKey,
    ) -> Result<Option<Attachment>, HookError> {
        let Some(path) = self.pins.as_ref().map(|p| p.link(key)) else {
            return Ok(None);
        };
        if !path.exists() {
            return Ok(None);
        }
        let pin_err = |reason: String| HookError::PinLink {
            interface: iface.to_string(),
            reason,
        };
        let pinned = PinnedLink::from_pin(&path).map_err(|e| pin_err(e.to_string()))?;
        let adopted = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|e| e.to_string())
            .and_then(|link| {
                let program = self.program(iface, prog).map_err(|e| e.to_string())?;
                let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
                program.take_link(id).map_err(|e| e.to_string())
            });
        match adopted {
            Ok(link) => {
                self.adopted += 1;
                debug!(interface = %iface, kind = ?key.kind(), "adopted pinned hook");
                Ok(Some(Attachment {
                    key,
                    mode: Mode::Tcx,
                    link,
                    pin: Some(path),
                }))
            }
            Err(reason) => {
                warn!(interface = %iface, %reason, "pinned hook is gone; attaching anew");
                std::fs::remove_file(&path).map_err(|e| pin_err(e.to_string()))?;
                Ok(None)
            }
        }
    }

    /// Pins a fresh tcx link, if the agent pins at all.
    pub(super) fn pin(
        &self,
        iface: &Interface,
        key: LinkKey,
        link: SchedClassifierLink,
    ) -> Result<Attachment, HookError> {
        let Some(path) = self.pins.as_ref().map(|p| p.link(key)) else {
            return Ok(Attachment {
                key,
                mode: Mode::Tcx,
                link,
                pin: None,
            });
        };
        let pin_err = |reason: String| HookError::PinLink {
            interface: iface.to_string(),
            reason,
        };
        let fd = FdLink::try_from(link).map_err(|e| pin_err(e.to_string()))?;
        let pinned = fd.pin(&path).map_err(|e| pin_err(e.to_string()))?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|e| pin_err(e.to_string()))?;
        Ok(Attachment {
            key,
            mode: Mode::Tcx,
            link,
            pin: Some(path),
        })
    }

    /// After attaching everything asked for: removes pinned hooks and config
    /// of interfaces no longer asked for, and retires the maps of other ABI
    /// versions (their hooks have been moved onto ours by now).
    pub fn settle_pins(&mut self) -> Result<Adopted, HookError> {
        let mut adopted = Adopted {
            links: self.adopted,
            ..Adopted::default()
        };
        let Some(pins) = &self.pins else {
            return Ok(Adopted::default());
        };
        let ours: HashSet<LinkKey> = self.attachments.iter().map(|a| a.key).collect();
        for key in pins.links()? {
            if ours.contains(&key) {
                continue;
            }
            // Unpinning the only reference detaches it.
            let path = pins.link(key);
            std::fs::remove_file(&path).map_err(|source| PinError::Io { path, source })?;
            adopted.removed += 1;
        }
        let configured: HashSet<IfaceId> = self.attachments.iter().map(|a| a.key.iface).collect();
        for (version, dir) in pins.other_abis()? {
            let records = other_ring_records(&dir);
            warn!(version, records, dir = %dir.display(), "retiring the maps of another ABI version; records still in its ring are not read");
            PinDir::remove_maps(&dir)?;
            adopted.other_abis += 1;
            adopted.abandoned_records += records;
        }
        let stale: Vec<IfaceId> = self
            .slots
            .keys()
            .filter(|i| !configured.contains(i))
            .copied()
            .collect();
        for id in stale {
            self.remove_config(id)?;
            self.slots.remove(&id);
        }
        if let Some(pins) = &self.pins {
            for (id, _) in pins.labels()? {
                if !self.slots.contains_key(&id) {
                    pins.remove_label(id)?;
                }
            }
        }
        Ok(adopted)
    }

    /// After [`Hooks::detach_all`]: removes the pinned maps too, unless pins
    /// are kept. The maps themselves live on while this object holds them.
    pub fn remove_pins(&mut self) {
        if self.keep_pins {
            return;
        }
        if let Some(pins) = self.pins.take() {
            let root = pins.root().to_owned();
            match pins.remove_all() {
                Ok(()) => info!(pin_dir = %root.display(), "removed pins"),
                Err(error) => warn!(%error, "removing pins failed"),
            }
        }
    }
}

/// How many records the retired rings of another ABI version still hold
/// (their layout is not ours, but the ring's own framing is the kernel's):
/// the one shared ring of versions before 7, or the rings of later ones.
fn other_ring_records(dir: &std::path::Path) -> u64 {
    std::iter::once(MAP_RECORDS_SHARED)
        .chain(MAP_RECORDS)
        .filter_map(|name| MapData::from_pin(dir.join(name)).ok())
        .filter_map(|map| Ring::new(map).ok())
        .map(|mut ring| ring.read(|_| {}) as u64)
        .sum()
}
