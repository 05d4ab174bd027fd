//! Compiles a policy's rules into the hook's prefilter maps (see
//! `mirror_common::PolicyFilter`): the kernel drops early what no Accept
//! rule can match, and the agent decides the rest exactly.

use ipnet::{Ipv4Net, Ipv6Net};
use mirror_common::{
    AddrSpan, KernelRule, Lpm4, Lpm6, MAX_RULE_PORTS, PORTS_UNCHECKED, PROTO_ANY, PolicyFilter,
    PortSpan,
};

use crate::{
    kernel::prefilter::PrefilterMaps as Compiled,
    model::record::PolicyId,
    policy::{
        Action, PortRange,
        rules::{PrefilterPlan, PrefilterRule, RuleSet, Side},
    },
};

/// The prefilter of policy `id`; disabled (everything goes up to the agent)
/// when there are no rules or more than the kernel holds.
pub fn compile(id: PolicyId, rules: Option<&RuleSet>) -> Compiled {
    let plan = match rules
        .filter(|r| !r.is_empty())
        .and_then(RuleSet::prefilter_plan)
    {
        Some(plan) => plan,
        None => return Compiled::default(),
    };
    let policy = id.0.to_be_bytes();
    let bits = |pred: &dyn Fn(usize) -> bool| {
        (0..plan.rules.len())
            .filter(|i| pred(*i))
            .fold(0u64, |m, i| m | 1 << i)
    };
    let filter = PolicyFilter {
        enabled: 1,
        _pad: 0,
        accept: bits(&|i| plan.rules[i].action == Action::Accept),
        non_ip: bits(&|i| plan.rules[i].unconditional),
        src_any: plan.lpm_v4(Side::Source).any,
        dst_any: plan.lpm_v4(Side::Destination).any,
        src4: span4(&plan, Side::Source),
        dst4: span4(&plan, Side::Destination),
    };
    let v4 = |side| lpm4(&plan, side, policy);
    let v6 = |side| lpm6(&plan, side, policy);
    Compiled {
        filter,
        rules: plan.rules.iter().map(kernel_rule).collect(),
        src4: v4(Side::Source),
        dst4: v4(Side::Destination),
        src6: v6(Side::Source),
        dst6: v6(Side::Destination),
    }
}

fn lpm4(plan: &PrefilterPlan, side: Side, policy: [u8; 4]) -> Vec<(u32, Lpm4, u64)> {
    let entry = |(net, bits): &(Ipv4Net, u64)| {
        let key = Lpm4 {
            policy,
            addr: net.network().octets(),
        };
        (32 + u32::from(net.prefix_len()), key, *bits)
    };
    plan.lpm_v4(side).entries.iter().map(entry).collect()
}

/// The addresses a side's IPv4 entries cover, first to last.
fn span4(plan: &PrefilterPlan, side: Side) -> AddrSpan {
    plan.lpm_v4(side)
        .entries
        .iter()
        .fold(AddrSpan::EMPTY, |s, (net, _)| AddrSpan {
            first: s.first.min(u32::from(net.network())),
            last: s.last.max(u32::from(net.broadcast())),
        })
}

fn lpm6(plan: &PrefilterPlan, side: Side, policy: [u8; 4]) -> Vec<(u32, Lpm6, u64)> {
    let entry = |(net, bits): &(Ipv6Net, u64)| {
        let key = Lpm6 {
            policy,
            addr: net.network().octets(),
        };
        (32 + u32::from(net.prefix_len()), key, *bits)
    };
    plan.lpm_v6(side).entries.iter().map(entry).collect()
}

/// The kernel's (ABI) form of one rule of the plan.
fn kernel_rule(rule: &PrefilterRule) -> KernelRule {
    let (src_port_count, src_ports) = spans(&rule.source_ports);
    let (dst_port_count, dst_ports) = spans(&rule.destination_ports);
    KernelRule {
        protocol: rule.protocol.map_or(PROTO_ANY, u32::from),
        tcp_flags: u32::from(rule.tcp_flags),
        src_port_count,
        dst_port_count,
        src_ports,
        dst_ports,
    }
}

fn spans(ranges: &[PortRange]) -> (u32, [PortSpan; MAX_RULE_PORTS]) {
    let mut out = [PortSpan::default(); MAX_RULE_PORTS];
    if ranges.len() > MAX_RULE_PORTS {
        return (PORTS_UNCHECKED, out);
    }
    for (slot, r) in out.iter_mut().zip(ranges) {
        *slot = PortSpan {
            from: r.from(),
            to: r.to(),
        };
    }
    (ranges.len() as u32, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyBody;

    fn rules(yaml: &str) -> RuleSet {
        PolicyBody::from_yaml("t", yaml).expect("valid body").rules
    }

    #[test]
    fn no_rules_means_no_prefilter() {
        assert_eq!(compile(PolicyId(3), None).filter.enabled, 0);
        assert_eq!(
            compile(PolicyId(3), Some(&RuleSet::default()))
                .filter
                .enabled,
            0
        );
    }

    #[test]
    fn masks_ports_and_prefixes() {
        let r = rules(
            "rules:\n\
             - {action: Reject, protocol: TCP, sourceCIDRs: [\"198.18.0.1\"]}\n\
             - {action: Accept, protocol: TCP, destinationPorts: [{from: 443}, {from: 8000, to: 8100}]}\n\
             - {action: Accept}\n",
        );
        let c = compile(PolicyId(7), Some(&r));
        assert_eq!(c.filter.enabled, 1);
        assert_eq!(c.filter.accept, 0b110);
        assert_eq!(c.filter.non_ip, 0b100);
        assert_eq!(c.filter.src_any, 0b110);
        assert_eq!(c.filter.dst_any, 0b111);
        // The Reject rule's one address is the source trie's only entry.
        let one = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(
            c.filter.src4,
            AddrSpan {
                first: one,
                last: one
            }
        );
        assert_eq!(c.filter.dst4, AddrSpan::EMPTY);
        assert_eq!(c.rules[1].protocol, 6);
        assert_eq!(c.rules[1].dst_port_count, 2);
        assert_eq!(
            c.rules[1].dst_ports[1],
            PortSpan {
                from: 8000,
                to: 8100
            }
        );
        assert_eq!(c.rules[2].protocol, PROTO_ANY);
        assert_eq!(
            c.src4,
            vec![(
                64,
                Lpm4 {
                    policy: [0, 0, 0, 7],
                    addr: [198, 18, 0, 1]
                },
                0b001
            )]
        );
        assert!(c.dst4.is_empty() && c.src6.is_empty());
    }

    #[test]
    fn too_many_port_ranges_are_left_to_the_agent() {
        let r = rules(
            "rules:\n- {action: Accept, protocol: UDP, sourcePorts: [{from: 1}, {from: 2}, {from: 3}, {from: 4}, {from: 5}]}\n",
        );
        assert_eq!(
            compile(PolicyId(1), Some(&r)).rules[0].src_port_count,
            PORTS_UNCHECKED
        );
    }
}
