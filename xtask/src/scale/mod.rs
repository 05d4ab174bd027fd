//! `cargo xtask scale`: issue #4's scale measurement. "250 pods
//! (namespaces) on one node are all attached within 10 s, and the idle
//! agent stays under 100 MiB RSS", measured here rather than in a timed test.
//!
//! It builds a node namespace with a bridge and N pod namespaces
//! (topology.rs), starts the fake API server (`testbed::apiserver`) inside
//! the node namespace, creates a Namespace, a MirrorCollector (VXLAN to a
//! collector namespace; traffic is not the point) and a MirrorPolicy
//! selecting every pod, and starts the release agent
//! (`mirror-agent run`) in the node namespace. Then (phases.rs):
//!
//! 1. baseline: the agent idle with no pods (its RSS);
//! 2. attach: the N Pod objects are created at once (Running, podIP set);
//!    the kernel is asked every 50 ms which pod ends carry our tcx programs
//!    (BPF_PROG_QUERY, hooks.rs): the host veths in the node namespace, or
//!    with `--attach-point pod` each pod's `eth0` inside its namespace; the
//!    agent's /metrics is read for `mirror_attached_interfaces == N`
//!    (gauge.rs); and the policy's status for `attachedPods == N`;
//! 3. idle: 10 s with N pods attached, then the agent's RSS and CPU;
//! 4. detach: every Pod object is deleted; the kernel is asked until no
//!    hook is left on those ends, and /metrics until the agent counts none;
//! 5. the agent gets SIGTERM and `mirror-agent uninstall` removes its pins.
//!
//! The report (report.rs) goes to target/scale/report.md and stdout, the
//! agent's log to target/scale/agent.log; the command fails when a target
//! is missed. Every namespace, mount and process is owned by a guard, and
//! Ctrl-C only raises a flag, so every way out cleans up.

mod gauge;
mod hooks;
mod memory;
mod phases;
mod report;
mod topology;

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, Result};
use serde_json::json;
use testbed::{agent::Agent, apiserver::ApiServer, bpffs::BpfFs, netns::join};

use crate::{
    bench::{report::Machine, scrape::METRICS_ADDR},
    build, paths, run, setup,
    stop::{Interrupted, StopFlag},
};
use topology::ScaleNet;

pub const DEFAULT_PODS: usize = 250;
/// The agent holds at most this many interfaces (`mirror_common::MAX_INTERFACES`).
pub const MAX_PODS: usize = 1024;
/// Every pod attached within this, from the moment the Pod objects exist.
pub const ATTACH_TARGET: Duration = Duration::from_secs(10);
/// The idle agent's VmRSS stays under this.
pub const RSS_TARGET_KIB: u64 = 100 * 1024;
/// How often the kernel, /metrics and the status are asked.
const POLL: Duration = Duration::from_millis(50);
/// A phase that has not finished by then is reported as not finished.
const GIVE_UP: Duration = Duration::from_secs(60);
/// How long the agent idles with every pod attached before its RSS is read.
const IDLE: Duration = Duration::from_secs(10);
/// `--status-interval`, the agent's default, given explicitly so the report can say it.
const STATUS_INTERVAL: u64 = 10;

const NODE: &str = "scale-node";
const TENANT: &str = "scale";
const POLICY: &str = "all-pods";
const COLLECTOR: &str = "sink";
const VNI: u32 = 4242;
const MIRROR: &str = "mirror.packets.dev/v1alpha1";
/// Our programs' names (`mirror_common::PROG_*`), per direction: the
/// mirror program itself, hooked in the agent's own namespace (the host
/// ends), and the small entry program that tail-calls it, hooked in any
/// other (the pod ends).
const PROGS_INGRESS: [&str; 2] = ["mirror_ingress", "mirror_ns_ingress"];
const PROGS_EGRESS: [&str; 2] = ["mirror_egress", "mirror_ns_egress"];

#[derive(Clone, Debug)]
pub struct Options {
    pub pods: usize,
    /// `--ring-size` for the agent; `None`: its default.
    pub ring_size: Option<u64>,
    /// `--attach-point` for the agent; `None`: its default (`auto`).
    pub attach_point: Option<AttachPoint>,
}

