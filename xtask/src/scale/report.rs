//! The scale run's figures, its verdict against issue #4's targets, and
//! `target/scale/report.md`.

use std::{fmt::Write as _, net::Ipv4Addr, time::Duration};

use anyhow::{Result, bail};

use super::{
    ATTACH_TARGET, AttachPoint, GIVE_UP, POLL, RSS_TARGET_KIB,
    gauge::{ATTACHED, Gauge},
    memory::Memory,
    topology::{POD_IF, SetupTimes},
};
use crate::bench::{
    report::{Machine, median},
    scrape::METRICS_ADDR,
};

/// Everything one run measured.
pub struct Figures {
    pub pods: usize,
    pub setup: SetupTimes,
    /// Creating the N Pod objects in the fake API server.
    pub create_objects: Duration,
    /// Per pod: since the Pod objects were created, when both hooks were
    /// seen on its end (see [`Figures::attach_point`]).
    pub attach: Vec<Option<Duration>>,
    /// The agent's count on its /metrics, since the Pod objects were created.
    pub counted: Gauge,
    pub attach_cpu_ns: f64,
    /// When the policy's status first said `attachedPods == N`.
    pub status: Option<Duration>,
    /// The last `(matchedPods, attachedPods)` seen before that.
    pub status_seen: Option<(u64, u64)>,
    pub baseline: Memory,
    pub idle: Memory,
    pub idle_secs: f64,
    pub idle_cpu_ns: f64,
    /// Per pod: since the Pod objects were deleted, when no hook was left.
    pub detach: Vec<Option<Duration>>,
    /// The agent's count on its /metrics, since the Pod objects were deleted.
    pub counted_detach: Gauge,
    pub detach_cpu_ns: f64,
    pub total_cpu_ns: f64,
    pub status_interval: u64,
    pub ring_size: Option<u64>,
    /// `--attach-point` for the agent; `None`: its default (`auto`).
    pub attach_point: Option<AttachPoint>,
    pub log_level: String,
}

impl Figures {
    fn attach_ok(&self) -> bool {
        all_done(&self.attach).is_some_and(|d| d <= ATTACH_TARGET)
    }

    fn rss_ok(&self) -> bool {
        self.idle.rss < RSS_TARGET_KIB
    }

    fn problems(&self) -> Vec<String> {
        let n = self.pods;
        let mut why = Vec::new();
        match all_done(&self.attach) {
            Some(d) if d > ATTACH_TARGET => why.push(format!(
                "the last of {n} pods was attached after {:.2} s (target: within {} s)",
                d.as_secs_f64(),
                ATTACH_TARGET.as_secs()
            )),
            Some(_) => {}
            None => why.push(format!(
                "only {} of {n} pods were attached after {} s (target: all within {} s)",
                self.attach.iter().flatten().count(),
                GIVE_UP.as_secs(),
                ATTACH_TARGET.as_secs()
            )),
        }
        if !self.rss_ok() {
            why.push(format!(
                "the idle agent's RSS is {} (target: under {})",
                mib(self.idle.rss),
                mib(RSS_TARGET_KIB)
            ));
        }
        if self.status.is_none() {
            why.push(format!(
                "the policy's status did not say attachedPods={n} within {} s (last seen: {})",
                GIVE_UP.as_secs(),
                self.status_seen
                    .map_or_else(|| "none".to_owned(), |(_, a)| a.to_string())
            ));
        }
        if self.counted.reached.is_none() {
            why.push(format!(
                "the agent's /metrics did not say {ATTACHED}={n} within {} s (last read: {})",
                GIVE_UP.as_secs(),
                last_read(&self.counted)
            ));
        }
        if all_done(&self.detach).is_none() {
            why.push(format!(
                "only {} of {n} pods were detached {} s after their deletion",
                self.detach.iter().flatten().count(),
                GIVE_UP.as_secs()
            ));
        }
        if self.counted_detach.reached.is_none() {
            why.push(format!(
                "the agent's /metrics did not say {ATTACHED}=0 within {} s of the deletions \
                 (last read: {})",
                GIVE_UP.as_secs(),
                last_read(&self.counted_detach)
            ));
        }
        why
    }

