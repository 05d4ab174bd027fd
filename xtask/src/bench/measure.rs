//! The measurements: iperf3 TCP, trafgen 64-byte UDP, CPU and memory from
//! /proc, and the hooks' own run time from the kernel's BPF statistics.
//! Every external program runs bounded in time and stops early on Ctrl-C.

use std::{
    io::Read,
    os::{fd::OwnedFd, unix::process::CommandExt},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use aya::programs::{SchedClassifier, TcAttachType};
use nix::{
    sys::signal::{self, Signal},
    unistd::{Pid, SysconfVar, sysconf},
};
use testbed::{
    netns::{Netns, join},
    process::Process,
};

use super::{
    StopFlag,
    topology::{BenchNet, CLIENT_V4, SERVER_V4, UDP_SINK_PORT},
};

const IPERF_PORT: u16 = 5201;

/// Runs `cmd` to its end, at most `timeout`, killing it early on Ctrl-C;
/// returns its status, stdout and stderr.
fn run_bounded(
    mut cmd: Command,
    timeout: Duration,
    stop: &StopFlag,
) -> Result<(ExitStatus, String, String)> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("running {what}"))?;
    // Readers on threads, so a chatty child never blocks on a full pipe.
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let status = wait_bounded(&mut child, timeout, stop, &what)?;
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    Ok((status, out, err))
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_string(&mut s);
        }
        s
    })
}