impl Options {
    /// The `cargo xtask scale` command line that repeats this run.
    fn command_line(&self) -> String {
        let mut command = format!("cargo xtask scale --pods {}", self.pods);
        if let Some(r) = self.ring_size {
            command.push_str(&format!(" --ring-size {r}"));
        }
        if let Some(p) = self.attach_point {
            command.push_str(&format!(" --attach-point {p}"));
        }
        command
    }
}

/// `mirror-agent run --attach-point`: where a pod's hooks go. Its own type,
/// not the agent's: xtask must build before `cargo xtask setup` has
/// installed what the agent's build script needs (rust-src, bpf-linker), so
/// it never depends on the agent crate (`.ci/run` checks this).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachPoint {
    /// The host end of each pod's veth.
    Host,
    /// Each pod's own interface, inside its namespace.
    Pod,
    /// The agent decides.
    Auto,
}

impl std::fmt::Display for AttachPoint {
    /// As the agent's `--attach-point` spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Host => "host",
            Self::Pod => "pod",
            Self::Auto => "auto",
        })
    }
}

/// Whether the agent, asked for `point` (`None`: its default, `auto`),
/// hooks the pods' own ends on this node. `auto` finds every host end a
/// plain bridge port that the pod's traffic passes both ways, so it takes
/// the host ends.
pub fn at_pod_end(point: Option<AttachPoint>) -> bool {
    matches!(point, Some(AttachPoint::Pod))
}

/// `cargo xtask scale`: set up, build the release agent, measure, report.
pub fn run(options: &Options) -> Result<()> {
    run::require_root("cargo xtask scale")?;
    anyhow::ensure!(
        (1..=MAX_PODS).contains(&options.pods),
        "--pods must be from 1 to {MAX_PODS} (the agent holds at most {MAX_PODS} interfaces)"
    );
    let stop = StopFlag::install("scale")?;
    let result = setup::run()
        .and_then(|()| {
            stop.check()?;
            build::agent_at(build::Profile::Release)
        })
        .and_then(|agent| scale(options, &agent, &stop));
    // A step that failed because Ctrl-C killed its child was interrupted, not broken.
    if stop.raised() {
        return Err(Interrupted("scale").into());
    }
    result
}

fn pod_name(i: usize) -> String {
    format!("pod-{i:04}")
}

