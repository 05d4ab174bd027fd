//! `cargo xtask bench`: what the mirror costs production traffic and
//! whether it keeps up, side by side with no hook, tcpdump and the kernel's
//! own `tc mirred` mirror, in one network of namespaces (see topology.rs).
//!
//! Repetitions are interleaved (each measurement runs every configuration
//! before the next measurement starts, in alternating order), and the
//! report gives medians and ratios to the no-hook runs of the same
//! invocation: on a shared 2-core machine absolute numbers are noise.
//!
//! Every namespace, process, qdisc and file is owned by a guard, and Ctrl-C
//! or SIGTERM only raises a flag, so every way out cleans up.

mod chart;
pub(crate) mod configs;
mod kernel_mirror;
pub(crate) mod measure;
mod progrun;
pub(crate) mod report;
pub(crate) mod scrape;
pub(crate) mod session;
pub(crate) mod soak;
pub(crate) mod summary;
pub(crate) mod topology;

use std::{
    fmt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use configs::Config;
use measure::UdpRun;
use session::{Env, Outcome, Session};

use crate::{
    build, paths, run, setup,
    stop::{Interrupted, StopFlag},
};

/// Knobs of one invocation.
#[derive(Clone, Debug)]
pub struct Options {
    /// One short repetition of a reduced plan: checks the harness, not speed.
    pub smoke: bool,
    pub reps: usize,
    /// Length of each TCP and full-rate UDP run.
    pub seconds: u64,
    /// An earlier build of the agent, measured beside this one.
    pub baseline: Option<PathBuf>,
    /// Only these configurations (their keys), beside no hook.
    pub only: Vec<String>,
}

pub const DEFAULT_REPS: usize = 3;
pub const DEFAULT_SECONDS: u64 = 4;
const SMOKE: Options = Options {
    smoke: true,
    reps: 1,
    seconds: 1,
    baseline: None,
    only: Vec::new(),
};

/// What one invocation measures.
pub(crate) struct Plan {
    pub(crate) tcp_streams: Vec<u32>,
    pub(crate) tcp_configs: Vec<Config>,
    pub(crate) udp_configs: Vec<Config>,
    pub(crate) cost_configs: Vec<Config>,
    /// The program alone, by `BPF_PROG_TEST_RUN`.
    pub(crate) prog_run_configs: Vec<Config>,
    pub(crate) sweep_configs: Vec<Config>,
    /// Sweep rates as fractions of the no-hook sender's top rate.
    pub(crate) fractions: Vec<f64>,
    pub(crate) seconds: u64,
    pub(crate) sweep_seconds: f64,
    pub(crate) cost_seconds: f64,
    /// A small ring in smoke mode: a debug agent must drain it quickly on stop.
    pub(crate) ring_size: Option<u64>,
}

impl Plan {
    pub(crate) fn new(o: &Options) -> Result<Self> {
        let of =
            |f: fn(&Config) -> bool| -> Vec<Config> { Config::ALL.into_iter().filter(f).collect() };
        let mut plan = if o.smoke {
            // Every configuration once, and every kind of measurement once.
            Self {
                tcp_streams: vec![1],
                tcp_configs: vec![Config::NoHook, Config::Pcapng],
                udp_configs: Config::ALL.to_vec(),
                cost_configs: vec![Config::HookNothing],
                prog_run_configs: vec![Config::HookNothing],
                sweep_configs: vec![Config::Vxlan],
                fractions: vec![0.1],
                seconds: o.seconds,
                sweep_seconds: o.seconds as f64,
                cost_seconds: o.seconds as f64,
                ring_size: Some(4 << 20),
            }
        } else {
            // An earlier build's hook rows beside ours (no sweep: its knee
            // is not what a before/after of the hook asks).
            let baseline: &[Config] = if o.baseline.is_some() {
                &Config::BASELINE
            } else {
                &[]
            };
            let with = |v: Vec<Config>| {
                let extra = baseline.iter().filter(|c| v.contains(&c.role()));
                v.iter().chain(extra).copied().collect::<Vec<_>>()
            };
            Self {
                tcp_streams: vec![1, 4],
                tcp_configs: with(Config::ALL.to_vec()),
                udp_configs: with(Config::ALL.to_vec()),
                cost_configs: with(of(|c| c.our_hook())),
                prog_run_configs: with(of(|c| c.prog_run())),
                // A budget's or the sidecar's knee is that of the rows they
                // stand beside.
                sweep_configs: of(|c| {
                    c.complete_by_design() && !matches!(c, Config::BudgetOpen | Config::Sidecar)
                }),
                fractions: vec![0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                seconds: o.seconds,
                sweep_seconds: 2.0,
                cost_seconds: 2.0,
                ring_size: None,
            }
        };
        if !o.only.is_empty() {
            let mut keep = vec![Config::NoHook];
            for key in &o.only {
                let c = Config::EVERY
                    .into_iter()
                    .find(|c| c.key() == key)
                    .with_context(|| {
                        let keys: Vec<&str> = Config::EVERY.iter().map(|c| c.key()).collect();
                        format!(
                            "--only {key}: no such configuration (one of {})",
                            keys.join(", ")
                        )
                    })?;
                keep.push(c);
            }
            for set in [
                &mut plan.tcp_configs,
                &mut plan.udp_configs,
                &mut plan.cost_configs,
                &mut plan.prog_run_configs,
                &mut plan.sweep_configs,
            ] {
                set.retain(|c| keep.contains(c));
            }
        }
        Ok(plan)
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Measure {
    /// iperf3 TCP with this many streams.
    Tcp(u32),
    /// trafgen 64-byte UDP as fast as it goes.
    UdpMax,
    /// The same with BPF run-time statistics on (they cost time themselves).
    Cost,
    /// No traffic: the ingress program alone, by `BPF_PROG_TEST_RUN`.
    ProgRun,
    /// trafgen paced at this many packets/s.
    Sweep(u64),
}

impl fmt::Display for Measure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(n) => write!(f, "tcp-{n}"),
            Self::UdpMax => f.write_str("udp-max"),
            Self::Cost => f.write_str("bpf-cost"),
            Self::ProgRun => f.write_str("prog-run"),
            Self::Sweep(r) => write!(f, "udp-{r}pps"),
        }
    }
}

/// One run of one configuration.
#[derive(Clone, Debug)]
pub struct Sample {
    pub rep: usize,
    pub config: Config,
    pub measure: Measure,
    pub tcp_gbps: Option<f64>,
    pub udp: Option<UdpRun>,
    pub outcome: Outcome,
    /// User + system CPU of the agent or tcpdump over the run and its drain.
    pub copier_cpu_ns: Option<f64>,
    /// Softirq time of all CPUs over the traffic.
    pub softirq_ns: f64,
    /// `(VmRSS, VmHWM)` of the agent or tcpdump at the end, KiB.
    pub memory_kib: Option<(u64, u64)>,
    /// `(run_time_ns, run_cnt)` of our programs (Cost runs only).
    pub hook_run: Option<(u64, u64)>,
    /// ns per run of the ingress program alone (ProgRun only).
    pub prog_run_ns: Option<f64>,
    /// ns per run of a program that returns at once, by the same test run:
    /// the harness's share of `prog_run_ns` (ProgRun only).
    pub prog_floor_ns: Option<f64>,
}

impl Sample {
    /// Copies delivered ÷ frames that crossed the hook. An output that
    /// cuts a super-packet into wire-size segments sends several copies
    /// for one frame at the hook: those beyond the first are not counted.
    pub fn completeness(&self) -> Option<f64> {
        let out = |k: &str| self.outcome.output.get(k).copied().unwrap_or(0);
        let extra = out("segments").saturating_sub(out("super_packets"));
        let captured = self.outcome.captured?.saturating_sub(extra);
        (self.outcome.hook_frames > 0).then(|| captured as f64 / self.outcome.hook_frames as f64)
    }

    /// Bytes captured ÷ bytes that crossed the hook (TCP runs of whole-packet rows).
    pub fn byte_completeness(&self) -> Option<f64> {
        self.outcome.byte_completeness()
    }
}

/// `cargo xtask bench`: set up, build the release agent, run, report.
pub fn run(options: &Options) -> Result<()> {
    run::require_root("cargo xtask bench")?;
    let options = &if options.smoke {
        SMOKE
    } else {
        options.clone()
    };
    let stop = StopFlag::install("bench")?;
    let result = setup::run()
        .and_then(|()| {
            stop.check()?;
            build::agent_at(build::Profile::Release)
        })
        .and_then(|agent| bench(options, &agent, &stop));
    // A step that failed because Ctrl-C killed its child was interrupted, not broken.
    if stop.raised() {
        return Err(Interrupted("bench").into());
    }
    result
}

/// The smoke run at the end of `cargo xtask test`, with the agent it built:
/// fails if the harness is broken or a mirror delivered no copies
/// (`ensure_copies_arrived`), never on speed.
pub fn smoke(agent: &Path) -> Result<()> {
    let stop = StopFlag::install("bench")?;
    let result = bench(&SMOKE, agent, &stop);
    if stop.raised() {
        return Err(Interrupted("bench").into());
    }
    result.context("the bench harness (cargo xtask bench --smoke) failed")
}

fn bench(options: &Options, agent_bin: &Path, stop: &StopFlag) -> Result<()> {
    let started = Instant::now();
    if let Some(b) = &options.baseline {
        anyhow::ensure!(
            b.is_file(),
            "--baseline {}: no such file (give a mirror-agent binary)",
            b.display()
        );
    }
    let plan = Plan::new(options)?;
    let machine = report::Machine::probe()?;
    // The smoke run (every `cargo xtask test`) must not overwrite a real report.
    let mut out_dir = paths::target_dir().join("bench");
    if options.smoke {
        out_dir.push("smoke");
    }
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let samples = measure_all(options, &plan, agent_bin, stop)?;
    let elapsed = started.elapsed();
    let command = if options.smoke {
        "cargo xtask bench --smoke".to_owned()
    } else {
        let baseline = options
            .baseline
            .as_ref()
            .map(|b| format!(" --baseline {}", b.display()))
            .unwrap_or_default();
        let only = if options.only.is_empty() {
            String::new()
        } else {
            format!(" --only {}", options.only.join(","))
        };
        format!(
            "cargo xtask bench --reps {} --seconds {}{baseline}{only}",
            options.reps, options.seconds
        )
    };
    if options.smoke {
        ensure_copies_arrived(&samples)?;
    }
    let summary = summary::Summary::new(&samples);
    let md = out_dir.join("report.md");
    let png = out_dir.join("chart.png");
    let csv = out_dir.join("samples.csv");
    report::write_csv(&samples, &csv)?;
    chart::draw(&summary, &png)?;
    let text = report::markdown(&summary, &machine, &command, elapsed, options.smoke);
    std::fs::write(&md, &text).with_context(|| format!("writing {}", md.display()))?;
    println!("{text}");
    println!(
        "bench: done in {:.0} s: {}, {}, {}",
        elapsed.as_secs_f64(),
        md.display(),
        png.display(),
        csv.display()
    );
    Ok(())
}

/// The smoke run's one check of its numbers: every configuration that
/// mirrors delivered copies in some run (a completeness above zero), and
/// no run of it that saw frames at the hook delivered none. A harness that
/// measures nothing, or a mirror that sends nothing, fails here.
fn ensure_copies_arrived(samples: &[Sample]) -> Result<()> {
    let mut configs: Vec<Config> = samples
        .iter()
        .map(|s| s.config)
        .filter(|c| c.mirrors())
        .collect();
    configs.sort();
    configs.dedup();
    anyhow::ensure!(
        !configs.is_empty(),
        "the bench smoke ran no configuration that mirrors"
    );
    for config in configs {
        let of: Vec<Option<f64>> = samples
            .iter()
            .filter(|s| s.config == config)
            .map(Sample::completeness)
            .collect();
        anyhow::ensure!(
            of.iter().any(|c| c.is_some_and(|c| c > 0.0)) && of.iter().flatten().all(|c| *c > 0.0),
            "bench smoke: {} delivered no copies (completeness per run: {of:?})",
            config.key()
        );
    }
    Ok(())
}

/// Builds the network, runs every repetition, and takes it all down again.
fn measure_all(
    options: &Options,
    plan: &Plan,
    agent_bin: &Path,
    stop: &StopFlag,
) -> Result<Vec<Sample>> {
    let scratch = scratch_dir(&paths::target_dir().join("bench"))?;
    println!("bench: building the network (client, node, server, collector namespaces)");
    let net = topology::BenchNet::new().context("building the bench network")?;
    let _sink = topology::UdpSink::start(&net.server)?;
    let _iperf = measure::iperf3_server(&net)?;
    let trafgen_cfg = scratch.path().join("udp64.trafgen");
    measure::write_trafgen_config(&net, &trafgen_cfg)?;
    let env = Env {
        net: &net,
        agent_bin,
        baseline_bin: options.baseline.as_deref(),
        scratch: scratch.path(),
        ring_size: plan.ring_size,
    };
    let runner = Runner {
        env: &env,
        plan,
        trafgen_cfg: &trafgen_cfg,
        stop,
    };
    let mut samples = Vec::new();
    for rep in 0..options.reps.max(1) {
        runner.rep(rep, &mut samples)?;
    }
    Ok(samples)
}

/// tmpfs for the pcapng output where there is one (no disk in the path),
/// else the bench's output directory.
pub(crate) fn scratch_dir(out_dir: &Path) -> Result<tempfile::TempDir> {
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() {
        shm
    } else {
        out_dir.to_owned()
    };
    tempfile::Builder::new()
        .prefix("mirror-bench")
        .tempdir_in(&base)
        .with_context(|| format!("creating a scratch directory in {}", base.display()))
}

pub(crate) struct Runner<'a> {
    pub(crate) env: &'a Env<'a>,
    pub(crate) plan: &'a Plan,
    pub(crate) trafgen_cfg: &'a Path,
    pub(crate) stop: &'a StopFlag,
}

