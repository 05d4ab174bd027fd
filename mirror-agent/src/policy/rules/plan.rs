//! The rules as plain data for the TC hook, so packets that match no rule
//! cost no ring-buffer record.
//!
//! Suggested compilation: one LPM trie per side and family (see
//! [`PrefilterPlan::lpm_v4`]) maps an address to the bit set of rules whose CIDR
//! list on that side covers it; the hook ANDs the source and destination
//! sets, then walks the candidate bits in order, checking protocol, ports and
//! flags from a per-rule array, and the first match decides.
//! [`PrefilterPlan::evaluate`] is that algorithm in Rust, tested to agree with
//! [`RuleSet::evaluate`](super::RuleSet::evaluate).
//!
//! The hook is only a prefilter: userspace re-checks every record with the
//! full rules. So where the hook cannot read a field the agent reads (IPv6
//! extension headers past its bound, a VLAN tag moved into skb metadata), it
//! must pass the packet up rather than guess.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Headers, RuleVerdict};
use crate::policy::{Action, PortRange, Rule, TcpFlags};

/// Which address a CIDR list applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

/// A CIDR list split by family. Both empty: any address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prefixes {
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
}

impl Prefixes {
    pub fn is_any(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    fn new(nets: &[IpNet]) -> Self {
        let mut p = Self::default();
        for net in nets {
            match net {
                IpNet::V4(n) => p.v4.push(*n),
                IpNet::V6(n) => p.v6.push(*n),
            }
        }
        p
    }
}

/// One rule as the hook's prefilter sees it: its CIDRs split by family
/// for the LPM tables, the rest as plain numbers. `policy::kfilter` turns it
/// into the kernel's fixed layout, `mirror_common::KernelRule`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefilterRule {
    pub action: Action,
    /// No condition at all: matches every frame, IP or not. Any other rule
    /// matches IPv4 and IPv6 packets only.
    pub unconditional: bool,
    /// IP protocol after extension headers; `None` = any.
    pub protocol: Option<u8>,
    pub sources: Prefixes,
    pub destinations: Prefixes,
    /// Empty = any port. Non-empty: TCP, UDP or SCTP, not a later fragment.
    pub source_ports: Vec<PortRange>,
    pub destination_ports: Vec<PortRange>,
    /// Bits of TCP header byte 13 that must all be set; 0 = any.
    pub tcp_flags: u8,
}

/// One LPM table: each prefix with the bit set (bit i = rule i) of the rules
/// whose list on this side covers it. An LPM lookup returns only the longest
/// match, so each entry already includes the rules of every shorter prefix
/// that contains it. `any` holds the rules with no list on this side, which
/// match every address of either family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LpmTable<N> {
    pub entries: Vec<(N, u64)>,
    pub any: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefilterPlan {
    pub rules: Vec<PrefilterRule>,
}

impl PrefilterPlan {
    /// Rules per bit set (`u64`). Longer rule sets get no plan: the hook
    /// passes everything up and the agent filters alone.
    pub const MAX_RULES: usize = 64;

    pub(super) fn new(rules: &[Rule]) -> Option<Self> {
        (rules.len() <= Self::MAX_RULES).then(|| Self {
            rules: rules
                .iter()
                .map(|r| PrefilterRule {
                    action: r.action(),
                    unconditional: r.is_unconditional(),
                    protocol: r.protocol().map(|p| p.number()),
                    sources: Prefixes::new(r.sources()),
                    destinations: Prefixes::new(r.destinations()),
                    source_ports: r.source_ports().to_vec(),
                    destination_ports: r.destination_ports().to_vec(),
                    tcp_flags: r.tcp_flags().bits(),
                })
                .collect(),
        })
    }

    pub fn lpm_v4(&self, side: Side) -> LpmTable<Ipv4Net> {
        self.table(side, |p| &p.v4, Ipv4Net::trunc, Ipv4Net::supernet)
    }

    pub fn lpm_v6(&self, side: Side) -> LpmTable<Ipv6Net> {
        self.table(side, |p| &p.v6, Ipv6Net::trunc, Ipv6Net::supernet)
    }

