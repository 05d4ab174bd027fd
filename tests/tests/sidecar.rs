//! `mirror-agent sidecar`, started as the kubelet would start the injected
//! container: inside the pod's own network namespace (here one the test
//! makes), with its policy in `$MIRROR_POLICY`. tcpdump on the pod's
//! interface is the oracle.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use testbed::{
    agent::{self, Agent},
    capture::{self, Frame},
    collector::Collector,
    netns::Netns,
    numbered::{EVERY, NumberedStream, sequence_numbers},
    pki::Pki,
    scenario::assert_same_frames,
    tcpdump::Tcpdump,
    topology::PodPair,
    traffic,
};

/// A policy as the webhook writes it: every interface of the pod (the
/// sidecar leaves `lo` out), one collector.
fn policy(out: &Path) -> String {
    format!(
        "policies:\n  - name: pod\n    interfaces: ['*']\n    collectors: ['pcapng:{}']\n",
        out.display()
    )
}

/// Starts the sidecar in `pod` with a 64 MiB memory limit.
fn sidecar(pod: &Netns, policy: &str) -> Agent {
    let mut cmd = pod.command(&agent::binary().to_string_lossy());
    cmd.args(["sidecar", "--metrics-addr", "off"])
        .args(["--memory-limit", &(64u64 << 20).to_string()])
        .env("MIRROR_POLICY", policy)
        .stdout(Stdio::null());
    Agent::start_command(cmd).expect("the sidecar starts mirroring")
}

#[test]
fn sidecar_mirrors_the_pods_interface_as_tcpdump_sees_it_and_flushes_on_sigterm() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("sidecar.pcapng");
    let tcpdump = Tcpdump::start(&pair.pod, &pair.pod_if, dir.path().join("pod.pcap"), &[])
        .expect("tcpdump in the pod");
    let sidecar = sidecar(&pair.pod, &policy(&out));

    let (pod_ip, node_ip) = (IpAddr::V4(pair.pod_v4), IpAddr::V4(pair.node_v4));
    traffic::udp(&pair.pod, &pair.node, node_ip, 7001, &[64, 700, 1400, 3000]).expect("egress");
    traffic::udp(&pair.node, &pair.pod, pod_ip, 7002, &[80, 1200, 2500]).expect("ingress");
    traffic::ping(&pair.node, pod_ip, 3).expect("ping into the pod");
    // The pod's loopback: busy, and not mirrored.
    traffic::ping(&pair.pod, "127.0.0.1".parse().expect("ip"), 3).expect("ping lo");
    traffic::tcp_bulk(&pair.pod, &pair.node, node_ip, 7003, 256 << 10).expect("tcp");

    // Every packet has passed the hook (each exchange waited for its
    // answer): SIGTERM at once, and what the ring and queues hold must reach
    // the file before the sidecar exits.
    let exit = sidecar.stop().expect("the sidecar stops");
    assert!(exit.status.success(), "{}\n{}", exit.status, exit.stderr);
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump stops")).expect("oracle");
    let mirror = capture::read(&out).expect("the sidecar's file");
    assert!(oracle.len() > 20, "too little traffic: {}", oracle.len());
    assert_same_frames(&oracle, &mirror);
    let sized = exit
        .fields_of("sized from the memory limit")
        .expect("the sizing line");
    // A quarter of 64 MiB, for the ring and for the queues.
    assert_eq!(sized.get("ring_bytes"), Some(&(16 << 20)), "{sized:?}");
    assert_eq!(sized.get("queue_bytes"), Some(&(16 << 20)), "{sized:?}");
    let total = exit.summary().expect("summary");
    assert_eq!(
        total.get("written"),
        Some(&(mirror.len() as u64)),
        "{total:?}"
    );
    assert_eq!(
        total.get("mirrored"),
        Some(&(oracle.len() as u64)),
        "{total:?}"
    );
    assert_eq!(total.get("lost"), Some(&0), "{total:?}");
}

const PORT: u16 = 7010;
/// The stream's sequence numbers among `frames`.
fn numbers(frames: &[Frame]) -> BTreeSet<u32> {
    sequence_numbers(frames, PORT).into_keys().collect()
}

