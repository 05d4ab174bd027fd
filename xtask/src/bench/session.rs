//! A session: one configuration set up on the hooked interface (or the
//! pod's end of it) and taken down again, whatever happens.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use testbed::{
    agent::{Agent, fields},
    netns::Netns,
    process::Process,
    unique_name,
};

use super::{
    configs::{Config, OPEN_BUDGET_PPS, SNAPLEN, TIGHT_BUDGET_PPS},
    kernel_mirror::KernelMirror,
    topology::BenchNet,
};

const AGENT_VNI: u32 = 42;
/// A CIDR inside 198.18.0.0/15 that no bench host uses: the "matches nothing" rule.
const UNUSED_CIDR: &str = "198.19.255.0/24";
/// A little over tcpdump's packet-buffer timeout (`-B`/`to_ms`, 1000 ms).
const TCPDUMP_BLOCK_TIMEOUT: Duration = Duration::from_millis(1200);
/// The agent's ring when `--ring-size` is not given: tcpdump -s 0 gets a
/// buffer of the same size.
const AGENT_DEFAULT_RING: u64 = mirror_common::DEFAULT_RING_BYTES as u64;
/// The webhook's default memory limit for an injected sidecar (`webhook
/// --memory`), from which the sidecar sizes its ring and queues.
const SIDECAR_MEMORY: u64 = 64 << 20;
/// Ethernet, IPv4 and TCP with timestamps (iperf3 on Linux): the headers
/// each wire-size segment of a super-packet repeats.
const TCP_SEGMENT_HEADERS: u64 = 14 + 20 + 32;

/// What a session needs from the bench around it.
pub struct Env<'a> {
    pub net: &'a BenchNet,
    pub agent_bin: &'a Path,
    /// `--baseline`: the earlier build its configurations run.
    pub baseline_bin: Option<&'a Path>,
    /// On tmpfs where there is one: pcapng output and the collector's files.
    pub scratch: &'a Path,
    /// `--ring-size` for the agent, if not its default.
    pub ring_size: Option<u64>,
}

/// One configuration, set up; [`Session::stop`] takes it down and reports,
/// and dropping it on an error path takes it down too.
pub struct Session<'a> {
    pub config: Config,
    env: &'a Env<'a>,
    agent: Option<Agent>,
    tcpdump: Option<Process>,
    collector: Option<Process>,
    kernel: Option<KernelMirror<'a>>,
    files: Vec<PathBuf>,
    /// Where the copies end up, for their byte count (a file or a directory).
    capture: Option<PathBuf>,
    at_start: Counts,
    copier_pid: Option<u32>,
}

/// The kernel's counters a session starts from.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    hook_frames: u64,
    hook_bytes: u64,
    collector_rx: u64,
}

impl Counts {
    fn now(net: &BenchNet, config: Config) -> Result<Self> {
        let hook = net.site_stats(config.role() == Config::Sidecar)?;
        Ok(Self {
            hook_frames: hook.rx_packets + hook.tx_packets,
            hook_bytes: hook.rx_bytes + hook.tx_bytes,
            collector_rx: net.collector_rx()?,
        })
    }
}

/// How a session ended: the frames that crossed the hook while it ran, and
/// what each party counted.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Frames received plus sent by the hooked interface (kernel counters;
    /// the sidecar's own interface for the sidecar).
    pub hook_frames: u64,
    /// Their bytes (Ethernet header included, as a capture counts them).
    pub hook_bytes: u64,
    /// Frames the mirror delivered: written by the collector, into the
    /// agent's file, or captured by tcpdump. `None` when nothing mirrors.
    pub captured: Option<u64>,
    /// Bytes captured (the capture files' data, as `capinfos` counts it),
    /// when asked for.
    pub captured_bytes: Option<u64>,
    /// The agent's `summary total` counters.
    pub agent: HashMap<String, u64>,
    /// The agent's `output summary` counters (one output).
    pub output: HashMap<String, u64>,
    /// Frames that arrived on the collector's link (VXLAN configurations),
    /// to tell the sender's losses from the receiver's.
    pub collector_link: Option<u64>,
}

impl Outcome {
    /// Bytes captured ÷ bytes that crossed the hook. An output that cuts
    /// super-packets into wire-size segments repeats their headers in each
    /// segment beyond the first: those headers are not counted.
    pub fn byte_completeness(&self) -> Option<f64> {
        let out = |k: &str| self.output.get(k).copied().unwrap_or(0);
        let extra = out("segments").saturating_sub(out("super_packets")) * TCP_SEGMENT_HEADERS;
        let captured = self.captured_bytes?.saturating_sub(extra);
        (self.hook_bytes > 0).then(|| captured as f64 / self.hook_bytes as f64)
    }
}

