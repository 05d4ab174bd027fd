//! From samples to `target/bench/report.md` (medians, ratios to no hook,
//! the targets) and `samples.csv` (every run, for a second look).

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::{Context, Result};

pub(crate) use super::summary::{COMPLETE, Knee, knee, median};
use super::{Sample, configs::Config, summary::Summary};

/// The machine the numbers come from.
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub cpu_model: String,
    pub memory: String,
    pub load_at_start: String,
}

impl Machine {
    pub fn probe() -> Result<Self> {
        let read = |p: &str| std::fs::read_to_string(p).with_context(|| format!("reading {p}"));
        let cpuinfo = read("/proc/cpuinfo")?;
        let meminfo = read("/proc/meminfo")?;
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map_or_else(|| "?".to_owned(), |(_, v)| v.trim().to_owned())
        };
        Ok(Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            kernel: read("/proc/sys/kernel/osrelease")?.trim().to_owned(),
            cpu_model: field(&cpuinfo, "model name"),
            memory: field(&meminfo, "MemTotal"),
            load_at_start: read("/proc/loadavg")?
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
        })
    }
}

/// A line per run, as the bench goes.
pub fn one_line(s: &Sample) -> String {
    let mut out = String::new();
    if let Some(g) = s.tcp_gbps {
        let _ = write!(out, "{g:.2} Gbit/s");
    }
    if let Some(u) = s.udp {
        let _ = write!(
            out,
            "offered {:.0} pps, delivered {:.0} pps",
            u.offered_pps, u.delivered_pps
        );
    }
    if let Some(x) = s.completeness() {
        let _ = write!(out, ", complete {:.2}%", 100.0 * x);
    }
    if let Some(x) = s.byte_completeness() {
        let _ = write!(out, ", bytes {:.2}%", 100.0 * x);
    }
    if let Some(ns) = s.prog_run_ns {
        let _ = write!(out, "program alone {ns:.1} ns/run");
    }
    if let Some(ns) = s.prog_floor_ns {
        let _ = write!(out, " (test-run floor {ns:.1})");
    }
    if let Some((ns, cnt)) = s.hook_run
        && cnt > 0
    {
        let _ = write!(out, ", hook {:.1} ns/run", ns as f64 / cnt as f64);
    }
    let a = &s.outcome.agent;
    if let Some(seen) = a.get("seen") {
        let get = |k: &str| a.get(k).copied().unwrap_or(0);
        let _ = write!(
            out,
            ", agent seen={seen} mirrored={} filtered={} lost={}",
            get("mirrored"),
            get("filtered"),
            get("lost")
        );
    }
    out
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{x:.digits$}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{:.1}%", 100.0 * x))
}

fn kpps(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{:.0}k", x / 1000.0))
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |x| format!("{x:.2}×"))
}

fn knee_text(k: Option<Knee>) -> String {
    k.map_or_else(
        || "none".to_owned(),
        |k| {
            format!(
                "{}{}",
                if k.lower_bound { "≥ " } else { "" },
                kpps(Some(k.pps))
            )
        },
    )
}

/// The ratio table alone (docs/performance.md copies it).
pub fn ratio_table(s: &Summary) -> String {
    let mut t = String::new();
    t.push_str(
        "| configuration | UDP 64 B pps | TCP ×1 | TCP ×4 | complete at full rate (UDP) | bytes captured ÷ at hook, TCP ×1 / ×4 | knee (≥ 99.9%) | hook ns/pkt (BPF stats) | program alone ns/run (test run) |\n\
         |---|---|---|---|---|---|---|---|---|\n",
    );
    for c in s.configs.iter().copied() {
        let r = s.row(c);
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.label(),
            ratio(s.ratio(c, |r| r.udp_pps)),
            ratio(s.ratio(c, |r| r.tcp1)),
            ratio(s.ratio(c, |r| r.tcp4)),
            if c.mirrors() {
                pct(r.completeness_max)
            } else {
                "–".into()
            },
            if c.whole_packets() {
                format!("{} / {}", pct(r.bytes_tcp1), pct(r.bytes_tcp4))
            } else {
                "–".into()
            },
            if c.mirrors() && s.sweep.iter().any(|p| p.0 == c) {
                knee_text(r.knee)
            } else {
                "–".into()
            },
            f(r.hook_ns, 1),
            f(r.prog_ns, 1),
        );
    }
    t
}