    /// The agent's `--attach-point` and where that put the hooks here.
    fn attach_point_text(&self) -> String {
        let asked = self.attach_point.map_or_else(
            || "not given (the agent's default, `auto`)".to_owned(),
            |p| format!("`--attach-point {p}`"),
        );
        if super::at_pod_end(self.attach_point) {
            format!(
                "{asked}: each pod's own `{POD_IF}`, inside its namespace (the agent loads \
                 programs for each pod namespace)"
            )
        } else {
            format!("{asked}: the host ends, in the node namespace")
        }
    }

    /// Fails, saying which, when a target is missed or a phase did not finish.
    pub fn check(&self) -> Result<()> {
        let why = self.problems();
        if why.is_empty() {
            return Ok(());
        }
        bail!(
            "scale: target missed: {}; see target/scale/report.md and target/scale/agent.log",
            why.join("; ")
        )
    }
}

/// When the last of `times` got there, if all did.
pub fn all_done(times: &[Option<Duration>]) -> Option<Duration> {
    times
        .iter()
        .try_fold(Duration::ZERO, |m, t| Some(m.max((*t)?)))
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "–".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()))
}

fn cpu(ns: f64) -> String {
    format!("{:.2} s", ns / 1e9)
}

/// First, median and last of the times that got there.
fn spread(times: &[Option<Duration>]) -> String {
    let done: Vec<f64> = times.iter().flatten().map(Duration::as_secs_f64).collect();
    let first = done.iter().copied().reduce(f64::min);
    let last = done.iter().copied().reduce(f64::max);
    match (first, median(done.clone()), last) {
        (Some(a), Some(m), Some(z)) => format!("first {a:.2} s, median {m:.2} s, last {z:.2} s"),
        _ => "none".to_owned(),
    }
}

