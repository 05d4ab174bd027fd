//! Start, stop and refusal: after SIGTERM or SIGINT, after a failed start,
//! and after bad input, the kernel holds no program of ours on the interface
//! (asked of the kernel: tcx via BPF_PROG_QUERY, netlink via `tc`).

use std::time::Duration;

use nix::sys::signal::Signal;
use testbed::{
    agent::{self, Agent},
    hooks,
    topology::PodPair,
};

fn output(dir: &tempfile::TempDir) -> String {
    format!("pcapng:{}", dir.path().join("out.pcapng").display())
}

fn stops_cleanly(mode: &str, sig: Signal) {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = output(&dir);
    let agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--attach-mode",
            mode,
            "--output",
            &out,
        ],
    )
    .expect("agent starts");
    let attached = hooks::attached(&pair.node, &pair.host_if).expect("query hooks");
    let prefix = if mode == "tcx" { "tcx/" } else { "tc/" };
    for name in ["ingress:", "egress:"] {
        assert!(
            attached
                .iter()
                .any(|a| a.starts_with(&format!("{prefix}{name}")) && a.contains("mirror_")),
            "no {mode} {name} hook while running: {attached:?}"
        );
    }
    let exit = agent.signal(sig).expect("agent stops");
    assert!(
        exit.status.success(),
        "exit {} after {sig}\n{}",
        exit.status,
        exit.stderr
    );
    assert!(
        exit.stderr.contains("summary total"),
        "no summary:\n{}",
        exit.stderr
    );
    // The event whose absence the bad-input test asserts.
    assert!(
        exit.stderr
            .lines()
            .any(|l| l.contains("attached") && l.contains(&format!("mode=\"{mode}\""))),
        "no attached event:\n{}",
        exit.stderr
    );
    let left = hooks::attached(&pair.node, &pair.host_if).expect("query hooks");
    assert!(left.is_empty(), "left attached after {sig}: {left:?}");
}

#[test]
fn sigterm_detaches_tcx() {
    stops_cleanly("tcx", Signal::SIGTERM);
}

#[test]
fn sigint_detaches_tcx() {
    stops_cleanly("tcx", Signal::SIGINT);
}

#[test]
fn sigterm_detaches_netlink() {
    stops_cleanly("netlink", Signal::SIGTERM);
}

#[test]
fn sigint_detaches_netlink() {
    stops_cleanly("netlink", Signal::SIGINT);
}

/// The second interface cannot take a clsact qdisc (an `ingress` qdisc holds
/// its slot), so the start fails after the first interface was hooked: the
/// first must be unhooked again.
#[test]
fn failed_start_detaches_what_it_attached() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let second = testbed::unique_name("mtx");
    let peer = testbed::unique_name("mty");
    testbed::topology::veth(&pair.node, &second, &pair.pod, &peer).expect("second veth");
    pair.node
        .exec(&["tc", "qdisc", "add", "dev", &second, "ingress"])
        .expect("ingress qdisc");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = output(&dir);
    let exit = agent::run(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "-i",
            &second,
            "--attach-mode",
            "netlink",
            "--output",
            &out,
        ],
    )
    .expect("agent runs");
    assert_eq!(exit.status.code(), Some(1), "{}", exit.stderr);
    assert!(
        exit.stderr.contains(&second),
        "error does not name {second}:\n{}",
        exit.stderr
    );
    for iface in [&pair.host_if, &second] {
        let left = hooks::attached(&pair.node, iface).expect("query hooks");
        assert!(left.is_empty(), "left attached on {iface}: {left:?}");
    }
}

/// Bad input: exit code 2, one clear error naming the flag, nothing attached.
#[test]
fn bad_input_is_refused_with_exit_code_2() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = output(&dir);
    let unwritable = format!("pcapng:{}/no/such/dir/x.pcapng", dir.path().display());
    let h = pair.host_if.as_str();
    let cases: &[(&[&str], &str)] = &[
        (
            &["-i", "mtnosuchif0", "--output", &out],
            "--interface mtnosuchif0",
        ),
        (
            &["-i", h, "-i", h, "--output", &out],
            "given more than once",
        ),
        (&["-i", h, "--snaplen", "0", "--output", &out], "--snaplen"),
        (
            &["-i", h, "--snaplen", "262145", "--output", &out],
            "--snaplen",
        ),
        (&["-i", h, "--sample", "0", "--output", &out], "--sample"),
        (
            &["-i", h, "--ring-size", "1000", "--output", &out],
            "--ring-size",
        ),
        (
            &["-i", h, "--direction", "sideways", "--output", &out],
            "--direction",
        ),
        (&["-i", h, "--output", "vxlan-nope:x"], "--output"),
        (&["-i", h, "--output", &unwritable], "--output"),
        (&["-i", h], "--output"),
    ];
    // Also with netlink attachment, whose qdisc and cls_bpf filters outlive
    // the process: what a refused start had attached would still be there
    // after exit, so "nothing left" cannot be explained by the exit alone.
    for ((args, needle), mode) in cases.iter().flat_map(|c| [(c, "tcx"), (c, "netlink")]) {
        let mut argv = vec!["attach", "--attach-mode", mode];
        argv.extend_from_slice(args);
        let exit = agent::run(&pair.node, &argv).expect("agent runs");
        assert_eq!(exit.status.code(), Some(2), "{argv:?}\n{}", exit.stderr);
        assert!(
            exit.stderr.contains(needle),
            "{argv:?}: error does not name {needle}:\n{}",
            exit.stderr
        );
        assert!(
            !exit
                .stderr
                .lines()
                .any(|l| l.contains("attached") && l.contains("mode=")),
            "{argv:?}: an attached event on bad input:\n{}",
            exit.stderr
        );
        let left = hooks::attached(&pair.node, h).expect("query hooks");
        assert!(left.is_empty(), "{argv:?} left hooks: {left:?}");
        let qdiscs = pair
            .node
            .exec(&["tc", "qdisc", "show", "dev", h])
            .expect("tc qdisc show");
        assert!(
            !qdiscs.contains("clsact"),
            "{argv:?} left a clsact qdisc: {qdiscs}"
        );
    }
}

