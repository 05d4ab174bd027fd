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

/// Extra tcpdump arguments for floods of small frames. In immediate mode
/// libpcap gives every packet a ring slot sized for the snaplen, and with
/// `-s 0` on a GSO-capable veth that slot is 128 KiB, so even the 512 MiB
/// buffer holds only ~4,000 frames, and a 20,000-frame flood on a busy
/// 2-core machine overran it (CI: 1,032 dropped). 256 bytes keeps the
/// floods' frames whole and holds ~1.5 million of them.
pub const SMALL_FRAMES: [&str; 2] = ["-s", "256"];

/// Extra tcpdump arguments for a few hundred frames of at most 4 KiB (no
/// TCP on a veth, so no GSO super-packets): a 64 MiB ring of 16,384 slots.
/// The default 512 MiB ring, two or three per test and several tests at
/// once, sometimes could not even start within 10 s on a loaded machine.
pub const FEW_FRAMES: [&str; 4] = ["-s", "4096", "-B", "65536"];

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

    /// Waits until tcpdump's file has stopped growing (unchanged over
    /// `quiet`), for at most 20 s; whether it did.
    fn wait_still(&self, quiet: Duration) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let size = || std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let mut last = size();
        loop {
            std::thread::sleep(quiet);
            let now = size();
            if now == last {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            last = now;
        }
    }

    /// Waits, before the agent is stopped, until the traffic a test sent has
    /// passed the hook: tcpdump writes each packet as it comes (`-U`), its
    /// tap sees a packet after the TC egress hook and in the same softirq
    /// as the ingress one, so once its file has stopped growing every packet
    /// is through. As long as the 300 ms pause it replaces when the capture
    /// is quiet, and longer on a loaded machine, where that pause stopped
    /// the agent too soon. Fails if traffic never stops.
    pub fn settle(&self) -> Result<()> {
        ensure!(
            self.wait_still(Duration::from_millis(300)),
            "tcpdump's capture {} kept growing for 20 s: is traffic still running?",
            self.path.display()
        );
        Ok(())
    }

    /// Stops tcpdump once its file has stopped growing (it is behind the
    /// kernel after a burst), and checks it kept every packet it received.
    pub fn stop(self) -> Result<PathBuf> {
        self.wait_still(Duration::from_millis(400));
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
