//! `cargo xtask soak`: the release agent mirrors steady traffic for minutes
//! (issue #5, "Soak"), in the bench's network with the bench's
//! configuration 3 (`mirror-agent attach` on the client's host veth, VXLAN
//! to `mirror-agent collect`), at half the rate it sustains. Every few
//! seconds it samples the agent's RSS, its /metrics, and what was sent and
//! collected so far; it holds when RSS grew by less than 10% after warm-up
//! and nothing stalled. Not run in CI.
//!
//! The rate is `--rate`, or half the knee of a quick sweep: the bench's own
//! sweep of configuration 3 (`bench::Runner::rep`, 2 s per point) and its
//! knee (`bench::report::knee`). The traffic is 64-byte UDP frames, as trafgen's
//! in the bench, from a paced sender thread in the client namespace (one
//! the soak can stop at once, whatever happens: sender.rs).
//!
//! The agent's and the collector's figures come from their /metrics,
//! parsed by prometheus-parse (`bench::scrape`); report.rs writes the
//! verdict and `target/soak/report.md`.

mod report;
mod sender;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    Measure, Options as BenchOptions, Plan, Runner,
    configs::Config,
    measure,
    report::{self as bench_report, Knee},
    scrape::{METRICS_ADDR, Metrics, Scrape},
    session::{Env, Session},
    topology::{BenchNet, UdpSink},
};
use crate::{
    build, paths, run, setup,
    stop::{Interrupted, StopFlag},
};
use report::{Verdict, markdown, one_line};
use sender::UdpSender;

pub const DEFAULT_MINUTES: u64 = 10;
/// A sample every so often.
const INTERVAL: Duration = Duration::from_secs(5);
/// The agent's /metrics must answer within this, or the interval stalled.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest warm-up before the RSS baseline (else a tenth of the run).
const MAX_WARMUP: Duration = Duration::from_secs(30);
/// RSS must grow by less than this share from the baseline to the end.
const RSS_GROWTH_LIMIT: f64 = 0.10;
/// Seconds of each point of the knee search (the no-hook top rate, too).
const PROBE_SECONDS: u64 = 2;
/// The lowest rate the knee search tries when even the bench's lowest
/// sweep point is incomplete.
const MIN_PROBE_PPS: f64 = 1000.0;

#[derive(Clone, Debug)]
pub struct Options {
    pub minutes: u64,
    /// Packets/s; `None`: half the knee of a quick sweep.
    pub rate: Option<u64>,
}

/// `cargo xtask soak`: set up, build the release agent, soak, report.
pub fn run(options: &Options) -> Result<()> {
    run::require_root("cargo xtask soak")?;
    anyhow::ensure!(options.rate != Some(0), "--rate must be at least 1");
    let stop = StopFlag::install("soak")?;
    let result = setup::run()
        .and_then(|()| {
            stop.check()?;
            build::agent_at(build::Profile::Release)
        })
        .and_then(|agent| soak(options, &agent, &stop));
    // A step that failed because Ctrl-C killed its child was interrupted, not broken.
    if stop.raised() {
        return Err(Interrupted("soak").into());
    }
    result
}

fn soak(options: &Options, agent_bin: &Path, stop: &StopFlag) -> Result<()> {
    let machine = bench_report::Machine::probe()?;
    let out_dir = paths::target_dir().join("soak");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let scratch = super::scratch_dir(&out_dir)?;
    println!("soak: building the bench network (client, node, server, collector namespaces)");
    let net = BenchNet::new().context("building the bench network")?;
    let _sink = UdpSink::start(&net.server)?;
    let env = Env {
        net: &net,
        agent_bin,
        baseline_bin: None,
        scratch: scratch.path(),
        ring_size: None,
    };
    let rate = match options.rate {
        Some(r) => RateChoice::Given(r),
        None => knee_search(&env, stop)?,
    };
    let duration = Duration::from_secs(options.minutes * 60);
    let warmup = (duration / 10).min(MAX_WARMUP).max(INTERVAL);
    println!(
        "soak: mirroring {} pps ({}) for {} min, a sample every {} s, RSS baseline after {} s",
        rate.pps(),
        rate.describe(),
        options.minutes,
        INTERVAL.as_secs(),
        warmup.as_secs()
    );
    let run = mirror(&env, rate.pps(), duration, stop)?;
    let mut command = format!("cargo xtask soak --minutes {}", options.minutes);
    if let Some(r) = options.rate {
        let _ = write!(command, " --rate {r}");
    }
    let verdict = Verdict::new(&run, warmup);
    let text = markdown(&run, &verdict, &rate, &machine, &command, warmup, &net);
    let md = out_dir.join("report.md");
    std::fs::write(&md, &text).with_context(|| format!("writing {}", md.display()))?;
    println!("{text}");
    println!("soak: report in {}", md.display());
    verdict.check()
}