pub fn markdown(f: &Figures, m: &Machine, command: &str, collector: Ipv4Addr) -> String {
    let n = f.pods;
    let mut t = String::new();
    let _ = writeln!(t, "# Mirror scale: {n} pods on one node\n");
    let _ = writeln!(
        t,
        "Machine: {} CPUs ({}), {} memory, Linux {}; load average at start {}. \
         Reproduce with `{command}` (as root).\n",
        m.cpus, m.cpu_model, m.memory, m.kernel, m.load_at_start
    );
    let ring = f.ring_size.map_or_else(
        || "its default ring buffer".to_owned(),
        |r| format!("`--ring-size {r}`"),
    );
    let point = f
        .attach_point
        .map_or_else(String::new, |p| format!(" --attach-point {p}"));
    let ends = if super::at_pod_end(f.attach_point) {
        format!("pods' `{POD_IF}` (each asked from inside its namespace)")
    } else {
        "host veths".to_owned()
    };
    let _ = writeln!(
        t,
        "A node namespace with a bridge and {n} pod namespaces, each joined by a veth whose \
         host end is a bridge port. The release agent, `mirror-agent run --node-name … \
         --netns-path DIR --pin-dir … --metrics-addr {METRICS_ADDR} --status-interval \
         {}{point}` with {ring}, runs in the node namespace against the fake API server \
         (`testbed::apiserver`), with one MirrorPolicy selecting every pod (VXLAN to {}). \
         The {n} Pod objects (Running, podIP set) are created at once; every {} ms the \
         kernel is asked which {ends} carry both our tcx programs (BPF_PROG_QUERY), and \
         the agent's /metrics for its `{ATTACHED}`, so times are as polled. Targets \
         (issue #4): all attached within {} s, idle RSS under {}.\n",
        f.status_interval,
        collector,
        POLL.as_millis(),
        ATTACH_TARGET.as_secs(),
        mib(RSS_TARGET_KIB)
    );
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let _ = writeln!(
        t,
        "**{}**: all {n} attached: {} ({}); idle RSS: {} ({}).\n",
        verdict(f.problems().is_empty()),
        secs(all_done(&f.attach)),
        verdict(f.attach_ok()),
        mib(f.idle.rss),
        verdict(f.rss_ok())
    );
    for p in f.problems() {
        let _ = writeln!(t, "- {p}");
    }
    if !f.problems().is_empty() {
        t.push('\n');
    }
    if all_done(&f.attach).is_none() {
        let _ = writeln!(
            t,
            "The attach phase gave up after {} s with pods still to attach, and the agent \
             may have gone on attaching them through the idle and detach phases: the figures \
             after it (idle RSS and CPU, detach times) are not those of an idle agent. See \
             the agent's count below, or target/scale/agent.log, for when it finished.\n",
            GIVE_UP.as_secs()
        );
    }
    t.push_str("| | |\n|---|---|\n");
    let _ = writeln!(t, "| pods (namespaces) | {n} |");
    let _ = writeln!(t, "| attach point | {} |", f.attach_point_text());
    let _ = writeln!(
        t,
        "| setup: namespaces, veths, bridge ports, addresses | {:.2} s |",
        f.setup.total().as_secs_f64()
    );
    let _ = writeln!(
        t,
        "| creating the {n} Pod objects in the fake API server | {:.0} ms |",
        f.create_objects.as_secs_f64() * 1e3
    );
    let _ = writeln!(
        t,
        "| **time to all {n} attached** (target ≤ {} s) | **{}** ({}) |",
        ATTACH_TARGET.as_secs(),
        secs(all_done(&f.attach)),
        spread(&f.attach)
    );
    let _ = writeln!(
        t,
        "| time to the policy's status saying attachedPods={n} | {} (written at most every {} s) |",
        secs(f.status),
        f.status_interval
    );
    let _ = writeln!(
        t,
        "| time to the agent's /metrics saying {ATTACHED}={n} | {} |",
        secs(f.counted.reached)
    );
    let _ = writeln!(
        t,
        "| agent CPU from the Pod objects to all attached | {} |",
        cpu(f.attach_cpu_ns)
    );
    let _ = writeln!(
        t,
        "| agent RSS idle with no pods (baseline) | {} |",
        f.baseline.breakdown()
    );
    let _ = writeln!(
        t,
        "| **agent RSS idle with {n} pods attached**, after {:.0} s (target < {}) | **{}** |",
        f.idle_secs,
        mib(RSS_TARGET_KIB),
        f.idle.breakdown()
    );
    let _ = writeln!(t, "| agent peak RSS (VmHWM) | {} |", mib(f.idle.hwm));
    let _ = writeln!(
        t,
        "| agent CPU while idle with {n} pods | {:.2}% of one CPU |",
        100.0 * f.idle_cpu_ns / 1e9 / f.idle_secs
    );
    let _ = writeln!(
        t,
        "| time to all {n} detached after the Pod objects were deleted | {} ({}) |",
        secs(all_done(&f.detach)),
        spread(&f.detach)
    );
    let _ = writeln!(
        t,
        "| time to the agent's /metrics saying {ATTACHED}=0 after the deletions | {} |",
        secs(f.counted_detach.reached)
    );
    let _ = writeln!(
        t,
        "| agent CPU from the deletions to all detached | {} |",
        cpu(f.detach_cpu_ns)
    );
    let _ = writeln!(
        t,
        "| agent CPU in all (start to detach) | {} |",
        cpu(f.total_cpu_ns)
    );

    if f.idle.bpf_maps.is_some() {
        let _ = writeln!(
            t,
            "\nBPF map mappings: the agent's mmap of the ring buffer ({}), whose data pages \
             the kernel maps twice (for reads across the wrap) and populates at mmap time: \
             VmRSS counts them twice whether or not anything was mirrored, Pss once.",
            f.ring_size.map_or_else(
                || "`--ring-size`, by default 32 MiB for `run`".to_owned(),
                |r| format!("`--ring-size {r}`")
            )
        );
    }
    t.push_str("\n## Setup\n\n| step | s |\n|---|---|\n");
    for (what, took) in &f.setup.steps {
        let _ = writeln!(t, "| {what} | {:.2} |", took.as_secs_f64());
    }
    let _ = writeln!(t, "| total | {:.2} |", f.setup.total().as_secs_f64());

    let _ = writeln!(
        t,
        "\n## The agent's count\n\nEach value of `{ATTACHED}` read on the agent's /metrics \
         (every {} ms) that differed from the one before: the agent's own view, beside the \
         kernel's above, which times the hooks themselves. Its log (RUST_LOG={}) is \
         target/scale/agent.log.\n",
        POLL.as_millis(),
        f.log_level
    );
    for (phase, since, g) in [
        ("attach", "the Pod objects were created", &f.counted),
        ("detach", "the Pod objects were deleted", &f.counted_detach),
    ] {
        let _ = writeln!(t, "{}\n", counted_text(phase, since, g));
    }
    t
}

