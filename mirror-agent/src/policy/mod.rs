//! Mirror policies: the policy body shared by the `MirrorPolicy` resource and
//! the policy file of `mirror-agent attach --policy`, parsed at the edge into
//! validated types so the rest of the agent never sees a bare string.
//!
//! Two layers, on purpose:
//! - [`spec`]: serde shapes exactly as users write them (camelCase names,
//!   unknown fields refused). Type errors are caught here, with the YAML
//!   line and column.
//! - The validated types ([`PolicyFile`], [`Policy`], [`PolicyBody`],
//!   [`Rule`], ...): built from the spec by checks that know the field path,
//!   so every error reads `policy "web": rules[1].destinationPorts[0]: from
//!   9000 is greater than to 8000`.
//!
//! Semantics the design left open, chosen here:
//! - Port 0 is allowed in port ranges (tcpdump allows `port 0`, and port-0
//!   traffic is exactly the kind of anomaly someone mirrors).
//! - Ports without a protocol mean TCP, UDP or SCTP, as tcpdump's `port`.
//!   `tcpFlags` without a protocol imply TCP (the validated rule says so).
//! - A CIDR may be a bare address (a /32 or /128) but may not have host bits
//!   set (`198.18.0.1/24` is refused, as tcpdump refuses it).
//! - `tcpFlags: [SYN, ACK]` means all listed flags are set (other flags may
//!   be anything); "any of" is several rules.
//! - An empty or blank `filter` means no filter, as tcpdump with no expression.
//! - Policy names follow Kubernetes object names (RFC 1123 subdomains), so a
//!   policy moves between the file and a `MirrorPolicy` unchanged.

mod body;
mod error;
mod file;
mod filters;
pub mod kfilter;
pub mod pcapfilter;
pub mod ratelimit;
mod rule;
pub mod rules;
pub mod spec;
mod tables;
mod types;
mod yaml;

pub use body::PolicyBody;
pub use error::{PolicyError, Problem, Where};
pub use file::{Policy, PolicyFile, valid_name};
pub use filters::{Filters, Verdict};
pub use ratelimit::{Capped, Limit, RateLimit};
pub use rule::Rule;
pub use tables::{PrefixTables, TablesFull};
pub use types::{Action, FilterExpr, InterfacePattern, PortRange, Protocol, TcpFlag, TcpFlags};
