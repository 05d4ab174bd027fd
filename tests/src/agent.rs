//! The real `mirror-agent` binary, run inside a namespace.

use std::{
    collections::HashMap,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::{netns::Netns, process::Process};

/// The agent binary: `MIRROR_AGENT_BIN` (set by `cargo xtask test`), else
/// `target/debug/mirror-agent` of this workspace.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("MIRROR_AGENT_BIN").map_or_else(
        || {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")),
                PathBuf::from,
            );
            target.join("debug/mirror-agent")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "the agent binary {} does not exist; build it first (`cargo xtask test` does)",
        path.display()
    );
    path
}

/// A running `mirror-agent`.
pub struct Agent {
    process: Process,
}

/// How the agent ended.
pub struct Exit {
    pub status: ExitStatus,
    pub stderr: String,
}

impl Exit {
    /// Counters from the agent's `summary total` line (`key=value` fields).
    pub fn summary(&self) -> Result<HashMap<String, u64>> {
        self.fields_of("summary total")
    }

    /// Counters from the first log line containing `tag` (e.g. `output
    /// summary`, `policy summary`).
    pub fn fields_of(&self, tag: &str) -> Result<HashMap<String, u64>> {
        self.fields_with(&[tag])
    }

    /// Counters from the first log line containing every one of `needles`
    /// (e.g. `output summary` and the output's name).
    pub fn fields_with(&self, needles: &[&str]) -> Result<HashMap<String, u64>> {
        let line = self
            .stderr
            .lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .with_context(|| {
                format!(
                    "no line with {needles:?} in the agent's output:\n{}",
                    self.stderr
                )
            })?;
        Ok(fields(line))
    }
}

/// `key=value` pairs with numeric values from one log line.
pub fn fields(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
        .collect()
}

impl Agent {
    /// Starts `mirror-agent ARGS` in `ns` and waits until it is mirroring.
    pub fn start(ns: &Netns, args: &[&str]) -> Result<Self> {
        let mut cmd = ns.command(&binary().to_string_lossy());
        cmd.args(args).stdout(Stdio::null());
        Self::start_command(cmd)
    }

    /// Starts a prepared command (stdout as the caller set it).
    pub fn start_command(cmd: std::process::Command) -> Result<Self> {
        let mut process = Process::spawn("mirror-agent", cmd)?;
        process.wait_for_line("mirroring started", Duration::from_secs(20))?;
        Ok(Self { process })
    }

    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// SIGTERM, and wait for it to finish draining and detaching.
    pub fn stop(self) -> Result<Exit> {
        self.signal(Signal::SIGTERM)
    }

    pub fn signal(self, sig: Signal) -> Result<Exit> {
        let (status, stderr) = self.process.stop(sig, Duration::from_secs(20))?;
        Ok(Exit { status, stderr })
    }

    /// Waits for an agent already signalled (with `kill`) to exit.
    pub fn wait(self, timeout: Duration) -> Result<Exit> {
        let (status, stderr) = self.process.wait(timeout)?;
        Ok(Exit { status, stderr })
    }

    /// True while the process runs (neither exited nor a zombie), from
    /// `/proc/PID/stat`: a check made now happened before its exit.
    pub fn alive(&self) -> bool {
        self.process.pid().is_some_and(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| Some(s.rsplit_once(") ")?.1.chars().next()? != 'Z'))
                .unwrap_or(false)
        })
    }
}

/// Runs the agent to completion (for arguments it must refuse).
pub fn run(ns: &Netns, args: &[&str]) -> Result<Exit> {
    let mut cmd = ns.command(&binary().to_string_lossy());
    cmd.args(args).stdout(Stdio::null());
    let process = Process::spawn("mirror-agent", cmd)?;
    let (status, stderr) = process.wait(Duration::from_secs(20))?;
    Ok(Exit { status, stderr })
}

/// `mirror-agent status --pin-dir DIR -o json` run in `ns` (the agent's own
/// namespace: link names of its interfaces are relative to it), parsed.
pub fn status(ns: &Netns, pin_dir: &str) -> Result<serde_json::Value> {
    let out = ns.exec(&[
        &binary().to_string_lossy(),
        "status",
        "--pin-dir",
        pin_dir,
        "-o",
        "json",
    ])?;
    serde_json::from_str(&out).with_context(|| format!("status printed no JSON:\n{out}"))
}
