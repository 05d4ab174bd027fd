//! One reconcile of `mirror-agent run`: locate the pods the desired state
//! needs, compute it ([`desired::compute`]), write the TLS files its outputs
//! read, and move the mirror there if the plan changed. Hooks the mirror
//! could not attach are reported in their policies' outcomes, their pods
//! looked for again, and the plan applied again on the next change.

use std::{collections::BTreeMap, fmt};

use tracing::{info, warn};

use crate::{
    controller::{
        desired::{self, Node, Outcome},
        snapshot::Snapshot,
    },
    datapath::{mirror::Mirror, plan::Planned},
    discovery::locate::Locator,
    model::record::IfaceId,
};

/// The state between reconciles: where pods were found, what the mirror
/// runs, and every policy's latest standing.
pub struct Reconciler {
    locator: Locator,
    node: Node,
    /// The plan the mirror was last moved to.
    current: Vec<Planned>,
    /// Some of `current`'s hooks were left out: apply again even if the
    /// next plan is the same.
    incomplete: bool,
    outcomes: Vec<Outcome>,
}

impl Reconciler {
    pub fn new(locator: Locator, node: Node) -> Self {
        Self {
            locator,
            node,
            current: Vec::new(),
            incomplete: false,
            outcomes: Vec::new(),
        }
    }

    /// Every policy's standing after the latest reconcile.
    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }

    /// What this node should mirror now, with the TLS files it reads
    /// written; the policies' standings become this one's.
    pub fn desire(&mut self, snapshot: &Snapshot) -> Vec<Planned> {
        let wanted = desired::to_locate(snapshot, &self.node);
        self.locator.retain(|uid| wanted.on_node.contains(uid));
        let located = self.locator.locate(&wanted.pods);
        // A collector whose files cannot be written is refused, and its
        // pods left to the next policy that selects them: computed again.
        let mut unwritable = BTreeMap::new();
        loop {
            let now = desired::compute(snapshot, &located, &self.node, &unwritable);
            let before = unwritable.len();
            for m in &now.tls {
                if let Err(why) = m.write() {
                    unwritable.insert(m.collector.clone(), why);
                }
            }
            if unwritable.len() == before {
                self.outcomes = now.outcomes;
                return now.plan;
            }
        }
    }

    /// The mirror started with `plan` (from [`Self::desire`]).
    pub fn started(&mut self, plan: Vec<Planned>, mirror: &mut Mirror) {
        self.current = plan;
        self.incomplete = false;
        self.left_out(mirror);
    }

    /// Takes the hooks the mirror could not attach: their pods are looked
    /// for again, and the plan tried again on the next change.
    pub fn left_out(&mut self, mirror: &mut Mirror) {
        let failed = mirror.take_left_out();
        if !failed.is_empty() {
            self.incomplete = true;
            self.locator.forget_interfaces(&failed);
            mark_left_out(&mut self.outcomes, &self.current, &failed);
        }
    }

    /// Something in the cluster changed: moves the mirror to the new
    /// desired state, unless that is what it runs already (every pod event
    /// wakes the reconciler).
    pub fn reconcile(&mut self, snapshot: &Snapshot, mirror: &mut Mirror) {
        let plan = self.desire(snapshot);
        if !self.incomplete && plan == self.current {
            return;
        }
        self.apply(plan, mirror, "applied");
    }

    /// A link of this node came or went, or the periodic check is due,
    /// with no change in the cluster: pods whose interface is gone are
    /// looked for again (the [`Locator`] drops them), and the mirror moves
    /// only if where they are changed. A plan still waiting for hooks that
    /// failed is left to the next change, so this never retries them.
    pub fn relocate(&mut self, snapshot: &Snapshot, mirror: &mut Mirror) {
        // Interfaces deleted here stop being mirrored before their
        // successors are hooked, with their last counters logged.
        mirror.prune_vanished();
        let before = self.outcomes.clone();
        let plan = self.desire(snapshot);
        if plan == self.current {
            // The same plan: its standings, left-out hooks included, hold.
            self.outcomes = before;
            return;
        }
        self.apply(
            plan,
            mirror,
            "a pod's interface changed on this node; hooks moved",
        );
    }

    fn apply(&mut self, plan: Vec<Planned>, mirror: &mut Mirror, what: &'static str) {
        match mirror.apply(&plan) {
            Ok(()) => {
                info!(
                    policies = plan.len(),
                    interfaces = mirror.interfaces(),
                    "{what}"
                );
                self.current = plan;
                self.incomplete = false;
            }
            Err(error) => {
                warn!(%error, "applying the policies failed; trying again on the next change");
                mark_failed(&mut self.outcomes, &plan, &error);
            }
        }
    }
}

