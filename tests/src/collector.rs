//! The real `mirror-agent collect`, run inside a namespace and writing into
//! a temporary directory that lives as long as its guard.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::{
    agent::{binary, fields},
    capture::{self, Frame},
    http,
    netns::Netns,
    process::Process,
};

/// Where a collector started without `--metrics-addr` serves /metrics
/// (the agent's default), inside its namespace.
pub const METRICS: &str = "127.0.0.1:9464";

/// A running collector. Dropping it kills the process and removes its files.
pub struct Collector {
    process: Process,
    dir: TempDir,
}

impl Collector {
    /// Starts `mirror-agent collect --listen L... --output pcapng:DIR EXTRA...`
    /// in `ns`, with DIR a fresh temporary directory, and waits until it listens.
    pub fn start(ns: &Netns, listen: &[&str], extra: &[&str]) -> Result<Self> {
        Self::start_in(ns, &std::env::temp_dir(), listen, extra)
    }

    /// The same, with DIR made inside `parent` (a small tmpfs, say).
    pub fn start_in(ns: &Netns, parent: &Path, listen: &[&str], extra: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir_in(parent)?;
        let output = format!("pcapng:{}", dir.path().display());
        let mut cmd = ns.command(&binary().to_string_lossy());
        cmd.arg("collect");
        for l in listen {
            cmd.args(["--listen", l]);
        }
        cmd.args(["--output", &output])
            .args(extra)
            .stdout(Stdio::null());
        let mut process = Process::spawn("mirror-agent collect", cmd)?;
        process.wait_for_line("collector started", Duration::from_secs(20))?;
        Ok(Self { process, dir })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The collector's process id (for /proc/PID/status).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Waits for a line of its log containing `needle` (such as `stream connected`).
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.process.wait_for_line(needle, timeout)
    }

    /// Waits until the collector, started in `ns` with the default metrics
    /// address, has decoded at least `n` packets on all its listeners
    /// together, for at most 20 s; how many it had. A collector stopped
    /// before then would leave datagrams unread in its sockets.
    pub fn wait_decoded(&self, ns: &Netns, n: u64) -> Result<u64> {
        self.wait_counter(ns, "mirror_collect_decoded_packets_total", n)
    }

    /// Waits until the counter `name`, summed over its listeners, is at
    /// least `n` in a live scrape (as [`Collector::wait_decoded`]).
    pub fn wait_counter(&self, ns: &Netns, name: &str, n: u64) -> Result<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let body = http::get(ns, METRICS, "/metrics")?.body;
            let value = http::total(&body, name);
            if value >= n {
                return Ok(value);
            }
            ensure!(
                Instant::now() < deadline,
                "the collector's {name} reached {value} within 20 s, not {n}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM; waits for the collector to close its file and report.
    pub fn stop(self) -> Result<Collected> {
        let (status, stderr) = self
            .process
            .stop(Signal::SIGTERM, Duration::from_secs(20))?;
        Ok(Collected {
            status,
            stderr,
            dir: self.dir,
        })
    }
}

/// A stopped collector: how it ended, and its files.
pub struct Collected {
    pub status: ExitStatus,
    pub stderr: String,
    dir: TempDir,
}

impl Collected {
    /// Fails unless the collector exited 0.
    pub fn ensure_success(&self) -> Result<()> {
        ensure!(
            self.status.success(),
            "collector failed: {}\n{}",
            self.status,
            self.stderr
        );
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The pcapng files it left, in name order (which is the order written).
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.retain(|p| p.extension().is_some_and(|e| e == "pcapng"));
        files.sort();
        Ok(files)
    }

    /// Every frame of every file, read with the pcap-file crate.
    pub fn frames(&self) -> Result<Vec<Frame>> {
        let mut frames = Vec::new();
        for f in self.files()? {
            frames.extend(capture::read(&f).with_context(|| format!("reading {}", f.display()))?);
        }
        Ok(frames)
    }

    /// The counters of the `listener summary` line of `listener` (its URI as
    /// the collector prints it, e.g. `vxlan://198.18.1.2:4789`).
    pub fn listener(&self, listener: &str) -> Result<HashMap<String, u64>> {
        let needle = format!("listener={listener} ");
        self.line("listener summary", Some(&needle))
    }

    /// The counters of the `collector summary` line.
    pub fn summary(&self) -> Result<HashMap<String, u64>> {
        self.line("collector summary", None)
    }

    fn line(&self, what: &str, with: Option<&str>) -> Result<HashMap<String, u64>> {
        let line = self
            .stderr
            .lines()
            .find(|l| l.contains(what) && with.is_none_or(|w| l.contains(w)))
            .with_context(|| {
                format!(
                    "no '{what}' line in the collector's output:\n{}",
                    self.stderr
                )
            })?;
        Ok(fields(line))
    }
}
