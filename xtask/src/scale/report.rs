//! The scale run's figures, its verdict against issue #4's targets, and
//! `target/scale/report.md`.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};

use super::{
    ATTACH_TARGET, AttachPoint, GIVE_UP, POLL, RSS_TARGET_KIB,
    topology::{POD_IF, SetupTimes},
};
use crate::bench::report::{Machine, median};

/// The agent's memory, KiB, from /proc/PID/status.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
    /// Heap and stacks.
    pub anon: u64,
    /// File-backed pages, including the BPF maps the agent has mmapped
    /// (the ring buffer's pages are inserted at mmap time).
    pub file: u64,
    pub shmem: u64,
    /// Proportional set size (/proc/PID/smaps_rollup): a page mapped twice
    /// by the agent counts once here, twice in VmRSS.
    pub pss: Option<u64>,
    /// Rss of the agent's mappings of BPF maps (`anon_inode:bpf-map` in
    /// /proc/PID/smaps): the ring buffer, its data pages mapped twice.
    pub bpf_maps: Option<u64>,
}

impl Memory {
    pub fn of(pid: u32) -> Result<Self> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .with_context(|| format!("no {key} in {path}"))
        };
        Ok(Self {
            rss: get("VmRSS:")?,
            hwm: get("VmHWM:")?,
            anon: get("RssAnon:")?,
            file: get("RssFile:")?,
            shmem: get("RssShmem:")?,
            pss: smaps_rollup_pss(pid),
            bpf_maps: bpf_map_rss(pid),
        })
    }

    fn breakdown(&self) -> String {
        let mut t = format!(
            "{} (RssAnon {}, RssFile {}, RssShmem {}",
            mib(self.rss),
            mib(self.anon),
            mib(self.file),
            mib(self.shmem)
        );
        if let Some(b) = self.bpf_maps {
            let _ = write!(t, "; BPF map mappings {}", mib(b));
        }
        if let Some(p) = self.pss {
            let _ = write!(t, "; Pss {}", mib(p));
        }
        t.push(')');
        t
    }
}

/// `Pss:` of /proc/PID/smaps_rollup, KiB.
fn smaps_rollup_pss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The summed `Rss:` of the mappings named `anon_inode:bpf-map` in
/// /proc/PID/smaps, KiB.
fn bpf_map_rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut in_map = false;
    let mut total = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            // A mapping's header: range, perms, offset, dev, inode, [name].
            in_map = fields.nth(4) == Some("anon_inode:bpf-map");
        } else if in_map && first == "Rss:" {
            total += fields.next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}

/// One `applied` line of the agent's log: a reconcile that changes the hooks.
#[derive(Clone, Debug)]
pub struct Reconcile {
    /// Seconds after the Pod objects were created (negative: before).
    pub at: Option<f64>,
    pub interfaces: Option<u64>,
}

