//! The interfaces the hooks go on, in the agent's namespace or a pod's.

use std::{fmt, sync::Arc};

use crate::{
    kernel::netns::{Namespace, NetnsError},
    model::{
        direction::Directions,
        record::{IfIndex, IfaceId, NetnsCookie},
        values::End,
    },
};

/// A network interface to hook: its name and index in its network
/// namespace, which is the agent's own or a pod's.
#[derive(Clone)]
pub struct Interface {
    pub name: String,
    /// What outputs and metrics call it: the name, or under `run` the pod
    /// (`NAMESPACE/POD`), as pods' own interfaces are all `eth0`.
    pub label: String,
    pub index: IfIndex,
    pub netns: NetnsCookie,
    /// Which end of a pod's link this is: a host end transmits what its pod
    /// receives. An interface named on the command line or in a policy file
    /// counts as the pod's own.
    pub end: End,
    /// The namespace, open, when it is not the agent's: hooks are attached
    /// from inside it.
    pub ns: Option<Arc<Namespace>>,
}

impl Interface {
    /// An interface of the agent's own namespace.
    pub fn local(name: String, index: IfIndex, netns: NetnsCookie, end: End) -> Self {
        Self {
            label: name.clone(),
            name,
            index,
            netns,
            end,
            ns: None,
        }
    }

    pub fn id(&self) -> IfaceId {
        IfaceId {
            netns: self.netns,
            index: self.index,
        }
    }

    /// The hook direction bits on this interface for a policy's directions
    /// as its pods see them.
    pub fn hook_bits(&self, directions: Directions) -> u32 {
        directions.hook_bits(self.end)
    }

    /// Runs `f` in the interface's namespace: here, or on a thread that
    /// entered the pod's.
    pub fn run_in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        match &self.ns {
            None => Ok(f()),
            Some(ns) => ns.run(f),
        }
    }

    /// Whether the interface is still there under its name and index, so an
    /// index reused by a new interface is not taken for the old one.
    pub fn exists(&self) -> bool {
        let name = self.name.as_str();
        self.run_in_ns(|| nix::net::if_::if_nametoindex(name))
            .is_ok_and(|i| i == Ok(self.index.0))
    }
}

// The open namespace is not part of what an interface is: the cookie names it.
impl PartialEq for Interface {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.label, self.index, self.netns, self.end)
            == (
                &other.name,
                &other.label,
                other.index,
                other.netns,
                other.end,
            )
    }
}
impl Eq for Interface {}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.label == self.name {
            f.write_str(&self.name)
        } else {
            write!(f, "{} ({})", self.label, self.name)
        }
    }
}

impl fmt::Debug for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interface")
            .field("name", &self.name)
            .field("label", &self.label)
            .field("index", &self.index.0)
            .field("netns", &self.netns.0)
            .field("end", &self.end)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use mirror_common::{DIR_EGRESS, DIR_INGRESS};

    use super::*;

    #[test]
    fn direction_bits_swap_at_the_host_end() {
        let at = |end| Interface::local("veth0".into(), IfIndex(3), NetnsCookie(1), end);
        for (pod, host) in [
            (Directions::Ingress, DIR_EGRESS),
            (Directions::Egress, DIR_INGRESS),
            (Directions::Both, DIR_INGRESS | DIR_EGRESS),
        ] {
            assert_eq!(at(End::Pod).hook_bits(pod), pod.pod_end_bits());
            assert_eq!(at(End::Host).hook_bits(pod), host);
        }
    }
}
