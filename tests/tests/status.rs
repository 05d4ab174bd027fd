//! `mirror-agent status`: what it prints about pinned hooks, against the
//! kernel's own answers (BPF_PROG_QUERY for the programs on the interface)
//! and tcpdump on the hooked veth (for the hook's counters), while the
//! agent runs and after it was killed.

use std::path::Path;

use aya::programs::{SchedClassifier, TcAttachType};
use nix::sys::signal::Signal;
use serde_json::Value;
use testbed::{
    agent::{self, Agent},
    bpffs::BpfFs,
    capture,
    netns::{Netns, join},
    tcpdump::Tcpdump,
    topology::PodPair,
    traffic,
};

fn if_index(ns: &Netns, interface: &str) -> u64 {
    ns.exec(&["cat", &format!("/sys/class/net/{interface}/ifindex")])
        .expect("ifindex")
        .trim()
        .parse()
        .expect("a number")
}

fn mac(ns: &Netns, interface: &str) -> String {
    ns.exec(&["cat", &format!("/sys/class/net/{interface}/address")])
        .expect("mac")
        .trim()
        .to_owned()
}

/// Permanent neighbours both ways: with IPv6 off, nothing but the test's
/// own traffic crosses the veth, so tcpdump's count is exactly the hook's.
fn quiet(pair: &PodPair) {
    let pod_mac = mac(&pair.pod, &pair.pod_if);
    let node_mac = mac(&pair.node, &pair.host_if);
    pair.node
        .ip(&[
            "neigh",
            "replace",
            "198.18.0.2",
            "lladdr",
            &pod_mac,
            "dev",
            &pair.host_if,
            "nud",
            "permanent",
        ])
        .expect("node neighbour");
    pair.pod
        .ip(&[
            "neigh",
            "replace",
            "198.18.0.1",
            "lladdr",
            &node_mac,
            "dev",
            &pair.pod_if,
            "nud",
            "permanent",
        ])
        .expect("pod neighbour");
}

/// The program ids on the interface's tcx hooks, as the kernel lists them.
fn kernel_program_ids(ns: &Netns, interface: &str) -> Vec<(String, u64)> {
    let iface = interface.to_owned();
    join(ns.spawn(move || {
        let mut ids = Vec::new();
        for (kind, label) in [
            (TcAttachType::Egress, "egress"),
            (TcAttachType::Ingress, "ingress"),
        ] {
            let (_, progs) = SchedClassifier::query_tcx(&iface, kind)?;
            for p in progs {
                ids.push((label.to_owned(), u64::from(p.id())));
            }
        }
        Ok(ids)
    }))
    .expect("BPF_PROG_QUERY")
}

fn the_interface(status: &Value, ifindex: u64) -> Value {
    let all = status["interfaces"].as_array().expect("interfaces");
    assert_eq!(all.len(), 1, "one hooked interface: {status:#}");
    assert_eq!(all[0]["ifindex"], ifindex, "{status:#}");
    all[0].clone()
}

fn hook_ids(iface: &Value) -> Vec<(String, u64)> {
    iface["hooks"]
        .as_array()
        .expect("hooks")
        .iter()
        .map(|h| {
            assert_eq!(h["mode"], "tcx", "{h}");
            (
                h["direction"].as_str().expect("direction").to_owned(),
                h["programId"].as_u64().expect("a program id"),
            )
        })
        .collect()
}

fn counter(iface: &Value, name: &str) -> u64 {
    iface["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name}: {iface:#}"))
}

/// Sends traffic both ways with tcpdump on the hooked veth around it and
/// returns how many frames tcpdump saw and the interface's status before
/// and after. tcpdump runs before the first status and after the second,
/// so any frame between the two is in its capture.
fn traffic_under_tcpdump(pair: &PodPair, pin_dir: &str, dir: &Path) -> (usize, Value, Value) {
    let tcpdump = Tcpdump::start(&pair.node, &pair.host_if, dir.join("veth.pcap"), &[])
        .expect("tcpdump on the veth");
    let before = agent::status(&pair.node, pin_dir).expect("status");
    traffic::udp(
        &pair.pod,
        &pair.node,
        pair.node_v4.into(),
        7000,
        &[100, 200, 300, 400, 500, 600, 700, 800],
    )
    .expect("udp");
    traffic::ping(&pair.node, pair.pod_v4.into(), 5).expect("ping");
    let after = agent::status(&pair.node, pin_dir).expect("status");
    let frames = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    (frames.len(), before, after)
}

