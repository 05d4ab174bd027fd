//! Hostile peers and bad files (issue 17): each probe an attacker would
//! try, bounded in time and count, with a real agent alongside where the
//! question is whether legitimate copies still get through. The oracle for
//! those copies is tcpdump on the pod's veth; for the collector's own state,
//! its /metrics and summary lines; for memory, the kernel's VmHWM.
//! Addresses: 198.18.0.0/24 (pod link) and 198.18.1.0/24 (node to collector).

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use testbed::{
    agent::Agent,
    capture,
    collector::Collector,
    http::{get, sample as metric},
    netns::join,
    tcpdump::Tcpdump,
    topology::{CollectorLink, PodPair},
    traffic,
};

#[path = "hostile/peers.rs"]
mod peers;

use peers::{peak_rss_kib, shb_and_big_block_head};

const COLLECTOR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const TCP_PORT: u16 = 7000;
/// The collector's default --metrics-addr, inside its own namespace.
const METRICS: &str = "127.0.0.1:9464";

/// Idle and trickling connections from one source up to and past the
/// limits: past the per-source limit they are refused, the idle ones are
/// closed after --idle-timeout and the tricklers after --read-timeout, all
/// counted by reason; meanwhile /metrics and /healthz answer, and an agent
/// from another address gets every frame tcpdump saw into the files. The
/// collector's peak RSS stays under 96 MiB.
#[test]
fn idle_and_trickling_peers_are_bounded_while_an_agent_gets_through() {
    const IDLE: usize = 22;
    const TRICKLE: usize = 10;
    const OVER: usize = 18;
    const PER_SOURCE: usize = IDLE + TRICKLE;
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let listen = format!("tcp://{COLLECTOR}:{TCP_PORT}");
    let per_source = PER_SOURCE.to_string();
    let collector = Collector::start(
        &link.ns,
        &[&listen],
        &[
            "--max-connections",
            "48",
            "--max-connections-per-source",
            &per_source,
            "--idle-timeout",
            "3",
            "--read-timeout",
            "3",
        ],
    )
    .expect("collector starts");
    let addr = SocketAddr::from((COLLECTOR, TCP_PORT));
    let started = Instant::now();
    // From the collector's own address: one source for all of them.
    let (idle, trickle) = join(link.ns.spawn(move || {
        let mut idle = Vec::new();
        let mut trickle = Vec::new();
        for _ in 0..IDLE {
            idle.push(TcpStream::connect(addr)?);
        }
        for _ in 0..TRICKLE {
            let mut s = TcpStream::connect(addr)?;
            s.write_all(&shb_and_big_block_head(320 * 1024))?;
            trickle.push(s);
        }
        for _ in 0..OVER {
            idle.push(TcpStream::connect(addr)?);
        }
        Ok((idle, trickle))
    }))
    .expect("attack connections");
    // One byte a second on each trickler, until the collector cuts it.
    let trickler = std::thread::spawn(move || {
        let mut open = trickle;
        for _ in 0..10 {
            open.retain_mut(|s| s.write_all(&[0]).is_ok());
            std::thread::sleep(Duration::from_secs(1));
        }
    });

    let dump_dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dump_dir.path().join("pod.pcap"),
        &[],
    )
    .expect("tcpdump");
    let agent = Agent::start(
        &pair.node,
        &["attach", "-i", &pair.host_if, "--output", &listen],
    )
    .expect("agent starts");
    // The agent is in once the collector has taken PER_SOURCE + 1.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = get(&link.ns, METRICS, "/metrics").expect("/metrics answers");
        let (status, body) = (answer.status, answer.body);
        assert_eq!(status, 200);
        let n = metric(&body, "mirror_collect_connections_total", &[]).unwrap_or(0);
        if n > PER_SOURCE as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never connected:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let health = get(&link.ns, METRICS, "/healthz").expect("/healthz answers");
    assert_eq!(health.status, 200);
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 5).expect("ping");
    traffic::udp(
        &pair.pod,
        &pair.node,
        IpAddr::V4(pair.node_v4),
        5001,
        &[100, 1400, 8000],
    )
    .expect("udp");
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    // The agent stops once the collector has decoded as many copies as
    // tcpdump saw (a loaded machine takes longer than any fixed pause).
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let body = get(&link.ns, METRICS, "/metrics").expect("/metrics").body;
        let decoded = metric(&body, "mirror_collect_decoded_packets_total", &[]).unwrap_or(0);
        if decoded >= oracle.len() as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "agent failed: {}", exit.stderr);

    // Every attacker socket ends: the collector closed it.
    let closed_after: Vec<Duration> = idle
        .into_iter()
        .map(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            let mut b = [0u8; 16];
            match s.read(&mut b) {
                Ok(0) => Ok(started.elapsed()),
                Ok(_) => bail!("the collector sent data"),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(started.elapsed()),
                Err(e) => bail!("still open: {e}"),
            }
        })
        .collect::<Result<_>>()
        .expect("every idle connection is closed by the collector");
    trickler.join().expect("trickler");
    let slowest = closed_after.iter().max().copied().unwrap_or_default();
    assert!(
        slowest >= Duration::from_millis(2500),
        "idle connections were closed before --idle-timeout: {slowest:?}"
    );
    let body = get(&link.ns, METRICS, "/metrics")
        .expect("/metrics answers")
        .body;
    let refused = |reason: &str| {
        metric(
            &body,
            "mirror_collect_refused_connections_total",
            &[&format!("reason=\"{reason}\"")],
        )
        .expect("refusal counter")
    };
    assert_eq!(refused("source_limit"), OVER as u64, "{body}");
    assert_eq!(refused("read_timeout"), TRICKLE as u64, "{body}");
    assert!(refused("idle_timeout") >= IDLE as u64, "{body}");
    assert_eq!(refused("limit"), 0, "{body}");
    let hwm = peak_rss_kib(collector.pid().expect("pid")).expect("VmHWM");

    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exits 0");
    let frames = collected.frames().expect("readable");
    let diff = capture::difference(&oracle, &frames);
    assert!(
        diff.is_empty(),
        "the agent's frames differ from tcpdump's: {} missing, {} extra",
        diff.missing.len(),
        diff.extra.len()
    );
    // Refusals log at most one line per 10 s (the test lasts less than 20 s).
    let refusal_lines = collected
        .stderr
        .lines()
        .filter(|l| l.contains("connection refused or cut"))
        .count();
    assert!(refusal_lines <= 2, "{refusal_lines} refusal lines logged");
    assert!(
        hwm < 96 * 1024,
        "collector peak RSS {hwm} KiB, above 96 MiB"
    );
    eprintln!(
        "limits: {} frames through; refused {OVER} past the per-source limit, cut {TRICKLE} \
         trickling and {} idle; collector peak RSS {} KiB",
        frames.len(),
        refused("idle_timeout"),
        hwm
    );
}