pub fn markdown(s: &Summary, m: &Machine, command: &str, elapsed: Duration, smoke: bool) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "# Mirror benchmark\n");
    if smoke {
        t.push_str(
            "**Smoke run**: one short repetition of a reduced plan, to check the harness. \
             The numbers mean nothing.\n\n",
        );
    }
    let _ = writeln!(
        t,
        "Machine: {} CPUs ({}), {} memory, Linux {}; load average at start {}. \
         {} repetition(s), {:.0} s in all. Reproduce with `{command}` (as root).\n",
        m.cpus,
        m.cpu_model,
        m.memory,
        m.kernel,
        m.load_at_start,
        s.reps,
        elapsed.as_secs_f64()
    );
    t.push_str("## Ratios to no hook (medians)\n\n");
    t.push_str(&ratio_table(s));
    t.push_str("\n## Absolute medians\n\n");
    t.push_str(
        "| configuration | UDP delivered pps | UDP offered pps | copies/s at full rate | TCP ×1 Gbit/s | TCP ×4 Gbit/s | copier CPU ns/copy | softirq ns/pkt | RSS MiB (peak) | agent lost at full rate (ring full / queue full / send error) |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in s.configs.iter().copied() {
        let r = s.row(c);
        let lost = match r.lost_share {
            Some(_) => format!(
                "{} ({} / {} / {})",
                pct(r.lost_share),
                pct(r.lost_ring_share),
                pct(r.lost_queue_share),
                pct(r.lost_send_share)
            ),
            None => "–".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.label(),
            kpps(r.udp_pps),
            kpps(r.offered_pps),
            kpps(r.mirrored_pps),
            f(r.tcp1, 2),
            f(r.tcp4, 2),
            f(r.copier_ns_per_copy, 0),
            f(r.softirq_ns_per_pkt, 0),
            match (r.rss_mib, r.hwm_mib) {
                (Some(a), Some(b)) => format!("{a:.0} ({b:.0})"),
                _ => "–".into(),
            },
            lost,
        );
    }
    if let Some(share) = s.row(Config::HookNothing).filtered_share {
        let _ = writeln!(
            t,
            "\nConfiguration 2: the kernel prefilter kept {} of the frames the hook saw out of the ring buffer (`filtered`).",
            pct(Some(share))
        );
    }
    t.push_str("\n## Targets\n\n");
    t.push_str(&targets(s));
    t.push_str("\n## Sweep points (offered pps at the hook → completeness)\n\n");
    for c in s.configs.iter().copied().filter(|c| c.mirrors()) {
        let mut pts: Vec<_> = s.sweep.iter().filter(|p| p.0 == c).collect();
        pts.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.total_cmp(&b.2)));
        let text: Vec<String> = pts
            .iter()
            .map(|(_, rep, pps, x)| format!("r{} {}→{:.2}%", rep + 1, kpps(Some(*pps)), 100.0 * x))
            .collect();
        let _ = writeln!(t, "- {}: {}", c.label(), text.join(", "));
    }
    t.push_str(METHOD);
    t
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "**met**",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn targets(s: &Summary) -> String {
    let mut t = String::from("Issue #19, defaults first:\n\n");
    let nothing = s.ratio(Config::HookNothing, |r| r.udp_pps);
    let prog_ns = s.row(Config::HookNothing).prog_ns;
    let floor_ns = s.row(Config::HookNothing).prog_floor_ns;
    let less_floor = prog_ns.zip(floor_ns).map(|(p, f)| p - f);
    let _ = writeln!(
        t,
        "- Hook matching nothing, UDP rate ≥ 0.98×: {} ({}).",
        verdict(nothing.map(|x| x >= 0.98)),
        ratio(nothing)
    );
    let _ = writeln!(
        t,
        "- Hook matching nothing, ≤ 50 ns per packet for the program alone: {} ({} ns by test run, the harness's own {} ns included ({} ns without); {} ns under the BPF statistics).",
        verdict(prog_ns.map(|x| x <= 50.0)),
        f(prog_ns, 1),
        f(floor_ns, 1),
        f(less_floor, 1),
        f(s.row(Config::HookNothing).hook_ns, 1)
    );
    let vxlan = s.row(Config::Vxlan);
    let prod = |a: Config, b: Config| match (s.row(a).udp_pps, s.row(b).udp_pps) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let vs128 = prod(Config::Vxlan, Config::Tcpdump128);
    let _ = writeln!(
        t,
        "- Defaults, VXLAN to `collect`, 64-byte UDP at full rate: ≥ 99.9% complete: {} ({}); production ≥ tcpdump -s 128's: {} ({}).",
        verdict(vxlan.completeness_max.map(|x| x >= COMPLETE)),
        pct(vxlan.completeness_max),
        verdict(vs128.map(|x| x >= 1.0)),
        ratio(vs128)
    );
    let pcapng = s.row(Config::Pcapng);
    let tcp_vs = match (pcapng.tcp1, s.row(Config::TcpdumpWhole).tcp1) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let _ = writeln!(
        t,
        "- Whole packets, one TCP stream, pcapng on tmpfs: 100% complete (bytes): {} ({}); production ≥ tcpdump with an equal buffer: {} ({}).",
        verdict(pcapng.bytes_tcp1.map(|x| x >= 0.9995)),
        pct(pcapng.bytes_tcp1),
        verdict(tcp_vs.map(|x| x >= 1.0)),
        ratio(tcp_vs)
    );
    t.push_str("\nIssue #6's, on the tuned rows (snaplen 128):\n\n");
    let tcpdump = s.row(Config::Tcpdump128);
    for c in [Config::VxlanTuned, Config::PcapngTuned] {
        let r = s.row(c);
        let _ = writeln!(t, "- {}:", c.label());
        let swept = s.sweep.iter().any(|p| p.0 == c);
        // No knee at all: already incomplete at the lowest rate measured.
        let below = match (r.knee, r.below_knee_min) {
            (None, _) if swept => Some(false),
            (_, min) => min.map(|x| x >= 0.9995),
        };
        let _ = writeln!(
            t,
            "  - 100.0% complete below the knee: {} (lowest completeness at or below the knee: {}).",
            verdict(below),
            r.below_knee_min.map_or_else(
                || "no complete rate".to_owned(),
                |x| format!("{:.3}%", 100.0 * x)
            )
        );
        let knee_ratio = match (r.knee, tcpdump.knee) {
            (Some(a), Some(b)) if b.pps > 0.0 => Some(a.pps / b.pps),
            (None, Some(_)) if swept => Some(0.0),
            _ => None,
        };
        let _ = writeln!(
            t,
            "  - knee ≥ 1.2× tcpdump's: {} ({} vs {}: {}).",
            verdict(knee_ratio.map(|x| x >= 1.2)),
            knee_text(r.knee),
            knee_text(tcpdump.knee),
            ratio(knee_ratio)
        );
        let p = prod(c, Config::Tcpdump128);
        let _ = writeln!(
            t,
            "  - production packet rate ≥ tcpdump's: {} ({} vs {} pps: {}).",
            verdict(p.map(|x| x >= 1.0)),
            kpps(r.udp_pps),
            kpps(tcpdump.udp_pps),
            ratio(p)
        );
        let tcp = [s.ratio(c, |r| r.tcp1), s.ratio(c, |r| r.tcp4)];
        let _ = writeln!(
            t,
            "  - TCP at snaplen 128 ≥ 0.90×: {} (1 stream {}, 4 streams {}).",
            verdict(
                tcp.iter()
                    .try_fold(true, |acc, x| x.map(|x| acc && x >= 0.9))
            ),
            ratio(tcp[0]),
            ratio(tcp[1])
        );
    }
    let ours = s.row(Config::VxlanTuned).mirrored_pps;
    let kernel = s.row(Config::KernelMirror).mirrored_pps;
    let vs = match (ours, kernel) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let _ = writeln!(
        t,
        "- Against the kernel-only mirror, ≥ 0.9× its mirrored packet rate (VXLAN, full rate): {} ({} vs {} copies/s: {}).",
        verdict(vs.map(|x| x >= 0.9)),
        kpps(ours),
        kpps(kernel),
        ratio(vs)
    );
    t
}

