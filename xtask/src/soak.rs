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
//! knee (`report::knee`). The traffic is 64-byte UDP frames, as trafgen's
//! in the bench, from a paced sender thread in the client namespace (one
//! the soak can stop at once, whatever happens).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use testbed::netns::{Netns, join};

use crate::{
    bench::{
        self, Measure, Options as BenchOptions, Plan, Runner,
        configs::{Config, Env, Session},
        measure, report,
        topology::{BenchNet, CLIENT_V4, SERVER_V4, UDP_SINK_PORT, UdpSink},
    },
    build, paths, run, setup,
    stop::{Interrupted, StopFlag},
};

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
/// `--metrics-addr` of both the agent (node namespace) and the collector
/// (collector namespace): their default; each namespace has its own loopback.
const METRICS_ADDR: &str = "127.0.0.1:9464";
/// 64-byte Ethernet frames: 14 + 20 IPv4 + 8 UDP + 22, as the bench's trafgen.
const UDP_PAYLOAD: usize = 22;

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
    let machine = report::Machine::probe()?;
    let out_dir = paths::target_dir().join("soak");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let scratch = bench::scratch_dir(&out_dir)?;
    println!("soak: building the bench network (client, node, server, collector namespaces)");
    let net = BenchNet::new().context("building the bench network")?;
    let _sink = UdpSink::start(&net.server)?;
    let env = Env {
        net: &net,
        agent_bin,
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
    HalfKnee(report::Knee),
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
                100.0 * report::COMPLETE
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
    });
    plan.tcp_streams.clear();
    plan.udp_configs = vec![Config::NoHook];
    plan.cost_configs.clear();
    plan.sweep_configs = vec![Config::MirrorVxlan];
    plan.sweep_seconds = PROBE_SECONDS as f64;
    let runner = Runner {
        env,
        plan: &plan,
        trafgen_cfg: &trafgen_cfg,
        stop,
    };
    let mut samples = Vec::new();
    runner.rep(0, &mut samples)?;
    if let Some(k) = report::knee(&samples, Config::MirrorVxlan, 0) {
        return Ok(RateChoice::HalfKnee(k));
    }
    let mut rate = samples
        .iter()
        .filter(|s| s.config == Config::MirrorVxlan)
        .filter_map(|s| s.udp.map(|u| u.offered_pps))
        .min_by(f64::total_cmp)
        .context("the knee search measured no mirrored run")?;
    loop {
        rate /= 2.0;
        if rate < MIN_PROBE_PPS {
            bail!(
                "the mirror lost copies (below {:.1}% complete) even at {:.0} pps; \
                 pass --rate PPS to soak at a rate of your choice",
                100.0 * report::COMPLETE,
                2.0 * rate
            );
        }
        samples.push(runner.sample(0, Config::MirrorVxlan, Measure::Sweep(rate as u64))?);
        if let Some(k) = report::knee(&samples, Config::MirrorVxlan, 0) {
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
    /// `None`: /metrics did not answer (in time, or properly).
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
    outcome: bench::configs::Outcome,
    /// Why /metrics did not answer, the first few times.
    scrape_errors: Vec<String>,
}

/// Starts configuration 3, sends `pps` for `duration` and samples it.
fn mirror(env: &Env<'_>, pps: u64, duration: Duration, stop: &StopFlag) -> Result<SoakRun> {
    let net = env.net;
    let session = Session::start(Config::MirrorVxlan, env).context("starting the mirror")?;
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
                .map(|m| sum(&m, "mirror_collect_received_packets_total")),
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
    let outcome = session.stop().context("stopping the mirror")?;
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
            "the agent's /metrics did not answer within {} s",
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

fn one_line(s: &Sample) -> String {
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

/// A sample's metrics: one `(name, labels, value)` per line.
type Metrics = Vec<(String, Vec<(String, String)>, f64)>;

/// Scrapes the agent (node namespace) and the collector (collector
/// namespace) at once, each given [`SCRAPE_TIMEOUT`].
fn scrape_both(net: &BenchNet) -> (Result<AgentMetrics>, Result<Metrics>) {
    let agent = get_metrics(&net.node);
    let collector = get_metrics(&net.collector.ns);
    let agent = agent.wait().map(|m| {
        let mut drops = BTreeMap::new();
        for (name, labels, v) in &m {
            if name == "mirror_dropped_packets_total" {
                let reason = labels
                    .iter()
                    .find(|(k, _)| k == "reason")
                    .map_or("?", |(_, v)| v.as_str());
                *drops.entry(reason.to_owned()).or_insert(0.0) += v;
            }
        }
        AgentMetrics {
            pending_bytes: sum(&m, "mirror_ring_buffer_pending_bytes"),
            queue_bytes: sum(&m, "mirror_output_queue_bytes"),
            mirrored: sum(&m, "mirror_mirrored_packets_total"),
            output_sent: sum(&m, "mirror_output_sent_packets_total"),
            drops,
        }
    });
    (agent, collector.wait())
}

fn sum(m: &Metrics, name: &str) -> f64 {
    m.iter()
        .filter(|(n, _, _)| n == name)
        .map(|(_, _, v)| v)
        .sum()
}

/// A GET of /metrics under way on a thread inside a namespace.
struct Scrape(thread::JoinHandle<Result<String>>, Instant);

fn get_metrics(ns: &Netns) -> Scrape {
    let started = Instant::now();
    Scrape(
        ns.spawn(move || {
            let addr: SocketAddr = METRICS_ADDR.parse()?;
            let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)
                .with_context(|| format!("connecting to {METRICS_ADDR}"))?;
            stream.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
            stream.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
            let request =
                format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes())?;
            let mut raw = String::new();
            stream
                .read_to_string(&mut raw)
                .context("reading the answer")?;
            let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
            let status = head.lines().next().unwrap_or_default();
            anyhow::ensure!(status.contains(" 200 "), "answered {status}");
            Ok(body.to_owned())
        }),
        started,
    )
}

impl Scrape {
    /// The parsed answer, or an error if there was none within [`SCRAPE_TIMEOUT`]
    /// (a late thread is left to end by its socket timeouts).
    fn wait(self) -> Result<Metrics> {
        let Self(handle, started) = self;
        while !handle.is_finished() {
            if started.elapsed() > SCRAPE_TIMEOUT {
                bail!("no answer within {} s", SCRAPE_TIMEOUT.as_secs());
            }
            thread::sleep(Duration::from_millis(10));
        }
        anyhow::ensure!(
            started.elapsed() <= SCRAPE_TIMEOUT,
            "answered after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        parse_metrics(&join(handle)?)
    }
}

/// The sample lines of the Prometheus/OpenMetrics text format.
fn parse_metrics(text: &str) -> Result<Metrics> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let bad = || format!("unexpected /metrics line: {line}");
        let (series, value) = line.rsplit_once(' ').with_context(bad)?;
        let value: f64 = value.parse().with_context(bad)?;
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').with_context(bad)?;
                (name, parse_labels(inner).with_context(bad)?)
            }
        };
        out.push((name.to_owned(), labels, value));
    }
    Ok(out)
}