/// Everything one run measured.
pub struct Figures {
    pub pods: usize,
    pub setup: SetupTimes,
    /// Creating the N Pod objects in the fake API server.
    pub create_objects: Duration,
    pub pods_created_at: SystemTime,
    /// Per pod: since the Pod objects were created, when both hooks were
    /// seen on its end (see [`Figures::attach_point`]).
    pub attach: Vec<Option<Duration>>,
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
    pub detach_cpu_ns: f64,
    pub total_cpu_ns: f64,
    pub status_interval: u64,
    pub ring_size: Option<u64>,
    /// `--attach-point` for the agent; `None`: its default (`auto`).
    pub attach_point: Option<AttachPoint>,
    pub log_level: String,
    pub reconciles: Vec<Reconcile>,
    /// The agent's `attached` lines, seconds after the Pod objects were created.
    pub attached_logged: Vec<f64>,
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
        if all_done(&self.detach).is_none() {
            why.push(format!(
                "only {} of {n} pods were detached {} s after their deletion",
                self.detach.iter().flatten().count(),
                GIVE_UP.as_secs()
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

/// The reconciles that changed the hooks (`applied` lines), with their
/// time relative to `origin` (the log's timestamps are UTC RFC 3339).
pub fn reconciles(log: &str, origin: SystemTime) -> Vec<Reconcile> {
    log.lines()
        .filter(|l| l.contains(" applied policies="))
        .map(|l| Reconcile {
            at: since(l, origin),
            interfaces: l
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("interfaces="))
                .and_then(|v| v.parse().ok()),
        })
        .collect()
}

/// When the agent logged an interface hooked (its `attached` lines), in
/// seconds after `origin`: the hooks of a plan go on after its `applied`
/// line, a few at a time.
pub fn attached_lines(log: &str, origin: SystemTime) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains(" mirror_agent::mirror: attached "))
        .filter_map(|l| since(l, origin))
        .collect()
}

/// A log line's timestamp, in seconds after `origin` (negative: before).
fn since(line: &str, origin: SystemTime) -> Option<f64> {
    let origin = origin
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    line.split_whitespace()
        .next()
        .and_then(unix_seconds)
        .map(|t| t - origin)
}

/// `2025-06-01T11:45:47.123456Z` as seconds since the epoch.
fn unix_seconds(stamp: &str) -> Option<f64> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let s = t.next()?.parse::<f64>().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3600.0 + min * 60.0 + s)
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
         --netns-path DIR --pin-dir … --metrics-addr off --status-interval {}{point}` with \
         {ring}, runs in the node namespace against the fake API server \
         (`testbed::apiserver`), with one MirrorPolicy selecting every pod (VXLAN to {}). \
         The {n} Pod objects (Running, podIP set) are created at once; the kernel is asked \
         every {} ms which {ends} carry both our tcx programs (BPF_PROG_QUERY), so times \
         are as polled. Targets (issue #4): all attached within {} s, idle RSS under {}.\n",
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
             the `attached` lines of target/scale/agent.log for when it finished.\n",
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
        "\n## Reconciles\n\nThe agent's `applied` log lines (a reconcile that changes the \
         hooks), in seconds after the Pod objects were created; its log (RUST_LOG={}) is \
         target/scale/agent.log.\n",
        f.log_level
    );
    let logged = &f.attached_logged;
    let (first, last) = (
        logged.iter().copied().reduce(f64::min),
        logged.iter().copied().reduce(f64::max),
    );
    if let (Some(a), Some(z)) = (first, last) {
        let _ = writeln!(
            t,
            "It logged {} `attached` lines (an interface hooked), the first {a:.2} s and the \
             last {z:.2} s after the Pod objects were created: a plan's `applied` line comes \
             before its interfaces are hooked, a few at a time.\n",
            logged.len()
        );
    }
    if f.reconciles.is_empty() {
        t.push_str("None logged (RUST_LOG hides info?).\n");
    } else {
        t.push_str("| t s | interfaces |\n|---|---|\n");
        for r in &f.reconciles {
            let _ = writeln!(
                t,
                "| {} | {} |",
                r.at.map_or_else(|| "?".to_owned(), |a| format!("{a:.2}")),
                r.interfaces
                    .map_or_else(|| "?".to_owned(), |i| i.to_string())
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_stamps() {
        assert_eq!(unix_seconds("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(unix_seconds("2000-03-01T00:00:01.5Z"), Some(951_868_801.5));
        assert_eq!(unix_seconds("nonsense"), None);
    }

    #[test]
    fn reconcile_lines() {
        let log = "1970-01-01T00:00:10.250000Z  INFO mirror_agent::run: applied policies=1 interfaces=250\n\
                   1970-01-01T00:00:10.300000Z  INFO mirror_agent::mirror: attached interface=x\n\
                   1970-01-01T00:00:12.000000Z  INFO mirror_agent::mirror: detached: no longer in the policy interface=x";
        let r = reconciles(log, UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(r.len(), 1);
        assert!((r[0].at.unwrap() - 0.25).abs() < 1e-6);
        assert_eq!(r[0].interfaces, Some(250));
        let a = attached_lines(log, UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(a.len(), 1);
        assert!((a[0] - 0.3).abs() < 1e-6);
    }

    #[test]
    fn all_done_needs_every_one() {
        let s = |x| Some(Duration::from_secs(x));
        assert_eq!(all_done(&[s(1), s(3), s(2)]), s(3));
        assert_eq!(all_done(&[s(1), None]), None);
    }
}
