//! The soak's verdict (RSS growth, stalls), its one-line progress and
//! `target/soak/report.md`.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Result, bail};

use super::{
    INTERVAL, RSS_GROWTH_LIMIT, RateChoice, SCRAPE_TIMEOUT, Sample, SoakRun, bench_report::Machine,
};
use crate::bench::{configs::SNAPLEN, topology::BenchNet};

pub(super) fn one_line(s: &Sample) -> String {
    let mut t = format!("{:>5.0} s", s.at.as_secs_f64());
    match s.memory_kib {
        Some((rss, _)) => {
            let _ = write!(t, ", RSS {:.1} MiB", rss as f64 / 1024.0);
        }
        None => t.push_str(", RSS ?"),
    }
    let _ = write!(t, ", offered {}", s.offered);
    if let Some(c) = s.collected {
        let _ = write!(t, ", collected {c:.0}");
    }
    if let Some(a) = &s.agent {
        let _ = write!(
            t,
            ", ring {:.0} KiB, queue {:.0} KiB, dropped {:.0}",
            a.pending_bytes / 1024.0,
            a.queue_bytes / 1024.0,
            a.drops.values().sum::<f64>()
        );
    }
    if let Some(why) = &s.stall {
        let _ = write!(t, "  STALL: {why}");
    }
    t
}

/// RSS growth and stalls, against the pass criteria.
pub(super) struct Verdict {
    /// The first sample at or after the warm-up, and the last one.
    rss_start: Option<(Duration, u64)>,
    rss_end: Option<(Duration, u64)>,
    growth: Option<f64>,
    /// RssAnon at the same two samples (reported, not judged).
    anon: Option<(u64, u64)>,
    stalls: usize,
}

impl Verdict {
    pub(super) fn new(run: &SoakRun, warmup: Duration) -> Self {
        let rss = |s: &Sample| s.memory_kib.map(|(r, _)| (s.at, r));
        let rss_start = run.samples.iter().filter(|s| s.at >= warmup).find_map(rss);
        let rss_end = run.samples.iter().rev().find_map(rss);
        let growth = match (rss_start, rss_end) {
            (Some((t0, a)), Some((t1, b))) if t1 > t0 && a > 0 => {
                Some((b as f64 - a as f64) / a as f64)
            }
            _ => None,
        };
        let anon_at = |at: Duration| run.samples.iter().find(|s| s.at == at)?.anon_kib;
        let anon = rss_start
            .zip(rss_end)
            .and_then(|((t0, _), (t1, _))| anon_at(t0).zip(anon_at(t1)));
        Self {
            rss_start,
            rss_end,
            growth,
            anon,
            stalls: run.samples.iter().filter(|s| s.stall.is_some()).count(),
        }
    }

    fn holds(&self) -> bool {
        self.growth.is_some_and(|g| g < RSS_GROWTH_LIMIT) && self.stalls == 0
    }

