//! Faults the agent must survive (issue #5): each one is counted where users
//! see it (the summary lines on exit, and /metrics), and nothing else stops:
//! the agent goes on mirroring everything else, and on SIGTERM exits 0 with
//! its hooks detached. Where frames are involved, what an unaffected output
//! wrote is compared with tcpdump on the same interface.
//!
//! Each test gathers its checks and reports every one that failed at once,
//! with the agent's log, so a failure says exactly which promise broke.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Command,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use nix::{
    sys::{
        signal::{self, Signal},
        socket::{setsockopt, sockopt},
    },
    unistd::Pid,
};
use testbed::{
    agent::{Agent, Exit},
    capture::{self, Frame},
    hooks::attached,
    netns::{self, Netns, join},
    scenario::assert_same_frames,
    tcpdump::{SMALL_FRAMES, Tcpdump},
    tmpfs::Tmpfs,
    topology::{BridgedNode, CollectorLink, PodPair},
    traffic, unique_name,
};

/// The agent's metrics address (the default); every test has its own
/// namespaces, so the same port serves in each.
const METRICS: &str = "127.0.0.1:9464";
const MIB: u64 = 1 << 20;

/// Floods share two CPUs with everything else; one at a time keeps each
/// test's figures its own (and tcpdump, the oracle, complete).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------- checks

/// Every check of a test, reported together.
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn new() -> Self {
        Self { failed: Vec::new() }
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failed.push(what.into());
        }
    }

    /// Panics listing every failed check, with the agent's log.
    fn done(self, log: &str) {
        if !self.failed.is_empty() {
            panic!(
                "{} check(s) failed:\n- {}\n--- agent log ---\n{log}",
                self.failed.len(),
                self.failed.join("\n- ")
            );
        }
    }
}

/// The `key=value` counters of the first log line that contains every one
/// of `needles` (e.g. `output summary` and the output's name).
fn field(map: &HashMap<String, u64>, key: &str) -> u64 {
    *map.get(key)
        .unwrap_or_else(|| panic!("no {key} in {map:?}"))
}

/// The agent exited 0 and its hooks are off `interfaces` (asked of the kernel).
fn check_clean_exit(c: &mut Checks, exit: &Exit, node: &Netns, interfaces: &[&str]) {
    c.check(
        exit.status.success(),
        format!("the agent exited with {} instead of 0", exit.status),
    );
    c.check(
        exit.stderr.contains("summary total"),
        "no `summary total` line",
    );
    for iface in interfaces {
        match attached(node, iface) {
            Ok(left) => c.check(
                left.is_empty(),
                format!("hooks left on {iface} after exit: {left:?}"),
            ),
            Err(e) => c.check(false, format!("querying the hooks of {iface}: {e:#}")),
        }
    }
}

/// The kernel's counters add up: every packet seen was mirrored or passed
/// over for a counted reason (the hook counts `own_traffic` before `seen`).
fn check_kernel_sum(c: &mut Checks, what: &str, s: &HashMap<String, u64>) {
    let accounted = field(s, "mirrored")
        + field(s, "lost_ring_full")
        + field(s, "lost_copy_failed")
        + field(s, "filtered")
        + field(s, "sampled_out");
    c.check(
        field(s, "seen") == accounted,
        format!(
            "{what}: seen {} != mirrored + ring_full + copy_failed + filtered + sampled_out = {accounted}",
            field(s, "seen")
        ),
    );
}

/// One output's copies: each written copy was sent or counted as lost.
fn check_output_accounting(c: &mut Checks, name: &str, out: &HashMap<String, u64>, written: u64) {
    let (sent, qf, se) = (
        field(out, "sent"),
        field(out, "lost_queue_full"),
        field(out, "lost_send_error"),
    );
    c.check(
        sent + qf + se == written,
        format!(
            "{name}: sent {sent} + lost_queue_full {qf} + lost_send_error {se} != written {written}"
        ),
    );
}

/// Up to three frames of a difference, for a failure message.
fn show(frames: &[(Vec<u8>, u32)]) -> String {
    frames
        .iter()
        .take(3)
        .map(|(d, l)| format!("\n    {}", capture::describe(d, *l)))
        .collect()
}

/// What a mirror lacks or has in excess of tcpdump's capture; empty if equal.
fn differs(oracle: &[Frame], mirror: &[Frame]) -> Option<String> {
    let diff = capture::difference(oracle, mirror);
    (!diff.is_empty()).then(|| {
        format!(
            "{} frames missing, {} extra (of {} in tcpdump, {} mirrored); missing:{} extra:{}",
            diff.missing.len(),
            diff.extra.len(),
            oracle.len(),
            mirror.len(),
            show(&diff.missing),
            show(&diff.extra)
        )
    })
}

// ---------------------------------------------------------------- metrics

/// `GET /metrics` from inside `ns`, parsed by prometheus-parse.
fn scrape(ns: &Netns) -> Result<Vec<prometheus_parse::Sample>> {
    let addr: SocketAddr = METRICS.parse()?;
    let body = join(ns.spawn(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
        Ok(body.to_owned())
    }))?;
    Ok(prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))?.samples)
}

