//! What one policy's mirror has done, for its status: copies sent, cut (to
//! the snaplen, or to a tunnel's MTU: apart, as in the metrics), and lost by
//! reason, summed from the kernel's counters of its interfaces, its
//! userspace stage and its outputs. Typed here; the status's own words for
//! them belong to the controller.

use std::collections::BTreeMap;

use mirror_common::Counters;

use super::Mirror;
use crate::{
    datapath::fanout::{PolicyCpu, Running},
    export::Stats,
};

/// Why copies of a policy's packets were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Loss {
    /// The hook found no room in the ring buffer.
    RingFull,
    /// The hook could not copy the packet into its reservation.
    CopyFailed,
    /// Over the policy's rate limit (its budget in the hook).
    RateLimited,
    /// Over an output's queue bound.
    QueueFull,
    /// An output failed to send or write them.
    SendError,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyTotals {
    /// Its interfaces still waiting to be hooked.
    pub queued: u64,
    pub mirrored: u64,
    /// Bytes its outputs sent, their own headers included.
    pub mirrored_bytes: u64,
    /// Agent CPU time spent on it.
    pub cpu: PolicyCpu,
    /// Copies the hook cut to the policy's snaplen.
    pub truncated: u64,
    /// Copies a tunnel cut to fit its MTU (sent all the same).
    pub mtu_truncated: u64,
    /// Copies lost, by reason; reasons that lost none are left out.
    pub lost: BTreeMap<Loss, u64>,
}

impl PolicyTotals {
    /// From the kernel counters of the policy's interfaces (summed), how
    /// many of them are still queued, and the policy in the running fanout.
    fn new<'a>(
        kernel: &Counters,
        queued: u64,
        running: impl IntoIterator<Item = &'a Running>,
    ) -> Self {
        let mut t = Self {
            queued,
            truncated: kernel.truncated,
            ..Self::default()
        };
        let (mut queue_full, mut send_error) = (0, 0);
        for p in running {
            let cpu = p.cpu();
            t.cpu.drain += cpu.drain;
            t.cpu.output += cpu.output;
            for e in p.exporters() {
                let s = e.stats();
                t.mirrored += Stats::get(&s.sent_packets);
                t.mirrored_bytes += Stats::get(&s.sent_bytes);
                t.mtu_truncated += Stats::get(&s.mtu_truncated);
                queue_full += Stats::get(&s.queue_full);
                send_error += Stats::get(&s.send_errors);
            }
        }
        for (reason, n) in [
            (Loss::RingFull, kernel.ring_full),
            (Loss::CopyFailed, kernel.load_failed),
            (Loss::RateLimited, kernel.rate_limited),
            (Loss::QueueFull, queue_full),
            (Loss::SendError, send_error),
        ] {
            if n > 0 {
                t.lost.insert(reason, n);
            }
        }
        t
    }
}

impl Mirror {
    /// One policy's totals (zero for a policy not in the plan).
    pub fn policy_totals(&self, name: &str) -> PolicyTotals {
        let mut kernel = Counters::default();
        for slot in self.policy_slots.get(name).into_iter().flatten() {
            if let Ok(c) = self.hooks.counters(*slot) {
                kernel.add(&c);
            }
        }
        let queued = self.pending.iter().filter(|p| p.policy == name).count() as u64;
        let running = self.fanout.policies().iter().filter(|p| p.name() == name);
        PolicyTotals::new(&kernel, queued, running)
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

    use mirror_common::DIR_INGRESS;
    use tokio::sync::Notify;

    use super::*;
    use crate::{
        datapath::{
            fanout::{Fanout, PolicyStats},
            testing::{frame, iface, pcapng_output, record},
        },
        model::record::WallClock,
        policy::PolicyBody,
    };

    #[test]
    fn the_kernel_the_policy_and_its_outputs_add_up_by_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let progress = Arc::new(Notify::new());
        let a = iface(7);
        let listed = [(a, "veth-a".to_owned())];
        // One output that writes, and one that cannot (ENOSPC).
        let outputs = vec![
            pcapng_output(&dir.path().join("a.pcapng"), &listed, &progress),
            pcapng_output(Path::new("/dev/full"), &listed, &progress),
        ];
        let body = PolicyBody::from_yaml("web", "filter: 'udp'").expect("body");
        let web = Running::new(
            "web".into(),
            Some(body.filters().expect("filters compile")),
            outputs,
            PolicyStats::default(),
        );
        let routes = HashMap::from([(a, ("veth-a".to_owned(), 0))]);
        let clock = WallClock::now().expect("the clocks");
        let mut fanout = Fanout::new(vec![web], routes, clock);
        for ns in [1, 2, 3] {
            fanout.record(&record(a, ns, DIR_INGRESS, &frame(ns == 1, 10)));
        }
        fanout.close(Duration::from_secs(5));

        let kernel = Counters {
            ring_full: 4,
            rate_limited: 2,
            truncated: 2,
            ..Counters::default()
        };
        let totals = PolicyTotals::new(&kernel, 1, fanout.policies());
        // One enhanced packet block: the 52-byte UDP frame, the block's 32
        // bytes around it, and its flags option (direction) with the end
        // of options, 12.
        assert_eq!(totals.mirrored_bytes, 96);
        // Both threads did the policy's work: reading the clock once a
        // batch or round charges it something.
        assert!(totals.cpu.drain > std::time::Duration::ZERO, "{totals:?}");
        assert!(totals.cpu.output > std::time::Duration::ZERO, "{totals:?}");
        assert_eq!(
            totals,
            PolicyTotals {
                queued: 1,
                mirrored: 1,
                mirrored_bytes: 96,
                cpu: totals.cpu,
                truncated: 2,
                mtu_truncated: 0,
                lost: BTreeMap::from([
                    (Loss::RingFull, 4),
                    (Loss::RateLimited, 2),
                    (Loss::SendError, 1),
                ]),
            }
        );
    }

    #[test]
    fn a_policy_not_running_has_only_its_kernel_counters() {
        let kernel = Counters {
            load_failed: 3,
            ..Counters::default()
        };
        let totals = PolicyTotals::new(&kernel, 0, []);
        assert_eq!(totals.mirrored, 0);
        assert_eq!(totals.lost, BTreeMap::from([(Loss::CopyFailed, 3)]));
    }
}
