//! Which ring each tenant's copies go to. A tenant keeps its ring from
//! plan to plan (its records in flight stay in order behind each other);
//! a new one takes the ring with the fewest tenants. With more tenants
//! than rings, tenants share rings, as evenly as they can.

use std::collections::{BTreeMap, BTreeSet};

use crate::datapath::plan::{Planned, Tenant};

#[derive(Debug)]
pub struct Tenants {
    /// The rings tenants may use, by index.
    rings: Vec<u32>,
    assigned: BTreeMap<Tenant, u32>,
}

impl Tenants {
    /// `rings`: the indexes of the rings tenants may use (at least one).
    pub fn new(rings: Vec<u32>) -> Self {
        let rings = if rings.is_empty() { vec![0] } else { rings };
        Self {
            rings,
            assigned: BTreeMap::new(),
        }
    }

    /// Gives every tenant of the plan a ring (keeping those it had) and
    /// forgets tenants no longer in it.
    pub fn assign(&mut self, plan: &[Planned]) {
        let wanted: BTreeSet<&Tenant> = plan.iter().map(|p| &p.tenant).collect();
        self.assigned.retain(|t, _| wanted.contains(t));
        for tenant in wanted {
            if self.assigned.contains_key(tenant) {
                continue;
            }
            let load = |ring: &u32| self.assigned.values().filter(|r| *r == ring).count();
            // The least loaded, the lowest index first among equals.
            let ring = self
                .rings
                .iter()
                .copied()
                .min_by_key(|r| (load(r), *r))
                .unwrap_or(0);
            self.assigned.insert(tenant.clone(), ring);
        }
    }

    /// The ring of a tenant [`Tenants::assign`] was given.
    pub fn ring(&self, tenant: &Tenant) -> u32 {
        self.assigned.get(tenant).copied().unwrap_or(self.rings[0])
    }

    /// How many tenants share the busiest ring (1: every tenant has its own).
    pub fn most_per_ring(&self) -> usize {
        self.rings
            .iter()
            .map(|r| self.assigned.values().filter(|a| *a == r).count())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{record::PolicyId, values::SampleRate};

    fn plan(tenants: &[Tenant]) -> Vec<Planned> {
        tenants
            .iter()
            .enumerate()
            .map(|(i, t)| Planned {
                id: PolicyId(i as u32 + 1),
                name: format!("p{i}"),
                tenant: t.clone(),
                interfaces: Vec::new(),
                directions: crate::model::direction::Directions::Both,
                snaplen: "100".parse().expect("snaplen"),
                sample: SampleRate::ALL,
                body: None,
                outputs: Vec::new(),
            })
            .collect()
    }

    fn ns(n: &str) -> Tenant {
        Tenant::Namespace(n.into())
    }

    #[test]
    fn each_tenant_its_own_ring_while_there_are_enough() {
        let mut t = Tenants::new(vec![0, 1, 2]);
        let (a, b) = (ns("a"), ns("b"));
        // Two policies of one namespace are one tenant.
        t.assign(&plan(&[a.clone(), b.clone(), a.clone()]));
        assert_ne!(t.ring(&a), t.ring(&b));
        assert_eq!(t.most_per_ring(), 1);
    }

    #[test]
    fn a_tenant_keeps_its_ring_and_a_newcomer_takes_a_free_one() {
        let mut t = Tenants::new(vec![0, 1, 2]);
        let (a, b, c) = (ns("a"), ns("b"), Tenant::Policy("c".into()));
        t.assign(&plan(&[a.clone(), b.clone()]));
        let b_ring = t.ring(&b);
        t.assign(&plan(&[b.clone(), c.clone()]));
        assert_eq!(t.ring(&b), b_ring);
        assert_ne!(t.ring(&c), b_ring);
    }

    #[test]
    fn more_tenants_than_rings_share_them_evenly() {
        let mut t = Tenants::new(vec![0, 1]);
        let tenants: Vec<Tenant> = (0..5).map(|i| ns(&format!("n{i}"))).collect();
        t.assign(&plan(&tenants));
        assert_eq!(t.most_per_ring(), 3);
        assert!(tenants.iter().all(|x| t.ring(x) < 2));
    }
}