/// `k="v",k="v"` with `\\`, `\"` and `\n` escapes in values.
fn parse_labels(mut s: &str) -> Result<Vec<(String, String)>> {
    let mut labels = Vec::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"").context("label without =\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().context("unterminated label value")? {
                (_, '\\') => match chars.next().context("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    Ok(labels)
}

/// 64-byte UDP frames client -> server's sink at a steady rate, from a
/// thread in the client namespace, until stopped (or dropped).
struct UdpSender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<Result<()>>>,
}

impl UdpSender {
    fn start(client: &Netns, pps: u64) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (s, n, e) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&errors));
        let thread = client.spawn(move || {
            let sock = UdpSocket::bind((CLIENT_V4, 0)).context("binding the UDP sender")?;
            sock.connect((SERVER_V4, UDP_SINK_PORT))
                .context("connecting the UDP sender")?;
            let payload = [0x5au8; UDP_PAYLOAD];
            let rate = pps as f64;
            // Never more than 10 ms of traffic at once to catch up after a
            // scheduling hiccup: the rate stays steady, not bursty.
            let max_behind = (rate / 100.0).max(1.0) as u64;
            let start = Instant::now();
            let mut slots = 0u64;
            while !s.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                slots = slots.max(due.saturating_sub(max_behind));
                while slots < due {
                    slots += 1;
                    match sock.send(&payload) {
                        Ok(_) => n.fetch_add(1, Ordering::Relaxed),
                        Err(_) => e.fetch_add(1, Ordering::Relaxed),
                    };
                }
                thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        });
        let mut sender = Self {
            stop,
            sent,
            errors,
            thread: Some(thread),
        };
        sender.check()?;
        Ok(sender)
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Fails if the sender thread ended: it only ends early on an error.
    fn check(&mut self) -> Result<()> {
        if let Some(t) = self.thread.take_if(|t| t.is_finished()) {
            join(t).context("the UDP sender")?;
            bail!("the UDP sender stopped early");
        }
        Ok(())
    }

    /// Stops it; returns `(datagrams sent, send errors)`.
    fn stop(mut self) -> Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            join(t).context("the UDP sender")?;
        }
        Ok((self.sent(), self.errors.load(Ordering::Relaxed)))
    }
}

impl Drop for UdpSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// RSS growth and stalls, against the pass criteria.
struct Verdict {
    /// The first sample at or after the warm-up, and the last one.
    rss_start: Option<(Duration, u64)>,
    rss_end: Option<(Duration, u64)>,
    growth: Option<f64>,
    /// RssAnon at the same two samples (reported, not judged).
    anon: Option<(u64, u64)>,
    stalls: usize,
}

impl Verdict {
    fn new(run: &SoakRun, warmup: Duration) -> Self {
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

    fn check(&self) -> Result<()> {
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

/// RssAnon of `pid` in KiB (/proc/PID/status).
fn rss_anon_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no RssAnon in {path}"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn markdown(
    run: &SoakRun,
    v: &Verdict,
    rate: &RateChoice,
    m: &report::Machine,
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
         sent, or the agent's /metrics did not answer within {} s).\n",
        net.host_if,
        bench::configs::SNAPLEN,
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
        t.push_str("\n/metrics did not answer:\n\n");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_metrics_lines() {
        let text = "# HELP mirror_dropped_packets Copies lost.\n\
                    # TYPE mirror_dropped_packets counter\n\
                    mirror_dropped_packets_total{interface=\"veth\\\"1\",reason=\"ring_full\"} 7\n\
                    mirror_dropped_packets_total{interface=\"veth1\",reason=\"queue_full\"} 3\n\
                    mirror_ring_buffer_pending_bytes 4096\n\
                    # EOF\n";
        let m = parse_metrics(text).unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].1[0], ("interface".to_owned(), "veth\"1".to_owned()));
        assert_eq!(m[0].1[1], ("reason".to_owned(), "ring_full".to_owned()));
        assert_eq!(sum(&m, "mirror_dropped_packets_total"), 10.0);
        assert_eq!(sum(&m, "mirror_ring_buffer_pending_bytes"), 4096.0);
    }
}