/// Where the rate came from.
enum RateChoice {
    Given(u64),
    /// Half of this knee (offered pps at the hook; `lower_bound`: the
    /// sweep never lost, so the real knee may be higher).
    HalfKnee(Knee),
}

impl RateChoice {
    fn pps(&self) -> u64 {
        match self {
            Self::Given(r) => *r,
            Self::HalfKnee(k) => ((k.pps / 2.0).round() as u64).max(1),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Given(_) => "given by --rate".to_owned(),
            Self::HalfKnee(k) => format!(
                "half the knee of a quick sweep of bench configuration 3: {}{:.0} pps complete ≥ {:.1}%",
                if k.lower_bound { "≥ " } else { "" },
                k.pps,
                100.0 * bench_report::COMPLETE
            ),
        }
    }
}

/// The bench's sweep of configuration 3 alone (its no-hook top rate, then
/// its fractions of it until a point loses copies), and the bench's knee.
/// If even the lowest point lost copies, lower rates are tried, halving.
fn knee_search(env: &Env<'_>, stop: &StopFlag) -> Result<RateChoice> {
    println!("soak: finding the sustainable rate (the bench's sweep of configuration 3)");
    let trafgen_cfg = env.scratch.join("udp64.trafgen");
    measure::write_trafgen_config(env.net, &trafgen_cfg)?;
    let mut plan = Plan::new(&BenchOptions {
        smoke: false,
        reps: 1,
        seconds: PROBE_SECONDS,
        baseline: None,
        only: Vec::new(),
    })?;
    plan.tcp_streams.clear();
    plan.udp_configs = vec![Config::NoHook];
    plan.cost_configs.clear();
    plan.prog_run_configs.clear();
    plan.sweep_configs = vec![Config::VxlanTuned];
    plan.sweep_seconds = PROBE_SECONDS as f64;
    let runner = Runner {
        env,
        plan: &plan,
        trafgen_cfg: &trafgen_cfg,
        stop,
    };
    let mut samples = Vec::new();
    runner.rep(0, &mut samples)?;
    if let Some(k) = bench_report::knee(&samples, Config::VxlanTuned, 0) {
        return Ok(RateChoice::HalfKnee(k));
    }
    let mut rate = samples
        .iter()
        .filter(|s| s.config == Config::VxlanTuned)
        .filter_map(|s| s.udp.map(|u| u.offered_pps))
        .min_by(f64::total_cmp)
        .context("the knee search measured no mirrored run")?;
    loop {
        rate /= 2.0;
        if rate < MIN_PROBE_PPS {
            bail!(
                "the mirror lost copies (below {:.1}% complete) even at {:.0} pps; \
                 pass --rate PPS to soak at a rate of your choice",
                100.0 * bench_report::COMPLETE,
                2.0 * rate
            );
        }
        samples.push(runner.sample(0, Config::VxlanTuned, Measure::Sweep(rate as u64))?);
        if let Some(k) = bench_report::knee(&samples, Config::VxlanTuned, 0) {
            return Ok(RateChoice::HalfKnee(k));
        }
    }
}

/// The agent's /metrics, the parts the soak follows.
#[derive(Clone, Debug, Default)]
struct AgentMetrics {
    pending_bytes: f64,
    queue_bytes: f64,
    mirrored: f64,
    output_sent: f64,
    /// `mirror_dropped_packets_total` summed per `reason`.
    drops: BTreeMap<String, f64>,
}

/// One sample.
#[derive(Clone, Debug)]
struct Sample {
    /// Since the traffic started.
    at: Duration,
    /// VmRSS and VmHWM, KiB; `None` if /proc could not be read.
    memory_kib: Option<(u64, u64)>,
    /// RssAnon, KiB: the heap and stacks, without the ring buffer's mapping.
    anon_kib: Option<u64>,
    /// `None`: /metrics did not answer in time, or without a family read here.
    agent: Option<AgentMetrics>,
    /// The collector's `mirror_collect_received_packets_total`.
    collected: Option<f64>,
    /// Frames on the collector's link (kernel counter): the fallback.
    collector_link: u64,
    /// Frames the hooked interface received from the client so far.
    offered: u64,
    /// Datagrams the sender sent so far.
    sent: u64,
    stall: Option<String>,
}

/// A whole soak, sampled.
struct SoakRun {
    pps: u64,
    samples: Vec<Sample>,
    /// From start to stop of the traffic.
    traffic: Duration,
    sent: u64,
    send_errors: u64,
    /// Agent CPU over the traffic, ns.
    agent_cpu_ns: f64,
    outcome: super::session::Outcome,
    /// Why /metrics gave no figures, the first few times.
    scrape_errors: Vec<String>,
}