const METHOD: &str = "
## Method

- Topology: client, node, server and collector network namespaces; the client
  and server are routed through the node (198.18.2.0/24, 198.18.3.0/24), the
  collector sits on its own link (198.18.1.0/24), of MTU 1500 except for the
  rows that say 9000. Every hook sits on the client's host-side veth in the
  node, but the sidecar's, which runs in the server's namespace (the pod's) on
  the server's own interface, where the same flows arrive (the client's end
  would not do: trafgen's packet socket bypasses the qdisc layer, and with it
  the egress hook); its completeness counts that interface's frames. Neighbours are static; IPv6 is off.
- Defaults: the agent runs as typed with no options but the interface and
  the output (`attach -i IF --output vxlan://C?vni=42` or `pcapng:FILE`):
  whole packets, the default ring (64 MiB), no `gso=`. tcpdump -s 0 gets
  `-B` equal to that ring, in KiB. The tuned rows add snaplen 128 (and
  `gso=true` and MTU 9000 for VXLAN). Budget rows: a policy mirroring
  everything with `rateLimit: {packetsPerSecond: N}`. The sidecar: `mirror-agent
  sidecar` with the webhook's default memory limit (64 MiB: a 16 MiB ring).
- Runs: each measurement runs every configuration before the next one starts,
  in forward order on odd repetitions and backward on even ones; each run sets
  its configuration up afresh (agent, collector, tcpdump or tc filters) and
  takes it down after. Medians over repetitions; ratios are median ÷ the no-hook
  median of the same invocation.
