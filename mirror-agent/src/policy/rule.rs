//! One validated accept/reject rule. How rules match packets is in
//! [`crate::policy::rules`]; this module only decides which rules can exist.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{
    error::Problem,
    spec::{PortRangeSpec, RuleSpec},
    types::{Action, PortRange, Protocol, TcpFlags},
};

/// A rule whose conditions are consistent: ports only with a protocol that
/// has ports (or none), TCP flags only with TCP (implied when no protocol is
/// given), CIDRs in network form. Empty lists match anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    action: Action,
    protocol: Option<Protocol>,
    sources: Vec<IpNet>,
    destinations: Vec<IpNet>,
    source_ports: Vec<PortRange>,
    destination_ports: Vec<PortRange>,
    tcp_flags: TcpFlags,
}

impl Rule {
    pub fn action(&self) -> Action {
        self.action
    }

    /// The transport protocol, after IPv6 extension headers; `None` = any.
    pub fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }

    /// Source prefixes, IPv4 and IPv6 mixed; empty = any source.
    pub fn sources(&self) -> &[IpNet] {
        &self.sources
    }

    pub fn destinations(&self) -> &[IpNet] {
        &self.destinations
    }

    /// Source port ranges; empty = any. Non-empty lists match only TCP, UDP
    /// and SCTP packets whose ports were captured.
    pub fn source_ports(&self) -> &[PortRange] {
        &self.source_ports
    }

    pub fn destination_ports(&self) -> &[PortRange] {
        &self.destination_ports
    }

    /// Flags that must all be set; empty = any.
    pub fn tcp_flags(&self) -> TcpFlags {
        self.tcp_flags
    }

    /// A rule with no condition matches every frame, IP or not (ARP too).
    pub fn is_unconditional(&self) -> bool {
        self.protocol.is_none()
            && self.sources.is_empty()
            && self.destinations.is_empty()
            && self.source_ports.is_empty()
            && self.destination_ports.is_empty()
            && self.tcp_flags.is_empty()
    }

    /// Validates one rule; the error's field is relative to the rule
    /// (`destinationPorts[0]`).
    pub(super) fn from_spec(spec: &RuleSpec) -> Result<Self, (String, Problem)> {
        let sources = cidrs("sourceCIDRs", &spec.source_cidrs)?;
        let destinations = cidrs("destinationCIDRs", &spec.destination_cidrs)?;
        let source_ports = ports("sourcePorts", &spec.source_ports)?;
        let destination_ports = ports("destinationPorts", &spec.destination_ports)?;
        let tcp_flags = spec
            .tcp_flags
            .iter()
            .fold(TcpFlags::default(), |set, flag| set.with(*flag));

        let mut protocol = spec.protocol;
        if let Some(p) = protocol.filter(|p| !p.carries_ports()) {
            for (field, list) in [
                ("sourcePorts", &source_ports),
                ("destinationPorts", &destination_ports),
            ] {
                if !list.is_empty() {
                    return Err((field.into(), Problem::PortsWithoutPorts(p.to_string())));
                }
            }
        }
        if !tcp_flags.is_empty() {
            match protocol {
                None => protocol = Some(Protocol::TCP),
                Some(Protocol::TCP) => {}
                Some(p) => {
                    return Err(("tcpFlags".into(), Problem::FlagsWithoutTcp(p.to_string())));
                }
            }
        }
        Ok(Self {
            action: spec.action,
            protocol,
            sources,
            destinations,
            source_ports,
            destination_ports,
            tcp_flags,
        })
    }
}

fn cidrs(field: &str, texts: &[String]) -> Result<Vec<IpNet>, (String, Problem)> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| cidr(text).map_err(|p| (format!("{field}[{i}]"), p)))
        .collect()
}

/// A CIDR in network form, or a bare address as a host prefix.
fn cidr(text: &str) -> Result<IpNet, Problem> {
    let text = text.trim();
    let net = match text.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| Problem::BadCidr(text.to_owned()))?,
    };
    if net.trunc() != net {
        return Err(Problem::HostBits {
            text: text.to_owned(),
            network: net.trunc().to_string(),
        });
    }
    Ok(net)
}

fn ports(field: &str, specs: &[PortRangeSpec]) -> Result<Vec<PortRange>, (String, Problem)> {
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| port_range(spec).map_err(|p| (format!("{field}[{i}]"), p)))
        .collect()
}

fn port_range(spec: &PortRangeSpec) -> Result<PortRange, Problem> {
    let port = |which, value: u64| {
        u16::try_from(value).map_err(|_| Problem::PortTooLarge { which, value })
    };
    let from = port("from", spec.from)?;
    let to = port("to", spec.to.unwrap_or(spec.from))?;
    PortRange::new(from, to).ok_or(Problem::PortRangeReversed {
        from: spec.from,
        to: spec.to.unwrap_or(spec.from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(yaml: &str) -> Result<Rule, (String, Problem)> {
        let spec: RuleSpec = serde_norway::from_str(yaml).expect("rule spec");
        Rule::from_spec(&spec)
    }

    #[test]
    fn flags_imply_tcp() {
        let r = rule("{action: Accept, tcpFlags: [SYN, ACK]}").expect("valid");
        assert_eq!(r.protocol(), Some(Protocol::TCP));
        assert_eq!(r.tcp_flags().bits(), 0x12);
    }

    #[test]
    fn bare_address_is_a_host_prefix() {
        let r =
            rule("{action: Accept, sourceCIDRs: [198.18.0.7, 'fd00:198:18::1']}").expect("valid");
        assert_eq!(r.sources()[0].prefix_len(), 32);
        assert_eq!(r.sources()[1].prefix_len(), 128);
    }

    #[test]
    fn port_without_to_is_one_port() {
        let r = rule("{action: Reject, destinationPorts: [{from: 0}]}").expect("valid");
        assert_eq!(r.destination_ports(), &[PortRange::single(0)]);
        assert!(!r.is_unconditional());
        assert!(rule("{action: Accept}").expect("valid").is_unconditional());
    }
}