/// The sum of the samples of `name` whose labels include `with`; `None` if
/// there is none.
fn metric(samples: &[prometheus_parse::Sample], name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| with.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// Scrapes until `f` holds of the samples, for at most `timeout`; returns
/// the last samples and whether it held.
fn scrape_until(
    ns: &Netns,
    timeout: Duration,
    mut f: impl FnMut(&[prometheus_parse::Sample]) -> bool,
) -> (Vec<prometheus_parse::Sample>, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let samples = scrape(ns).unwrap_or_default();
        if f(&samples) {
            return (samples, true);
        }
        if Instant::now() > deadline {
            return (samples, false);
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Every copy the hooks put in the ring has been read and delivered, and
/// each of `outputs` has sent it or counted it as lost: nothing is in
/// flight there, so what is scraped now stays until new traffic comes.
fn settled(s: &[prometheus_parse::Sample], outputs: &[&str]) -> bool {
    let Some(delivered) = metric(s, "mirror_delivered_packets_total", &[]) else {
        return false;
    };
    metric(s, "mirror_mirrored_packets_total", &[]) == Some(delivered)
        && outputs.iter().all(|o| {
            let sent = metric(s, "mirror_output_sent_packets_total", &[("output", o)]);
            let lost = metric(s, "mirror_dropped_packets_total", &[("output", o)]);
            sent.zip(lost).is_some_and(|(a, b)| a + b == delivered)
        })
}

// ---------------------------------------------------------------- memory

/// `VmRSS` and `RssAnon` of a process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Rss {
    total_kib: u64,
    anon_kib: u64,
}

fn rss(pid: u32) -> Result<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(key))
            .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("no value")?
            .parse()?)
    };
    Ok(Rss {
        total_kib: kib("VmRSS:")?,
        anon_kib: kib("RssAnon:")?,
    })
}

/// The agent's pid (`ip netns exec` execs it, so the child is the agent).
fn agent_pid(agent: &mut Agent) -> u32 {
    let pid = agent.process().pid().expect("the agent runs");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "mirror-agent", "pid {pid} is not the agent");
    pid
}

/// The process exists and is not a zombie.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(") ")?.1.chars().next()?;
            Some(!matches!(state, 'Z' | 'X'))
        })
        .unwrap_or(false)
}

/// Samples a process's RSS every 10 ms until stopped; keeps the maximum.
struct RssWatch {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(Rss, usize)>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let (mut max, mut samples) = (Rss::default(), 0);
            while !flag.load(Ordering::Relaxed) {
                if let Ok(r) = rss(pid) {
                    max.total_kib = max.total_kib.max(r.total_kib);
                    max.anon_kib = max.anon_kib.max(r.anon_kib);
                    samples += 1;
                }
                thread::sleep(Duration::from_millis(10));
            }
            (max, samples)
        });
        Self { stop, handle }
    }

    /// The maximum seen, and how many samples it was taken from.
    fn finish(self) -> (Rss, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("rss thread")
    }
}

// ---------------------------------------------------------------- collectors

/// A collector of the test's own that accepts one connection and then reads
/// 1 KiB per 100 ms (10 KiB/s), with a 4 KiB receive buffer: far slower than
/// any flood, so the agent's TCP output backs up into its queue.
struct SlowCollector {
    stop: Arc<AtomicBool>,
    accepted: mpsc::Receiver<()>,
    handle: Option<JoinHandle<Result<u64>>>,
}

impl SlowCollector {
    fn start(ns: &Netns, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (accepted_tx, accepted) = mpsc::channel();
        let handle = ns.spawn(move || {
            let listener = TcpListener::bind(addr).context("binding the slow collector")?;
            // Inherited by the accepted connection: a small window, no autotuning.
            setsockopt(&listener, sockopt::RcvBuf, &4096)?;
            listener.set_nonblocking(true)?;
            ready_tx.send(()).ok();
            let mut conn = loop {
                match listener.accept() {
                    Ok((conn, _)) => break conn,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if flag.load(Ordering::Relaxed) {
                            return Ok(0);
                        }
                        thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            accepted_tx.send(()).ok();
            conn.set_nonblocking(false)?;
            conn.set_read_timeout(Some(Duration::from_millis(100)))?;
            let (mut total, mut buf) = (0u64, [0u8; 1024]);
            while !flag.load(Ordering::Relaxed) {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e.into()),
                }
                thread::sleep(Duration::from_millis(100));
            }
            Ok(total)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the slow collector listens");
        Self {
            stop,
            accepted,
            handle: Some(handle),
        }
    }

    /// Bytes it read in all.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        join(self.handle.take().expect("running")).expect("slow collector")
    }
}

impl Drop for SlowCollector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------- 1, 2: collectors down or slow

/// What a flood through the pod veth, mirrored to a `tcp://` collector and
/// a pcapng file (each output's queue bounded by `--queue-bytes`), left.
struct CollectorRun {
    exit: Exit,
    oracle: Vec<Frame>,
    file: Vec<Frame>,
    file_name: String,
    tcp_name: String,
    before: Rss,
    peak: Rss,
    rss_samples: usize,
    /// Scraped after the flood, before stopping.
    samples: Vec<prometheus_parse::Sample>,
    _dir: tempfile::TempDir,
}

const QUEUE_BYTES: u64 = 4 * MIB;
const RING_BYTES: u64 = 64 * MIB;
/// The flood: 64 TCP transfers of 1 MiB, 50 ms apart, 64 MiB in all, about
/// 20 MB/s. A burst fits many times over in the 64 MiB ring and in a
/// quarter of an output's queue, so a healthy output keeps every copy (two
/// pcapng files side by side lose none here); a single 64 MiB transfer
/// would not do: veth moves it in ~30 ms, faster than the ring is drained,
/// and the copies lost would be ring_full, not the collector's doing.
const BURSTS: usize = 64;
const BURST_BYTES: usize = 1 << 20;
const FLOOD_BYTES: u64 = (BURSTS * BURST_BYTES) as u64;

/// The flood, from the pod to the node through the mirrored veth.
fn flood(pair: &PodPair, first_port: u16) {
    for i in 0..BURSTS {
        traffic::tcp_bulk(
            &pair.pod,
            &pair.node,
            IpAddr::V4(pair.node_v4),
            first_port + i as u16,
            BURST_BYTES,
        )
        .expect("the flood itself is not disturbed");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Starts tcpdump, the agent (pcapng file + `tcp://COLLECTOR:port`,
/// `--queue-bytes 4 MiB`, the default 64 MiB ring), waits for `connected`
/// (if given), floods `FLOOD_BYTES` of TCP from the pod through the mirrored
/// veth while watching the agent's RSS, scrapes /metrics, and stops all.
fn collector_run(
    pair: &PodPair,
    link: &CollectorLink,
    port: u16,
    connected: Option<&mpsc::Receiver<()>>,
) -> CollectorRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let file_path = dir.path().join("file.pcapng");
    let file_name = format!("pcapng:{}", file_path.display());
    let tcp_name = format!("tcp://{}:{port}", link.collector_v4);
    let tcpdump = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dir.path().join("tcpdump.pcap"),
        &[],
    )
    .expect("tcpdump");
    let queue = QUEUE_BYTES.to_string();
    let mut agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--output",
            &file_name,
            "--output",
            &tcp_name,
            "--queue-bytes",
            &queue,
        ],
    )
    .expect("agent starts");
    if let Some(rx) = connected {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the agent connects to the collector");
    }
    let pid = agent_pid(&mut agent);
    // The point: a baseline of the agent's memory once start-up is over.
    thread::sleep(Duration::from_millis(500));
    let before = rss(pid).expect("rss");
    let watch = RssWatch::start(pid);
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 3).expect("ping");
    flood(pair, 5100);
    let (samples, _) = scrape_until(&pair.node, Duration::from_secs(5), |s| {
        settled(s, &[&file_name])
    });
    let exit = agent.stop().expect("agent stops");
    let (peak, rss_samples) = watch.finish();
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read tcpdump");
    let file = capture::read(&file_path).expect("read the pcapng output");
    CollectorRun {
        exit,
        oracle,
        file,
        file_name,
        tcp_name,
        before,
        peak,
        rss_samples,
        samples,
        _dir: dir,
    }
}