- TCP: `iperf3 -c SERVER -t S -P 1|4 -J`, receiver's bits/s.
- UDP: `trafgen --cpus 1` sends 64-byte frames client → server from one CPU
  (its TX ring, no qdisc), leaving the other CPU to the copier; the server holds
  an unread socket, so it drops them without ICMP. *Delivered* is the server
  veth's rx count per second, *offered* the hooked interface's.
- Completeness: copies delivered ÷ frames that crossed the hooked interface
  (its rx + tx counters): `written` of `mirror-agent collect` (configurations 3
  and 6, the same receiver), the agent's pcapng output `sent` (4), tcpdump's
  `packets captured` (5). Bytes (TCP runs of the whole-packet rows): the
  capture files' packet data as `capinfos -d` counts it ÷ the hooked
  interface's rx + tx bytes; an output that cuts super-packets into wire-size
  segments repeats 66 bytes of Ethernet, IPv4 and TCP headers per extra
  segment, which are subtracted. A copy cut to fit the path MTU counts short.
- Knee: the highest offered rate still ≥ 99.9% complete with every lower
  measured rate complete too, over a sweep paced by `trafgen --rate` at 5%, 10%,
  20%, ... of the no-hook sender's rate plus the full-rate run. The sweep of a
  configuration stops at its first incomplete point, or where trafgen's paced
  mode (one packet per syscall) cannot keep the rate; \"≥\" marks a knee with
  no incomplete point above it, \"none\" a mirror already incomplete at 5%.
