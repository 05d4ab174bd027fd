//! tcpdump, the oracle: run on the same interface as the agent.

use std::{path::PathBuf, process::Stdio, time::Duration};

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;

use crate::{netns::Netns, process::Process};

pub struct Tcpdump {
    process: Process,
    path: PathBuf,
}

impl Tcpdump {
    /// Starts `tcpdump -i IF -w PATH` (whole packets, nanosecond stamps,
    /// unbuffered, as root) plus `extra` arguments, and waits until it listens.
    pub fn start(ns: &Netns, interface: &str, path: PathBuf, extra: &[&str]) -> Result<Self> {
        let mut cmd = ns.command("tcpdump");
        cmd.args(["-i", interface, "-n", "-s", "0", "-U", "--immediate-mode"])
            .args(["--time-stamp-precision=nano", "-Z", "root", "-w"])
            .arg(&path)
            .args(extra)
            .stdout(Stdio::null());
        let mut process = Process::spawn("tcpdump", cmd)?;
        process
            .wait_for_line("listening on", Duration::from_secs(10))
            .context("tcpdump did not start (is it installed? `cargo xtask setup` installs it)")?;
        Ok(Self { process, path })
    }

    /// Stops tcpdump (it flushes on SIGINT) and returns the capture's path.
    pub fn stop(self) -> Result<PathBuf> {
        let (status, stderr) = self.process.stop(Signal::SIGINT, Duration::from_secs(10))?;
        ensure!(status.success(), "tcpdump failed: {status}\n{stderr}");
        // tcpdump reports kernel drops; the oracle must be complete to be trusted.
        ensure!(
            stderr.contains(" 0 packets dropped by kernel"),
            "tcpdump itself dropped packets, so it cannot serve as the oracle:\n{stderr}"
        );
        Ok(self.path)
    }
}
