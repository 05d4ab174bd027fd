//! The families of `attach`, read on the drain loop's thread when a scrape
//! asks: per-CPU kernel counters summed from the map, the policies' and the
//! agent's own counters, and the exporters' atomics and queue depths.

use crate::{
    datapath::{fanout::Fanout, plan::Planned, pump::RingFill},
    export::Stats,
    kernel::hooks::{Hooks, Interface, Slot},
};

use crate::metrics::{Family, Kind};

struct Hooked {
    interface: String,
    policy: String,
    namespace: String,
    slot: Slot,
}

/// What a scrape of `attach` needs besides the live state.
pub struct AgentMetrics {
    hooked: Vec<Hooked>,
}

impl AgentMetrics {
    pub fn new(plan: &[Planned], slots: &[(Interface, Slot)]) -> Self {
        let hooked = slots
            .iter()
            .map(|(iface, slot)| {
                let planned = plan.iter().find(|p| p.interfaces.contains(iface));
                Hooked {
                    interface: iface.label.clone(),
                    policy: planned.map_or_else(String::new, |p| p.name.clone()),
                    namespace: planned
                        .and_then(Planned::namespace)
                        .unwrap_or_default()
                        .to_owned(),
                    slot: *slot,
                }
            })
            .collect();
        Self { hooked }
    }

    /// Every family, as of now. `attached` is the number of hooked
    /// interfaces (all of them while the drain loop runs).
    pub fn families(
        &self,
        hooks: &Hooks,
        fanout: &Fanout,
        ring: &RingFill,
        attached: usize,
    ) -> Vec<Family> {
        let mut f = Families::new();
        for h in &self.hooked {
            // A failed read leaves the interface out of this scrape rather
            // than reporting zeros that would look like a counter reset.
            let Ok(c) = hooks.counters(h.slot) else {
                continue;
            };
            let l = [
                ("interface", h.interface.as_str()),
                ("policy", h.policy.as_str()),
                ("namespace", h.namespace.as_str()),
            ];
            f.seen_packets.with(&l, c.seen_packets);
            f.seen_bytes.with(&l, c.seen_bytes);
            f.mirrored_packets.with(&l, c.mirrored_packets);
            f.mirrored_bytes.with(&l, c.mirrored_bytes);
            f.truncated.with(&l, c.truncated);
            f.own_traffic.with(&l, c.own_traffic);
            for (reason, value) in [
                ("rate_limit", c.rate_limited),
                ("ring_full", c.ring_full),
                ("copy_failed", c.load_failed),
                ("sampling", c.sampled_out),
            ] {
                f.dropped
                    .with(&[l[0], l[1], l[2], ("reason", reason)], value);
            }
            f.dropped.with(
                &[l[0], l[1], l[2], ("reason", "filter"), ("stage", "kernel")],
                c.filtered,
            );
        }
        for p in fanout.policies() {
            let policy = p.name();
            let namespace = p.namespace();
            let stats = p.stats();
            let cpu = p.cpu();
            for (thread, used) in [("drain", cpu.drain), ("output", cpu.output)] {
                f.cpu.with_seconds(
                    &[
                        ("policy", policy),
                        ("namespace", namespace),
                        ("thread", thread),
                    ],
                    used,
                );
            }
            for (reason, stage, value) in [
                ("filter", "rules", stats.rejected_by_rules),
                ("filter", "pcap_filter", stats.rejected_by_filter),
            ] {
                f.dropped.with(
                    &[
                        ("policy", policy),
                        ("namespace", namespace),
                        ("reason", reason),
                        ("stage", stage),
                    ],
                    value,
                );
            }
            for e in p.exporters() {
                let s = e.stats();
                let l = [
                    ("output", e.name()),
                    ("policy", policy),
                    ("namespace", namespace),
                ];
                f.sent_packets.with(&l, Stats::get(&s.sent_packets));
                f.sent_bytes.with(&l, Stats::get(&s.sent_bytes));
                f.mtu_truncated.with(&l, Stats::get(&s.mtu_truncated));
                f.super_packets.with(&l, Stats::get(&s.super_packets));
                f.segments.with(&l, Stats::get(&s.segments));
                f.checksums_finished
                    .with(&l, Stats::get(&s.checksums_finished));
                f.queue_bytes.with(&l, e.queued_bytes() as u64);
                for (reason, value) in [
                    ("queue_full", Stats::get(&s.queue_full)),
                    ("send_error", Stats::get(&s.send_errors)),
                ] {
                    f.dropped
                        .with(&[l[0], l[1], l[2], ("reason", reason)], value);
                }
            }
        }
        f.dropped
            .with(&[("reason", "malformed")], fanout.stats().malformed);
        f.own_traffic
            .with(&[("stage", "agent")], fanout.stats().own_traffic);
        f.delivered.with(&[], fanout.stats().delivered);
        f.attached.with(&[], attached as u64);
        f.ring_size.with(&[], ring.size());
        f.ring_pending.with(&[], ring.pending());
        f.into_vec()
    }
}