- Program cost: BPF run-time statistics (`kernel.bpf_stats_enabled`, held on
  by a BPF_ENABLE_STATS descriptor during separate full-rate runs only, as they
  cost time themselves): Σ run_time_ns ÷ Σ run_cnt of mirror_ingress and
  mirror_egress, read from the kernel's prog info (what `bpftool prog show` reports).
  It is wall time inside the program, so it includes interrupts that land there,
  such as the ring buffer's wakeup of the agent (an irq_work) after a submit.
  The program alone: `BPF_PROG_TEST_RUN` on the attached mirror_ingress, 10^6
  repeats of the bench's 64-byte UDP frame as if received on the hooked
  interface, statistics off; the kernel's mean ns per run. That includes
  the test run's own loop (it resets the skb each time): the same test run
  of a program that only returns (`r0 = -1; exit`) measures it, the floor.
  The target is judged on the figure with the floor included.
- CPU: the copier's (agent or tcpdump) user + system time from
  /proc/PID/stat over the full-rate run and its drain, ÷ copies delivered; and
  the softirq time of all CPUs from /proc/stat over the traffic ÷ frames
  offered (it includes forwarding, so compare it with no hook's). RSS: VmRSS
  (VmHWM) from /proc/PID/status at the end of the full-rate run.
";

/// Every run, one line each.
pub fn write_csv(samples: &[Sample], path: &Path) -> Result<()> {
    let mut t = String::from(
        "rep,config,measure,tcp_gbps,seconds,offered_pps,delivered_pps,hook_frames,captured,completeness,\
         copier_cpu_ns,softirq_ns,rss_kib,hwm_kib,hook_run_ns,hook_run_cnt,prog_run_ns,prog_floor_ns,hook_bytes,captured_bytes,byte_completeness,agent_seen,agent_mirrored,\
         agent_filtered,agent_lost,agent_lost_ring_full,agent_lost_output,output_lost_queue_full,output_lost_send_error,tcpdump_dropped_by_kernel,collector_link_frames\n",
    );
    let opt = |v: Option<String>| v.unwrap_or_default();
    for s in samples {
        let a = |k: &str| opt(s.outcome.agent.get(k).map(u64::to_string));
        let o = |k: &str| opt(s.outcome.output.get(k).map(u64::to_string));
        let _ = writeln!(
            t,
            "{},{},{},{},{},{},{},{},{},{},{},{:.0},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.rep + 1,
            s.config.key(),
            s.measure,
            opt(s.tcp_gbps.map(|g| format!("{g:.3}"))),
            opt(s.udp.map(|u| format!("{:.3}", u.seconds))),
            opt(s.udp.map(|u| format!("{:.0}", u.offered_pps))),
            opt(s.udp.map(|u| format!("{:.0}", u.delivered_pps))),
            s.outcome.hook_frames,
            opt(s.outcome.captured.map(|c| c.to_string())),
            opt(s.completeness().map(|x| format!("{x:.5}"))),
            opt(s.copier_cpu_ns.map(|x| format!("{x:.0}"))),
            s.softirq_ns,
            opt(s.memory_kib.map(|m| m.0.to_string())),
            opt(s.memory_kib.map(|m| m.1.to_string())),
            opt(s.hook_run.map(|h| h.0.to_string())),
            opt(s.hook_run.map(|h| h.1.to_string())),
            opt(s.prog_run_ns.map(|x| format!("{x:.1}"))),
            opt(s.prog_floor_ns.map(|x| format!("{x:.1}"))),
            s.outcome.hook_bytes,
            opt(s.outcome.captured_bytes.map(|c| c.to_string())),
            opt(s.byte_completeness().map(|x| format!("{x:.5}"))),
            a("seen"),
            a("mirrored"),
            a("filtered"),
            a("lost"),
            a("lost_ring_full"),
            a("lost_output"),
            o("lost_queue_full"),
            o("lost_send_error"),
            o("tcpdump_dropped_by_kernel"),
            opt(s.outcome.collector_link.map(|c| c.to_string())),
        );
    }
    std::fs::write(path, t).with_context(|| format!("writing {}", path.display()))
}