fn scale(options: &Options, agent_bin: &Path, stop: &StopFlag) -> Result<()> {
    let n = options.pods;
    let machine = Machine::probe()?;
    let out_dir = paths::target_dir().join("scale");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let names: Vec<String> = (0..n).map(pod_name).collect();

    println!("scale: building a node namespace with a bridge and {n} pod namespaces");
    let net = ScaleNet::new(n, &names, stop).context("building the node")?;
    for (what, took) in &net.times.steps {
        println!("scale:   {:>6.2} s  {what}", took.as_secs_f64());
    }
    println!("scale: setup took {:.2} s", net.times.total().as_secs_f64());
    // Takes the copies off the collector's link quietly (no ICMP back).
    let _vxlan = net
        .collector
        .kernel_vxlan(VNI)
        .context("the collector's VXLAN device")?;
    let bpffs = BpfFs::mount().context("mounting a bpf filesystem for the pins")?;
    let pin_dir = bpffs.path().join("mirror");
    // Inside the node's namespace, where the agent runs (hostNetwork):
    // its 127.0.0.1 is the agent's.
    let server = join(net.node.spawn(ApiServer::start)).context("starting the fake API server")?;
    let kubeconfig = server.kubeconfig_file().context("writing the kubeconfig")?;
    for obj in [
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": TENANT, "labels": {"tenant": TENANT}}}),
        json!({"apiVersion": MIRROR, "kind": "MirrorCollector", "metadata": {"name": COLLECTOR},
               "spec": {"protocol": "vxlan", "address": net.collector.collector_v4.to_string(),
                        "vni": VNI, "allowedNamespaces": {"matchLabels": {"tenant": TENANT}}}}),
        json!({"apiVersion": MIRROR, "kind": "MirrorPolicy",
               "metadata": {"name": POLICY, "namespace": TENANT},
               "spec": {"podSelector": {"matchLabels": {"app": "scale"}},
                        "collectorRef": {"name": COLLECTOR}, "direction": "Both"}}),
    ] {
        server
            .create(obj)
            .map_err(|e| anyhow::anyhow!("creating an object in the fake API server: {e}"))?;
    }

    stop.check()?;
    println!(
        "scale: starting the release agent (mirror-agent run{}) in the node namespace; \
         its hooks are expected on the {}",
        options
            .attach_point
            .map_or_else(String::new, |p| format!(" --attach-point {p}")),
        if at_pod_end(options.attach_point) {
            "pods' own ends, inside their namespaces"
        } else {
            "host ends"
        }
    );
    let log_level = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let mut cmd = net.node.command(&agent_bin.to_string_lossy());
    cmd.env("KUBECONFIG", kubeconfig.path())
        .env("RUST_LOG", &log_level)
        .args(["run", "--node-name", NODE])
        .args(["--metrics-addr", &METRICS_ADDR.to_string()])
        .args(["--status-interval", &STATUS_INTERVAL.to_string()])
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("--netns-path")
        .arg(net.netns_path())
        .stdout(Stdio::null());
    if let Some(size) = options.ring_size {
        cmd.args(["--ring-size", &size.to_string()]);
    }
    // Not given: the agent's own default, whatever this shell's environment says.
    cmd.env_remove("ATTACH_POINT");
    if let Some(point) = options.attach_point {
        cmd.args(["--attach-point", &point.to_string()]);
    }
    let mut agent = Agent::start_command(cmd).context("starting the agent")?;
    let pid = agent.process().pid().context("the agent has no pid")?;

    let ends = if at_pod_end(options.attach_point) {
        net.pod_ends()
    } else {
        net.host_ends()
    };
    let outcome = phases::measure_phases(&net, &ends, &server, pid, stop);
    // Stop the agent whatever happened, and keep its log.
    let stopped = agent.stop().context("stopping the agent (SIGTERM)");
    let log = out_dir.join("agent.log");
    if let Ok(exit) = &stopped {
        std::fs::write(&log, &exit.stderr).with_context(|| format!("writing {}", log.display()))?;
    }
    if stop.raised() {
        return Err(Interrupted("scale").into());
    }
    // A measurement that failed says so first; the agent's exit after it.
    let mut fig = outcome.with_context(|| match &stopped {
        Ok(exit) => format!(
            "the agent ended {}; its log is in {}",
            exit.status,
            log.display()
        ),
        Err(e) => format!("and then {e:#}"),
    })?;
    let exit = stopped?;
    anyhow::ensure!(
        exit.status.success(),
        "the agent failed on SIGTERM ({}); its log is in {}",
        exit.status,
        log.display()
    );
    fig.setup = net.times.clone();
    fig.ring_size = options.ring_size;
    fig.attach_point = options.attach_point;
    fig.log_level = log_level;

    // The pins were kept on SIGTERM: remove them (the hooks went with the pods).
    let mut uninstall = net.node.command(&agent_bin.to_string_lossy());
    uninstall
        .arg("uninstall")
        .arg("--pin-dir")
        .arg(&pin_dir)
        .stdout(Stdio::null());
    run::capture(&mut uninstall).context("mirror-agent uninstall")?;

    let text = report::markdown(
        &fig,
        &machine,
        &options.command_line(),
        net.collector.collector_v4,
    );
    let md = out_dir.join("report.md");
    std::fs::write(&md, &text).with_context(|| format!("writing {}", md.display()))?;
    println!("{text}");
    println!(
        "scale: report in {}, the agent's log in {}",
        md.display(),
        log.display()
    );
    fig.check()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_repeats_the_run() {
        let mut o = Options {
            pods: 250,
            ring_size: None,
            attach_point: None,
        };
        assert_eq!(o.command_line(), "cargo xtask scale --pods 250");
        o.ring_size = Some(1 << 24);
        o.attach_point = Some(AttachPoint::Pod);
        assert_eq!(
            o.command_line(),
            "cargo xtask scale --pods 250 --ring-size 16777216 --attach-point pod"
        );
    }

    #[test]
    fn only_pod_puts_the_hooks_at_the_pod_end() {
        assert!(at_pod_end(Some(AttachPoint::Pod)));
        for p in [None, Some(AttachPoint::Host), Some(AttachPoint::Auto)] {
            assert!(!at_pod_end(p));
        }
    }
}