struct Families {
    seen_packets: Family,
    seen_bytes: Family,
    mirrored_packets: Family,
    mirrored_bytes: Family,
    truncated: Family,
    own_traffic: Family,
    dropped: Family,
    delivered: Family,
    sent_packets: Family,
    sent_bytes: Family,
    mtu_truncated: Family,
    super_packets: Family,
    segments: Family,
    checksums_finished: Family,
    queue_bytes: Family,
    cpu: Family,
    attached: Family,
    ring_size: Family,
    ring_pending: Family,
}

impl Families {
    fn new() -> Self {
        use Kind::{Counter, Gauge};
        Self {
            seen_packets: Family::new(
                "mirror_seen_packets",
                "Packets the hooks saw in a mirrored direction.",
                Counter,
            ),
            seen_bytes: Family::new(
                "mirror_seen_bytes",
                "Bytes of the packets the hooks saw.",
                Counter,
            ),
            mirrored_packets: Family::new(
                "mirror_mirrored_packets",
                "Packets copied into the ring buffer.",
                Counter,
            ),
            mirrored_bytes: Family::new(
                "mirror_mirrored_bytes",
                "Original bytes of the packets copied into the ring buffer.",
                Counter,
            ),
            truncated: Family::new(
                "mirror_snaplen_truncated_packets",
                "Copies cut by snaplen (still mirrored).",
                Counter,
            ),
            own_traffic: Family::new(
                "mirror_own_traffic_packets",
                "The agent's own packets, passed over: by the hooks (per interface and policy: \
                 what its sockets send, by their mark), or by the agent (stage agent: both \
                 directions of its TCP and TLS connections to collectors).",
                Counter,
            ),
            dropped: Family::new(
                "mirror_dropped_packets",
                "Copies not mirrored or not sent, by reason: ring_full, copy_failed, sampling, \
                 filter (stage kernel, rules or pcap_filter), rate_limit, queue_full, \
                 send_error, malformed.",
                Counter,
            ),
            delivered: Family::new(
                "mirror_delivered_packets",
                "Copies read from the ring buffer that passed every filter and went to the \
                 outputs.",
                Counter,
            ),
            sent_packets: Family::new(
                "mirror_output_sent_packets",
                "Copies an output sent or wrote.",
                Counter,
            ),
            sent_bytes: Family::new(
                "mirror_output_sent_bytes",
                "Bytes an output sent or wrote, headers included.",
                Counter,
            ),
            mtu_truncated: Family::new(
                "mirror_mtu_truncated",
                "Copies a tunnel output cut to fit its MTU: sent, not dropped.",
                Counter,
            ),
            super_packets: Family::new(
                "mirror_output_super_packets",
                "GSO/GRO super-packets an output cut into wire-size segments.",
                Counter,
            ),
            segments: Family::new(
                "mirror_output_segments",
                "Wire-size segments an output made of super-packets, each sent as its own copy.",
                Counter,
            ),
            checksums_finished: Family::new(
                "mirror_output_checksums_finished",
                "Partial (offloaded) checksums an output finished in its copies.",
                Counter,
            ),
            queue_bytes: Family::new(
                "mirror_output_queue_bytes",
                "Bytes waiting in an output's queue.",
                Gauge,
            ),
            cpu: Family::new(
                "mirror_policy_cpu_seconds",
                "Agent CPU time spent on a policy's copies, by thread: drain (its rules and \
                 pcap-filter, encoding its copies; the drain thread's CPU clock read per drain \
                 round, split by the policy's share of the round) or output (its outputs' \
                 sender threads: segmenting, checksums, sending).",
                Counter,
            ),
            attached: Family::new(
                "mirror_attached_interfaces",
                "Interfaces with the hooks attached.",
                Gauge,
            ),
            ring_size: Family::new(
                "mirror_ring_buffer_size_bytes",
                "Size of the BPF ring buffers, summed over the tenants' rings.",
                Gauge,
            ),
            ring_pending: Family::new(
                "mirror_ring_buffer_pending_bytes",
                "Bytes in the ring buffers not yet released: written by the hooks and not yet \
                 read, or read and not yet sent by every output.",
                Gauge,
            ),
        }
    }

    fn into_vec(self) -> Vec<Family> {
        vec![
            self.seen_packets,
            self.seen_bytes,
            self.mirrored_packets,
            self.mirrored_bytes,
            self.truncated,
            self.own_traffic,
            self.dropped,
            self.delivered,
            self.sent_packets,
            self.sent_bytes,
            self.mtu_truncated,
            self.super_packets,
            self.segments,
            self.checksums_finished,
            self.queue_bytes,
            self.cpu,
            self.attached,
            self.ring_size,
            self.ring_pending,
        ]
    }
}
