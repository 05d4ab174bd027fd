//! The kernel's side of a plan: each policy's prefilter and budget, and
//! each interface's config, written before any hook of theirs runs.

use std::collections::HashMap;

use mirror_common::IfaceConfig;

use super::MirrorError;
use crate::{
    datapath::{plan::Planned, tenants::Tenants},
    export::SocketMark,
    kernel::hooks::{Hooks, Interface, Slot},
    model::record::PolicyId,
    policy::kfilter,
};

/// Writes each policy's kernel prefilter and budget and each interface's config
/// (with its tenant's ring), and returns each interface's counter slot, in
/// plan order. Prefixes of policies not in the plan are taken out first.
pub(super) fn configure(
    hooks: &mut Hooks,
    plan: &[Planned],
    tenants: &mut Tenants,
    mark: SocketMark,
) -> Result<Vec<(Interface, Slot)>, MirrorError> {
    tenants.assign(plan);
    let mut slots = Vec::new();
    // Policies of an earlier plan give their room back first: the
    // controller checked that this plan's prefixes fit the tables.
    let ids: Vec<PolicyId> = plan.iter().map(|p| p.id).collect();
    hooks.retire_policies(&ids)?;
    for p in plan {
        let rules = p.body.as_ref().map(|b| &b.rules);
        hooks.configure_policy(p.id, &kfilter::compile(p.id, rules))?;
        let limit = p.body.as_ref().map(|b| b.rate_limit).unwrap_or_default();
        hooks.configure_budget(p.id, limit.budget())?;
        let ring = tenants.ring(&p.tenant);
        for iface in &p.interfaces {
            let slot = hooks.configure(
                iface,
                &p.name,
                IfaceConfig {
                    policy_id: p.id.0,
                    directions: iface.hook_bits(p.directions),
                    snaplen: p.snaplen.get(),
                    sample_every: p.sample.get(),
                    counter_slot: 0,
                    skip_mark: mark.value,
                    skip_mask: mark.mask,
                    ring,
                },
            )?;
            slots.push((iface.clone(), slot));
        }
    }
    Ok(slots)
}

/// Each policy's counter slots, by name.
pub(super) fn policy_slots(
    plan: &[Planned],
    slots: &[(Interface, Slot)],
) -> HashMap<String, Vec<Slot>> {
    let mut by = HashMap::new();
    // configure() makes the slots in plan order, interface by interface.
    let mut slots = slots.iter();
    for p in plan {
        let mine: Vec<Slot> = slots
            .by_ref()
            .take(p.interfaces.len())
            .map(|(_, s)| *s)
            .collect();
        by.insert(p.name.clone(), mine);
    }
    by
}
