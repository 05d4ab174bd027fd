//! From a ring-buffer record to the outputs: parse it, find its interface's
//! policy, apply the policy's rules and pcap-filter, and hand it to each of
//! the policy's exporters (its rate limit is the hook's, before the ring).
//! Runs on the drain thread, per record,
//! with no allocation. Each policy is charged the thread's CPU time its
//! records take ([`charge`]).

use std::{collections::HashMap, sync::Arc, time::Duration};

use tracing::warn;

use crate::{
    datapath::charge::Meter,
    export::{
        Exporter,
        loan::Source,
        output::Output,
        own::{Matcher, OwnConnections},
    },
    model::record::{IfaceId, Record, WallClock},
    policy::{Filters, Verdict},
};

/// What the agent itself did with the records it read.
#[derive(Debug, Default)]
pub struct AgentStats {
    pub delivered: u64,
    pub malformed: u64,
    pub unknown_interface: u64,
    /// Copies of the agent's own TCP and TLS connections to collectors,
    /// passed over (see [`crate::export::own`]).
    pub own_traffic: u64,
}

/// Why a policy's userspace stage passed over records.
#[derive(Debug, Default)]
pub struct PolicyStats {
    pub rejected_by_rules: u64,
    pub rejected_by_filter: u64,
    /// The drain thread's CPU time on its records.
    pub drain_cpu: Duration,
    /// Sender-thread CPU time of its outputs that have since closed.
    pub retired_output_cpu: Duration,
}

/// The agent CPU time a policy has cost so far, by thread.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PolicyCpu {
    /// The drain thread: its pcap-filter and rules, and encoding its copies.
    pub drain: Duration,
    /// Its outputs' sender threads: segmenting, checksums, sending.
    pub output: Duration,
}

impl PolicyCpu {
    pub fn total(&self) -> Duration {
        self.drain + self.output
    }
}

/// One policy at run time: its filters and outputs.
pub struct Running {
    name: String,
    /// The namespace it belongs to (a MirrorPolicy's, under `run`), for
    /// labels that charge it to a tenant.
    namespace: Option<String>,
    filters: Option<Filters>,
    exporters: Vec<Exporter>,
    stats: PolicyStats,
}

impl Running {
    /// `stats`: the counters so far (those of the policy it replaces, or
    /// none).
    pub fn new(
        name: String,
        filters: Option<Filters>,
        exporters: Vec<Exporter>,
        stats: PolicyStats,
    ) -> Self {
        Self {
            name,
            namespace: None,
            filters,
            exporters,
            stats,
        }
    }

    /// The policy belongs to `namespace`.
    pub fn in_namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its namespace, or `""` (cluster-wide, or under `attach`).
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or_default()
    }

    /// The CPU time it has cost so far.
    pub fn cpu(&self) -> PolicyCpu {
        PolicyCpu {
            drain: self.stats.drain_cpu,
            output: self.stats.retired_output_cpu
                + self
                    .exporters
                    .iter()
                    .map(Exporter::sender_cpu)
                    .sum::<Duration>(),
        }
    }

    pub fn stats(&self) -> &PolicyStats {
        &self.stats
    }

    pub fn exporters(&self) -> &[Exporter] {
        &self.exporters
    }

    /// Whether one of its outputs was opened for `output`.
    pub fn sends_to(&self, output: &Output) -> bool {
        self.exporters.iter().any(|e| e.output() == output)
    }

    /// Takes its output opened for `output` out of it, still running.
    pub fn take_exporter(&mut self, output: &Output) -> Option<Exporter> {
        let at = self.exporters.iter().position(|e| e.output() == output)?;
        Some(self.exporters.swap_remove(at))
    }

    /// Takes its counters, for the policy that replaces it. The outputs
    /// it still has are closing: their CPU time so far goes with them.
    pub fn take_stats(&mut self) -> PolicyStats {
        let mut stats = std::mem::take(&mut self.stats);
        stats.retired_output_cpu += self
            .exporters
            .iter()
            .map(Exporter::sender_cpu)
            .sum::<Duration>();
        stats
    }

    fn record(
        &mut self,
        record: &Record<'_>,
        unix_ns: u64,
        interface: &str,
        source: Option<&Source>,
    ) -> bool {
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
        for exporter in &mut self.exporters {
            exporter.push(record, unix_ns, interface, source);
        }
        true
    }
}