/// What both collector faults promise: the file output is whole, the TCP
/// output's losses are counted (summary and /metrics), memory is bounded.
fn check_collector_run(c: &mut Checks, pair: &PodPair, r: &CollectorRun) -> HashMap<String, u64> {
    check_clean_exit(c, &r.exit, &pair.node, &[&pair.host_if]);
    let total = r.exit.summary().expect("summary total");
    let written = field(&total, "written");
    let file = r
        .exit
        .fields_with(&["output summary", &r.file_name])
        .expect("a log line");
    let tcp = r
        .exit
        .fields_with(&["output summary", &r.tcp_name])
        .expect("a log line");
    check_kernel_sum(c, "summary total", &total);
    c.check(
        field(&total, "lost_ring_full") == 0,
        format!(
            "ring full ({}): the stuck output held up the ring",
            field(&total, "lost_ring_full")
        ),
    );
    c.check(
        written == field(&total, "mirrored"),
        format!(
            "written {written} != mirrored {}",
            field(&total, "mirrored")
        ),
    );
    c.check(
        written >= FLOOD_BYTES / 65536,
        format!("only {written} copies written: the flood did not happen"),
    );
    check_output_accounting(c, "file", &file, written);
    check_output_accounting(c, "tcp", &tcp, written);
    c.check(
        field(&file, "sent") == written,
        format!(
            "the file output sent {} of {written} (lost_queue_full {}, lost_send_error {})",
            field(&file, "sent"),
            field(&file, "lost_queue_full"),
            field(&file, "lost_send_error")
        ),
    );
    let tcp_lost = field(&tcp, "lost_queue_full") + field(&tcp, "lost_send_error");
    c.check(
        tcp_lost > 0,
        "the tcp output lost nothing: the fault did not bite",
    );
    c.check(
        field(&total, "lost_output")
            == tcp_lost + field(&file, "lost_queue_full") + field(&file, "lost_send_error"),
        format!(
            "summary total lost_output {} != the outputs' losses",
            field(&total, "lost_output")
        ),
    );
    // Frames: the file output holds exactly what tcpdump saw.
    match differs(&r.oracle, &r.file) {
        Some(d) => c.check(false, format!("the file output differs from tcpdump: {d}")),
        None => assert_same_frames(&r.oracle, &r.file),
    }
    // /metrics, scraped after the flood: the queue-full drops are there,
    // equal to the summary (nothing arrives after the flood; shutdown only
    // adds send errors for what was still queued), and the queue within bounds.
    let tcp_labels = [("output", r.tcp_name.as_str()), ("reason", "queue_full")];
    let scraped_qf = metric(&r.samples, "mirror_dropped_packets_total", &tcp_labels);
    c.check(
        scraped_qf == Some(field(&tcp, "lost_queue_full") as f64),
        format!(
            "/metrics queue_full of the tcp output {scraped_qf:?} != summary {}",
            field(&tcp, "lost_queue_full")
        ),
    );
    let queued = metric(
        &r.samples,
        "mirror_output_queue_bytes",
        &[("output", r.tcp_name.as_str())],
    );
    c.check(
        queued.is_some_and(|q| q <= QUEUE_BYTES as f64),
        format!("/metrics queue bytes of the tcp output {queued:?} over {QUEUE_BYTES}"),
    );
    // Memory, before the flood and at its peak. The ring buffer's pages
    // are mapped (and counted in VmRSS) from the start: VmRSS is ~145 MiB
    // before any traffic (the kernel maps the 64 MiB data area twice) while
    // RssAnon is ~4 MiB. So growth is the agent's heap. Per output: its
    // queue holds at most --queue-bytes of batches, and a batch in the
    // making at most 1 MiB more; their buffers grow by doubling, so they
    // may take twice their bytes, and the smaller buffers they outgrew, a
    // third time (freed, but kept by the allocator): 3 x (4 + 1) MiB. Two
    // outputs, and 16 MiB for thread stacks, the metrics server and the
    // rest: 46 MiB. An unbounded queue behind the stuck collector would
    // hold the whole 64 MiB flood, times the same slack. VmRSS is held to
    // the looser --queue-bytes + ring + 32 MiB, in case a kernel maps the
    // ring lazily.
    let anon_bound_kib = (2 * 3 * (QUEUE_BYTES + MIB) + 16 * MIB) / 1024;
    let total_bound_kib = (QUEUE_BYTES + RING_BYTES + 32 * MIB) / 1024;
    let anon = r.peak.anon_kib.saturating_sub(r.before.anon_kib);
    let total = r.peak.total_kib.saturating_sub(r.before.total_kib);
    eprintln!(
        "RSS before {} KiB (anon {}), peak {} KiB (anon {}) over {} samples: growth {total} KiB \
         (bound {total_bound_kib}), anon {anon} KiB (bound {anon_bound_kib}); flood {} KiB",
        r.before.total_kib,
        r.before.anon_kib,
        r.peak.total_kib,
        r.peak.anon_kib,
        r.rss_samples,
        FLOOD_BYTES / 1024
    );
    c.check(r.rss_samples > 10, "too few RSS samples");
    c.check(
        anon < anon_bound_kib,
        format!(
            "RssAnon grew by {anon} KiB during the flood, over the bound of {anon_bound_kib} KiB"
        ),
    );
    c.check(
        total < total_bound_kib,
        format!(
            "VmRSS grew by {total} KiB during the flood, over the bound of {total_bound_kib} KiB"
        ),
    );
    eprintln!(
        "written {written}; file sent {}; tcp sent {}, lost_queue_full {}, lost_send_error {}",
        field(&file, "sent"),
        field(&tcp, "sent"),
        field(&tcp, "lost_queue_full"),
        field(&tcp, "lost_send_error")
    );
    tcp
}

