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

/// One policy, resolved against the interfaces of this network namespace.
#[derive(Debug, PartialEq)]
pub struct Planned {
    pub id: PolicyId,
    pub name: String,
    /// The namespace of a MirrorPolicy under `run`; none for cluster-wide
    /// policies and under `attach`. Metrics carry it, to charge a tenant.
    pub namespace: Option<String>,
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
