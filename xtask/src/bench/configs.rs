//! The six configurations the bench compares, and a session guard that sets
//! one up on the hooked interface and takes it down again, whatever happens.

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
    process::Process,
    unique_name,
};

use super::topology::BenchNet;

/// Snaplen of every mirroring configuration, as the tcpdump line.
pub const SNAPLEN: u32 = 128;
const AGENT_VNI: u32 = 42;
const KERNEL_VNI: u32 = 43;
/// A CIDR inside 198.18.0.0/15 that no bench host uses: the "matches nothing" rule.
const UNUSED_CIDR: &str = "198.19.255.0/24";
/// A little over tcpdump's packet-buffer timeout (`-B`/`to_ms`, 1000 ms).
const TCPDUMP_BLOCK_TIMEOUT: Duration = Duration::from_millis(1200);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Config {
    NoHook,
    HookNothing,
    MirrorVxlan,
    MirrorPcapng,
    Tcpdump,
    KernelMirror,
    /// Configurations 2 to 4 with `--baseline`'s agent.
    BaselineNothing,
    BaselineVxlan,
    BaselinePcapng,
}

impl Config {
    pub const ALL: [Self; 6] = [
        Self::NoHook,
        Self::HookNothing,
        Self::MirrorVxlan,
        Self::MirrorPcapng,
        Self::Tcpdump,
        Self::KernelMirror,
    ];
    /// What `--baseline` adds: the hook's rows run by the earlier build.
    pub const BASELINE: [Self; 3] = [
        Self::BaselineNothing,
        Self::BaselineVxlan,
        Self::BaselinePcapng,
    ];
    /// Every configuration, in the report's order.
    pub const EVERY: [Self; 9] = [
        Self::NoHook,
        Self::HookNothing,
        Self::MirrorVxlan,
        Self::MirrorPcapng,
        Self::Tcpdump,
        Self::KernelMirror,
        Self::BaselineNothing,
        Self::BaselineVxlan,
        Self::BaselinePcapng,
    ];

    /// What the configuration sets up: a baseline one, the same as ours.
    pub fn role(self) -> Self {
        match self {
            Self::BaselineNothing => Self::HookNothing,
            Self::BaselineVxlan => Self::MirrorVxlan,
            Self::BaselinePcapng => Self::MirrorPcapng,
            c => c,
        }
    }

    pub fn is_baseline(self) -> bool {
        self.role() != self
    }

    /// The name in the report's tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoHook => "1 no hook",
            Self::HookNothing => "2 hook, rules match nothing",
            Self::MirrorVxlan => "3 mirror-agent -> VXLAN (gso) -> collect",
            Self::MirrorPcapng => "4 mirror-agent -> pcapng (tmpfs)",
            Self::Tcpdump => "5 tcpdump -s 128 -w /dev/null",
            Self::KernelMirror => "6 tc mirred -> kernel VXLAN",
            Self::BaselineNothing => "2b baseline agent: hook, rules match nothing",
            Self::BaselineVxlan => "3b baseline agent -> VXLAN (gso) -> collect",
            Self::BaselinePcapng => "4b baseline agent -> pcapng (tmpfs)",
        }
    }

    /// A short name for the chart and the CSV.
    pub fn key(self) -> &'static str {
        match self {
            Self::NoHook => "no-hook",
            Self::HookNothing => "nothing",
            Self::MirrorVxlan => "vxlan",
            Self::MirrorPcapng => "pcapng",
            Self::Tcpdump => "tcpdump",
            Self::KernelMirror => "kernel",
            Self::BaselineNothing => "base-nothing",
            Self::BaselineVxlan => "base-vxlan",
            Self::BaselinePcapng => "base-pcapng",
        }
    }

    /// Whether copies go somewhere, so completeness means something.
    pub fn mirrors(self) -> bool {
        matches!(
            self.role(),
            Self::MirrorVxlan | Self::MirrorPcapng | Self::Tcpdump | Self::KernelMirror
        )
    }

    /// Whether our eBPF programs are attached (so they have a run time).
    pub fn our_hook(self) -> bool {
        matches!(
            self.role(),
            Self::HookNothing | Self::MirrorVxlan | Self::MirrorPcapng
        )
    }
}

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
    frames_at_start: u64,
    collector_at_start: u64,
    copier_pid: Option<u32>,
}