/// A sidecar restarted as the kubelet restarts a native sidecar: stopped
/// (SIGTERM, an image update; or SIGKILL, a crash) and started anew. With
/// no pins in a pod, the hooks go with the process: what the pod sent in
/// between is not mirrored. The test measures it against tcpdump and
/// checks that everything else was.
fn restart_gap(signal: Signal) -> (usize, usize) {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second) = (
        dir.path().join("first.pcapng"),
        dir.path().join("second.pcapng"),
    );
    let tcpdump = Tcpdump::start(&pair.pod, &pair.pod_if, dir.path().join("pod.pcap"), &[])
        .expect("tcpdump in the pod");
    let one = sidecar(&pair.pod, &policy(&first));
    let stream =
        NumberedStream::start(&pair.node, &pair.pod, SocketAddr::from((pair.pod_v4, PORT)))
            .expect("stream");
    stream.wait_for(500);
    let exit = one.signal(signal).expect("the first sidecar ends");
    assert!(
        signal == Signal::SIGKILL || exit.status.success(),
        "{}\n{}",
        exit.status,
        exit.stderr
    );
    let two = sidecar(&pair.pod, &policy(&second));
    stream.wait_for(500);
    let sent = stream.finish().expect("sender");
    let exit = two.stop().expect("the second sidecar stops");
    assert!(exit.status.success(), "{}\n{}", exit.status, exit.stderr);
    let oracle = numbers(&capture::read(&tcpdump.stop().expect("tcpdump")).expect("oracle"));
    assert_eq!(
        oracle.len(),
        sent as usize,
        "tcpdump saw every datagram sent"
    );
    let mut mirrored = numbers(&capture::read(&first).unwrap_or_default());
    let after = numbers(&capture::read(&second).expect("the second file"));
    mirrored.extend(after.iter().copied());
    let missing: Vec<u32> = oracle.difference(&mirrored).copied().collect();
    // The gap is one run: nothing missing before it or after it.
    if let (Some(lo), Some(hi)) = (missing.first(), missing.last()) {
        assert_eq!(
            missing.len() as u32,
            hi - lo + 1,
            "the missing datagrams are not one run: {missing:?}"
        );
        assert!(after.range(hi + 1..).count() > 0, "nothing after the gap");
    }
    // Everything after the second sidecar said it mirrors is mirrored.
    let last = *after.last().expect("the second sidecar mirrored");
    assert_eq!(last, sent - 1, "the last datagram is mirrored");
    eprintln!(
        "restart by {signal}: {} of {sent} datagrams not mirrored (about {} ms at one per {} ms)",
        missing.len(),
        missing.len() as u128 * EVERY.as_millis(),
        EVERY.as_millis()
    );
    (missing.len(), sent as usize)
}

#[test]
fn sidecar_restart_gap_is_measured() {
    for signal in [Signal::SIGTERM, Signal::SIGKILL] {
        let (gap, sent) = restart_gap(signal);
        // A restart longer than 5 s (2,500 datagrams) would be a defect of
        // its own: the sidecar starts in well under a second.
        assert!(gap < 2500, "{signal}: {gap} of {sent} not mirrored");
    }
}

/// The sidecar started as a container runtime starts the injected
/// container: uid 0 with only `caps` (bounding, permitted and effective;
/// none inheritable) and no_new_privs (`allowPrivilegeEscalation: false`),
/// by util-linux's setpriv.
fn confined(pod: &Netns, caps: &[&str], policy: &str) -> std::process::Command {
    let bounding: String = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = pod.command("setpriv");
    cmd.args([
        "--bounding-set",
        &bounding,
        "--inh-caps",
        "-all",
        "--no-new-privs",
        "--",
    ])
    .arg(agent::binary())
    .args(["sidecar", "--metrics-addr", "127.0.0.1:19464"])
    .env("MIRROR_POLICY", policy)
    .stdout(Stdio::null());
    cmd
}

/// The effective capabilities of a process, from /proc.
fn effective(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff");
    u64::from_str_radix(hex.trim(), 16).expect("hex")
}

