//! The scale run's node: a node namespace with a bridge, and N pod
//! namespaces each joined to it by a veth whose host end is a bridge port
//! (flannel-like, as `testbed::topology::BridgedNode`, but built in a few
//! `ip -batch` runs instead of ~10 commands per pod). Pods take addresses
//! from 198.19.0.0/16 (the upper half of 198.18.0.0/15), so any N the agent
//! can hold fits on the bridge's one subnet; the collector link of
//! `testbed::topology::CollectorLink` keeps 198.18.1.0/24.
//!
//! ```text
//! pod i: eth0 198.19.x.y/16 ── host_ifs[i] ─┐
//!                                            bridge 198.19.0.1/16 [node] 198.18.1.1 ── collector 198.18.1.2
//! ```
//!
//! The hooks may go on either end of a pod's veth ([`End`]): the host end
//! in the node namespace, or the pod's own `eth0` inside its namespace.
//!
//! Every namespace is owned by a guard: [`PodNamespaces`] deletes the pods'
//! (in one batch, their veths with them) and `Netns` the node's and the
//! collector's, however the run ends.

use std::{
    fs::File,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};
use testbed::{netns::Netns, topology::CollectorLink, unique_name};

use crate::stop::StopFlag;

/// The bridge's address: the pods' default gateway.
const BRIDGE_V4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
const PREFIX_LEN: u8 = 16;
/// The pod address is 198.19.0.0 + this + the pod's index.
const FIRST_HOST: u32 = 10;
/// `ip -n POD -batch` runs at once while configuring the pods.
const WORKERS: usize = 2;
/// Each pod's end of its veth, inside the pod's namespace.
pub const POD_IF: &str = "eth0";

/// The file `ip netns` binds a named namespace to.
pub fn netns_file(name: &str) -> PathBuf {
    PathBuf::from(format!("/run/netns/{name}"))
}

/// An interface, by its name inside the namespace bound at `netns`: one
/// end of a pod's veth, where the agent's hooks may go.
#[derive(Clone, Debug)]
pub struct End {
    pub netns: PathBuf,
    pub iface: String,
}

/// Pod `i`'s address.
pub fn pod_v4(i: usize) -> Ipv4Addr {
    let base = u32::from(Ipv4Addr::new(198, 19, 0, 0));
    Ipv4Addr::from(base + FIRST_HOST + i as u32)
}

/// How long each step of building the node took.
#[derive(Clone, Debug, Default)]
pub struct SetupTimes {
    pub steps: Vec<(&'static str, Duration)>,
}

impl SetupTimes {
    pub fn total(&self) -> Duration {
        self.steps.iter().map(|(_, d)| *d).sum()
    }

    fn timed<T>(&mut self, what: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let started = Instant::now();
        let out = f().with_context(|| format!("setup: {what}"))?;
        self.steps.push((what, started.elapsed()));
        Ok(out)
    }
}

/// Named network namespaces made with `ip -batch`, deleted together on drop
/// (each pod's veth goes with its namespace).
pub struct PodNamespaces {
    names: Vec<String>,
}

impl PodNamespaces {
    /// Creates `n` namespaces with unique names. The guard owns the names
    /// before they exist, so a batch that fails part-way is cleaned up too.
    fn create(n: usize) -> Result<Self> {
        let pods = Self {
            names: (0..n).map(|_| unique_name("msp")).collect(),
        };
        let lines: Vec<String> = pods
            .names
            .iter()
            .map(|n| format!("netns add {n}"))
            .collect();
        ip_batch(None, &lines)?;
        Ok(pods)
    }

    fn names(&self) -> &[String] {
        &self.names
    }
}

impl Drop for PodNamespaces {
    fn drop(&mut self) {
        // -force: go on past names that were never made.
        let lines: Vec<String> = self
            .names
            .iter()
            .map(|n| format!("netns del {n}"))
            .collect();
        let _ = ip_batch_with(None, &lines, true);
    }
}

/// The node and its pods. Fields drop in order: the pods' namespaces (and
/// their veths), the collector's, then the node's.
pub struct ScaleNet {
    /// The pods' namespaces, pod i's the i-th; deleted together on drop.
    pods: PodNamespaces,
    pub collector: CollectorLink,
    pub node: Netns,
    /// Pod i's host end, in the node namespace.
    host_ifs: Vec<String>,
    /// Pod i's address.
    pub ips: Vec<Ipv4Addr>,
    /// `--netns-path` for the agent: one symlink per pod to its
    /// /run/netns file, so it looks only at this run's namespaces.
    pub netns_dir: tempfile::TempDir,
    pub times: SetupTimes,
}

impl ScaleNet {
    /// Builds the node with `n` pods; `pod_names[i]` names pod i's symlink.
    pub fn new(n: usize, pod_names: &[String], stop: &StopFlag) -> Result<Self> {
        anyhow::ensure!(pod_names.len() == n, "one name per pod");
        let mut times = SetupTimes::default();
        let (node, bridge) = times.timed("node namespace and bridge", || {
            let node = Netns::new("msn")?;
            node.disable_ipv6()?;
            let bridge = unique_name("msb");
            node.ip(&["link", "add", &bridge, "type", "bridge"])?;
            node.ip(&[
                "addr",
                "add",
                &format!("{BRIDGE_V4}/{PREFIX_LEN}"),
                "dev",
                &bridge,
            ])?;
            node.ip(&["link", "set", &bridge, "up"])?;
            Ok((node, bridge))
        })?;
        stop.check()?;
        let collector = times.timed("collector namespace and link", || {
            let link = CollectorLink::new(&node)?;
            Ok(link)
        })?;
        stop.check()?;
        let pods = times.timed("pod namespaces (ip -batch: netns add)", || {
            PodNamespaces::create(n)
        })?;
        stop.check()?;
        times.timed(
            "IPv6 off in the pod namespaces (sysctl, one thread)",
            || quiet_ipv6(pods.names()),
        )?;
        stop.check()?;
        let host_ifs: Vec<String> = (0..n).map(|_| unique_name("msh")).collect();
        times.timed("veths (ip -batch: link add … netns)", || {
            let lines: Vec<String> = host_ifs
                .iter()
                .zip(pods.names())
                .map(|(host, pod)| {
                    format!(
                        "link add {host} netns {} type veth peer name {POD_IF} netns {pod}",
                        node.name()
                    )
                })
                .collect();
            ip_batch(None, &lines)
        })?;
        stop.check()?;
        times.timed("bridge ports (ip -n NODE -batch)", || {
            let lines: Vec<String> = host_ifs
                .iter()
                .flat_map(|h| {
                    [
                        format!("link set {h} master {bridge}"),
                        format!("link set {h} up"),
                    ]
                })
                .collect();
            ip_batch(Some(node.name()), &lines)
        })?;
        stop.check()?;
        let ips: Vec<Ipv4Addr> = (0..n).map(pod_v4).collect();
        times.timed(
            "pod addresses and routes (ip -n POD -batch, per pod)",
            || configure_pods(pods.names(), &ips, stop),
        )?;
        stop.check()?;
        let netns_dir = times.timed("--netns-path directory (symlinks)", || {
            let dir = tempfile::Builder::new()
                .prefix("mirror-scale-netns")
                .tempdir()
                .context("creating the --netns-path directory")?;
            for (pod, ns) in pod_names.iter().zip(pods.names()) {
                let link = dir.path().join(pod);
                std::os::unix::fs::symlink(netns_file(ns), &link)
                    .with_context(|| format!("symlinking {}", link.display()))?;
            }
            Ok(dir)
        })?;
        Ok(Self {
            pods,
            collector,
            node,
            host_ifs,
            ips,
            netns_dir,
            times,
        })
    }

