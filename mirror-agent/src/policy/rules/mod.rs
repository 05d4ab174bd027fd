//! Ordered accept/reject rules, evaluated on mirrored frames.
//!
//! Semantics (README.md, "Policy files", and the choices made here):
//! - The first matching rule decides. No rules: everything is mirrored. Some
//!   rules and none matches: not mirrored.
//! - In one rule all conditions must hold; in one list (CIDRs, port ranges)
//!   any entry will do. An empty list is no condition.
//! - A rule with no condition matches every frame, IP or not. A rule with
//!   any condition matches only IPv4 and IPv6 packets (so ARP, LLDP and
//!   the like fall through it).
//! - Up to three VLAN tags (802.1Q, QinQ) are looked through: a rule sees
//!   the packet inside, as the pod sent it. (tcpdump needs `vlan and ...` for
//!   that; the tests spell it out.)
//! - The protocol is the transport protocol after IPv6 extension headers
//!   (hop-by-hop, routing, fragment, destination options) and AH. tcpdump's
//!   `tcp`/`udp` only look through a fragment header, and its `port` through
//!   none, so for other IPv6 extension headers the rules see more than tcpdump.
//! - Ports and TCP flags come from the first bytes of the transport header.
//!   A non-first IP fragment has no transport header, so a rule with ports
//!   or TCP flags never matches it (one with only CIDRs or a protocol can). A
//!   first fragment carries them and is matched on them (tcpdump does the
//!   same for IPv4).
//! - A frame cut by the snaplen before a field a condition needs does not
//!   meet that condition: an Accept rule does not accept it and a Reject rule
//!   does not reject it; later rules still get their turn. (A pcap-filter
//!   expression instead rejects the whole packet, see [`crate::policy::pcapfilter`].)
//!   A frame cut inside its IP header counts as not IP: only rules with no
//!   condition match it.

mod packet;
mod plan;

pub use packet::{Fragment, Headers, IpFields};
pub use plan::{LpmTable, PrefilterPlan, PrefilterRule, Prefixes, Side};

use crate::policy::{Action, Rule};

/// Rules in order. Cheap to evaluate: no allocation per packet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    rules: Vec<Rule>,
}

/// The outcome of the rules for one packet, with the deciding rule's index
/// so each can be counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleVerdict {
    /// No rules: mirrored.
    NoRules,
    Accepted(usize),
    Rejected(usize),
    /// Rules exist and none matched: not mirrored.
    Unmatched,
}

impl RuleVerdict {
    pub fn mirrors(self) -> bool {
        matches!(self, Self::NoRules | Self::Accepted(_))
    }
}

impl RuleSet {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn evaluate(&self, headers: &Headers) -> RuleVerdict {
        if self.rules.is_empty() {
            return RuleVerdict::NoRules;
        }
        match self.rules.iter().position(|r| r.matches(headers)) {
            Some(i) if self.rules[i].action() == Action::Accept => RuleVerdict::Accepted(i),
            Some(i) => RuleVerdict::Rejected(i),
            None => RuleVerdict::Unmatched,
        }
    }

    /// Parses an Ethernet frame and evaluates it.
    pub fn evaluate_frame(&self, frame: &[u8]) -> RuleVerdict {
        if self.rules.is_empty() {
            return RuleVerdict::NoRules;
        }
        self.evaluate(&Headers::parse(frame))
    }

    /// What the TC hook can check of these rules; see [`PrefilterPlan`].
    /// `None` past [`PrefilterPlan::MAX_RULES`] rules.
    pub fn prefilter_plan(&self) -> Option<PrefilterPlan> {
        PrefilterPlan::new(&self.rules)
    }
}

impl Rule {
    /// Whether this rule's conditions all hold for a packet.
    pub fn matches(&self, headers: &Headers) -> bool {
        if self.is_unconditional() {
            return true;
        }
        let Some(ip) = &headers.ip else {
            return false;
        };
        if self.protocol().is_some_and(|p| p.number() != ip.protocol) {
            return false;
        }
        let in_any =
            |nets: &[ipnet::IpNet], addr| nets.is_empty() || nets.iter().any(|n| n.contains(addr));
        if !in_any(self.sources(), &ip.source) || !in_any(self.destinations(), &ip.destination) {
            return false;
        }
        if !self.source_ports().is_empty() || !self.destination_ports().is_empty() {
            // `ports` is only ever set for TCP, UDP and SCTP.
            let Some((source, destination)) = ip.ports else {
                return false;
            };
            let in_any = |ranges: &[crate::policy::PortRange], port| {
                ranges.is_empty() || ranges.iter().any(|r| r.contains(port))
            };
            if !in_any(self.source_ports(), source)
                || !in_any(self.destination_ports(), destination)
            {
                return false;
            }
        }
        let flags = self.tcp_flags();
        flags.is_empty() || ip.tcp_flags.is_some_and(|f| flags.all_set_in(f))
    }
}

#[cfg(test)]
mod tests;
