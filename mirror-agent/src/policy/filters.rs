//! A policy's userspace filters, ready to run on records: the ordered rules,
//! then the pcap-filter expression, in the order README.md's "Policy
//! files" gives them.

use super::body::PolicyBody;
use crate::policy::{
    pcapfilter::{PcapFilter, PcapFilterError},
    rules::{Headers, RuleSet, RuleVerdict},
};

/// Built per thread from a [`PolicyBody`] ([`PcapFilter`] is not `Sync`).
pub struct Filters {
    rules: RuleSet,
    expression: Option<PcapFilter>,
}

/// What the filters decided, with the reason when a packet is not mirrored,
/// so each reason can have its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Mirror,
    /// A rule rejected it, or rules exist and none matched.
    NotByRules(RuleVerdict),
    /// The rules let it through and the pcap-filter expression did not.
    NotByExpression,
}

impl Verdict {
    pub fn mirrors(self) -> bool {
        self == Self::Mirror
    }
}

impl PolicyBody {
    /// Compiles the filters. The expression compiled when the policy was
    /// read, so this fails only if libpcap itself fails.
    pub fn filters(&self) -> Result<Filters, PcapFilterError> {
        Ok(Filters {
            rules: self.rules.clone(),
            expression: self.filter.as_ref().map(|f| f.compile()).transpose()?,
        })
    }
}

impl Filters {
    /// Decides for one record: `frame` is the captured bytes (an Ethernet
    /// frame, maybe cut by the snaplen) and `orig_len` the length on the wire.
    pub fn verdict(&self, frame: &[u8], orig_len: u32) -> Verdict {
        if !self.rules.is_empty() {
            let verdict = self.rules.evaluate(&Headers::parse(frame));
            if !verdict.mirrors() {
                return Verdict::NotByRules(verdict);
            }
        }
        match &self.expression {
            Some(f) if !f.matches(frame, orig_len) => Verdict::NotByExpression,
            _ => Verdict::Mirror,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 + UDP from 198.18.0.1:1000 to 198.18.0.2:53.
    fn udp_53() -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]);
        f.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        f.extend_from_slice(&[0x03, 0xe8, 0, 53, 0, 8, 0, 0]);
        f
    }

    #[test]
    fn rules_then_expression() {
        let frame = udp_53();
        let len = frame.len() as u32;
        let body = |yaml| {
            PolicyBody::from_yaml("t", yaml)
                .expect("valid")
                .filters()
                .expect("compiles")
        };
        assert_eq!(body("{}").verdict(&frame, len), Verdict::Mirror);
        assert_eq!(
            body("rules: [{action: Reject, protocol: UDP}]").verdict(&frame, len),
            Verdict::NotByRules(RuleVerdict::Rejected(0))
        );
        assert_eq!(
            body("rules: [{action: Accept, protocol: UDP}]\nfilter: 'tcp'").verdict(&frame, len),
            Verdict::NotByExpression
        );
        assert!(
            body("filter: 'udp dst port 53'")
                .verdict(&frame, len)
                .mirrors()
        );
    }
}
