//! From a ring-buffer record to the outputs: parse it, find its interface's
//! policy, apply the policy's rules, pcap-filter and rate limit, and hand it
//! to each of the policy's exporters. Runs on the drain thread, per record,
//! with no allocation.

use std::collections::HashMap;

use tracing::warn;

use crate::{
    export::Exporter,
    model::record::{IfaceId, Record, WallClock},
    policy::{Filters, Verdict, ratelimit::RateLimiter},
};

/// What the agent itself did with the records it read.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub delivered: u64,
    pub malformed: u64,
    pub unknown_interface: u64,
}

/// Why a policy's userspace stage passed over records.
#[derive(Debug, Default)]
pub struct PolicyStats {
    pub rejected_by_rules: u64,
    pub rejected_by_filter: u64,
    pub rate_limited: u64,
}

/// One policy at run time: its filters, rate limit and outputs.
pub struct Running {
    pub name: String,
    pub filters: Option<Filters>,
    pub limiter: Option<RateLimiter>,
    pub exporters: Vec<Exporter>,
    pub stats: PolicyStats,
}

impl Running {
    fn record(&mut self, record: &Record<'_>, unix_ns: u64, interface: &str) -> bool {
        if let Some(filters) = &self.filters {
            match filters.verdict(record.data, record.orig_len) {
                Verdict::Mirror => {}
                Verdict::NotByRules(_) => {
                    self.stats.rejected_by_rules += 1;
                    return false;
                }
                Verdict::NotByExpression => {
                    self.stats.rejected_by_filter += 1;
                    return false;
                }
            }
        }
        if let Some(limiter) = &mut self.limiter
            && !limiter.allow(record.boot_ns, record.orig_len)
        {
            self.stats.rate_limited += 1;
            return false;
        }
        for exporter in &mut self.exporters {
            exporter.push(record, unix_ns, interface);
        }
        true
    }
}

/// Hands each record to its policy, and from there to the policy's outputs.
pub struct Fanout {
    pub policies: Vec<Running>,
    /// Interface name and index into `policies`, by interface.
    routes: HashMap<IfaceId, (String, usize)>,
    clock: WallClock,
    pub stats: AgentStats,
}

impl Fanout {
    pub fn new(
        policies: Vec<Running>,
        routes: HashMap<IfaceId, (String, usize)>,
        clock: WallClock,
    ) -> Self {
        Self {
            policies,
            routes,
            clock,
            stats: AgentStats::default(),
        }
    }

    pub fn record(&mut self, bytes: &[u8]) {
        let record = match Record::parse(bytes) {
            Ok(r) => r,
            Err(error) => {
                if self.stats.malformed == 0 {
                    warn!(%error, "malformed ring-buffer record (counted, not sent)");
                }
                self.stats.malformed += 1;
                return;
            }
        };
        let Some((name, policy)) = self.routes.get(&record.iface) else {
            self.stats.unknown_interface += 1;
            return;
        };
        let ts = self.clock.unix_ns(record.boot_ns);
        if self.policies[*policy].record(&record, ts, name) {
            self.stats.delivered += 1;
        }
    }

    /// Every policy's outputs, in a fixed order.
    pub fn exporters(&self) -> impl Iterator<Item = &Exporter> {
        self.policies.iter().flat_map(|p| &p.exporters)
    }

    pub fn flush(&mut self) {
        for exporter in self.policies.iter_mut().flat_map(|p| &mut p.exporters) {
            exporter.flush();
        }
    }
}