/// Fault 1: a collector that is down (nothing listens: every connection is
/// refused) beside a pcapng file.
#[test]
fn a_collector_that_is_down_costs_only_its_own_copies() {
    testbed::require_root();
    let _serial = serial();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    let r = collector_run(&pair, &link, 9, None);
    let mut c = Checks::new();
    let tcp = check_collector_run(&mut c, &pair, &r);
    c.check(
        field(&tcp, "sent") == 0,
        format!("sent {} to a port nobody listens on", field(&tcp, "sent")),
    );
    c.check(
        field(&tcp, "lost_queue_full") > 0,
        "nothing counted as queue_full while the collector was down",
    );
    c.check(
        r.exit
            .stderr
            .lines()
            .filter(|l| l.contains("cannot connect") && l.contains(&r.tcp_name))
            .count()
            == 1,
        "the refused connection is not logged exactly once",
    );
    c.done(&r.exit.stderr);
}

/// Fault 2: a slow collector, which accepts, then reads 10 KiB/s while the
/// pod moves 64 MiB. The TCP output backs up into its 4 MiB queue and drops
/// beyond.
#[test]
fn a_slow_collector_costs_only_its_own_copies_and_memory_stays_bounded() {
    testbed::require_root();
    let _serial = serial();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    let port = 7100;
    let slow = SlowCollector::start(&link.ns, SocketAddr::from((link.collector_v4, port)));
    let r = collector_run(&pair, &link, port, Some(&slow.accepted));
    let read = slow.finish();
    let mut c = Checks::new();
    let tcp = check_collector_run(&mut c, &pair, &r);
    eprintln!("the slow collector read {read} bytes");
    c.check(read > 0, "the slow collector read nothing");
    c.check(
        field(&tcp, "lost_queue_full") > 0,
        "nothing counted as queue_full behind a slow collector",
    );
    c.done(&r.exit.stderr);
}