/// Starts configuration 3, sends `pps` for `duration` and samples it.
fn mirror(env: &Env<'_>, pps: u64, duration: Duration, stop: &StopFlag) -> Result<SoakRun> {
    let net = env.net;
    let session = Session::start(Config::VxlanTuned, env).context("starting the mirror")?;
    let pid = session.copier_pid().context("the agent has no pid")?;
    let (offered0, _) = net.hook_frames()?;
    let link0 = net.collector_rx()?;
    let cpu0 = measure::process_cpu_ns(pid)?;
    let mut scrape_errors = Vec::new();
    let take = |at: Duration, sent: u64, errors: &mut Vec<String>| -> Result<Sample> {
        // The counters first, next to `sent`; then the endpoints.
        let offered = net.hook_frames()?.0.saturating_sub(offered0);
        let memory_kib = measure::memory_kib(pid).ok();
        let anon_kib = rss_anon_kib(pid).ok();
        let (agent, collector) = scrape_both(net);
        let agent = agent.map_err(|e| {
            if errors.len() < 5 {
                errors.push(format!("at {:.0} s: {e:#}", at.as_secs_f64()));
            }
        });
        Ok(Sample {
            at,
            memory_kib,
            anon_kib,
            agent: agent.ok(),
            collected: collector
                .ok()
                .and_then(|m| m.sum("mirror_collect_received_packets_total").ok()),
            collector_link: net.collector_rx()?.saturating_sub(link0),
            offered,
            sent,
            stall: None,
        })
    };
    let mut samples = vec![take(Duration::ZERO, 0, &mut scrape_errors)?];
    let mut sender = UdpSender::start(&net.client, pps)?;
    let started = Instant::now();
    let mut next = INTERVAL;
    while next <= duration {
        while started.elapsed() < next {
            stop.check()?;
            sender.check()?;
            thread::sleep(Duration::from_millis(100));
        }
        let mut s = take(started.elapsed(), sender.sent(), &mut scrape_errors)?;
        s.stall = stalled(samples.last().context("no previous sample")?, &s);
        stop.check()?;
        println!("soak: {}", one_line(&s));
        samples.push(s);
        next += INTERVAL;
    }
    let (sent, send_errors) = sender.stop()?;
    let traffic = started.elapsed();
    // CPU with the drain of what is left, as the bench counts it.
    measure::wait_idle(pid, Duration::from_secs(5), stop)?;
    let agent_cpu_ns = measure::process_cpu_ns(pid)? - cpu0;
    let outcome = session.stop(false).context("stopping the mirror")?;
    Ok(SoakRun {
        pps,
        samples,
        traffic,
        sent,
        send_errors,
        agent_cpu_ns,
        outcome,
        scrape_errors,
    })
}

/// Why the interval that ends with `now` stalled, if it did.
fn stalled(before: &Sample, now: &Sample) -> Option<String> {
    if now.agent.is_none() {
        return Some(format!(
            "the agent's /metrics did not answer within {} s, or lacked a family the soak reads",
            SCRAPE_TIMEOUT.as_secs()
        ));
    }
    if now.offered > before.offered {
        // The collector's own count, else what reached its link.
        let got = match (before.collected, now.collected) {
            (Some(a), Some(b)) => b > a,
            _ => now.collector_link > before.collector_link,
        };
        if !got {
            return Some("the collector received nothing while traffic was sent".to_owned());
        }
    }
    None
}

/// Scrapes the agent (node namespace, at its default `--metrics-addr`) and
/// the collector (collector namespace, likewise) at once, each given
/// [`SCRAPE_TIMEOUT`].
fn scrape_both(net: &BenchNet) -> (Result<AgentMetrics>, Result<Metrics>) {
    let agent = Scrape::start(&net.node, METRICS_ADDR, SCRAPE_TIMEOUT);
    let collector = Scrape::start(&net.collector.ns, METRICS_ADDR, SCRAPE_TIMEOUT);
    let agent = agent.wait().and_then(|m| {
        Ok(AgentMetrics {
            pending_bytes: m.sum("mirror_ring_buffer_pending_bytes")?,
            queue_bytes: m.sum("mirror_output_queue_bytes")?,
            mirrored: m.sum("mirror_mirrored_packets_total")?,
            output_sent: m.sum("mirror_output_sent_packets_total")?,
            drops: m.sum_by("mirror_dropped_packets_total", "reason")?,
        })
    });
    (agent, collector.wait())
}

/// RssAnon of `pid` in KiB (/proc/PID/status).
fn rss_anon_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no RssAnon in {path}"))
}