impl Runner<'_> {
    /// One repetition: each measurement across the configurations, in
    /// forward order on even repetitions and backward on odd ones, so a
    /// slow drift of the machine does not favour one configuration.
    pub(crate) fn rep(&self, rep: usize, samples: &mut Vec<Sample>) -> Result<()> {
        let order = |set: &[Config]| -> Vec<Config> {
            let mut v = set.to_vec();
            if rep % 2 == 1 {
                v.reverse();
            }
            v
        };
        let plan = self.plan;
        for &streams in &plan.tcp_streams {
            for c in order(&plan.tcp_configs) {
                samples.push(self.sample(rep, c, Measure::Tcp(streams))?);
            }
        }
        for c in order(&plan.udp_configs) {
            samples.push(self.sample(rep, c, Measure::UdpMax)?);
        }
        {
            let _stats = measure::BpfStats::enable()?;
            for c in order(&plan.cost_configs) {
                samples.push(self.sample(rep, c, Measure::Cost)?);
            }
        }
        // With the statistics off: they would add their own clock reads to
        // every run timed.
        for c in order(&plan.prog_run_configs) {
            samples.push(self.sample(rep, c, Measure::ProgRun)?);
        }
        // The sweep's rates follow this repetition's no-hook sender.
        let top = samples
            .iter()
            .filter(|s| s.rep == rep && s.config == Config::NoHook && s.measure == Measure::UdpMax)
            .find_map(|s| s.udp.map(|u| u.offered_pps))
            .context("no no-hook UDP run to scale the sweep by")?;
        let mut sweeping = order(&plan.sweep_configs);
        for &f in &plan.fractions {
            let rate = (top * f).round().max(1000.0) as u64;
            for c in sweeping.clone() {
                let s = self.sample(rep, c, Measure::Sweep(rate))?;
                let lossy = s.completeness().is_some_and(|x| x < summary::COMPLETE);
                // trafgen's paced mode sends a packet per syscall and tops
                // out below its TX-ring rate: above that, nothing new is learnt.
                let capped = s.udp.is_some_and(|u| u.offered_pps < 0.9 * rate as f64);
                samples.push(s);
                if lossy || capped {
                    sweeping.retain(|&x| x != c);
                }
            }
        }
        Ok(())
    }

    pub(crate) fn sample(&self, rep: usize, config: Config, measure: Measure) -> Result<Sample> {
        self.stop.check()?;
        let what = format!("rep {} {measure} {}", rep + 1, config.label());
        println!("bench: {what}");
        self.sample_inner(rep, config, measure)
            .with_context(|| format!("bench run {what}"))
    }

    fn sample_inner(&self, rep: usize, config: Config, measure: Measure) -> Result<Sample> {
        let (net, plan, stop) = (self.env.net, self.plan, self.stop);
        let session = Session::start(config, self.env)?;
        let pid = session.copier_pid();
        let cpu0 = pid.map(measure::process_cpu_ns).transpose()?;
        let soft0 = measure::softirq_ns()?;
        let (mut tcp_gbps, mut udp, mut prog_run) = (None, None, None);
        match measure {
            Measure::Tcp(n) => tcp_gbps = Some(measure::tcp(net, n, plan.seconds, stop)?),
            Measure::UdpMax => {
                udp = Some(measure::udp(
                    net,
                    self.trafgen_cfg,
                    None,
                    plan.seconds as f64,
                    stop,
                )?);
            }
            Measure::Cost => {
                udp = Some(measure::udp(
                    net,
                    self.trafgen_cfg,
                    None,
                    plan.cost_seconds,
                    stop,
                )?);
            }
            Measure::ProgRun => {
                let (ns, iface) = net.hook_site(config.role() == Config::Sidecar);
                let frame = progrun::udp_frame(net);
                prog_run = Some(progrun::ns_per_run(ns, iface, frame)?);
            }
            Measure::Sweep(rate) => {
                udp = Some(measure::udp(
                    net,
                    self.trafgen_cfg,
                    Some(rate),
                    plan.sweep_seconds,
                    stop,
                )?);
            }
        }
        let soft1 = measure::softirq_ns()?;
        let hook_run = if measure == Measure::Cost {
            let (ns, iface) = net.hook_site(config.role() == Config::Sidecar);
            Some(measure::hook_run_time(ns, iface)?)
        } else {
            None
        };
        let (mut copier_cpu_ns, mut memory_kib) = (None, None);
        if let (Some(pid), Some(cpu0)) = (pid, cpu0) {
            // Count the drain of what the burst left in the ring too.
            measure::wait_idle(pid, Duration::from_secs(5), stop)?;
            copier_cpu_ns = Some(measure::process_cpu_ns(pid)? - cpu0);
            memory_kib = Some(measure::memory_kib(pid)?);
        }
        // Bytes only where whole packets make them mean completeness, and
        // for TCP: counting them reads every capture file.
        let count_bytes = config.whole_packets() && matches!(measure, Measure::Tcp(_));
        let outcome = session.stop(count_bytes)?;
        let s = Sample {
            rep,
            config,
            measure,
            tcp_gbps,
            udp,
            outcome,
            copier_cpu_ns,
            softirq_ns: soft1 - soft0,
            memory_kib,
            hook_run,
            prog_run_ns: prog_run.map(|p| p.program_ns),
            prog_floor_ns: prog_run.map(|p| p.floor_ns),
        };
        println!("bench:   {}", report::one_line(&s));
        Ok(s)
    }
}