/// Fault 2, in a stall: the drain stopped (SIGSTOP, as a descheduled or
/// swapped agent) while the pod sends 16 MiB, then resumed: one drain round
/// then holds 16 MiB, far more than `--queue-bytes 1 MiB`. The output's
/// queue is empty, so it must take at least a queue's worth of it (in
/// batches smaller than the bound), count the rest, and keep its memory to
/// the bound: a round handed over as one batch is larger than any queue
/// can admit, and would be dropped whole, its 16 MiB buffer kept.
#[test]
fn a_round_larger_than_the_queue_is_taken_in_pieces_and_memory_stays_bounded() {
    testbed::require_root();
    let _serial = serial();
    const QUEUE: u64 = MIB;
    const BURST: usize = 16 << 20;
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("mirror.pcapng");
    let output = format!("pcapng:{}", out_path.display());
    let tcpdump = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dir.path().join("tcpdump.pcap"),
        &[],
    )
    .expect("tcpdump");
    let queue = QUEUE.to_string();
    let mut agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--output",
            &output,
            "--queue-bytes",
            &queue,
        ],
    )
    .expect("agent starts");
    let pid = agent_pid(&mut agent);
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 1).expect("ping");
    // The point: a baseline of the agent's memory once start-up is over.
    thread::sleep(Duration::from_millis(300));
    let before = rss(pid).expect("rss");
    let watch = RssWatch::start(pid);
    let agent_pid = Pid::from_raw(pid as i32);
    signal::kill(agent_pid, Signal::SIGSTOP).expect("SIGSTOP");
    let sent = traffic::tcp_bulk(&pair.pod, &pair.node, IpAddr::V4(pair.node_v4), 5150, BURST);
    signal::kill(agent_pid, Signal::SIGCONT).expect("SIGCONT");
    sent.expect("the burst");
    let (samples, settled_after) = scrape_until(&pair.node, Duration::from_secs(5), |s| {
        settled(s, &[&output])
    });
    let (peak, rss_samples) = watch.finish();
    let exit = agent.stop().expect("agent stops");
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read tcpdump");
    let mirror = capture::read(&out_path).expect("read the mirror");

    let mut c = Checks::new();
    check_clean_exit(&mut c, &exit, &pair.node, &[&pair.host_if]);
    c.check(settled_after, "/metrics never accounted for every copy");
    let total = exit.summary().expect("summary total");
    let out = exit
        .fields_with(&["output summary", &output])
        .expect("a log line");
    let written = field(&total, "written");
    check_kernel_sum(&mut c, "summary total", &total);
    check_output_accounting(&mut c, "file", &out, written);
    c.check(
        field(&total, "lost_ring_full") == 0,
        "ring_full: the burst was meant to fit in the ring",
    );
    let lost = field(&out, "lost_queue_full") + field(&out, "lost_send_error");
    let anon = peak.anon_kib.saturating_sub(before.anon_kib);
    // The queue (1 MiB), a batch in the making (a quarter of it) and 8 MiB
    // for allocator slack; the round itself is 16 MiB.
    let anon_bound_kib = (QUEUE + 8 * MIB) / 1024;
    eprintln!(
        "written {written}: sent {} ({} bytes), lost_queue_full {}; RssAnon {} -> {} KiB \
         (growth {anon}, bound {anon_bound_kib}) over {rss_samples} samples",
        field(&out, "sent"),
        field(&out, "sent_bytes"),
        field(&out, "lost_queue_full"),
        before.anon_kib,
        peak.anon_kib
    );
    c.check(
        field(&out, "sent_bytes") >= QUEUE / 2,
        format!(
            "the idle output took only {} bytes of a 16 MiB round; its queue holds {QUEUE}",
            field(&out, "sent_bytes")
        ),
    );
    c.check(
        anon < anon_bound_kib,
        format!("RssAnon grew by {anon} KiB, over the bound of {anon_bound_kib} KiB"),
    );
    // Frames: what was written is tcpdump's, less exactly the copies counted lost.
    let diff = capture::difference(&oracle, &mirror);
    c.check(
        diff.extra.is_empty() && diff.missing.len() as u64 == lost,
        format!(
            "mirror vs tcpdump: {} missing (expected {lost} counted lost), {} extra",
            diff.missing.len(),
            diff.extra.len()
        ),
    );
    let scraped = metric(
        &samples,
        "mirror_dropped_packets_total",
        &[("output", &output), ("reason", "queue_full")],
    );
    c.check(
        scraped == Some(field(&out, "lost_queue_full") as f64),
        format!(
            "/metrics queue_full {scraped:?} != summary {}",
            field(&out, "lost_queue_full")
        ),
    );
    c.done(&exit.stderr);
}

// ---------------------------------------------------------------- 3, 4: interface or namespace gone

/// `ip link show` of a name in `ns` fails once it is gone.
fn exists(ns: &Netns, iface: &str) -> bool {
    ns.ip(&["link", "show", iface]).is_ok()
}

/// Two pods on a bridged node, both host veths mirrored; `remove` takes the
/// first pod's veth away mid-run. The second pod's mirror must equal
/// tcpdump's on its veth for the whole run, the loss be logged and shown in
/// /metrics, and the agent exit 0 with the remaining hooks detached.
fn lose_one_of_two(remove: impl FnOnce(&BridgedNode)) {
    testbed::require_root();
    let node = BridgedNode::new(2).expect("bridged node");
    // A bridge takes the lowest MAC of its ports, so losing a port can
    // change it and leave the other pod's ARP entry for the gateway stale;
    // an address set by hand stays.
    let mac = node
        .node
        .ip(&["-br", "link", "show", &node.bridge])
        .expect("bridge")
        .split_whitespace()
        .nth(2)
        .expect("bridge MAC")
        .to_owned();
    node.node
        .ip(&["link", "set", &node.bridge, "address", &mac])
        .expect("pinning the bridge's MAC");
    // The new address makes the bridge send IGMP reports for a while.
    testbed::topology::settle();
    let (gone, kept) = (&node.pods[0], &node.pods[1]);
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("mirror.pcapng");
    let output = format!("pcapng:{}", out_path.display());
    let tcpdump = Tcpdump::start(&node.node, &kept.host_if, dir.path().join("kept.pcap"), &[])
        .expect("tcpdump on the kept pod's veth");
    let mut agent = Agent::start(
        &node.node,
        &[
            "attach",
            "-i",
            &gone.host_if,
            "-i",
            &kept.host_if,
            "--output",
            &output,
        ],
    )
    .expect("agent starts");
    let gw = IpAddr::V4("198.18.0.1".parse().expect("ip"));
    for pod in [gone, kept] {
        traffic::ping(&pod.ns, gw, 3).expect("ping before");
    }
    let (before, _) = scrape_until(&node.node, Duration::from_secs(3), |s| {
        settled(s, &[&output])
    });

    remove(&node);
    let deadline = Instant::now() + Duration::from_secs(10);
    while exists(&node.node, &gone.host_if) {
        assert!(
            Instant::now() < deadline,
            "{} never went away",
            gone.host_if
        );
        thread::sleep(Duration::from_millis(50));
    }
    let pid = agent_pid(&mut agent);
    // Checked once the agent has noticed: it says so, then it must live on.
    let noticed = agent
        .process()
        .wait_for_line("interface gone", Duration::from_secs(10))
        .is_ok();
    let alive = running(pid);

    // After the loss: the other pod's traffic, mirrored as before.
    traffic::ping(&kept.ns, gw, 5).expect("ping after");
    traffic::udp(&kept.ns, &node.node, gw, 5201, &[10, 1000, 3000]).expect("udp after");
    traffic::tcp_bulk(&kept.ns, &node.node, gw, 5202, 1 << 20).expect("tcp after");
    let attached_now = |s: &[prometheus_parse::Sample]| {
        settled(s, &[&output])
            && metric(s, "mirror_attached_interfaces", &[]).is_some_and(|v| v == 1.0)
    };
    let (after, gauge_dropped) = scrape_until(&node.node, Duration::from_secs(3), attached_now);
    let exit = agent.stop().expect("agent stops");
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read tcpdump");
    let mirror = capture::read(&out_path).expect("read the mirror");

    let mut c = Checks::new();
    c.check(noticed, "the agent never logged the interface as gone");
    c.check(alive, "the agent died when the interface went away");
    check_clean_exit(&mut c, &exit, &node.node, &[&kept.host_if]);
    let of = |name: &str| -> Vec<Frame> {
        mirror
            .iter()
            .filter(|f| f.interface.as_deref() == Some(name))
            .cloned()
            .collect()
    };
    let (kept_frames, gone_frames) = (of(&kept.host_if), of(&gone.host_if));
    c.check(
        !gone_frames.is_empty(),
        "nothing mirrored from the lost interface before it went",
    );
    c.check(oracle.len() > 20, "too little traffic on the kept veth");
    match differs(&oracle, &kept_frames) {
        Some(d) => c.check(
            false,
            format!("the kept veth's mirror differs from tcpdump: {d}"),
        ),
        None => assert_same_frames(&oracle, &kept_frames),
    }
    if exit.stderr.contains("summary total") {
        let total = exit.summary().expect("summary");
        check_kernel_sum(&mut c, "summary total", &total);
        c.check(
            field(&total, "lost") == 0,
            format!("copies lost: {total:?}"),
        );
        let kept_line = exit
            .fields_with(&["summary", &format!("={}", kept.host_if)])
            .expect("a log line");
        c.check(
            field(&kept_line, "mirrored") == kept_frames.len() as u64,
            format!(
                "{}: mirrored {} but {} frames written",
                kept.host_if,
                field(&kept_line, "mirrored"),
                kept_frames.len()
            ),
        );
    }
    eprintln!(
        "lost interface: {} frames mirrored before it went; kept interface: {} frames, tcpdump {}",
        gone_frames.len(),
        kept_frames.len(),
        oracle.len()
    );
    // Where users see the loss: a log line naming the interface (other than
    // the `attached` and `summary` lines), and the attached-interfaces gauge.
    let words = [
        "deleted",
        "removed",
        "gone",
        "vanished",
        "disappeared",
        "lost",
    ];
    let logged = exit.stderr.lines().any(|l| {
        l.contains(&gone.host_if)
            && !l.contains("summary")
            && words.iter().any(|w| l.to_lowercase().contains(w))
    });
    c.check(
        logged,
        format!(
            "no log line reports that {} went away (a line naming it with one of {words:?})",
            gone.host_if
        ),
    );
    let gauge = |s: &[prometheus_parse::Sample]| metric(s, "mirror_attached_interfaces", &[]);
    c.check(
        gauge(&before) == Some(2.0),
        format!(
            "mirror_attached_interfaces {:?} before the loss, not 2",
            gauge(&before)
        ),
    );
    c.check(
        gauge_dropped,
        format!(
            "mirror_attached_interfaces still {:?} after {} went away, not 1",
            gauge(&after),
            gone.host_if
        ),
    );
    c.done(&exit.stderr);
}