impl<'a> Session<'a> {
    pub fn start(config: Config, env: &'a Env<'a>) -> Result<Self> {
        let mut s = Self {
            config,
            env,
            agent: None,
            tcpdump: None,
            collector: None,
            kernel: None,
            files: Vec::new(),
            capture: None,
            at_start: Counts::default(),
            copier_pid: None,
        };
        let net = env.net;
        let agent_bin = if config.is_baseline() {
            env.baseline_bin
                .context("a baseline configuration without --baseline")?
        } else {
            env.agent_bin
        };
        if config.mirrors() {
            net.set_collector_mtu(config.collector_mtu())?;
        }
        let role = config.role();
        match role {
            Config::NoHook => {}
            Config::HookNothing | Config::BudgetOpen | Config::BudgetTight => {
                let policy = s.scratch_file("policy", "yaml");
                let out = s.scratch_file("policy", "pcapng");
                let text = match role {
                    Config::HookNothing => nothing_policy(&net.host_if, &out),
                    Config::BudgetOpen => budget_policy(&net.host_if, &out, OPEN_BUDGET_PPS),
                    _ => budget_policy(&net.host_if, &out, TIGHT_BUDGET_PPS),
                };
                std::fs::write(&policy, text)
                    .with_context(|| format!("writing {}", policy.display()))?;
                let args = ["attach".to_owned(), "--policy".to_owned()];
                let args = [&args[..], &[policy.display().to_string()]].concat();
                s.agent = Some(start_agent(env, agent_bin, &args)?);
                if role != Config::HookNothing {
                    s.capture = Some(out);
                }
            }
            Config::Vxlan | Config::VxlanTuned => {
                s.collector = Some(s.start_collector()?);
                let mut out = format!("vxlan://{}?vni={AGENT_VNI}", net.collector.collector_v4);
                let mut args = attach_args(&net.host_if);
                if role == Config::VxlanTuned {
                    // The collector reads with a socket, where the kernel cuts
                    // UDP GSO messages back into datagrams.
                    out.push_str("&gso=true");
                    args.extend(["--snaplen".to_owned(), SNAPLEN.to_string()]);
                }
                args.extend(["--output".to_owned(), out]);
                s.agent = Some(start_agent(env, agent_bin, &args)?);
            }
            Config::Pcapng | Config::PcapngTuned => {
                let file = s.scratch_file("mirror", "pcapng");
                let mut args = attach_args(&net.host_if);
                if role == Config::PcapngTuned {
                    args.extend(["--snaplen".to_owned(), SNAPLEN.to_string()]);
                }
                args.extend(["--output".to_owned(), format!("pcapng:{}", file.display())]);
                s.agent = Some(start_agent(env, agent_bin, &args)?);
                s.capture = Some(file);
            }
            Config::TcpdumpWhole => {
                let file = s.scratch_file("tcpdump", "pcap");
                // -B is in KiB: the same buffer as the agent's ring.
                let kib = env.ring_size.unwrap_or(AGENT_DEFAULT_RING) / 1024;
                let args = ["-s", "0", "-B", &kib.to_string(), "-w"];
                s.tcpdump = Some(start_tcpdump(net, &args, &file.display().to_string())?);
                s.capture = Some(file);
            }
            Config::Tcpdump128 => {
                let args = ["-s", &SNAPLEN.to_string(), "-w"];
                s.tcpdump = Some(start_tcpdump(net, &args, "/dev/null")?);
            }
            Config::KernelMirror => {
                s.collector = Some(s.start_collector()?);
                s.kernel = Some(KernelMirror::add(net)?);
            }
            Config::Sidecar => {
                let file = s.scratch_file("sidecar", "pcapng");
                let (pod, _) = net.hook_site(true);
                s.agent = Some(start_sidecar(env, pod, &file)?);
                s.capture = Some(file);
            }
            // `role` maps these to the configurations above.
            Config::BaselineNothing
            | Config::BaselineVxlan
            | Config::BaselinePcapng
            | Config::BaselineBudgetOpen => {
                anyhow::bail!("{config:?} has no set-up of its own")
            }
        }
        s.copier_pid = match (&mut s.agent, &s.tcpdump) {
            (Some(a), _) => a.process().pid(),
            (None, Some(p)) => p.pid(),
            (None, None) => None,
        };
        s.at_start = Counts::now(net, config)?;
        Ok(s)
    }