/// With an agent running and after `kill -9`: status lists the veth's two
/// tcx hooks with the program ids the kernel reports on that interface,
/// the hook counts exactly the frames tcpdump saw there, all of them
/// mirrored (no sampling, no rules), and the ring's fill grows while no
/// agent reads it.
#[test]
fn status_matches_the_kernel_and_tcpdump_before_and_after_a_kill() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    quiet(&pair);
    let bpffs = BpfFs::mount().expect("a bpf filesystem of our own");
    let pin_dir = bpffs.path().join("mirror").display().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = format!("pcapng:{}", dir.path().join("out.pcapng").display());
    let agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--output",
            &output,
            "--pin-dir",
            &pin_dir,
            "--metrics-addr",
            "off",
            "--cleanup-on-exit=false",
        ],
    )
    .expect("agent starts");
    let ifindex = if_index(&pair.node, &pair.host_if);

    let (seen_by_tcpdump, before, after) = traffic_under_tcpdump(&pair, &pin_dir, dir.path());
    assert_eq!(after["agentRunning"], true, "{after:#}");
    let (b, a) = (
        the_interface(&before, ifindex),
        the_interface(&after, ifindex),
    );
    assert_eq!(a["name"], pair.host_if.as_str(), "{a:#}");
    assert_eq!(a["policy"], "command-line", "{a:#}");
    let mut ids = hook_ids(&a);
    ids.sort();
    let mut kernel = kernel_program_ids(&pair.node, &pair.host_if);
    kernel.sort();
    assert_eq!(ids, kernel, "status's program ids against BPF_PROG_QUERY");
    assert_eq!(ids.len(), 2, "ingress and egress: {a:#}");
    let seen = counter(&a, "seenPackets") - counter(&b, "seenPackets");
    let mirrored = counter(&a, "mirroredPackets") - counter(&b, "mirroredPackets");
    eprintln!("tcpdump {seen_by_tcpdump} frames, status seen {seen}, mirrored {mirrored}");
    assert!(seen_by_tcpdump >= 18, "8 datagrams, 5 pings and replies");
    assert_eq!(seen as usize, seen_by_tcpdump, "{b:#}\n{a:#}");
    assert_eq!(mirrored, seen);

    // Killed: the pins stay, the hooks go on copying, nobody reads the ring.
    let killed = agent.signal(Signal::SIGKILL).expect("kill -9");
    assert!(!killed.status.success());
    let (seen_by_tcpdump, before, after) = traffic_under_tcpdump(&pair, &pin_dir, dir.path());
    assert_eq!(after["agentRunning"], false, "{after:#}");
    let (b, a) = (
        the_interface(&before, ifindex),
        the_interface(&after, ifindex),
    );
    let mut still = hook_ids(&a);
    still.sort();
    assert_eq!(still, ids, "the same programs stay on the veth");
    let seen = counter(&a, "seenPackets") - counter(&b, "seenPackets");
    assert_eq!(seen as usize, seen_by_tcpdump, "{b:#}\n{a:#}");
    let used = |s: &Value| s["ring"]["usedBytes"].as_u64().expect("ring fill");
    assert!(
        used(&after) >= used(&before) + seen * 48,
        "each copy holds at least its 48-byte header in the unread ring: {} -> {}",
        used(&before),
        used(&after)
    );
    assert_eq!(
        after["ring"]["sizeBytes"],
        64 << 20,
        "attach's default ring"
    );

    // The table says the same for people.
    let table = pair
        .node
        .exec(&[
            &agent::binary().to_string_lossy(),
            "status",
            "--pin-dir",
            &pin_dir,
        ])
        .expect("status as a table");
    assert!(table.contains("no agent holds it"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("command-line"))
        .unwrap_or_else(|| panic!("a row for the policy:\n{table}"));
    assert!(row.contains(&pair.host_if), "{table}");
    for (direction, id) in &ids {
        assert!(
            row.contains(&format!("{direction} tcx prog {id}")),
            "{table}"
        );
    }

    // Uninstall leaves nothing for status to show.
    agent::run(&pair.node, &["uninstall", "--pin-dir", &pin_dir]).expect("uninstall");
    let gone = agent::run(&pair.node, &["status", "--pin-dir", &pin_dir]).expect("status");
    assert_eq!(gone.status.code(), Some(2), "{}", gone.stderr);
    assert!(
        gone.stderr.contains("no agent's pins there"),
        "{}",
        gone.stderr
    );
}
