//! The policy as written: serde shapes with the field names of DESIGN.md,
//! unknown fields refused, so a typo is an error and not a silent default.
//!
//! Numbers are read as `u64` and strings stay strings here; the validated
//! types check ranges and formats with the field path in hand, which serde's
//! own messages could not name as well. Enums (direction, action, protocol,
//! TCP flags) are checked by serde, and their errors carry the YAML line and
//! column.
//!
//! serde's `flatten` cannot be combined with `deny_unknown_fields`, so the
//! file form repeats the body's fields instead of flattening [`BodySpec`];
//! a `MirrorPolicy` spec type has the same constraint.

use serde::{Deserialize, Serialize};

use super::types::{Action, Direction, Protocol, TcpFlag};

/// The policy body, shared by the `MirrorPolicy` spec and the policy file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BodySpec {
    #[serde(default)]
    pub direction: Direction,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Bytes kept per packet; 0 = the whole packet.
    #[serde(default)]
    pub snaplen: u64,
    /// Mirror 1 in N matching packets.
    #[serde(default = "one")]
    pub sampling: u64,
    #[serde(default)]
    pub rate_limit: RateLimitSpec,
}

impl Default for BodySpec {
    fn default() -> Self {
        Self {
            direction: Direction::default(),
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default, rename = "sourceCIDRs")]
    pub source_cidrs: Vec<String>,
    #[serde(default, rename = "destinationCIDRs")]
    pub destination_cidrs: Vec<String>,
    #[serde(default)]
    pub source_ports: Vec<PortRangeSpec>,
    #[serde(default)]
    pub destination_ports: Vec<PortRangeSpec>,
    #[serde(default)]
    pub tcp_flags: Vec<TcpFlag>,
}

/// `{from: 443}` or `{from: 8000, to: 8100}`, both inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRangeSpec {
    pub from: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
}

/// 0 = unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitSpec {
    #[serde(default)]
    pub packets_per_second: u64,
    #[serde(default)]
    pub bytes_per_second: u64,
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
    pub direction: Direction,
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