    /// Each listed prefix with the rules of every listed prefix that covers
    /// it. Linear in the prefixes (times the address width): the rules
    /// listing each exact network go in a map, and each prefix ORs the
    /// entries of its own network and of its supernets, one per shorter
    /// length. Comparing every pair was quadratic (minutes for 10^5 CIDRs).
    fn table<N: Copy + Ord + std::hash::Hash>(
        &self,
        side: Side,
        family: impl Fn(&Prefixes) -> &Vec<N>,
        trunc: impl Fn(&N) -> N,
        supernet: impl Fn(&N) -> Option<N>,
    ) -> LpmTable<N> {
        let lists: Vec<&Prefixes> = self.rules.iter().map(|r| self.side(r, side)).collect();
        let any = mask(lists.iter().map(|p| p.is_any()));
        let mut listed: std::collections::HashMap<N, u64> = std::collections::HashMap::new();
        for (i, list) in lists.iter().enumerate() {
            for net in family(list) {
                *listed.entry(trunc(net)).or_default() |= 1 << i;
            }
        }
        let mut prefixes: Vec<N> = lists
            .iter()
            .flat_map(|p| family(p).iter().copied())
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        let entries = prefixes
            .into_iter()
            .map(|net| {
                let mut bits = 0;
                let mut at = Some(trunc(&net));
                while let Some(n) = at {
                    bits |= listed.get(&n).copied().unwrap_or(0);
                    at = supernet(&n);
                }
                (net, bits)
            })
            .collect();
        LpmTable { entries, any }
    }

    fn side<'a>(&self, rule: &'a PrefilterRule, side: Side) -> &'a Prefixes {
        match side {
            Side::Source => &rule.sources,
            Side::Destination => &rule.destinations,
        }
    }

    /// The hook's algorithm, for tests and as its specification. It builds
    /// the tables on every call: not for the data path.
    pub fn evaluate(&self, headers: &Headers) -> RuleVerdict {
        if self.rules.is_empty() {
            return RuleVerdict::NoRules;
        }
        let candidates = match &headers.ip {
            None => mask(self.rules.iter().map(|r| r.unconditional)),
            Some(ip) => {
                self.lookup(Side::Source, ip.source)
                    & self.lookup(Side::Destination, ip.destination)
            }
        };
        let first = (0..self.rules.len())
            .find(|&i| candidates & (1 << i) != 0 && self.rest_matches(&self.rules[i], headers));
        match first {
            Some(i) if self.rules[i].action == Action::Accept => RuleVerdict::Accepted(i),
            Some(i) => RuleVerdict::Rejected(i),
            None => RuleVerdict::Unmatched,
        }
    }

    fn lookup(&self, side: Side, addr: IpAddr) -> u64 {
        fn longest<N: Copy>(
            t: &LpmTable<N>,
            len: impl Fn(&N) -> u8,
            has: impl Fn(&N) -> bool,
        ) -> u64 {
            let hit = t
                .entries
                .iter()
                .filter(|(n, _)| has(n))
                .max_by_key(|(n, _)| len(n));
            t.any | hit.map_or(0, |(_, bits)| *bits)
        }
        match addr {
            IpAddr::V4(a) => longest(&self.lpm_v4(side), Ipv4Net::prefix_len, |n| n.contains(&a)),
            IpAddr::V6(a) => longest(&self.lpm_v6(side), Ipv6Net::prefix_len, |n| n.contains(&a)),
        }
    }

    /// Everything but the CIDRs, which the tables decided.
    fn rest_matches(&self, rule: &PrefilterRule, headers: &Headers) -> bool {
        if rule.unconditional {
            return true;
        }
        let Some(ip) = &headers.ip else { return false };
        if rule.protocol.is_some_and(|p| p != ip.protocol) {
            return false;
        }
        if !rule.source_ports.is_empty() || !rule.destination_ports.is_empty() {
            let Some((s, d)) = ip.ports else { return false };
            let ok = |rs: &[PortRange], p| rs.is_empty() || rs.iter().any(|r| r.contains(p));
            if !ok(&rule.source_ports, s) || !ok(&rule.destination_ports, d) {
                return false;
            }
        }
        let want = TcpFlags::from_bits(rule.tcp_flags);
        want.is_empty() || ip.tcp_flags.is_some_and(|f| want.all_set_in(f))
    }
}

fn mask(bits: impl Iterator<Item = bool>) -> u64 {
    bits.enumerate()
        .filter(|(_, on)| *on)
        .fold(0, |m, (i, _)| m | 1 << i)
}
