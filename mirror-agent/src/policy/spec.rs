//! The policy as written: serde shapes with the field names of README.md's
//! "Policy files" (and `deploy/examples/`), unknown fields refused, so a
//! typo is an error and not a silent default.
//!
//! Numbers are read as `u64` and strings stay strings here; the validated
//! types check ranges and formats with the field path in hand, which serde's
//! own messages could not name as well. Enums (direction, action, protocol,
//! TCP flags) are checked by serde, and their errors carry the YAML line and
//! column.
//!
//! serde's `flatten` cannot be combined with `deny_unknown_fields`, so the
//! file form repeats the body's fields instead of flattening [`BodySpec`].
//! The `MirrorPolicy` resource flattens it all the same (see
//! `crate::k8s::policy`): there the API server's schema, not serde, refuses
//! unknown fields.
//!
//! The body's types also describe themselves as JSON schemas (schemars), for
//! the CRDs: the same ranges, patterns and enums, so the API server refuses
//! most mistakes before the agent sees them. The checks here stay the
//! authority; the schema is a first line, and cannot express everything
//! (host bits in a CIDR, a reversed port range, a pcap-filter's syntax).

use mirror_common::MAX_SNAPLEN;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::types::{Action, Protocol, TcpFlag};
use crate::model::direction::Directions;

/// A CIDR (`198.18.0.0/15`, `fd00:198:18::/48`) or a bare address, in the
/// schema: IPv4 exactly, IPv6 by its alphabet and prefix length (a full IPv6
/// grammar as a regular expression would be unreadable; the parser checks).
pub const CIDR_PATTERN: &str = concat!(
    r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}",
    r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(/(3[0-2]|[12]?[0-9]))?$",
    r"|^[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?$",
);

/// The policy body, shared by the `MirrorPolicy` spec and the policy file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BodySpec {
    /// Which packets, from the pod's point of view: Ingress is what the pod
    /// receives.
    #[serde(default)]
    pub direction: Directions,
    /// Ordered accept/reject rules; the first that matches decides. No rules
    /// mirror everything; with rules, a packet no rule matches is not mirrored.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// A pcap-filter expression (as tcpdump's), applied after the rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Bytes kept per packet; 0 = the whole packet.
    #[serde(default)]
    #[schemars(range(max = MAX_SNAPLEN))]
    pub snaplen: u64,
    /// Mirror 1 in N matching packets.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = u32::MAX))]
    pub sampling: u64,
    /// Packets and bytes per second after the rules and the filter; 0 = unlimited.
    #[serde(default)]
    pub rate_limit: RateLimitSpec,
}

impl Default for BodySpec {
    fn default() -> Self {
        Self {
            direction: Directions::default(),
            rules: Vec::new(),
            filter: None,
            snaplen: 0,
            sampling: 1,
            rate_limit: RateLimitSpec::default(),
        }
    }
}

fn one() -> u64 {
    1
}

/// One ordered rule. Every condition left out matches anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    /// What a packet matching every condition of this rule gets.
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// Source prefixes or addresses, IPv4 and IPv6; empty = any.
    #[serde(default, rename = "sourceCIDRs")]
    #[schemars(inner(pattern(CIDR_PATTERN)))]
    pub source_cidrs: Vec<String>,
    /// Destination prefixes or addresses, IPv4 and IPv6; empty = any.
    #[serde(default, rename = "destinationCIDRs")]
    #[schemars(inner(pattern(CIDR_PATTERN)))]
    pub destination_cidrs: Vec<String>,
    /// Source port ranges; empty = any. Without a protocol: TCP, UDP or SCTP.
    #[serde(default)]
    pub source_ports: Vec<PortRangeSpec>,
    /// Destination port ranges; empty = any. Without a protocol: TCP, UDP or SCTP.
    #[serde(default)]
    pub destination_ports: Vec<PortRangeSpec>,
    /// TCP flags that must all be set; implies protocol TCP.
    #[serde(default)]
    pub tcp_flags: Vec<TcpFlag>,
}

/// `{from: 443}` or `{from: 8000, to: 8100}`, both inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PortRangeSpec {
    #[schemars(range(max = u16::MAX))]
    pub from: u64,
    /// The last port of the range; `from` alone is one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = u16::MAX))]
    pub to: Option<u64>,
}

/// A budget the hook enforces before a copy takes ring space; 0 = no limit.
/// A burst (0 = one second's worth) needs its rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    #[serde(default)]
    pub packets_per_second: u64,
    /// Packets the bucket holds; 0 = packetsPerSecond.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub packets_burst: u64,
    #[serde(default)]
    pub bytes_per_second: u64,
    /// Bytes the bucket holds; 0 = bytesPerSecond. A packet larger than
    /// this never passes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bytes_burst: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The policy file: `policies: [...]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    #[serde(default)]
    pub policies: Vec<FilePolicySpec>,
}

/// One policy of the file: a name, interfaces in place of a pod selector,
/// collector URIs in place of a `MirrorCollector`, then the body's fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilePolicySpec {
    pub name: String,
    pub interfaces: Vec<String>,
    pub collectors: Vec<String>,
    #[serde(default)]
    pub direction: Directions,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default)]
    pub snaplen: u64,
    #[serde(default = "one")]
    pub sampling: u64,
    #[serde(default)]
    pub rate_limit: RateLimitSpec,
}

impl FilePolicySpec {
    /// A policy of the file from a body (a `MirrorPolicy`'s, for a sidecar).
    pub fn new(
        name: &str,
        interfaces: Vec<String>,
        collectors: Vec<String>,
        body: &BodySpec,
    ) -> Self {
        Self {
            name: name.to_owned(),
            interfaces,
            collectors,
            direction: body.direction,
            rules: body.rules.clone(),
            filter: body.filter.clone(),
            snaplen: body.snaplen,
            sampling: body.sampling,
            rate_limit: body.rate_limit,
        }
    }

    /// The body part, for the validation shared with `MirrorPolicy`.
    pub fn body(&self) -> BodySpec {
        BodySpec {
            direction: self.direction,
            rules: self.rules.clone(),
            filter: self.filter.clone(),
            snaplen: self.snaplen,
            sampling: self.sampling,
            rate_limit: self.rate_limit,
        }
    }
}
