//! What the datapath mirrors, worked out before anything touches the
//! kernel: policies, each with its interfaces, kernel settings, userspace
//! filters and outputs. `attach` makes a plan from its flags or a policy
//! file, `run` from what the API server says; both run the same way.

use crate::{
    export::output::Output,
    kernel::hooks::Interface,
    model::{
        direction::Directions,
        record::PolicyId,
        values::{SampleRate, Snaplen},
    },
    policy::PolicyBody,
};

/// Whose ring a policy's copies take space in: tenants never take each
/// other's (as long as there are rings enough; see `--ring-slots`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Tenant {
    /// Every MirrorPolicy of a namespace (`run`).
    Namespace(String),
    /// One policy on its own: a ClusterMirrorPolicy, or each policy of
    /// `attach` and `sidecar`.
    Policy(String),
}

/// One policy, resolved against the interfaces of this network namespace.
#[derive(Debug, PartialEq)]
pub struct Planned {
    pub id: PolicyId,
    pub name: String,
    pub tenant: Tenant,
    pub interfaces: Vec<Interface>,
    /// As the pods see them; each interface turns them into its hook's
    /// ([`Interface::hook_bits`]).
    pub directions: Directions,
    pub snaplen: Snaplen,
    pub sample: SampleRate,
    /// Rules, pcap-filter and rate limit; the flags have none of them.
    pub body: Option<PolicyBody>,
    pub outputs: Vec<Output>,
}

impl Planned {
    /// The namespace of a MirrorPolicy under `run`; none for cluster-wide
    /// policies and under `attach`. Metrics carry it, to charge a tenant.
    pub fn namespace(&self) -> Option<&str> {
        match &self.tenant {
            Tenant::Namespace(namespace) => Some(namespace),
            Tenant::Policy(_) => None,
        }
    }
}

/// How many tenants a plan has.
pub fn tenants(plan: &[Planned]) -> usize {
    plan.iter()
        .map(|p| &p.tenant)
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}