/// Fault 3: an interface deleted while attached.
#[test]
fn an_interface_deleted_while_attached_is_reported_and_the_rest_goes_on() {
    lose_one_of_two(|node| {
        node.node
            .ip(&["link", "del", &node.pods[0].host_if])
            .expect("deleting the veth");
    });
}

/// Fault 4: a pod's network namespace deleted (which destroys its veth pair).
#[test]
fn a_namespace_deleted_while_attached_is_reported_and_the_rest_goes_on() {
    lose_one_of_two(|node| {
        netns::run(Command::new("ip").args(["netns", "del", node.pods[0].ns.name()]))
            .expect("deleting the pod's namespace");
    });
}

// ---------------------------------------------------------------- 5: ring buffer full

/// Fault 5: a 64 KiB ring, and the agent stopped (SIGSTOP) while the pod
/// floods: the kernel counts what did not fit, the counters add up, every datagram
/// still reaches its receiver, and the mirror is tcpdump's minus exactly
/// the copies counted as ring_full.
#[test]
fn a_full_ring_buffer_is_counted_in_the_kernel_and_traffic_flows() {
    testbed::require_root();
    let _serial = serial();
    const COUNT: usize = 20_000;
    const PORT: u16 = 5301;
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("mirror.pcapng");
    let output = format!("pcapng:{}", out_path.display());
    let dst = SocketAddr::from((pair.node_v4, PORT));
    // The receiver: a socket with room for the whole flood, so what it
    // counts is what the network delivered.
    let (ready_tx, ready_rx) = mpsc::channel();
    let receiver = pair.node.spawn(move || {
        let sock = UdpSocket::bind(dst)?;
        setsockopt(&sock, sockopt::RcvBufForce, &(64 << 20))?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        ready_tx.send(()).ok();
        let (mut got, mut buf) = (0usize, [0u8; 2048]);
        while got < COUNT {
            match sock.recv_from(&mut buf) {
                Ok(_) => got += 1,
                Err(_) => break,
            }
        }
        Ok(got)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("receiver ready");
    let tcpdump = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dir.path().join("tcpdump.pcap"),
        &SMALL_FRAMES,
    )
    .expect("tcpdump");
    let mut agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--output",
            &output,
            "--ring-size",
            "65536",
        ],
    )
    .expect("agent starts");
    // ARP resolved first, so the flood is the only traffic.
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 1).expect("ping");
    let pid = Pid::from_raw(agent_pid(&mut agent) as i32);
    signal::kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let flood = traffic::udp_flood(&pair.pod, dst, COUNT, 100);
    signal::kill(pid, Signal::SIGCONT).expect("SIGCONT");
    let sent = flood.expect("the flood");
    let received = join(receiver).expect("receiver");
    let (samples, settled_after) = scrape_until(&pair.node, Duration::from_secs(5), |s| {
        settled(s, &[&output])
    });
    let exit = agent.stop().expect("agent stops");
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read tcpdump");
    let mirror = capture::read(&out_path).expect("read the mirror");

    let mut c = Checks::new();
    check_clean_exit(&mut c, &exit, &pair.node, &[&pair.host_if]);
    c.check(
        settled_after,
        "/metrics: the ring was never drained after SIGCONT",
    );
    c.check(
        received == sent,
        format!("production traffic lost: the receiver got {received} of {sent} datagrams"),
    );
    let s = exit.summary().expect("summary total");
    let iface = exit
        .fields_with(&["summary", &format!("={}", pair.host_if)])
        .expect("a log line");
    check_kernel_sum(&mut c, "summary total", &s);
    check_kernel_sum(&mut c, &pair.host_if, &iface);
    let ring_full = field(&s, "lost_ring_full");
    eprintln!(
        "sent {sent}, received {received}; seen {}, mirrored {}, lost_ring_full {ring_full}; tcpdump {} frames, mirror {}",
        field(&s, "seen"),
        field(&s, "mirrored"),
        oracle.len(),
        mirror.len()
    );
    c.check(
        ring_full > 0,
        "no ring_full counted with the reader stopped",
    );
    c.check(
        ring_full >= (COUNT / 2) as u64,
        format!("only {ring_full} ring_full of {COUNT}: a 64 KiB ring holds a few hundred"),
    );
    c.check(
        field(&s, "seen") >= COUNT as u64,
        format!("seen {} < {COUNT} sent", field(&s, "seen")),
    );
    c.check(
        field(&s, "written") == field(&s, "mirrored")
            && mirror.len() as u64 == field(&s, "mirrored"),
        format!(
            "mirrored {}, written {}, in the file {}",
            field(&s, "mirrored"),
            field(&s, "written"),
            mirror.len()
        ),
    );
    c.check(
        field(&s, "lost") == ring_full,
        format!("lost {} != lost_ring_full {ring_full}", field(&s, "lost")),
    );
    // Frames: the mirror is tcpdump's minus exactly the ring_full copies.
    let diff = capture::difference(&oracle, &mirror);
    c.check(
        diff.extra.is_empty() && diff.missing.len() as u64 == ring_full,
        format!(
            "mirror vs tcpdump: {} missing (expected {ring_full} = ring_full), {} extra",
            diff.missing.len(),
            diff.extra.len()
        ),
    );
    let scraped = metric(
        &samples,
        "mirror_dropped_packets_total",
        &[("interface", &pair.host_if), ("reason", "ring_full")],
    );
    c.check(
        scraped == Some(ring_full as f64),
        format!("/metrics ring_full {scraped:?} != summary {ring_full}"),
    );
    c.done(&exit.stderr);
}