/// One phase's count as a table, in seconds after `since`, and its failed scrapes.
fn counted_text(phase: &str, since: &str, g: &Gauge) -> String {
    let mut t = format!("{phase}, seconds after {since}:\n\n");
    if g.changes.is_empty() {
        t.push_str("No answer.\n");
    } else {
        let _ = writeln!(t, "| t s | {ATTACHED} |\n|---|---|");
        for (at, v) in &g.changes {
            let _ = writeln!(t, "| {:.2} | {v} |", at.as_secs_f64());
        }
    }
    if g.failed > 0 {
        let _ = write!(t, "\n{} scrapes got no figures", g.failed);
        for (at, e) in &g.errors {
            let _ = write!(t, "; at {:.2} s: {e}", at.as_secs_f64());
        }
        t.push_str(".\n");
    }
    t
}

/// The last value a phase read, or `none`.
fn last_read(g: &Gauge) -> String {
    g.changes
        .last()
        .map_or_else(|| "none".to_owned(), |(_, v)| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three pods, all attached by the kernel's view after 1.5 s, the
    /// agent's count as `counted` read it, and every detach done.
    fn figures(counted: Gauge) -> Figures {
        let ms = Duration::from_millis;
        Figures {
            pods: 3,
            setup: SetupTimes::default(),
            create_objects: ms(20),
            attach: vec![Some(ms(900)), Some(ms(1500)), Some(ms(1200))],
            counted,
            attach_cpu_ns: 2e8,
            status: Some(ms(1800)),
            status_seen: Some((3, 3)),
            baseline: Memory {
                rss: 40 * 1024,
                ..Memory::default()
            },
            idle: Memory {
                rss: 50 * 1024,
                ..Memory::default()
            },
            idle_secs: 10.0,
            idle_cpu_ns: 1e7,
            detach: vec![Some(ms(400)); 3],
            counted_detach: Gauge {
                changes: vec![(ms(50), 3), (ms(350), 0)],
                reached: Some(ms(350)),
                ..Gauge::default()
            },
            detach_cpu_ns: 1e8,
            total_cpu_ns: 1e9,
            status_interval: 10,
            ring_size: None,
            attach_point: None,
            log_level: "info".to_owned(),
        }
    }

    fn machine() -> Machine {
        Machine {
            cpus: 2,
            kernel: "6.12".to_owned(),
            cpu_model: "test".to_owned(),
            memory: "4 GiB".to_owned(),
            load_at_start: "0.00".to_owned(),
        }
    }

    #[test]
    fn reports_the_agents_count_from_metrics() {
        let ms = Duration::from_millis;
        let counted = Gauge {
            changes: vec![(ms(50), 0), (ms(700), 2), (ms(1100), 3)],
            reached: Some(ms(1100)),
            failed: 1,
            errors: vec![(ms(0), "answered 503 Service Unavailable".to_owned())],
        };
        let f = figures(counted);
        assert!(f.problems().is_empty(), "{:?}", f.problems());
        let text = markdown(
            &f,
            &machine(),
            "cargo xtask scale --pods 3",
            Ipv4Addr::LOCALHOST,
        );
        assert!(text.contains("**PASS**"), "{text}");
        for row in [
            "| time to the agent's /metrics saying mirror_attached_interfaces=3 | 1.10 s |",
            "| time to the agent's /metrics saying mirror_attached_interfaces=0 after the deletions | 0.35 s |",
            "| t s | mirror_attached_interfaces |",
            "| 0.70 | 2 |\n| 1.10 | 3 |\n",
            "| 0.05 | 3 |\n| 0.35 | 0 |\n",
            "1 scrapes got no figures; at 0.00 s: answered 503 Service Unavailable.",
            "--metrics-addr 127.0.0.1:9464",
        ] {
            assert!(text.contains(row), "no {row:?} in:\n{text}");
        }
    }

    #[test]
    fn a_count_that_never_gets_there_fails_the_run() {
        let ms = Duration::from_millis;
        let f = figures(Gauge {
            changes: vec![(ms(50), 0), (ms(700), 2)],
            ..Gauge::default()
        });
        let why = f.problems();
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(
            why[0].contains("did not say mirror_attached_interfaces=3")
                && why[0].contains("(last read: 2)"),
            "{why:?}"
        );
        assert!(f.check().is_err());
        let text = markdown(
            &f,
            &machine(),
            "cargo xtask scale --pods 3",
            Ipv4Addr::LOCALHOST,
        );
        assert!(text.contains("**FAIL**"), "{text}");
    }

    #[test]
    fn all_done_needs_every_one() {
        let s = |x| Some(Duration::from_secs(x));
        assert_eq!(all_done(&[s(1), s(3), s(2)]), s(3));
        assert_eq!(all_done(&[s(1), None]), None);
    }
}