/// How a session ended: the frames that crossed the hook while it ran, and
/// what each party counted.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Frames received plus sent by the hooked interface (kernel counters).
    pub hook_frames: u64,
    /// Frames the mirror delivered: written by the collector, into the
    /// agent's file, or captured by tcpdump. `None` when nothing mirrors.
    pub captured: Option<u64>,
    /// The agent's `summary total` counters.
    pub agent: HashMap<String, u64>,
    /// The agent's `output summary` counters (one output).
    pub output: HashMap<String, u64>,
    /// Frames that arrived on the collector's link (VXLAN configurations),
    /// to tell the sender's losses from the receiver's.
    pub collector_link: Option<u64>,
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
            frames_at_start: 0,
            collector_at_start: 0,
            copier_pid: None,
        };
        let net = env.net;
        let agent_bin = if config.is_baseline() {
            env.baseline_bin
                .context("a baseline configuration without --baseline")?
        } else {
            env.agent_bin
        };
        match config.role() {
            Config::NoHook => {}
            Config::HookNothing => {
                let policy = env.scratch.join(unique_name("policy") + ".yaml");
                let out = env.scratch.join(unique_name("nothing") + ".pcapng");
                s.files.extend([policy.clone(), out.clone()]);
                std::fs::write(&policy, nothing_policy(&net.host_if, &out))
                    .with_context(|| format!("writing {}", policy.display()))?;
                let mut args = vec!["attach".to_owned(), "--policy".to_owned()];
                args.push(policy.display().to_string());
                s.agent = Some(start_agent(env, agent_bin, &args)?);
            }
            Config::MirrorVxlan => {
                s.collector = Some(start_collector(env, &mut s.files)?);
                // The collector reads with a socket, where the kernel cuts UDP
                // GSO messages back into datagrams.
                let out = format!(
                    "vxlan://{}?vni={AGENT_VNI}&gso=true",
                    net.collector.collector_v4
                );
                s.agent = Some(start_agent(
                    env,
                    agent_bin,
                    &mirror_args(&net.host_if, &out),
                )?);
            }
            Config::MirrorPcapng => {
                let file = env.scratch.join(unique_name("mirror") + ".pcapng");
                s.files.push(file.clone());
                let out = format!("pcapng:{}", file.display());
                s.agent = Some(start_agent(
                    env,
                    agent_bin,
                    &mirror_args(&net.host_if, &out),
                )?);
            }
            Config::Tcpdump => {
                let mut cmd = net.node.command("tcpdump");
                let snaplen = SNAPLEN.to_string();
                cmd.args(["-i", &net.host_if, "-n", "-s", &snaplen, "-w", "/dev/null"])
                    .stdout(Stdio::null());
                let mut p = Process::spawn("tcpdump", cmd)?;
                p.wait_for_line("listening on", Duration::from_secs(10))
                    .context("tcpdump did not start")?;
                s.tcpdump = Some(p);
            }
            Config::KernelMirror => {
                s.collector = Some(start_collector(env, &mut s.files)?);
                s.kernel = Some(KernelMirror::add(net)?);
            }
            // `role` maps these to the configurations above.
            Config::BaselineNothing | Config::BaselineVxlan | Config::BaselinePcapng => {
                anyhow::bail!("{config:?} has no set-up of its own")
            }
        }
        s.copier_pid = match (&mut s.agent, &s.tcpdump) {
            (Some(a), _) => a.process().pid(),
            (None, Some(p)) => p.pid(),
            (None, None) => None,
        };
        let (rx, tx) = net.hook_frames()?;
        s.frames_at_start = rx + tx;
        s.collector_at_start = net.collector_rx()?;
        Ok(s)
    }

    /// The process doing the copying in user space (agent or tcpdump), if any.
    pub fn copier_pid(&self) -> Option<u32> {
        self.copier_pid
    }

    pub fn stop(mut self) -> Result<Outcome> {
        let net = self.env.net;
        let (rx, tx) = net.hook_frames()?;
        let mut out = Outcome {
            hook_frames: (rx + tx).saturating_sub(self.frames_at_start),
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
            if self.config.role() == Config::MirrorPcapng {
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
            out.collector_link = Some(net.collector_rx()?.saturating_sub(self.collector_at_start));
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

fn mirror_args(host_if: &str, output: &str) -> Vec<String> {
    [
        "attach",
        "-i",
        host_if,
        "--snaplen",
        &SNAPLEN.to_string(),
        "--output",
        output,
    ]
    .map(str::to_owned)
    .to_vec()
}

fn start_agent(env: &Env<'_>, agent_bin: &Path, args: &[String]) -> Result<Agent> {
    let mut cmd = env.net.node.command(&agent_bin.to_string_lossy());
    cmd.args(args).stdout(Stdio::null());
    if let Some(size) = env.ring_size {
        cmd.args(["--ring-size", &size.to_string()]);
    }
    Agent::start_command(cmd).context("starting the agent")
}

/// `mirror-agent collect` in the collector namespace, into a fresh directory.
fn start_collector(env: &Env<'_>, files: &mut Vec<PathBuf>) -> Result<Process> {
    let dir = env.scratch.join(unique_name("collect"));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    files.push(dir.clone());
    let ns = &env.net.collector.ns;
    let mut cmd: Command = ns.command(&env.agent_bin.to_string_lossy());
    cmd.arg("collect")
        .arg("--listen")
        .arg(format!("vxlan://{}", env.net.collector.collector_v4))
        .arg("--output")
        .arg(format!("pcapng:{}", dir.display()))
        .stdout(Stdio::null());
    let mut p = Process::spawn("mirror-agent collect", cmd)?;
    p.wait_for_line("collector started", Duration::from_secs(20))?;
    Ok(p)
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

/// "N packets captured" (or another counter) from tcpdump's closing lines.
fn tcpdump_stat(stderr: &str, what: &str) -> Result<u64> {
    stderr
        .lines()
        .find(|l| l.ends_with(what))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no '{what}' in tcpdump's output:\n{stderr}"))
}

/// The kernel-only mirror: a VXLAN device in the node toward the collector,
/// and `tc` u32 filters with `mirred egress mirror` on both directions of
/// the hooked interface.
struct KernelMirror<'a> {
    net: &'a BenchNet,
    dev: String,
    removed: bool,
}

impl<'a> KernelMirror<'a> {
    fn add(net: &'a BenchNet) -> Result<Self> {
        let dev = unique_name("mbv");
        let node = &net.node;
        node.ip(&[
            "link",
            "add",
            &dev,
            "type",
            "vxlan",
            "id",
            &KERNEL_VNI.to_string(),
            "remote",
            &net.collector.collector_v4.to_string(),
            "local",
            &net.collector.node_v4.to_string(),
            "dstport",
            "4789",
            "dev",
            &net.collector.node_if,
        ])?;
        // From here on Drop removes whatever was made.
        let guard = Self {
            net,
            dev,
            removed: false,
        };
        node.ip(&["link", "set", &guard.dev, "up"])?;
        node.exec(&["tc", "qdisc", "add", "dev", &net.host_if, "clsact"])?;
        for dir in ["ingress", "egress"] {
            node.exec(&[
                "tc",
                "filter",
                "add",
                "dev",
                &net.host_if,
                dir,
                "protocol",
                "all",
                "u32",
                "match",
                "u32",
                "0",
                "0",
                "action",
                "mirred",
                "egress",
                "mirror",
                "dev",
                &guard.dev,
            ])?;
        }
        Ok(guard)
    }

    fn remove(mut self) -> Result<()> {
        self.removed = true;
        let node = &self.net.node;
        node.exec(&["tc", "qdisc", "del", "dev", &self.net.host_if, "clsact"])?;
        node.ip(&["link", "del", &self.dev])?;
        Ok(())
    }
}

impl Drop for KernelMirror<'_> {
    fn drop(&mut self) {
        if !self.removed {
            let node = &self.net.node;
            let _ = node.exec(&["tc", "qdisc", "del", "dev", &self.net.host_if, "clsact"]);
            let _ = node.ip(&["link", "del", &self.dev]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::{Options, Plan};

    #[test]
    fn a_baseline_row_sets_up_what_its_own_row_does() {
        for c in Config::EVERY {
            assert!(!c.role().is_baseline(), "{c:?}");
            assert_eq!(c.mirrors(), c.role().mirrors());
            assert_eq!(c.our_hook(), c.role().our_hook());
        }
        assert!(
            Config::BASELINE
                .iter()
                .all(|c| c.is_baseline() && c.our_hook())
        );
        assert!(Config::ALL.iter().all(|c| !c.is_baseline()));
    }

    #[test]
    fn baseline_rows_run_only_when_asked_and_beside_ours() {
        let options = |baseline: Option<&str>| Options {
            smoke: false,
            reps: 1,
            seconds: 1,
            baseline: baseline.map(PathBuf::from),
        };
        let without = Plan::new(&options(None));
        let with = Plan::new(&options(Some("/old/mirror-agent")));
        for plan in [&without, &with] {
            for c in Config::ALL {
                assert!(plan.udp_configs.contains(&c), "{c:?}");
            }
        }
        for c in Config::BASELINE {
            assert!(!without.udp_configs.contains(&c), "{c:?}");
            for set in [&with.tcp_configs, &with.udp_configs, &with.cost_configs] {
                assert!(set.contains(&c), "{c:?}");
            }
            assert!(!with.sweep_configs.contains(&c), "{c:?}");
        }
    }
}
