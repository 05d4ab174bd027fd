//! The validated policy body: what to mirror and how much of it.

use super::{
    error::{PolicyError, Problem, Where},
    ratelimit::RateLimit,
    rule::Rule,
    spec::BodySpec,
    types::FilterExpr,
    yaml,
};
use crate::{
    model::{
        direction::Directions,
        values::{SampleRate, Snaplen},
    },
    policy::rules::RuleSet,
};

/// The body shared by `MirrorPolicy` and the policy file, validated.
///
/// `snaplen` and `sampling` reuse the command line's types, so `attach
/// --snaplen` and a policy's `snaplen` reach the kernel the same way; a
/// policy's `snaplen: 0` (the whole packet) is [`Snaplen::MAX`], which is
/// what the command line's default means too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyBody {
    pub direction: Directions,
    pub rules: RuleSet,
    /// Applied after the rules, in the agent.
    pub filter: Option<FilterExpr>,
    pub snaplen: Snaplen,
    pub sampling: SampleRate,
    pub rate_limit: RateLimit,
}

impl Default for PolicyBody {
    /// Mirror everything, whole packets, in both directions.
    fn default() -> Self {
        Self {
            direction: Directions::Both,
            rules: RuleSet::default(),
            filter: None,
            snaplen: Snaplen::MAX,
            sampling: SampleRate::ALL,
            rate_limit: RateLimit::default(),
        }
    }
}

impl PolicyBody {
    /// Validates the body of policy `name` (a `MirrorPolicy`'s spec).
    pub fn from_spec(name: &str, spec: &BodySpec) -> Result<Self, PolicyError> {
        Self::validate(&Where::Policy(name.to_owned()), spec)
    }

    /// Parses and validates a body written in YAML, for policy `name`.
    pub fn from_yaml(name: &str, text: &str) -> Result<Self, PolicyError> {
        let spec: BodySpec = yaml::parse_body(name, text)?;
        Self::from_spec(name, &spec)
    }