    pub(super) fn check(&self) -> Result<()> {
        if self.holds() {
            return Ok(());
        }
        let mut why = Vec::new();
        match self.growth {
            Some(g) if g >= RSS_GROWTH_LIMIT => why.push(format!(
                "the agent's RSS grew by {:.1}% (limit: less than {:.0}%)",
                100.0 * g,
                100.0 * RSS_GROWTH_LIMIT
            )),
            Some(_) => {}
            None => why.push(
                "no RSS after the warm-up and at the end to compare (the run is too short, \
                 or /proc could not be read)"
                    .to_owned(),
            ),
        }
        if self.stalls > 0 {
            why.push(format!("{} sampling interval(s) stalled", self.stalls));
        }
        bail!(
            "soak failed: {}; see target/soak/report.md",
            why.join(", and ")
        )
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub(super) fn markdown(
    run: &SoakRun,
    v: &Verdict,
    rate: &RateChoice,
    m: &Machine,
    command: &str,
    warmup: Duration,
    net: &BenchNet,
) -> String {
    let mut t = String::new();
    let last = run.samples.last();
    let _ = writeln!(t, "# Mirror soak\n");
    let _ = writeln!(
        t,
        "Machine: {} CPUs ({}), {} memory, Linux {}; load average at start {}. \
         Reproduce with `{command}` (as root).\n",
        m.cpus, m.cpu_model, m.memory, m.kernel, m.load_at_start
    );
    let _ = writeln!(
        t,
        "The release agent, `mirror-agent attach -i {} --snaplen {} --output vxlan://{}?vni=…` \
         in the node namespace, to `mirror-agent collect` in the collector namespace \
         (bench configuration 3), mirrors 64-byte UDP frames from the client at {} pps \
         ({}) for {:.0} s. A sample every {} s; the RSS baseline is the first sample after \
         {} s of warm-up. It holds when RSS grew by less than {:.0}% from there to the \
         end and no interval stalled (the collector received nothing while traffic was \
         sent, or the agent's /metrics did not answer within {} s or lacked a family read \
         here).\n",
        net.host_if,
        SNAPLEN,
        net.collector.collector_v4,
        run.pps,
        rate.describe(),
        run.traffic.as_secs_f64(),
        INTERVAL.as_secs(),
        warmup.as_secs(),
        100.0 * RSS_GROWTH_LIMIT,
        SCRAPE_TIMEOUT.as_secs()
    );
    let _ = writeln!(
        t,
        "**{}**: RSS growth {}, stalls {}.\n",
        if v.holds() { "PASS" } else { "FAIL" },
        v.growth
            .map_or_else(|| "unknown".to_owned(), |g| format!("{:+.1}%", 100.0 * g)),
        v.stalls
    );
    t.push_str("| | |\n|---|---|\n");
    let at = |x: Option<(Duration, u64)>| {
        x.map_or_else(
            || "–".to_owned(),
            |(d, k)| format!("{} (at {:.0} s)", mib(k), d.as_secs_f64()),
        )
    };
    let _ = writeln!(
        t,
        "| agent RSS at start (after warm-up) | {} |",
        at(v.rss_start)
    );
    let _ = writeln!(t, "| agent RSS at end | {} |", at(v.rss_end));
    let _ = writeln!(
        t,
        "| RSS growth | {} |",
        v.growth
            .map_or_else(|| "–".to_owned(), |g| format!("{:+.1}%", 100.0 * g))
    );
    if let Some((a, b)) = v.anon {
        let _ = writeln!(
            t,
            "| of which RssAnon (heap, stacks; the rest is mostly the ring buffer, mapped twice) | {} → {} |",
            mib(a),
            mib(b)
        );
    }
    if let Some((_, hwm)) = last.and_then(|s| s.memory_kib) {
        let _ = writeln!(t, "| agent peak RSS (VmHWM) | {} |", mib(hwm));
    }
    let _ = writeln!(
        t,
        "| stalls | {} of {} intervals |",
        v.stalls,
        run.samples.len().saturating_sub(1)
    );
    let secs = run.traffic.as_secs_f64();
    let _ = writeln!(
        t,
        "| datagrams sent | {} ({:.0}/s; {} send errors) |",
        run.sent,
        run.sent as f64 / secs,
        run.send_errors
    );
    let o = &run.outcome;
    let _ = writeln!(t, "| frames that crossed the hook | {} |", o.hook_frames);
    if let Some(c) = o.captured {
        let _ = writeln!(
            t,
            "| written by the collector | {c} ({}) |",
            if o.hook_frames > 0 {
                format!("{:.3}% complete", 100.0 * c as f64 / o.hook_frames as f64)
            } else {
                "–".to_owned()
            }
        );
    }
    if let Some(l) = o.collector_link {
        let _ = writeln!(t, "| frames on the collector's link | {l} |");
    }
    let _ = writeln!(
        t,
        "| agent CPU | {:.1}% of one CPU |",
        100.0 * run.agent_cpu_ns / 1e9 / secs
    );
    // Drops as /metrics had them at the last answer, and the agent's summary.
    let drops = run.samples.iter().rev().find_map(|s| s.agent.as_ref());
    let drop_text = drops.map_or_else(
        || "– (no answer)".to_owned(),
        |a| {
            let list: Vec<String> = a.drops.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
            if list.is_empty() {
                "none".to_owned()
            } else {
                list.join(", ")
            }
        },
    );
    let _ = writeln!(t, "| drops by reason (last /metrics) | {drop_text} |");
    let keys = [
        "seen",
        "mirrored",
        "written",
        "lost",
        "lost_ring_full",
        "lost_copy_failed",
        "lost_malformed",
        "lost_output",
    ];
    let summary: Vec<String> = keys
        .iter()
        .filter_map(|k| Some(format!("{k}={}", o.agent.get(*k)?)))
        .chain(
            ["sent", "lost_queue_full", "lost_send_error"]
                .iter()
                .filter_map(|k| Some(format!("{k}={}", o.output.get(*k)?))),
        )
        .collect();
    let _ = writeln!(t, "| agent summary at stop | {} |", summary.join(" "));
    if !run.scrape_errors.is_empty() {
        t.push_str("\nThe agent's /metrics gave no figures:\n\n");
        for e in &run.scrape_errors {
            let _ = writeln!(t, "- {e}");
        }
    }
    t.push_str(
        "\n## Samples\n\n\
         Cumulative since the traffic started, except the gauges (ring-buffer fill and queue).\n\n\
         | t s | RSS MiB | RssAnon MiB | ring pending KiB | queue KiB | datagrams sent | offered at hook | mirrored | sent by agent | collected | dropped | stall |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let dash = || "–".to_owned();
    for s in &run.samples {
        let a = s.agent.as_ref();
        let _ = writeln!(
            t,
            "| {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.at.as_secs_f64(),
            s.memory_kib
                .map_or_else(dash, |(r, _)| format!("{:.1}", r as f64 / 1024.0)),
            s.anon_kib
                .map_or_else(dash, |k| format!("{:.1}", k as f64 / 1024.0)),
            a.map_or_else(dash, |a| format!("{:.0}", a.pending_bytes / 1024.0)),
            a.map_or_else(dash, |a| format!("{:.0}", a.queue_bytes / 1024.0)),
            s.sent,
            s.offered,
            a.map_or_else(dash, |a| format!("{:.0}", a.mirrored)),
            a.map_or_else(dash, |a| format!("{:.0}", a.output_sent)),
            s.collected.map_or_else(dash, |c| format!("{c:.0}")),
            a.map_or_else(dash, |a| format!("{:.0}", a.drops.values().sum::<f64>())),
            s.stall.as_deref().unwrap_or(""),
        );
    }
    t
}