    /// A fresh path in the scratch directory, removed with the session.
    fn scratch_file(&mut self, what: &str, ext: &str) -> PathBuf {
        let path = self
            .env
            .scratch
            .join(format!("{}.{ext}", unique_name(what)));
        self.files.push(path.clone());
        path
    }

    /// `mirror-agent collect` in the collector namespace, into a fresh directory.
    fn start_collector(&mut self) -> Result<Process> {
        let dir = self.scratch_file("collect", "d");
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let env = self.env;
        let mut cmd: Command = env
            .net
            .collector
            .ns
            .command(&env.agent_bin.to_string_lossy());
        cmd.arg("collect")
            .arg("--listen")
            .arg(format!("vxlan://{}", env.net.collector.collector_v4))
            .arg("--output")
            .arg(format!("pcapng:{}", dir.display()))
            .stdout(Stdio::null());
        let mut p = Process::spawn("mirror-agent collect", cmd)?;
        p.wait_for_line("collector started", Duration::from_secs(20))?;
        self.capture = Some(dir);
        Ok(p)
    }

    /// The process doing the copying in user space (agent or tcpdump), if any.
    pub fn copier_pid(&self) -> Option<u32> {
        self.copier_pid
    }

    /// Takes the configuration down; with `count_bytes`, also counts the
    /// bytes its copies hold (a pass over the capture files).
    pub fn stop(mut self, count_bytes: bool) -> Result<Outcome> {
        let net = self.env.net;
        let now = Counts::now(net, self.config)?;
        let mut out = Outcome {
            hook_frames: now.hook_frames.saturating_sub(self.at_start.hook_frames),
            hook_bytes: now.hook_bytes.saturating_sub(self.at_start.hook_bytes),
            ..Outcome::default()
        };
        // The kernel mirror first, so nothing more enters the tunnel.
        if let Some(k) = self.kernel.take() {
            k.remove()?;
        }
        if let Some(agent) = self.agent.take() {
            let exit = agent.stop().context("stopping the agent")?;
            ensure!(
                exit.status.success(),
                "the agent failed ({}):\n{}",
                exit.status,
                exit.stderr
            );
            out.agent = exit.summary()?;
            out.output = exit.fields_of("output summary")?;
            if self.config.mirrors() && self.collector.is_none() {
                out.captured = Some(
                    *out.output
                        .get("sent")
                        .context("no sent= in the agent's output summary")?,
                );
            }
        }
        if let Some(p) = self.tcpdump.take() {
            // libpcap hands over a TPACKET_V3 block only when it is full or
            // its timeout (tcpdump's 1 s) expires, and SIGINT ends tcpdump
            // without reading a partly filled one: wait for that, or its
            // last block counts as lost (2% of a slow 2 s run).
            std::thread::sleep(TCPDUMP_BLOCK_TIMEOUT);
            let (status, stderr) = p.stop(Signal::SIGINT, Duration::from_secs(20))?;
            ensure!(status.success(), "tcpdump failed ({status}):\n{stderr}");
            out.captured = Some(tcpdump_stat(&stderr, "packets captured")?);
            out.output.insert(
                "tcpdump_dropped_by_kernel".to_owned(),
                tcpdump_stat(&stderr, "packets dropped by kernel")?,
            );
        }
        if let Some(p) = self.collector.take() {
            // The last datagrams are in flight for a moment after the sender stops.
            std::thread::sleep(Duration::from_millis(300));
            out.collector_link = Some(
                net.collector_rx()?
                    .saturating_sub(self.at_start.collector_rx),
            );
            let (status, stderr) = p.stop(Signal::SIGTERM, Duration::from_secs(20))?;
            ensure!(
                status.success(),
                "the collector failed ({status}):\n{stderr}"
            );
            let line = stderr
                .lines()
                .find(|l| l.contains("collector summary"))
                .with_context(|| format!("no collector summary in:\n{stderr}"))?;
            out.captured = Some(
                *fields(line)
                    .get("written")
                    .with_context(|| format!("no written= in: {line}"))?,
            );
        }
        if count_bytes && let Some(capture) = &self.capture {
            out.captured_bytes = Some(capture_bytes(capture)?);
        }
        Ok(out)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // Guards stop the processes; the files are ours to remove. Big
        // pcapng files on tmpfs must not pile up over a run.
        for f in &self.files {
            let _ = std::fs::remove_file(f);
            let _ = std::fs::remove_dir_all(f);
        }
    }
}