/// Hands each record to its policy, and from there to the policy's outputs.
pub struct Fanout {
    policies: Vec<Running>,
    /// Interface name and index into `policies`, by interface.
    routes: HashMap<IfaceId, (String, usize)>,
    clock: WallClock,
    stats: AgentStats,
    own: Matcher,
    meter: Meter,
    /// Where the records now handed over lie, for outputs that write from there.
    source: Option<Source>,
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
            own: Matcher::new(Arc::default()),
            meter: Meter::default(),
            source: None,
        }
    }

    /// The records handed over from now on lie in `source`'s memory.
    pub fn lend_from(&mut self, source: Option<Source>) {
        self.source = source;
    }

    /// Passes over copies of the connections its outputs publish in `own`
    /// (those of the mirror it serves, across plans).
    pub fn with_own(mut self, own: Arc<OwnConnections>) -> Self {
        self.own = Matcher::new(own);
        self
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
        if self.own.is_own(record.data) {
            self.stats.own_traffic += 1;
            return;
        }
        let Some((name, policy)) = self.routes.get(&record.iface) else {
            self.stats.unknown_interface += 1;
            return;
        };
        self.meter.enter(*policy);
        let ts = self.clock.unix_ns(record.boot_ns);
        if self.policies[*policy].record(&record, ts, name, self.source.as_ref()) {
            self.stats.delivered += 1;
        }
    }

    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }

    /// Takes its counters, for the fanout that replaces it: they count from
    /// the agent's start (a restarted agent's backlog included), not from
    /// the last plan.
    pub fn take_stats(&mut self) -> AgentStats {
        std::mem::take(&mut self.stats)
    }

    /// Goes on from the counters of the fanout it replaces.
    pub fn with_stats(mut self, stats: AgentStats) -> Self {
        self.stats = stats;
        self
    }

    /// The policies, in plan order.
    pub fn policies(&self) -> &[Running] {
        &self.policies
    }

    /// The policy named `name`, to take outputs and counters from.
    pub fn policy_mut(&mut self, name: &str) -> Option<&mut Running> {
        self.policies.iter_mut().find(|p| p.name == name)
    }

    /// Every policy's outputs, in a fixed order.
    pub fn exporters(&self) -> impl Iterator<Item = &Exporter> {
        self.policies.iter().flat_map(|p| &p.exporters)
    }

    fn exporters_mut(&mut self) -> impl Iterator<Item = &mut Exporter> {
        self.policies.iter_mut().flat_map(|p| &mut p.exporters)
    }

    /// Hands every output its batch; ends the drain round (and charges
    /// each policy its share of the thread's CPU time when a period ends).
    pub fn flush(&mut self) {
        if !self.meter.is_open() {
            // No record since the last round: nothing to charge.
            self.exporters_mut().for_each(Exporter::flush);
            return;
        }
        for (i, p) in self.policies.iter_mut().enumerate() {
            if !p.exporters.is_empty() {
                self.meter.enter(i);
                p.exporters.iter_mut().for_each(Exporter::flush);
            }
        }
        self.end_round();
    }

    fn end_round(&mut self) {
        let policies = &mut self.policies;
        self.meter
            .close(|i, cpu| policies[i].stats.drain_cpu += cpu);
    }

    /// Every output sends what it holds and stops, each waiting at most
    /// `timeout` ([`Exporter::close`]).
    pub fn close(&mut self, timeout: Duration) {
        for exporter in self.exporters_mut() {
            exporter.close(timeout);
        }
        self.end_round();
        // On another thread (a replaced plan's outputs close in the
        // background) the clock is that thread's: the charge is then off,
        // but by at most the open period's slices, under a millisecond.
        let policies = &mut self.policies;
        self.meter
            .settle(|i, cpu| policies[i].stats.drain_cpu += cpu);
    }
}

#[cfg(test)]
mod tests;