    pub fn netns_path(&self) -> &Path {
        self.netns_dir.path()
    }

    /// Pod i's host end, in the node namespace.
    pub fn host_ends(&self) -> Vec<End> {
        let node = netns_file(self.node.name());
        self.host_ifs
            .iter()
            .map(|iface| End {
                netns: node.clone(),
                iface: iface.clone(),
            })
            .collect()
    }

    /// Pod i's own end, `eth0` inside pod i's namespace.
    pub fn pod_ends(&self) -> Vec<End> {
        self.pods
            .names()
            .iter()
            .map(|ns| End {
                netns: netns_file(ns),
                iface: POD_IF.to_owned(),
            })
            .collect()
    }
}

/// `net.ipv6.conf.{all,default}.disable_ipv6=1` in each namespace, from one
/// thread that enters them in turn (no process per namespace): the pods
/// then send no router solicitations or MLD reports for the mirror to copy,
/// and the idle agent is idle.
fn quiet_ipv6(names: &[String]) -> Result<()> {
    if !Path::new("/proc/sys/net/ipv6").exists() {
        return Ok(());
    }
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            for name in names {
                let path = netns_file(name);
                let file =
                    File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering {}", path.display()))?;
                // /proc/sys/net is the calling thread's namespace's.
                for scope in ["all", "default"] {
                    let key =
                        PathBuf::from(format!("/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"));
                    std::fs::write(&key, "1")
                        .with_context(|| format!("writing {} in {name}", key.display()))?;
                }
            }
            Ok(())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the sysctl thread panicked"))?
    })
}

/// Loopback and [`POD_IF`] up, the address and the default route, in each pod:
/// one `ip -n POD -batch` each, [`WORKERS`] at a time.
fn configure_pods(names: &[String], ips: &[Ipv4Addr], stop: &StopFlag) -> Result<()> {
    let jobs: Vec<(&String, &Ipv4Addr)> = names.iter().zip(ips).collect();
    let chunk = jobs.len().div_ceil(WORKERS).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = jobs
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || -> Result<()> {
                    for (ns, ip) in part {
                        if stop.raised() {
                            break;
                        }
                        let lines = [
                            "link set lo up".to_owned(),
                            format!("addr add {ip}/{PREFIX_LEN} dev {POD_IF}"),
                            format!("link set {POD_IF} up"),
                            format!("route add default via {BRIDGE_V4}"),
                        ];
                        ip_batch(Some(ns), &lines)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a pod setup thread panicked"))??;
        }
        Ok(())
    })
}

/// `ip [-n NS] -batch -` with `lines` on stdin; fails on the first error.
fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<()> {
    ip_batch_with(netns, lines, false)
}

fn ip_batch_with(netns: Option<&str>, lines: &[String], force: bool) -> Result<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    if force {
        cmd.arg("-force");
    }
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let what = format!(
        "ip {}-batch ({} commands, the first `{}`)",
        netns.map_or_else(String::new, |n| format!("-n {n} ")),
        lines.len(),
        lines.first().map_or("", String::as_str)
    );
    let mut child = cmd.spawn().with_context(|| format!("running {what}"))?;
    let mut text = lines.join("\n");
    text.push('\n');
    {
        let mut stdin = child.stdin.take().context("ip's stdin was piped")?;
        // A write error means ip ended early: its status and stderr say why.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_addresses_stay_in_the_upper_half_of_the_test_range() {
        assert_eq!(pod_v4(0), Ipv4Addr::new(198, 19, 0, 10));
        assert_eq!(pod_v4(245), Ipv4Addr::new(198, 19, 0, 255));
        assert_eq!(pod_v4(246), Ipv4Addr::new(198, 19, 1, 0));
        assert_eq!(pod_v4(1023), Ipv4Addr::new(198, 19, 4, 9));
    }
}