/// `attach --output pcapng:PATH` with a symbolic link planted at PATH in a
/// world-writable directory: refused with a message naming the path, and
/// the link's target untouched. A regular file already there is not
/// truncated either. A fresh file is created 0600.
#[test]
fn a_planted_symlink_or_an_existing_file_is_never_written_through() {
    use std::os::unix::fs::PermissionsExt;
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").expect("write");
    let link = dir.path().join("capture.pcapng");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    for (path, says) in [(&link, "symbolic link"), (&victim, "already exists")] {
        let output = format!("pcapng:{}", path.display());
        let exit = testbed::agent::run(
            &pair.node,
            &[
                "attach",
                "-i",
                &pair.host_if,
                "--output",
                &output,
                "--metrics-addr",
                "off",
            ],
        )
        .expect("runs");
        assert!(!exit.status.success(), "the agent accepted {output}");
        assert!(
            exit.stderr.contains(&path.display().to_string()) && exit.stderr.contains(says),
            "the error must name {} and say '{says}':\n{}",
            path.display(),
            exit.stderr
        );
    }
    assert_eq!(std::fs::read(&victim).expect("read"), b"precious");
    let fresh = dir.path().join("fresh.pcapng");
    let output = format!("pcapng:{}", fresh.display());
    let agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--output",
            &output,
            "--metrics-addr",
            "off",
        ],
    )
    .expect("agent starts");
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let mode = std::fs::metadata(&fresh)
        .expect("created")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "capture files hold payloads: 0600");
}

fn policy_yaml(host_if: &str, out: &std::path::Path, extra: &str) -> String {
    format!(
        "policies:\n  - name: web\n    interfaces: [\"{host_if}\"]\n    collectors: [\"pcapng:{}\"]\n{extra}",
        out.display()
    )
}

