//! tcpdump, the oracle: run on the same interface as the agent.

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;

use crate::{netns::Netns, process::Process};

pub struct Tcpdump {
    process: Process,
    path: PathBuf,
    /// `-Q` filters direction in libpcap, after the kernel's count of
    /// packets "received by filter".
    direction_filter: bool,
}

impl Tcpdump {
    /// Starts `tcpdump -i IF -w PATH` (whole packets, nanosecond stamps,
    /// unbuffered, as root) plus `extra` arguments, and waits until it listens.
    pub fn start(ns: &Netns, interface: &str, path: PathBuf, extra: &[&str]) -> Result<Self> {
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-i", interface, "-n", "-s", "0", "-U", "--immediate-mode"])
            // A 512 MiB buffer. In immediate mode libpcap uses TPACKET_V2,
            // whose ring has fixed slots sized for the largest frame (64 KiB
            // with GSO), so 128 MiB held only about 2,000 packets, and a
            // 20,000-packet flood overran it now and then (about one run in
            // three on 2 cores); with the default 2 MiB it drops GSO bursts.
            .args(["-B", "524288"])
            .args(["--time-stamp-precision=nano", "-Z", "root", "-w"])
            .arg(&path)
            .args(extra)
            .stdout(Stdio::null());
        let mut process = Process::spawn("tcpdump", cmd)?;
        process
            .wait_for_line("listening on", Duration::from_secs(10))
            .context("tcpdump did not start (is it installed? `cargo xtask setup` installs it)")?;
        Ok(Self {
            process,
            path,
            direction_filter: extra.contains(&"-Q"),
        })
    }

    /// Stops tcpdump once its file has stopped growing (it is behind the
    /// kernel after a burst), and checks it kept every packet it received.
    pub fn stop(self) -> Result<PathBuf> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let size = || std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let mut last = size();
        loop {
            std::thread::sleep(Duration::from_millis(400));
            let now = size();
            if now == last || Instant::now() > deadline {
                break;
            }
            last = now;
        }
        let (status, stderr) = self.process.stop(Signal::SIGINT, Duration::from_secs(10))?;
        ensure!(status.success(), "tcpdump failed: {status}\n{stderr}");
        // The oracle must be complete to be trusted.
        let stat = |what: &str| {
            stderr
                .lines()
                .find(|l| l.ends_with(what))
                .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        };
        let (captured, received, dropped) = (
            stat("packets captured"),
            stat("packets received by filter"),
            stat("packets dropped by kernel"),
        );
        ensure!(
            captured.is_some()
                && (captured == received || self.direction_filter)
                && dropped == Some(0),
            "tcpdump did not keep every packet, so it cannot serve as the oracle:\n{stderr}"
        );
        Ok(self.path)
    }
}