// ---------------------------------------------------------------- 6: disk full

/// Fault 6: the disk full under one pcapng output (a 256 KiB tmpfs), beside
/// another on the normal temporary directory.
#[test]
fn a_full_disk_is_one_clear_error_and_the_other_output_goes_on() {
    testbed::require_root();
    // Alone: beside the floods, the ring could fill and the good output
    // would then lack those copies (counted, and checked below, but rare).
    let _serial = serial();
    let pair = PodPair::new(false).expect("topology");
    let tiny = Tmpfs::mount(256 << 10).expect("a 256 KiB tmpfs");
    let dir = tempfile::tempdir().expect("tempdir");
    let full_path = tiny.path().join("x.pcapng");
    let ok_path = dir.path().join("ok.pcapng");
    let (full, ok) = (
        format!("pcapng:{}", full_path.display()),
        format!("pcapng:{}", ok_path.display()),
    );
    let tcpdump = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dir.path().join("tcpdump.pcap"),
        &[],
    )
    .expect("tcpdump");
    let agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--output",
            &full,
            "--output",
            &ok,
        ],
    )
    .expect("agent starts");
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 3).expect("ping");
    // 2 MiB through a 256 KiB disk.
    traffic::tcp_bulk(
        &pair.pod,
        &pair.node,
        IpAddr::V4(pair.node_v4),
        5401,
        2 << 20,
    )
    .expect("tcp");
    traffic::udp(
        &pair.pod,
        &pair.node,
        IpAddr::V4(pair.node_v4),
        5402,
        &[10, 1000, 5000],
    )
    .expect("udp after the disk filled");
    let (samples, settled) = scrape_until(&pair.node, Duration::from_secs(5), |s| {
        settled(s, &[&full, &ok])
    });
    let exit = agent.stop().expect("agent stops");
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read tcpdump");
    let ok_frames = capture::read(&ok_path).expect("read the good output");

    let mut c = Checks::new();
    check_clean_exit(&mut c, &exit, &pair.node, &[&pair.host_if]);
    let total = exit.summary().expect("summary total");
    let written = field(&total, "written");
    let full_out = exit
        .fields_with(&["output summary", &full])
        .expect("a log line");
    let ok_out = exit
        .fields_with(&["output summary", &ok])
        .expect("a log line");
    check_output_accounting(&mut c, "full", &full_out, written);
    check_output_accounting(&mut c, "ok", &ok_out, written);
    let errors = field(&full_out, "lost_send_error");
    eprintln!(
        "written {written}; full output sent {} ({} bytes), lost_send_error {errors}; other output sent {}; file on the tmpfs {} bytes",
        field(&full_out, "sent"),
        field(&full_out, "sent_bytes"),
        field(&ok_out, "sent"),
        std::fs::metadata(&full_path).map(|m| m.len()).unwrap_or(0)
    );
    c.check(errors > 0, "no send errors counted on a full disk");
    c.check(
        field(&ok_out, "sent") == written,
        format!(
            "the good output sent {} of {written}",
            field(&ok_out, "sent")
        ),
    );
    c.check(
        field(&total, "lost_output") == errors + field(&full_out, "lost_queue_full"),
        format!(
            "lost_output {} != the full output's losses",
            field(&total, "lost_output")
        ),
    );
    // The good output is tcpdump's frames minus exactly the copies the
    // ring could not hold (none, but on a loaded machine).
    let ring_full = field(&total, "lost_ring_full");
    let diff = capture::difference(&oracle, &ok_frames);
    c.check(
        diff.extra.is_empty() && diff.missing.len() as u64 == ring_full,
        format!(
            "the good output vs tcpdump: {} missing (expected {ring_full} = ring_full), {} extra:{}{}",
            diff.missing.len(),
            diff.extra.len(),
            show(&diff.missing),
            show(&diff.extra)
        ),
    );
    // One clear error: the output, and the reason, once.
    let errors_logged: Vec<&str> = exit
        .stderr
        .lines()
        .filter(|l| l.contains("No space left on device"))
        .collect();
    c.check(
        errors_logged.len() == 1 && errors_logged[0].contains(&full),
        format!("expected one `No space left on device` line naming {full}, got {errors_logged:?}"),
    );
    c.check(
        settled,
        "/metrics never accounted for every copy of the full output",
    );
    let scraped = metric(
        &samples,
        "mirror_dropped_packets_total",
        &[("output", &full), ("reason", "send_error")],
    );
    c.check(
        scraped == Some(errors as f64),
        format!("/metrics send_error of the full output {scraped:?} != summary {errors}"),
    );
    c.done(&exit.stderr);
}

