//! Hooking a plan's interfaces: all at once when a mirror starts, a few at
//! a time between turns of the drain loop when a new plan adds them. One
//! that cannot be hooked is left out and reported, not fatal, unless the
//! mirror is strict.

use tracing::{info, warn};

use super::Mirror;
use crate::{
    datapath::plan::Planned,
    kernel::hooks::{HookError, Interface},
    model::record::IfaceId,
};

/// Interfaces a new plan adds are hooked this many at a time between turns
/// of the drain loop: each tcx attach waits for an RCU grace period (about
/// 14 ms), and a burst of pods must not keep the ring unread for seconds.
const ATTACH_CHUNK: usize = 4;

/// An interface to hook, with its hook direction bits and its policy's name.
pub(super) struct Pending {
    pub(super) iface: Interface,
    bits: u32,
    pub(super) policy: String,
}

impl Mirror {
    /// Queues every interface of the plan not attached yet.
    pub(super) fn queue(&mut self, plan: &[Planned]) {
        self.pending = plan
            .iter()
            .flat_map(|p| {
                p.interfaces.iter().map(|iface| Pending {
                    iface: iface.clone(),
                    bits: iface.hook_bits(p.directions),
                    policy: p.name.clone(),
                })
            })
            .filter(|p| !self.hooks.is_attached(p.iface.id()))
            .collect();
    }

    pub(super) fn attach_one(&mut self, p: &Pending) -> Result<(), HookError> {
        let mode = self
            .hooks
            .attach(&p.iface, p.bits, self.settings.attach_mode)?;
        info!(interface = %p.iface, ifindex = p.iface.index.0, policy = %p.policy, mode = mode.as_str(), "attached");
        Ok(())
    }

    /// Hooks the next few queued interfaces. One that fails (deleted since
    /// the plan was made, its pod's sandbox replaced) is logged, left out,
    /// and reported by [`Mirror::take_left_out`]; the rest go on.
    pub(super) fn attach_pending(&mut self) {
        for _ in 0..ATTACH_CHUNK {
            let Some(p) = self.pending.pop_front() else {
                return;
            };
            if let Err(error) = self.attach_one(&p) {
                self.leave_out(&p, &error);
            }
        }
    }

    pub(super) fn leave_out(&mut self, p: &Pending, error: &HookError) {
        warn!(interface = %p.iface, policy = %p.policy, %error, "attaching failed; left out");
        let id = p.iface.id();
        if let Err(error) = self.hooks.forget(id) {
            warn!(interface = %p.iface, %error, "forgetting the interface failed");
        }
        self.slots.retain(|(i, _)| i.id() != id);
        self.left_out.push(id);
    }

    /// Whether interfaces of the current plan are still being hooked.
    pub fn attaching(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The interfaces that could not be hooked since the last call.
    pub fn take_left_out(&mut self) -> Vec<IfaceId> {
        std::mem::take(&mut self.left_out)
    }
}