/// `attach -i IF`, as a user types it: every other option left at its default.
fn attach_args(host_if: &str) -> Vec<String> {
    ["attach", "-i", host_if].map(str::to_owned).to_vec()
}

fn start_agent(env: &Env<'_>, agent_bin: &Path, args: &[String]) -> Result<Agent> {
    let mut cmd = env.net.node.command(&agent_bin.to_string_lossy());
    cmd.args(args).stdout(Stdio::null());
    if let Some(size) = env.ring_size {
        cmd.args(["--ring-size", &size.to_string()]);
    }
    Agent::start_command(cmd).context("starting the agent")
}

/// `mirror-agent sidecar` in `pod`, as the kubelet starts the injected
/// container: the webhook's default memory limit, the policy in
/// `$MIRROR_POLICY`, every interface of the pod but `lo`.
fn start_sidecar(env: &Env<'_>, pod: &Netns, out: &Path) -> Result<Agent> {
    let mut cmd = pod.command(&env.agent_bin.to_string_lossy());
    cmd.args(["sidecar", "--metrics-addr", "off"])
        .args(["--memory-limit", &SIDECAR_MEMORY.to_string()])
        .env(
            "MIRROR_POLICY",
            format!(
                "policies:\n  - name: pod\n    interfaces: ['*']\n    collectors: ['pcapng:{}']\n",
                out.display()
            ),
        )
        .stdout(Stdio::null());
    if let Some(size) = env.ring_size {
        cmd.args(["--ring-size", &size.to_string()]);
    }
    Agent::start_command(cmd).context("starting the sidecar")
}

/// tcpdump on the hooked interface with `args` then the file it writes.
fn start_tcpdump(net: &BenchNet, args: &[&str], file: &str) -> Result<Process> {
    let mut cmd = net.node.command("tcpdump");
    cmd.args(["-i", &net.host_if, "-n"])
        .args(args)
        .arg(file)
        .stdout(Stdio::null());
    let mut p = Process::spawn("tcpdump", cmd)?;
    p.wait_for_line("listening on", Duration::from_secs(10))
        .context("tcpdump did not start")?;
    Ok(p)
}

/// Bytes of packet data in a capture file, or in every file of a
/// directory, as Wireshark's `capinfos` counts them.
fn capture_bytes(path: &Path) -> Result<u64> {
    let files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)
            .with_context(|| format!("listing {}", path.display()))?
            .map(|e| Ok(e?.path()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("listing {}", path.display()))?
    } else {
        vec![path.to_owned()]
    };
    let mut total = 0;
    for file in files.iter().filter(|f| f.is_file()) {
        // -T -r: a table row with no header; -M: exact numbers; -d: data size.
        let out = Command::new("capinfos")
            .args(["-T", "-r", "-M", "-d"])
            .arg(file)
            .output()
            .context("running capinfos (Wireshark's; cargo xtask setup installs it)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "capinfos {} failed: {}{text}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        total += text
            .split_whitespace()
            .last()
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("no data size in capinfos' output: {text}"))?;
    }
    Ok(total)
}

/// A policy whose only rule accepts a CIDR no bench host uses: the kernel
/// prefilter then drops every packet from mirroring (counted as `filtered`).
fn nothing_policy(host_if: &str, out: &Path) -> String {
    format!(
        "policies:\n  - name: bench-nothing\n    interfaces: [\"{host_if}\"]\n    \
         collectors: [\"pcapng:{}\"]\n    direction: Both\n    rules:\n      \
         - action: Accept\n        sourceCIDRs: [\"{UNUSED_CIDR}\"]\n    snaplen: {SNAPLEN}\n",
        out.display()
    )
}

/// A policy that mirrors everything on the hooked interface within a
/// budget of `pps` packets/s.
fn budget_policy(host_if: &str, out: &Path, pps: u64) -> String {
    format!(
        "policies:\n  - name: bench-budget\n    interfaces: [\"{host_if}\"]\n    \
         collectors: [\"pcapng:{}\"]\n    direction: Both\n    snaplen: {SNAPLEN}\n    \
         rateLimit: {{packetsPerSecond: {pps}}}\n",
        out.display()
    )
}

/// "N packets captured" (or another counter) from tcpdump's closing lines.
fn tcpdump_stat(stderr: &str, what: &str) -> Result<u64> {
    stderr
        .lines()
        .find(|l| l.ends_with(what))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no '{what}' in tcpdump's output:\n{stderr}"))
}
