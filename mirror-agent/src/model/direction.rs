//! Directions: which ways to mirror ([`Directions`], asked for by `attach
//! --direction` and a policy's `direction`), and which way one packet went
//! ([`Direction`], read from its record). The kernel sees both as the
//! `mirror_common::DIR_*` bits, from the hooked interface's point of view.

use clap::ValueEnum;
use mirror_common::{DIR_EGRESS, DIR_INGRESS};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::values::End;

/// Which packets to mirror, from the pod's point of view: `Ingress` is what
/// the pod receives. Without a pod (`attach`, a policy file) the named
/// interface stands in for the pod's own.
///
/// Written `Ingress`/`Egress`/`Both` in a policy (serde, and the CRD schema
/// through schemars) and `ingress`/`egress`/`both` on the command line (clap).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, ValueEnum,
)]
pub enum Directions {
    Ingress,
    Egress,
    #[default]
    Both,
}

impl Directions {
    /// The `mirror_common::DIR_*` bits of these directions as they stand,
    /// which is what a hook at the pod's end sees: on its own `eth0`, or an
    /// interface named in a policy file or on the command line.
    pub fn pod_end_bits(self) -> u32 {
        match self {
            Self::Ingress => DIR_INGRESS,
            Self::Egress => DIR_EGRESS,
            Self::Both => DIR_INGRESS | DIR_EGRESS,
        }
    }

    /// The `mirror_common::DIR_*` bits a hook at `end` needs for these
    /// directions of the pod's. The host end of a pod's link transmits what
    /// the pod receives, so there ingress and egress swap.
    pub fn hook_bits(self, end: End) -> u32 {
        let seen = match (end, self) {
            (End::Pod, d) | (End::Host, d @ Self::Both) => d,
            (End::Host, Self::Ingress) => Self::Egress,
            (End::Host, Self::Egress) => Self::Ingress,
        };
        seen.pod_end_bits()
    }
}

/// Which way one packet crossed the hooked interface, as its record says.
/// Not [`Directions`]: that is a choice of what to mirror (and may be
/// both), this is a fact about a single packet (always exactly one way).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// The packet's way from the record's `mirror_common::DIR_*` value;
    /// `None` for anything but exactly one of the two bits.
    pub fn from_bits(bits: u32) -> Option<Self> {
        match bits {
            DIR_INGRESS => Some(Self::Ingress),
            DIR_EGRESS => Some(Self::Egress),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directions_bits_swap_at_the_host_end() {
        for (pod, host) in [
            (Directions::Ingress, DIR_EGRESS),
            (Directions::Egress, DIR_INGRESS),
            (Directions::Both, DIR_INGRESS | DIR_EGRESS),
        ] {
            assert_eq!(pod.hook_bits(End::Pod), pod.pod_end_bits());
            assert_eq!(pod.hook_bits(End::Host), host);
        }
        assert_eq!(Directions::Ingress.pod_end_bits(), DIR_INGRESS);
        assert_eq!(Directions::Egress.pod_end_bits(), DIR_EGRESS);
    }

    #[test]
    fn directions_are_written_as_before() {
        // Policies and the CRDs spell them capitalised, the flag in lower case.
        let yaml: Directions = serde_norway::from_str("Egress").expect("policy spelling");
        assert_eq!(yaml, Directions::Egress);
        assert_eq!(
            serde_norway::to_string(&Directions::Both).expect("serialises"),
            "Both\n"
        );
        assert!(serde_norway::from_str::<Directions>("egress").is_err());
        for (flag, want) in [
            ("ingress", Directions::Ingress),
            ("egress", Directions::Egress),
            ("both", Directions::Both),
        ] {
            assert_eq!(Directions::from_str(flag, false), Ok(want));
        }
        assert!(Directions::from_str("Both", false).is_err());
    }

    #[test]
    fn a_packet_goes_exactly_one_way() {
        assert_eq!(Direction::from_bits(DIR_INGRESS), Some(Direction::Ingress));
        assert_eq!(Direction::from_bits(DIR_EGRESS), Some(Direction::Egress));
        assert_eq!(Direction::from_bits(DIR_INGRESS | DIR_EGRESS), None);
        assert_eq!(Direction::from_bits(0), None);
    }
}