/// The README's list: CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (and
/// CAP_NET_RAW for a GRE or ERSPAN collector), nothing else. With exactly those the sidecar
/// mirrors what tcpdump in the pod sees; with one missing it refuses to
/// start and names it.
#[test]
fn sidecar_works_with_exactly_its_stated_capabilities() {
    testbed::require_root();
    const NET_ADMIN: u64 = 1 << 12;
    const NET_RAW: u64 = 1 << 13;
    const PERFMON: u64 = 1 << 38;
    const BPF: u64 = 1 << 39;
    const STATED: [&str; 3] = ["bpf", "perfmon", "net_admin"];
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("confined.pcapng");
    let tcpdump = Tcpdump::start(&pair.pod, &pair.pod_if, dir.path().join("pod.pcap"), &[])
        .expect("tcpdump in the pod");
    let mut sidecar = Agent::start_command(confined(&pair.pod, &STATED, &policy(&out)))
        .expect("the sidecar starts with its stated capabilities only");
    // setpriv execs the agent: same process. Its effective set is exactly these.
    let pid = sidecar.process().pid().expect("pid");
    assert_eq!(
        effective(pid),
        BPF | PERFMON | NET_ADMIN,
        "effective capabilities"
    );
    let (pod_ip, node_ip) = (IpAddr::V4(pair.pod_v4), IpAddr::V4(pair.node_v4));
    traffic::udp(&pair.pod, &pair.node, node_ip, 7001, &[64, 1400]).expect("egress");
    traffic::udp(&pair.node, &pair.pod, pod_ip, 7002, &[80, 1200]).expect("ingress");
    traffic::ping(&pair.node, pod_ip, 2).expect("ping");
    let ready = testbed::http::get(&pair.pod, "127.0.0.1:19464", "/readyz").expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    let exit = sidecar.stop().expect("the sidecar stops");
    assert!(exit.status.success(), "{}\n{}", exit.status, exit.stderr);
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("oracle");
    assert!(oracle.len() >= 8, "too little traffic: {}", oracle.len());
    assert_same_frames(&oracle, &capture::read(&out).expect("the sidecar's file"));

    // One fewer: refused at start, naming what is missing.
    let gre =
        "policies:\n  - name: pod\n    interfaces: ['*']\n    collectors: ['gre://198.18.0.1']\n";
    for (caps, policy, missing) in [
        (&["perfmon", "net_admin"][..], policy(&out), "CAP_BPF"),
        (&["bpf", "net_admin"][..], policy(&out), "CAP_PERFMON"),
        (&["bpf", "perfmon"][..], policy(&out), "CAP_NET_ADMIN"),
        (&STATED[..], gre.to_owned(), "CAP_NET_RAW"),
    ] {
        let process =
            testbed::process::Process::spawn("sidecar", confined(&pair.pod, caps, &policy))
                .expect("spawn");
        let (status, stderr) = process
            .wait(std::time::Duration::from_secs(20))
            .expect("it exits");
        assert!(!status.success(), "{caps:?}: started:\n{stderr}");
        assert!(
            stderr.contains(missing),
            "{caps:?}: {missing} not named:\n{stderr}"
        );
    }
    // And a GRE collector with CAP_NET_RAW added.
    let mut gre_sidecar = Agent::start_command(confined(
        &pair.pod,
        &[&STATED[..], &["net_raw"]].concat(),
        gre,
    ))
    .expect("with CAP_NET_RAW a GRE collector works");
    let pid = gre_sidecar.process().pid().expect("pid");
    assert_eq!(effective(pid), BPF | PERFMON | NET_ADMIN | NET_RAW);
    let exit = gre_sidecar.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
}

/// Whether an Ethernet/IPv4 frame is a TCP segment to or from `port`.
fn tcp_port(frame: &Frame, port: u16) -> bool {
    let d = &frame.data;
    if d.len() < 38 || d[12..14] != [0x08, 0x00] || d[23] != 6 {
        return false;
    }
    let l4 = 14 + usize::from(d[14] & 0x0f) * 4;
    let at = |i: usize| d.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    at(l4) == Some(port) || at(l4 + 2) == Some(port)
}