/// The bombs of issue 17, each as a policy file.
fn bombs() -> Vec<(&'static str, String, &'static str)> {
    let mut laughs = String::from("x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..12 {
        let p = i - 1;
        laughs.push_str(&format!(
            "x{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let nesting = format!("x: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let size = format!("# {}\n", "x".repeat(5 << 20));
    vec![
        ("alias", laughs, "alias"),
        ("nesting", nesting, "deeper than"),
        ("size", size, "more than"),
    ]
}

/// Alias, nesting and size bombs: refused at start-up within 5 s, naming
/// the file and the reason; sent as a SIGHUP reload, the running agent
/// logs the refusal and keeps going (its peak RSS, with a 1 MiB ring,
/// stays under 64 MiB).
#[test]
fn yaml_bombs_are_refused_at_start_and_on_reload() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.pcapng");
    for (what, bomb, says) in bombs() {
        let file = dir.path().join(format!("{what}.yaml"));
        std::fs::write(
            &file,
            format!("{}{bomb}", policy_yaml(&pair.host_if, &out, "")),
        )
        .expect("write");
        let file_arg = file.display().to_string();
        let started = Instant::now();
        let exit = testbed::agent::run(
            &pair.node,
            &["attach", "--policy", &file_arg, "--metrics-addr", "off"],
        )
        .expect("runs");
        let took = started.elapsed();
        assert_eq!(exit.status.code(), Some(2), "{what}: {}", exit.stderr);
        assert!(
            exit.stderr.contains(&file_arg) && exit.stderr.contains(says),
            "{what}: the error must name the file and say '{says}':\n{}",
            exit.stderr
        );
        assert!(took < Duration::from_secs(5), "{what} took {took:?}");
    }
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy_yaml(&pair.host_if, &out, "")).expect("write");
    let file_arg = file.display().to_string();
    let mut agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "--policy",
            &file_arg,
            "--metrics-addr",
            "off",
            "--ring-size",
            "1048576",
        ],
    )
    .expect("agent starts");
    let pid = agent.process().pid().expect("running");
    for (what, bomb, says) in bombs() {
        std::fs::write(
            &file,
            format!("{}{bomb}", policy_yaml(&pair.host_if, &out, "")),
        )
        .expect("write");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
        let line = agent
            .process()
            .wait_for_line("keeping the current policy", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{what}: no refusal logged: {e}"));
        assert!(line.contains(says), "{what}: {line}");
    }
    let hwm = peak_rss_kib(pid).expect("VmHWM");
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 2).expect("ping");
    let exit = agent.stop().expect("the agent is still running and stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    assert!(
        hwm < 64 * 1024,
        "agent peak RSS {hwm} KiB through the reloads"
    );
    eprintln!("yaml bombs: refused at start and on reload; agent peak RSS {hwm} KiB");
}

/// 100,000 source CIDRs: the prefix tables are compiled within 30 s (a
/// debug build on a shared machine, YAML parsing included; the pairwise
/// comparison it replaced needs 10^10 steps, hours), and
/// since they exceed the kernel's table the file is refused, naming the
/// policy, the field and the limit, before anything is loaded.
#[test]
fn a_hundred_thousand_cidrs_compile_quickly_and_are_checked_against_the_map() {
    let cidrs: Vec<String> = (0..100_000u32)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(0x0A00_0000 | (i << 4));
            format!("\"{a}/28\"")
        })
        .collect();
    let yaml = format!(
        "policies:\n  - name: many\n    interfaces: [veth-many]\n    collectors: [\"pcapng:/dev/null\"]\n    \
         rules:\n      - action: Accept\n        sourceCIDRs: [{}]\n",
        cidrs.join(", ")
    );
    let started = Instant::now();
    let error = match mirror_agent::policy::PolicyFile::from_yaml(&yaml) {
        Ok(_) => panic!("accepted more prefixes than the kernel's table holds"),
        Err(e) => e.to_string(),
    };
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "compiling took {took:?}");
    for needed in ["policy \"many\"", "sourceCIDRs", "16384"] {
        assert!(error.contains(needed), "'{needed}' missing from: {error}");
    }
    eprintln!("100,000 CIDRs: checked in {took:?}: {error}");
}