    pub(super) fn validate(at: &Where, spec: &BodySpec) -> Result<Self, PolicyError> {
        let rules = spec
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                Rule::from_spec(rule).map_err(|(field, problem)| {
                    PolicyError::invalid(at, format!("rules[{i}].{field}"), problem)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let filter = match &spec.filter {
            None => None,
            Some(text) => FilterExpr::new(text)
                .map_err(|e| PolicyError::invalid(at, "filter", Problem::Filter(e.to_string())))?,
        };
        // The command line's types parse text; their ranges are the policy's
        // too, except that a policy writes "whole packet" as 0.
        let snaplen = match spec.snaplen {
            0 => Snaplen::MAX,
            n => n
                .to_string()
                .parse()
                .map_err(|_| PolicyError::invalid(at, "snaplen", Problem::Snaplen(n)))?,
        };
        let sampling = spec.sampling.to_string().parse().ok().ok_or_else(|| {
            PolicyError::invalid(at, "sampling", Problem::Sampling(spec.sampling))
        })?;
        Ok(Self {
            direction: spec.direction,
            rules: RuleSet::new(rules),
            filter,
            snaplen,
            sampling,
            rate_limit: RateLimit::from_spec(&spec.rate_limit).map_err(|(field, problem)| {
                PolicyError::invalid(at, format!("rateLimit.{field}"), problem)
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(yaml: &str) -> String {
        match PolicyBody::from_yaml("web", yaml) {
            Ok(b) => panic!("accepted: {b:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn defaults_mirror_everything() {
        let body = PolicyBody::from_yaml("web", "{}").expect("empty body");
        assert_eq!(body, PolicyBody::default());
        let body = PolicyBody::from_yaml(
            "web",
            "snaplen: 128\nsampling: 10\nfilter: '  '\nrateLimit: {packetsPerSecond: 5}\n",
        )
        .expect("valid");
        assert_eq!((body.snaplen.get(), body.sampling.get()), (128, 10));
        assert_eq!(body.filter, None);
        let packets = body.rate_limit.packets.expect("a packets limit");
        assert_eq!((packets.per_second.get(), packets.burst.get()), (5, 5));
        assert_eq!(body.rate_limit.bytes, None);
    }

    #[test]
    fn reversed_port_range() {
        assert_eq!(
            err(
                "rules:\n  - action: Accept\n  - action: Accept\n    protocol: TCP\n    destinationPorts: [{from: 9000, to: 8000}]\n"
            ),
            "policy \"web\": rules[1].destinationPorts[0]: from 9000 is greater than to 8000"
        );
    }

    #[test]
    fn port_too_large() {
        assert_eq!(
            err("rules: [{action: Accept, sourcePorts: [{from: 1, to: 70000}]}]"),
            "policy \"web\": rules[0].sourcePorts[0]: to 70000 is greater than 65535"
        );
    }

    #[test]
    fn ports_with_icmp() {
        assert_eq!(
            err("rules: [{action: Accept, protocol: ICMP, destinationPorts: [{from: 1}]}]"),
            "policy \"web\": rules[0].destinationPorts: ports need protocol TCP, UDP or SCTP \
             (or none), but the rule says ICMP"
        );
    }

    #[test]
    fn flags_with_udp() {
        assert_eq!(
            err("rules: [{action: Accept, protocol: UDP, tcpFlags: [SYN]}]"),
            "policy \"web\": rules[0].tcpFlags: TCP flags need protocol TCP (or none), but the \
             rule says UDP"
        );
    }

    #[test]
    fn bad_cidr() {
        assert_eq!(
            err("rules: [{action: Accept, destinationCIDRs: ['198.18.0.0/15', 198.18.0.0/33]}]"),
            "policy \"web\": rules[0].destinationCIDRs[1]: \"198.18.0.0/33\" is not an IPv4 or \
             IPv6 CIDR (like 198.18.0.0/15 or fd00:198:18::/48) or address"
        );
    }

    #[test]
    fn cidr_host_bits() {
        assert_eq!(
            err("rules: [{action: Reject, sourceCIDRs: ['fd00:198:18::1/48']}]"),
            "policy \"web\": rules[0].sourceCIDRs[0]: \"fd00:198:18::1/48\" has host bits set; \
             did you mean fd00:198:18::/48?"
        );
    }

    #[test]
    fn snaplen_out_of_range() {
        assert_eq!(
            err("snaplen: 262145"),
            "policy \"web\": snaplen: 262145 is not 0 (the whole packet) or 1 to 262144 bytes"
        );
    }

    #[test]
    fn sampling_out_of_range() {
        assert_eq!(
            err("sampling: 0"),
            "policy \"web\": sampling: 0 is not from 1 (every packet) to 4294967295"
        );
        assert!(err("sampling: 4294967296").starts_with("policy \"web\": sampling: 4294967296"));
    }

    #[test]
    fn bad_filter_gets_libpcap_message() {
        let e = err("filter: 'tcp port'");
        assert!(
            e.starts_with("policy \"web\": filter: ") && e.contains("syntax error"),
            "{e}"
        );
        let e = err("filter: 'tcp port 99999'");
        assert!(
            e.starts_with("policy \"web\": filter: ") && e.contains("99999"),
            "{e}"
        );
    }

    #[test]
    fn rate_limit_errors_name_the_field() {
        assert_eq!(
            err("rateLimit: {bytesBurst: 9000}"),
            "policy \"web\": rateLimit.bytesBurst: a burst needs bytesPerSecond (0 or absent is \
             no limit, which has no burst)"
        );
        assert_eq!(
            err("rateLimit: {packetsPerSecond: 2000000000}"),
            "policy \"web\": rateLimit.packetsPerSecond: 2000000000 is more than a budget takes \
             (1000000000)"
        );
        let e = err("rateLimit: {packetsPerSecond: 5, packetsBurst: -5}");
        assert!(
            e.starts_with("policy \"web\": rateLimit.packetsBurst: invalid type: integer `-5`"),
            "{e}"
        );
    }

    #[test]
    fn negative_number_is_a_type_error_with_location() {
        let e = err("rateLimit:\n  bytesPerSecond: -1\n");
        assert_eq!(
            e,
            "policy \"web\": rateLimit.bytesPerSecond: invalid type: integer `-1`, expected u64 \
             (line 2, column 19)"
        );
    }
}