/// Without root or capabilities: a clear refusal, exit 2, nothing attached.
#[test]
fn unprivileged_is_refused() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let bin = agent::binary();
    let mut cmd = pair.node.command("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
    ])
    .arg(&bin)
    .args([
        "attach",
        "-i",
        &pair.host_if,
        "--output",
        "pcapng:/dev/null",
    ])
    .stdout(std::process::Stdio::null());
    let process = testbed::process::Process::spawn("mirror-agent", cmd).expect("spawn");
    let (status, stderr) = process.wait(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_NET_ADMIN"),
        "{stderr}"
    );
    let left = hooks::attached(&pair.node, &pair.host_if).expect("query hooks");
    assert!(left.is_empty(), "{left:?}");
}

/// GRE and ERSPAN need raw sockets: without CAP_NET_RAW the agent says so
/// up front (exit 2, nothing attached) instead of failing later.
#[test]
fn gre_output_without_cap_net_raw_is_refused() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let bin = agent::binary();
    let mut cmd = pair.node.command("setpriv");
    cmd.args(["--bounding-set=-net_raw", "--inh-caps=-net_raw"])
        .arg(&bin)
        .args([
            "attach",
            "-i",
            &pair.host_if,
            "--output",
            "gre://198.18.1.2",
        ])
        .stdout(std::process::Stdio::null());
    let process = testbed::process::Process::spawn("mirror-agent", cmd).expect("spawn");
    let (status, stderr) = process.wait(Duration::from_secs(20)).expect("exits");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("CAP_NET_RAW"), "{stderr}");
    let left = hooks::attached(&pair.node, &pair.host_if).expect("query hooks");
    assert!(left.is_empty(), "{left:?}");
}

/// A TCP sink in `ns` on 127.0.0.1 that takes one connection and never
/// reads from it (a tiny receive buffer), so a sender to it stays blocked
/// until `release` is sent. Returns its port.
fn stuck_sink(
    ns: &testbed::netns::Netns,
) -> (
    u16,
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<anyhow::Result<()>>,
) {
    use nix::sys::socket::{setsockopt, sockopt::RcvBuf};
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let sink = ns.spawn(move || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        setsockopt(&listener, RcvBuf, &4096)?;
        port_tx.send(listener.local_addr()?.port())?;
        let (conn, _) = listener.accept()?;
        let _ = released.recv();
        drop(conn);
        Ok(())
    });
    let port = port_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the sink listens");
    (port, release, sink)
}

/// The tcx hooks are gone while the agent still runs. With tcx, a hook the
/// agent forgot would vanish anyway when its process exits, so the check
/// after exit (above) cannot tell a detach from an exit. Here the agent's
/// only output is a TCP peer that never reads: on SIGTERM it detaches, then
/// waits (up to its close timeout) for the output, and the kernel is asked
/// during that wait, and the process is seen alive after the answer.
/// /readyz answers 503 in that window (and 200 before it).
#[test]
fn tcx_hooks_are_gone_before_the_agent_exits() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let (port, release, sink) = stuck_sink(&pair.node);
    let out = format!("tcp://127.0.0.1:{port}");
    let mut agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--attach-mode",
            "tcx",
            "--output",
            &out,
        ],
    )
    .expect("agent starts");
    assert!(
        !hooks::attached(&pair.node, &pair.host_if)
            .expect("query hooks")
            .is_empty(),
        "nothing attached while running"
    );
    let ready = readyz(&pair.node);
    // Far more than the socket buffers hold: the output's sender blocks.
    let dst = std::net::SocketAddr::from((pair.node_v4, 9));
    testbed::traffic::udp_flood(&pair.pod, dst, 20_000, 1400).expect("flood");
    let pid = agent.process().pid().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM)
        .expect("SIGTERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let left = loop {
        let left = hooks::attached(&pair.node, &pair.host_if).expect("query hooks");
        if left.is_empty() || std::time::Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Stopping, not ready: /readyz says 503 while the agent still runs.
    let stopping = readyz(&pair.node);
    let alive = agent.alive();
    release.send(()).ok();
    let exit = agent.wait(Duration::from_secs(20)).expect("agent exits");
    testbed::netns::join(sink).expect("sink");
    assert!(
        left.is_empty(),
        "still attached 4 s after SIGTERM: {left:?}"
    );
    assert!(
        alive,
        "the agent had exited before the kernel was asked, so the check proves nothing:\n{}",
        exit.stderr
    );
    assert!(exit.status.success(), "{}", exit.stderr);
    assert_eq!(ready, 200, "not ready while mirroring");
    assert_eq!(stopping, 503, "ready while stopping");
}

/// The HTTP status of `GET /readyz` on the default metrics address in `ns`.
fn readyz(ns: &testbed::netns::Netns) -> u16 {
    use std::io::{Read, Write};
    testbed::netns::join(ns.spawn(|| {
        let mut s = std::net::TcpStream::connect("127.0.0.1:9464")?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no status in {text:?}"))?;
        Ok(code)
    }))
    .expect("GET /readyz")
}