// ---------------------------------------------------------------- 7: link churn

/// Veth pairs the burst made in a namespace, deleted on drop if any are
/// left (deleting a veth deletes its peer).
struct Churn<'a> {
    ns: &'a Netns,
    group: u32,
}

impl Drop for Churn<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .ip(&["link", "del", "group", &self.group.to_string()]);
    }
}

/// Fault 7: a thousand veth pairs created and deleted in the node's
/// namespace as fast as `ip -batch` goes, in rounds of 100 (add 100, delete
/// their group): 2000 devices, 4000 link events, while the agent mirrors
/// one veth there.
#[test]
fn a_burst_of_a_thousand_link_events_changes_nothing() {
    testbed::require_root();
    let _serial = serial();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("mirror.pcapng");
    let output = format!("pcapng:{}", out_path.display());
    let tcpdump = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dir.path().join("tcpdump.pcap"),
        &[],
    )
    .expect("tcpdump");
    let mut agent = Agent::start(
        &pair.node,
        &["attach", "-i", &pair.host_if, "--output", &output],
    )
    .expect("agent starts");
    let pid = agent_pid(&mut agent);

    let churn = Churn {
        ns: &pair.node,
        group: 77,
    };
    let base = unique_name("mx");
    let mut script = String::new();
    for round in 0..10 {
        for i in 0..100 {
            let name = format!("{base}{:03x}", round * 100 + i);
            script.push_str(&format!(
                "link add {name}a group {g} type veth peer name {name}b group {g}\n",
                g = churn.group
            ));
        }
        script.push_str(&format!("link del group {}\n", churn.group));
    }
    let batch = dir.path().join("churn.batch");
    std::fs::write(&batch, script).expect("batch file");
    // Traffic on the watched veth all through the burst (40 pings, 2 s).
    let (churned, took, pinged) = thread::scope(|s| {
        let pinger = s.spawn(|| traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 40));
        let started = Instant::now();
        let churned = netns::run(
            Command::new("ip")
                .args(["-n", pair.node.name(), "-batch"])
                .arg(&batch),
        );
        let took = started.elapsed();
        (churned, took, pinger.join().expect("pinger"))
    });
    let left = pair
        .node
        .ip(&["link", "show", "group", &churn.group.to_string()])
        .unwrap_or_default();
    drop(churn);
    // The point: still running a moment after the burst (a crash it caused
    // would show by then); the traffic below shows it still mirrors.
    thread::sleep(Duration::from_millis(300));
    let alive = running(pid);
    traffic::udp(
        &pair.pod,
        &pair.node,
        IpAddr::V4(pair.node_v4),
        5501,
        &[10, 1000, 3000],
    )
    .expect("udp after the burst");
    let (samples, _) = scrape_until(&pair.node, Duration::from_secs(5), |s| {
        settled(s, &[&output])
    });
    let exit = agent.stop().expect("agent stops");
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read tcpdump");
    let mirror = capture::read(&out_path).expect("read the mirror");

    let mut c = Checks::new();
    eprintln!("1000 veth pairs made and deleted (4000 link events) in {took:?}");
    c.check(
        churned.is_ok(),
        format!("the burst itself failed: {churned:?}"),
    );
    c.check(left.trim().is_empty(), format!("links left: {left}"));
    c.check(pinged.is_ok(), format!("ping during the burst: {pinged:?}"));
    c.check(alive, "the agent died during the burst");
    check_clean_exit(&mut c, &exit, &pair.node, &[&pair.host_if]);
    c.check(oracle.len() >= 80, "too little traffic");
    match differs(&oracle, &mirror) {
        Some(d) => c.check(false, format!("the mirror differs from tcpdump: {d}")),
        None => assert_same_frames(&oracle, &mirror),
    }
    let attached_gauge = metric(&samples, "mirror_attached_interfaces", &[]);
    c.check(
        attached_gauge == Some(1.0),
        format!("mirror_attached_interfaces {attached_gauge:?} after the burst, not 1"),
    );
    if exit.stderr.contains("summary total") {
        let s = exit.summary().expect("summary");
        check_kernel_sum(&mut c, "summary total", &s);
        c.check(field(&s, "lost") == 0, format!("copies lost: {s:?}"));
    }
    c.done(&exit.stderr);
}