/// Counts the interfaces of `plan` that `failed` names as not attached.
fn mark_left_out(outcomes: &mut [Outcome], plan: &[Planned], failed: &[IfaceId]) {
    for p in plan {
        let Some(o) = outcomes.iter_mut().find(|o| o.policy.plan_name() == p.name) else {
            continue;
        };
        for iface in p.interfaces.iter().filter(|i| failed.contains(&i.id())) {
            o.problems.push(format!("attaching to {iface} failed"));
            o.attached = o.attached.saturating_sub(1);
        }
    }
}

/// Every policy of `plan` attached nothing: applying it failed.
fn mark_failed(outcomes: &mut [Outcome], plan: &[Planned], error: &impl fmt::Display) {
    for o in outcomes.iter_mut() {
        if plan.iter().any(|p| p.name == o.policy.plan_name()) {
            o.problems.push(format!("applying failed: {error}"));
            o.attached = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        controller::snapshot::PolicyRef,
        export::output::Output,
        k8s::Acceptance,
        kernel::hooks::Interface,
        model::{
            direction::Directions,
            record::{IfIndex, NetnsCookie, PolicyId},
            values::{End, SampleRate, Snaplen},
        },
    };

    fn outcome(namespace: &str, name: &str, attached: u64) -> Outcome {
        Outcome {
            policy: PolicyRef {
                cluster: false,
                namespace: namespace.into(),
                name: name.into(),
            },
            generation: Some(1),
            accepted: Ok(Acceptance::default()),
            matched: attached,
            attached,
            skipped_host_network: 0,
            sidecar: 0,
            terminating: 0,
            problems: Vec::new(),
        }
    }

    fn planned(name: &str, interfaces: &[(&str, u32)]) -> Planned {
        Planned {
            id: PolicyId(1),
            name: name.into(),
            tenant: crate::datapath::plan::Tenant::Policy(name.into()),
            interfaces: interfaces
                .iter()
                .map(|(pod, index)| Interface {
                    label: (*pod).into(),
                    ..Interface::local(
                        format!("veth{index}"),
                        IfIndex(*index),
                        NetnsCookie(1),
                        End::Host,
                    )
                })
                .collect(),
            directions: Directions::Both,
            snaplen: Snaplen::MAX,
            sample: SampleRate::ALL,
            body: None,
            outputs: vec!["tcp://198.18.0.9:7000".parse::<Output>().expect("output")],
        }
    }

    #[test]
    fn a_left_out_interface_is_a_problem_of_its_policy_alone() {
        let mut outcomes = vec![outcome("shop", "web", 2), outcome("shop", "db", 1)];
        let plan = vec![
            planned("shop/web", &[("shop/web-1", 11), ("shop/web-2", 12)]),
            planned("shop/db", &[("shop/db-1", 13)]),
        ];
        let failed = [IfaceId {
            netns: NetnsCookie(1),
            index: IfIndex(12),
        }];
        mark_left_out(&mut outcomes, &plan, &failed);
        assert_eq!(outcomes[0].attached, 1);
        assert_eq!(
            outcomes[0].problems,
            vec!["attaching to shop/web-2 (veth12) failed".to_owned()]
        );
        assert_eq!((outcomes[1].attached, outcomes[1].problems.len()), (1, 0));
    }

    #[test]
    fn a_failed_apply_marks_the_planned_policies_only() {
        let mut outcomes = vec![outcome("shop", "web", 2), outcome("shop", "idle", 0)];
        let plan = vec![planned("shop/web", &[("shop/web-1", 11)])];
        mark_failed(&mut outcomes, &plan, &"no ring buffer");
        assert_eq!(outcomes[0].attached, 0);
        assert_eq!(
            outcomes[0].problems,
            vec!["applying failed: no ring buffer".to_owned()]
        );
        assert!(outcomes[1].problems.is_empty());
    }
}
