//! Each policy's usage on this node for its status entry (`nodes[].usage`):
//! rates over a window of at least the status interval, so the entry
//! changes at most once per interval however often it is looked at.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{controller::snapshot::PolicyRef, datapath::mirror::PolicyTotals, k8s::NodeUsage};

/// The counters a window starts from.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    packets: u64,
    bytes: u64,
    cpu: Duration,
}

impl Mark {
    fn of(t: &PolicyTotals, at: Instant) -> Self {
        Self {
            at,
            packets: t.mirrored,
            bytes: t.mirrored_bytes,
            cpu: t.cpu.total(),
        }
    }
}

#[derive(Default)]
pub struct Windows {
    /// Per policy: the open window's start, and the last closed window's usage.
    open: HashMap<PolicyRef, (Mark, Option<NodeUsage>)>,
}

impl Windows {
    /// The policy's usage over its last window of at least `interval`,
    /// closing the open one if it is that old; none before the first closes.
    pub fn usage(
        &mut self,
        policy: &PolicyRef,
        totals: &PolicyTotals,
        interval: Duration,
        now: Instant,
    ) -> Option<NodeUsage> {
        let (start, last) = self
            .open
            .entry(policy.clone())
            .or_insert_with(|| (Mark::of(totals, now), None));
        let span = now.saturating_duration_since(start.at);
        if span >= interval.max(Duration::from_secs(1)) {
            let end = Mark::of(totals, now);
            let secs = span.as_secs_f64();
            // A counter that went back (outputs replaced) reads as none.
            let per_second = |a: u64, b: u64| (b.saturating_sub(a) as f64 / secs).round() as u64;
            let cpu = end.cpu.saturating_sub(start.cpu);
            *last = Some(NodeUsage {
                interval_seconds: span.as_secs_f64().round() as u64,
                packets_per_second: per_second(start.packets, end.packets),
                bytes_per_second: per_second(start.bytes, end.bytes),
                cpu_millicores: (cpu.as_secs_f64() * 1000.0 / secs).round() as u64,
                // Milliseconds are enough for charging back, and keep the
                // entry from changing with every microsecond.
                cpu_seconds: (end.cpu.as_secs_f64() * 1000.0).round() / 1000.0,
            });
            *start = end;
        }
        last.clone()
    }

    /// Forgets the policies not in `kept`.
    pub fn retain(&mut self, kept: impl Fn(&PolicyRef) -> bool) {
        self.open.retain(|p, _| kept(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::fanout::PolicyCpu;

    fn totals(packets: u64, bytes: u64, cpu_ms: u64) -> PolicyTotals {
        PolicyTotals {
            mirrored: packets,
            mirrored_bytes: bytes,
            cpu: PolicyCpu {
                drain: Duration::from_millis(cpu_ms / 2),
                output: Duration::from_millis(cpu_ms - cpu_ms / 2),
            },
            ..PolicyTotals::default()
        }
    }

    #[test]
    fn rates_are_over_the_last_closed_window() {
        let web = PolicyRef {
            cluster: false,
            namespace: "shop".into(),
            name: "web".into(),
        };
        let mut w = Windows::default();
        let t0 = Instant::now();
        let ten = Duration::from_secs(10);
        assert_eq!(w.usage(&web, &totals(100, 1000, 0), ten, t0), None);
        // Not yet an interval: still none, and the window stays open.
        let t5 = t0 + Duration::from_secs(5);
        assert_eq!(w.usage(&web, &totals(500, 5000, 100), ten, t5), None);
        let t10 = t0 + ten;
        let first = w.usage(&web, &totals(1100, 21_000, 2500), ten, t10);
        let expected = NodeUsage {
            interval_seconds: 10,
            packets_per_second: 100,
            bytes_per_second: 2000,
            // 2.5 s of CPU in 10 s: a quarter of a CPU.
            cpu_millicores: 250,
            cpu_seconds: 2.5,
        };
        assert_eq!(first, Some(expected.clone()));
        // Within the next window, the last closed one's figures stand.
        let t15 = t10 + Duration::from_secs(5);
        assert_eq!(
            w.usage(&web, &totals(9000, 90_000, 9000), ten, t15),
            Some(expected)
        );
        // Counters that went back (outputs replaced) give no negative rate.
        let t20 = t10 + ten;
        let after = w
            .usage(&web, &totals(10, 10, 2500), ten, t20)
            .expect("usage");
        assert_eq!((after.packets_per_second, after.bytes_per_second), (0, 0));
        assert_eq!(after.cpu_millicores, 0);
        w.retain(|_| false);
        assert_eq!(w.usage(&web, &totals(10, 10, 2500), ten, t20), None);
    }
}
