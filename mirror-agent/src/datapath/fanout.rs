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
        for exporter in &mut self.exporters {
            exporter.push(record, unix_ns, interface);
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
        }
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
        if self.policies[*policy].record(&record, ts, name) {
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
mod tests {
    use std::sync::Arc;

    use mirror_common::{DIR_EGRESS, DIR_INGRESS};
    use tokio::sync::Notify;

    use super::*;
    use crate::{
        datapath::testing::{Written, frame, iface, pcapng_output, record, written},
        export::Stats,
        policy::PolicyBody,
    };

    /// One policy, on the interfaces given, with the body written in YAML.
    fn policy(name: &str, body: &str, exporters: Vec<Exporter>) -> Running {
        let body = PolicyBody::from_yaml(name, body).expect("a valid body");
        Running::new(
            name.into(),
            Some(body.filters().expect("filters compile")),
            exporters,
            PolicyStats::default(),
        )
    }

    fn clock() -> WallClock {
        WallClock::now().expect("the clocks")
    }

    fn sent(e: &Exporter) -> u64 {
        Stats::get(&e.stats().sent_packets)
    }

    #[test]
    fn rejected_by_rules_is_counted_and_never_reaches_an_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let progress = Arc::new(Notify::new());
        let a = iface(7);
        let listed = [(a, "veth-a".to_owned())];
        let (one, two) = (dir.path().join("one.pcapng"), dir.path().join("two.pcapng"));
        let outputs = vec![
            pcapng_output(&one, &listed, &progress),
            pcapng_output(&two, &listed, &progress),
        ];
        let rules = "rules: [{action: Reject, protocol: UDP}, {action: Accept, protocol: TCP}]";
        let routes = HashMap::from([(a, ("veth-a".to_owned(), 0))]);
        let mut fanout = Fanout::new(vec![policy("web", rules, outputs)], routes, clock());

        let (udp, tcp) = (frame(true, 30), frame(false, 100));
        fanout.record(&record(a, 1_000, DIR_INGRESS, &udp));
        fanout.record(&record(a, 2_000, DIR_EGRESS, &tcp));
        fanout.close(Duration::from_secs(5));

        let web = &fanout.policies()[0];
        assert_eq!(web.stats().rejected_by_rules, 1);
        assert_eq!(web.stats().rejected_by_filter, 0);
        assert_eq!(fanout.stats().delivered, 1);
        let only_tcp = vec![Written {
            interface: "veth-a".into(),
            original_len: tcp.len() as u32,
            data: tcp,
        }];
        // Every output of the policy gets the copy, and only that one.
        assert_eq!(written(&one), only_tcp);
        assert_eq!(written(&two), only_tcp);
        assert!(fanout.exporters().all(|e| sent(e) == 1));
    }

    #[test]
    fn each_record_goes_to_its_interfaces_policy_through_its_filter() {
        let dir = tempfile::tempdir().expect("tempdir");
        let progress = Arc::new(Notify::new());
        let (a, b) = (iface(7), iface(8));
        let (file_a, file_b) = (dir.path().join("a.pcapng"), dir.path().join("b.pcapng"));
        let out_a = pcapng_output(&file_a, &[(a, "veth-a".into())], &progress);
        let out_b = pcapng_output(&file_b, &[(b, "veth-b".into())], &progress);
        let routes = HashMap::from([(a, ("veth-a".into(), 0)), (b, ("veth-b".into(), 1))]);
        let policies = vec![
            policy("dns", "filter: 'udp'", vec![out_a]),
            policy("web", "{}", vec![out_b]),
        ];
        let mut fanout = Fanout::new(policies, routes, clock());

        let (udp, tcp) = (frame(true, 10), frame(false, 20));
        let second = 1_000_000_000;
        fanout.record(&record(a, second, DIR_INGRESS, &udp));
        fanout.record(&record(a, second, DIR_INGRESS, &tcp));
        fanout.record(&record(b, second, DIR_INGRESS, &tcp));
        fanout.record(&record(b, 3 * second, DIR_INGRESS, &udp));
        fanout.close(Duration::from_secs(5));

        let [dns, web] = fanout.policies() else {
            panic!("two policies");
        };
        assert_eq!(dns.stats().rejected_by_filter, 1);
        assert_eq!(web.stats().rejected_by_filter, 0);
        assert_eq!(fanout.stats().delivered, 3);
        let data = |w: Vec<Written>| -> Vec<(String, Vec<u8>)> {
            w.into_iter().map(|w| (w.interface, w.data)).collect()
        };
        assert_eq!(data(written(&file_a)), [("veth-a".into(), udp.clone())]);
        assert_eq!(
            data(written(&file_b)),
            [("veth-b".into(), tcp), ("veth-b".into(), udp)]
        );
    }

    #[test]
    fn malformed_records_and_unknown_interfaces_are_counted_not_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let progress = Arc::new(Notify::new());
        let a = iface(7);
        let file = dir.path().join("a.pcapng");
        let out = pcapng_output(&file, &[(a, "veth-a".into())], &progress);
        let routes = HashMap::from([(a, ("veth-a".into(), 0))]);
        let mut fanout = Fanout::new(vec![policy("all", "{}", vec![out])], routes, clock());

        let f = frame(true, 10);
        let good = record(a, 1, DIR_INGRESS, &f);
        // Shorter than the header; a direction no hook writes; more
        // captured bytes claimed than the record holds.
        fanout.record(&good[..20]);
        fanout.record(&record(a, 1, 7, &f));
        let mut long = good.clone();
        long[32..36].copy_from_slice(&10_000u32.to_ne_bytes());
        fanout.record(&long);
        // An interface no policy asked for.
        fanout.record(&record(iface(9), 1, DIR_INGRESS, &f));
        fanout.close(Duration::from_secs(5));

        let s = fanout.stats();
        assert_eq!((s.malformed, s.unknown_interface, s.delivered), (3, 1, 0));
        assert_eq!(written(&file), []);
        assert_eq!(sent(fanout.exporters().next().expect("one output")), 0);
    }

    #[test]
    fn copies_of_the_agents_own_connections_are_counted_never_sent() {
        use crate::export::own::Connection;
        let dir = tempfile::tempdir().expect("tempdir");
        let progress = Arc::new(Notify::new());
        let a = iface(7);
        let file = dir.path().join("a.pcapng");
        let out = pcapng_output(&file, &[(a, "veth-a".into())], &progress);
        let routes = HashMap::from([(a, ("veth-a".into(), 0))]);
        let own = Arc::new(OwnConnections::default());
        let mut fanout = Fanout::new(vec![policy("all", "{}", vec![out])], routes, clock())
            .with_own(own.clone());
        // `frame`'s TCP goes from 198.18.0.1:1000 to 198.18.0.2:443: as if
        // the agent were at 198.18.0.2:443 and its collector at :1000.
        let owner = own.owner();
        owner.connection(Connection {
            local: "198.18.0.2:443".parse().expect("addr"),
            peer: "198.18.0.1:1000".parse().expect("addr"),
        });
        let (tcp, udp) = (frame(false, 10), frame(true, 10));
        fanout.record(&record(a, 1, DIR_INGRESS, &tcp));
        // The same hosts and ports over UDP are not the connection.
        fanout.record(&record(a, 2, DIR_INGRESS, &udp));
        fanout.close(Duration::from_secs(5));

        let s = fanout.stats();
        assert_eq!((s.own_traffic, s.delivered), (1, 1));
        let data: Vec<Vec<u8>> = written(&file).into_iter().map(|w| w.data).collect();
        assert_eq!(data, [udp]);
    }

    #[test]
    fn outputs_and_counters_can_be_taken_for_the_next_plan() {
        let dir = tempfile::tempdir().expect("tempdir");
        let progress = Arc::new(Notify::new());
        let a = iface(7);
        let path = dir.path().join("a.pcapng");
        let out = pcapng_output(&path, &[(a, "veth-a".into())], &progress);
        let routes = HashMap::from([(a, ("veth-a".into(), 0))]);
        let udp_only = "filter: 'udp'";
        let mut fanout = Fanout::new(vec![policy("web", udp_only, vec![out])], routes, clock());
        fanout.record(&record(a, 5, DIR_INGRESS, &frame(true, 10)));
        fanout.record(&record(a, 6, DIR_INGRESS, &frame(false, 10)));

        assert!(fanout.policy_mut("dns").is_none());
        let web = fanout.policy_mut("web").expect("web runs");
        let output = Output::PcapngFile(path.clone());
        assert!(web.sends_to(&output));
        assert!(!web.sends_to(&Output::PcapngFile(dir.path().join("other"))));
        let mut taken = web.take_exporter(&output).expect("its output");
        assert_eq!(web.take_stats().rejected_by_filter, 1);
        assert!(!web.sends_to(&output));
        assert_eq!(web.stats().rejected_by_filter, 0);
        // The output taken still holds, and sends, what it was handed.
        taken.close(Duration::from_secs(5));
        assert_eq!(written(&path).len(), 1);
    }
}