fn wait_bounded(
    child: &mut Child,
    timeout: Duration,
    stop: &StopFlag,
    what: &str,
) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if stop.raised() || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            stop.check()?;
            bail!("{what} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The iperf3 server in the server namespace, for the whole bench.
pub fn iperf3_server(net: &BenchNet) -> Result<Process> {
    let mut cmd = net.server.command("iperf3");
    cmd.args(["-s", "-p", &IPERF_PORT.to_string()])
        .stdout(Stdio::null());
    let server = Process::spawn("iperf3 -s", cmd)?;
    // Listening once the socket shows up (iperf3 says so only on stdout).
    let deadline = Instant::now() + Duration::from_secs(10);
    let filter = format!("sport = :{IPERF_PORT}");
    while net
        .server
        .exec(&["ss", "-Hltn", &filter])?
        .trim()
        .is_empty()
    {
        ensure!(
            Instant::now() < deadline,
            "iperf3 -s did not listen within 10 s"
        );
        thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

/// TCP goodput client -> server in Gbit/s, as iperf3's receiver counts it.
pub fn tcp(net: &BenchNet, streams: u32, seconds: u64, stop: &StopFlag) -> Result<f64> {
    let mut cmd = net.client.command("iperf3");
    cmd.args(["-c", &SERVER_V4.to_string(), "-p", &IPERF_PORT.to_string()])
        .args(["-t", &seconds.to_string(), "-P", &streams.to_string(), "-J"]);
    let (status, out, err) = run_bounded(cmd, Duration::from_secs(seconds + 20), stop)?;
    let json: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("iperf3 -J printed no JSON ({status}): {err}{out}"))?;
    if let Some(e) = json["error"].as_str() {
        bail!("iperf3 failed: {e}");
    }
    ensure!(status.success(), "iperf3 failed ({status}): {err}");
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("no end.sum_received.bits_per_second in iperf3's JSON")?;
    Ok(bps / 1e9)
}

/// A trafgen packet: one 64-byte Ethernet frame, UDP client -> server,
/// with the IPv4 checksum computed by trafgen.
pub fn write_trafgen_config(net: &BenchNet, path: &Path) -> Result<()> {
    let bytes = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:#04x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // 14 Ethernet + 20 IPv4 + 8 UDP + 22 payload = 64 bytes.
    let text = format!(
        "/* Written by cargo xtask bench: 64-byte UDP frames {CLIENT_V4} -> {SERVER_V4}:{UDP_SINK_PORT}. */\n\
         {{\n  {dst}, {src}, 0x08, 0x00,\n  \
         0x45, 0x00, 0x00, 0x32, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, csumip(14, 33),\n  \
         {sip}, {dip},\n  \
         0x30, 0x39, {dport}, 0x00, 0x1e, 0x00, 0x00,\n  \
         fill(0x5a, 22)\n}}\n",
        dst = bytes(&net.host_mac),
        src = bytes(&net.client_mac),
        sip = bytes(&CLIENT_V4.octets()),
        dip = bytes(&SERVER_V4.octets()),
        dport = bytes(&UDP_SINK_PORT.to_be_bytes()),
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// One trafgen run, with the kernel's frame counts around it.
#[derive(Clone, Copy, Debug, Default)]
pub struct UdpRun {
    pub seconds: f64,
    /// Frames into the hooked interface (from the client) per second: the offered rate.
    pub offered_pps: f64,
    /// Frames the server received per second: production traffic that got through.
    pub delivered_pps: f64,
}

/// trafgen on one CPU for `seconds`: as fast as it can (TX ring, no qdisc)
/// without `rate`, else paced at `rate` packets/s (trafgen then sends one
/// packet per syscall, so it tops out lower).
pub fn udp(
    net: &BenchNet,
    config: &Path,
    rate: Option<u64>,
    seconds: f64,
    stop: &StopFlag,
) -> Result<UdpRun> {
    let mut cmd = net.client.command("trafgen");
    cmd.args(["--dev", &net.client_if, "--conf"])
        .arg(config)
        // One sender CPU, so the other is left to the copier; and leave the
        // machine's socket memory and IRQ affinity alone.
        .args([
            "--cpus",
            "1",
            "--no-sock-mem",
            "--notouch-irq",
            "--no-cpu-stats",
        ]);
    if let Some(r) = rate {
        cmd.args(["--rate", &format!("{r}pps")]);
    }
    // trafgen forks its sender even for one CPU, and only the whole group
    // stops on SIGINT: so its own process group, signalled as one.
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let (hook0, _) = net.hook_frames()?;
    let srv0 = net.server_rx()?;
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("running {what}"))?;
    let mut group = Group(child);
    let out = reader(group.0.stdout.take());
    let err = reader(group.0.stderr.take());
    let run_for = Duration::from_secs_f64(seconds);
    while start.elapsed() < run_for && !stop.raised() {
        if group.0.try_wait()?.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    // SIGINT is trafgen's own way to stop.
    group.signal(Signal::SIGINT)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = group.0.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            bail!("{what} did not stop within 10 s of SIGINT");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed().as_secs_f64();
    let (hook1, _) = net.hook_frames()?;
    let srv1 = net.server_rx()?;
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    stop.check()?;
    // Stopped by SIGINT it exits 0; anything else is a broken run.
    ensure!(status.success(), "{what} failed ({status}):\n{err}\n{out}");
    ensure!(
        hook1 > hook0,
        "trafgen sent nothing through the node:\n{err}\n{out}"
    );
    Ok(UdpRun {
        seconds: elapsed,
        offered_pps: (hook1 - hook0) as f64 / elapsed,
        delivered_pps: srv1.saturating_sub(srv0) as f64 / elapsed,
    })
}

/// A child leading its own process group; dropping it kills the group.
struct Group(Child);

impl Group {
    fn signal(&self, sig: Signal) -> Result<()> {
        let pgid = Pid::from_raw(i32::try_from(self.0.id()).context("pid")?);
        // The group may be gone already (ESRCH): nothing left to stop.
        let _ = signal::killpg(pgid, sig);
        Ok(())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = self.signal(Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

/// Nanoseconds per /proc clock tick.
fn tick_ns() -> Result<f64> {
    let hz = sysconf(SysconfVar::CLK_TCK)
        .context("sysconf(_SC_CLK_TCK)")?
        .context("no _SC_CLK_TCK")?;
    Ok(1e9 / hz as f64)
}

/// User plus system CPU time of `pid` so far, in ns (/proc/PID/stat fields 14 and 15).
pub fn process_cpu_ns(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name in parentheses may hold spaces: count from after it.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("unexpected {path}: {text}"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let get = |i: usize| -> Result<f64> {
        f.get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v as f64)
            .with_context(|| format!("unexpected {path}: {text}"))
    };
    Ok((get(11)? + get(12)?) * tick_ns()?)
}

/// Softirq time of all CPUs so far, in ns (/proc/stat, `cpu` line, 7th value).
pub fn softirq_ns() -> Result<f64> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let v = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .and_then(|l| l.split_whitespace().nth(7)?.parse::<u64>().ok())
        .context("no softirq time in /proc/stat")?;
    Ok(v as f64 * tick_ns()?)
}

/// `(VmRSS, VmHWM)` of `pid` in KiB.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let get = status_kib(pid)?;
    Ok((get("VmRSS:")?, get("VmHWM:")?))
}

/// A reader of `pid`'s /proc/PID/status as it is now: each call gives one
/// field's value in KiB (`VmRSS:`, `RssAnon:`...).
pub fn status_kib(pid: u32) -> Result<impl Fn(&str) -> Result<u64>> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    Ok(move |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .with_context(|| format!("no {key} in {path}"))
    })
}

/// Waits until `pid` has used no CPU for a while (the copier has drained
/// what the burst left behind), at most `limit`.
pub fn wait_idle(pid: u32, limit: Duration, stop: &StopFlag) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = process_cpu_ns(pid)?;
    let mut quiet = 0;
    while quiet < 3 && Instant::now() < deadline {
        stop.check()?;
        thread::sleep(Duration::from_millis(100));
        let now = process_cpu_ns(pid)?;
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
    Ok(())
}

/// The kernel's BPF run-time statistics, on while this guard lives. It is
/// `sysctl kernel.bpf_stats_enabled=1` held by a file descriptor
/// (BPF_ENABLE_STATS), so it goes off again however the bench ends.
pub struct BpfStats {
    _fd: OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")?;
        Ok(Self { _fd: fd })
    }
}

/// Summed `(run_time_ns, run_cnt)` of the tcx programs on `iface` in `ns`
/// (our mirror_ingress and mirror_egress), as `bpftool prog show` reports them.
pub fn hook_run_time(ns: &Netns, iface: &str) -> Result<(u64, u64)> {
    let iface = iface.to_owned();
    join(ns.spawn(move || {
        let (mut ns, mut cnt) = (0u64, 0u64);
        let mut names = Vec::new();
        for kind in [TcAttachType::Ingress, TcAttachType::Egress] {
            let (_, progs) = SchedClassifier::query_tcx(&iface, kind)
                .with_context(|| format!("querying the tcx programs of {iface}"))?;
            for p in progs {
                let name = p.name_as_str().unwrap_or("?").to_owned();
                if name.starts_with("mirror_") {
                    ns += u64::try_from(p.run_time().as_nanos()).unwrap_or(u64::MAX);
                    cnt += p.run_count();
                }
                names.push(name);
            }
        }
        ensure!(
            names.iter().any(|n| n.starts_with("mirror_")),
            "no mirror_* program on {iface}'s tcx hooks (found {names:?})"
        );
        Ok((ns, cnt))
    }))
}