/// A sidecar whose `tcp://` or `tls://` collector is reached through the
/// pod's own mirrored interface (the collector listens on the node's end
/// of the veth, [`COLLECTOR`]). Its connection's packets pass the hooks both ways: what
/// it sends carries the agent's mark, the collector's acknowledgements come
/// in unmarked. Neither may be mirrored (once they were: each ACK mirrored
/// into the stream made more, a loop). tcpdump in the pod is the oracle:
/// the collector holds exactly its frames but the connection's, the copies
/// passed over are exactly the connection's packets while the hooks were
/// on, and the run ends (tcpdump's capture stops growing).
fn stream_collector(listen: &str, output: &str, port: u16) {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    // The collector's address, routed to the pod only once its hooks are
    // on: until then the sidecar's connects fail at once (no route), with
    // no packet, so every packet of its connection passes the hooks.
    pair.node
        .ip(&[
            "addr",
            "add",
            &format!("{COLLECTOR}/32"),
            "dev",
            &pair.host_if,
        ])
        .expect("the collector's address");
    let collector = Collector::start(&pair.node, &[listen], &[]).expect("the collector starts");
    let dir = tempfile::tempdir().expect("tempdir");
    let tcpdump_file = dir.path().join("pod.pcap");
    let tcpdump =
        Tcpdump::start(&pair.pod, &pair.pod_if, tcpdump_file.clone(), &[]).expect("tcpdump");
    let policy =
        format!("policies:\n  - name: pod\n    interfaces: ['*']\n    collectors: ['{output}']\n");
    let metrics = "127.0.0.1:19465";
    let mut cmd = pair.pod.command(&agent::binary().to_string_lossy());
    cmd.args(["sidecar", "--metrics-addr", metrics])
        .args(["--memory-limit", &(64u64 << 20).to_string()])
        .env("MIRROR_POLICY", &policy)
        .stdout(Stdio::null());
    let sidecar = Agent::start_command(cmd).expect("the sidecar starts with a stream collector");
    pair.pod
        .ip(&[
            "route",
            "add",
            &format!("{COLLECTOR}/32"),
            "via",
            "198.18.0.1",
        ])
        .expect("the route to the collector");

    let (pod_ip, node_ip) = (IpAddr::V4(pair.pod_v4), IpAddr::V4(pair.node_v4));
    traffic::udp(&pair.pod, &pair.node, node_ip, 7001, &[64, 700, 1400, 3000]).expect("egress");
    traffic::udp(&pair.node, &pair.pod, pod_ip, 7002, &[80, 1200, 2500]).expect("ingress");
    traffic::ping(&pair.node, pod_ip, 3).expect("ping into the pod");
    // TCP of the pod's own, in segments of one frame each: a stream output
    // sends wire-size segments, which tcpdump's super-packets would not be.
    traffic::tcp_bulk(&pair.pod, &pair.node, node_ip, 7003, 1000).expect("tcp");
    // With a loop, the capture would never stop growing.
    tcpdump.settle().expect("the pod's traffic ends");

    // Every copy passed over is counted: by the hooks (what the sidecar
    // sends, by its mark) and by the agent (the collector's answers). Wait
    // until they add up to tcpdump's count of the connection's packets.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (own, connection) = loop {
        let seen = capture::read(&tcpdump_file).expect("tcpdump's capture so far");
        let connection = seen.iter().filter(|f| tcp_port(f, port)).count() as u64;
        let body = testbed::http::get(&pair.pod, metrics, "/metrics")
            .expect("the sidecar's metrics")
            .body;
        let own = testbed::http::total(&body, "mirror_own_traffic_packets_total");
        if (own == connection && connection > 0) || Instant::now() > deadline {
            break (own, connection);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        own, connection,
        "copies passed over as the sidecar's own, against tcpdump's count of its connection"
    );
    let oracle: Vec<Frame> = capture::read(&tcpdump_file)
        .expect("oracle")
        .into_iter()
        .filter(|f| !tcp_port(f, port))
        .collect();
    collector
        .wait_decoded(&pair.node, oracle.len() as u64)
        .expect("the collector gets every copy");

    let exit = sidecar.stop().expect("the sidecar stops");
    assert!(exit.status.success(), "{}\n{}", exit.status, exit.stderr);
    let collected = collector.stop().expect("the collector stops");
    collected.ensure_success().expect("the collector's exit");
    // Its last packets (the FINs after the hooks went) are tcpdump's alone.
    let all = capture::read(&tcpdump.stop().expect("tcpdump stops")).expect("oracle");
    let oracle: Vec<Frame> = all.into_iter().filter(|f| !tcp_port(f, port)).collect();
    assert!(oracle.len() > 20, "too little traffic: {}", oracle.len());
    let mirror = collected.frames().expect("the collector's files");
    // Same frames, so no more bytes than the test's own traffic: no growth.
    assert_same_frames(&oracle, &mirror);
    let total = exit.summary().expect("summary");
    let (by_mark, by_tuple) = (total.get("own_traffic"), total.get("own_connections"));
    assert!(
        by_mark.is_some_and(|n| *n > 0) && by_tuple.is_some_and(|n| *n > 0),
        "both directions passed over: {total:?}"
    );
    assert_eq!(by_mark.zip(by_tuple).map(|(a, b)| a + b), Some(own));
    assert_eq!(total.get("lost"), Some(&0), "{total:?}");
    eprintln!(
        "{output}: {} frames mirrored, {own} packets of the sidecar's own connection passed over \
         ({} by mark, {} by address)",
        mirror.len(),
        by_mark.copied().unwrap_or(0),
        by_tuple.copied().unwrap_or(0)
    );
}

/// Where [`stream_collector`]'s collector listens: on the node's end of
/// the pod's veth.
const COLLECTOR: &str = "198.18.2.1";

#[test]
fn sidecar_with_a_tcp_collector_through_the_pods_interface_never_mirrors_its_connection() {
    let uri = format!("tcp://{COLLECTOR}:7100");
    stream_collector(&uri, &uri, 7100);
}

#[test]
fn sidecar_with_a_tls_collector_through_the_pods_interface_never_mirrors_its_connection() {
    let pki = Pki::new().expect("certificates");
    let p = |path: &Path| path.display().to_string();
    let listen = format!(
        "tls://{COLLECTOR}:7101?ca={}&cert={}&key={}",
        p(&pki.main.ca),
        p(&pki.main.server.cert),
        p(&pki.main.server.key)
    );
    let output = format!(
        "tls://{COLLECTOR}:7101?ca={}&cert={}&key={}&name={}",
        p(&pki.main.ca),
        p(&pki.main.client.cert),
        p(&pki.main.client.key),
        testbed::pki::SERVER_NAME
    );
    stream_collector(&listen, &output, 7101);
}
