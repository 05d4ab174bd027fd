//! One tenant's flood never costs another tenant a mirrored packet (issue
//! #15): on one node, tenant A's pod floods at the sender's full rate under
//! a mirror-everything policy while tenant B's pod sends numbered UDP at a
//! steady 1,000 a second under its own policy, to its own collector. Each
//! tenant copies into a ring of its own (`--ring-slots`), drained in turn.
//!
//! The agent is stopped (SIGSTOP) for the first flood, so A's ring is sure
//! to fill however fast this machine drains it, as a stalled agent or a
//! collector too slow to keep up would leave it; then it floods again with
//! the agent running. Checked:
//!
//! - B's collector receives every sequence number B sent;
//! - A lost copies, each counted against A's interface by reason in the
//!   kernel: the hook saw every frame tcpdump saw on A's interface (and
//!   at most two more, from before tcpdump started), and what it saw and
//!   did not mirror is `ring_full`, exactly;
//! - with one ring for both (`--ring-slots 1`), B loses copies to A's
//!   flood: the figure the isolation is measured against.
//!
//! Under `attach --policy` with two policies (each its own tenant), and
//! under `run` with two namespaces (the fake API server).

use std::{
    net::{IpAddr, SocketAddr},
    process::Stdio,
    time::Duration,
};

use nix::{
    sys::signal::{self, Signal},
    unistd::Pid,
};
use serde_json::{Value, json};
use testbed::{
    agent::{self, Agent, Exit},
    apiserver::{ApiServer, Options, rbac::Rbac},
    bpffs::BpfFs,
    capture::{self, Frame},
    hooks::attached,
    netns::join,
    numbered::{NumberedStream, sequence_numbers},
    tcpdump::{SMALL_FRAMES, Tcpdump},
    topology::{BridgedNode, CollectorLink},
    traffic,
};

/// A's flood goes to the node's discard port; B's stream to this one.
const FLOOD_PORT: u16 = 9;
const STREAM_PORT: u16 = 7100;
/// B's pace: one datagram a millisecond.
const STEADY: Duration = Duration::from_millis(1);
/// A's floods: while the agent is stopped, then while it runs.
const STOPPED_FLOOD: usize = 100_000;
const RUNNING_FLOOD: usize = 100_000;
/// Two rings of 1 MiB (or, with one slot, one of 2 MiB): a few thousand of
/// A's copies fill A's, a second of B's stream fills a tenth of B's.
const RING_SIZE: &str = "2097152";

const NODE: &str = "node-a";
const MIRROR: &str = "mirror.packets.dev/v1alpha1";
const VNI_A: u32 = 81;
/// Frames the hook may see on A's link before tcpdump starts there.
const STRAYS: u64 = 2;
const VNI_B: u32 = 82;

/// What one run gave: B's sequence numbers sent and those its collector
/// missed; A's kernel counters and tcpdump's count on A's interface.
struct Outcome {
    sent: u32,
    missing: Vec<u32>,
    a: std::collections::HashMap<String, u64>,
    a_tcpdump: u64,
    exit: Exit,
}

/// The traffic of every run, with `agent` mirroring pod A (`node.pods[0]`)
/// and pod B (`node.pods[1]`): B's steady stream throughout, A's flood
/// with the agent stopped and then running; then the agent stopped.
/// Returns how many B sent, how the agent ended, and how many frames
/// tcpdump saw on A's interface.
fn traffic_and_stop(
    node: &BridgedNode,
    mut agent: Agent,
    dir: &std::path::Path,
) -> (u32, Exit, u64) {
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let node_v4 = IpAddr::from([198, 18, 0, 1]);
    pin_neighbours(node);
    let at_a = Tcpdump::start(&node.node, &a.host_if, dir.join("a.pcap"), &SMALL_FRAMES)
        .expect("tcpdump on A");
    let stream = NumberedStream::start_every(
        &b.ns,
        &node.node,
        SocketAddr::new(node_v4, STREAM_PORT),
        STEADY,
    )
    .expect("B's stream");
    stream.wait_for(300);
    let pid = Pid::from_raw(agent.process().pid().expect("the agent runs") as i32);
    signal::kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
    let flood = traffic::udp_flood(
        &a.ns,
        SocketAddr::new(node_v4, FLOOD_PORT),
        STOPPED_FLOOD,
        64,
    );
    signal::kill(pid, Signal::SIGCONT).expect("SIGCONT");
    flood.expect("A's flood, the agent stopped");
    traffic::udp_flood(
        &a.ns,
        SocketAddr::new(node_v4, FLOOD_PORT),
        RUNNING_FLOOD,
        64,
    )
    .expect("A's flood, the agent running");
    stream.wait_for(300);
    let sent = stream.finish().expect("B's stream ends");
    at_a.settle().expect("A's traffic is past the hook");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "agent failed\n{}", exit.stderr);
    let oracle = capture::read(&at_a.stop().expect("tcpdump on A")).expect("A's capture");
    (sent, exit, oracle.len() as u64)
}

/// The MAC address of `iface` in `ns`.
fn mac(ns: &testbed::netns::Netns, iface: &str) -> String {
    let shown = ns.ip(&["-j", "link", "show", iface]).expect("ip link");
    let links: Value = serde_json::from_str(&shown).expect("ip's JSON");
    links[0]["address"].as_str().expect("an address").to_owned()
}

/// Fixed neighbour entries between the node and pod A, both ways: no ARP
/// exchange then joins A's traffic after the agent has stopped (a probe of
/// an entry the flood left stale), where tcpdump would see it and the hook
/// not.
fn pin_neighbours(node: &BridgedNode) {
    let a = &node.pods[0];
    let (bridge_mac, a_mac) = (mac(&node.node, &node.bridge), mac(&a.ns, "eth0"));
    node.node
        .ip(&[
            "neigh",
            "replace",
            &a.v4.to_string(),
            "lladdr",
            &a_mac,
            "dev",
            &node.bridge,
            "nud",
            "permanent",
        ])
        .expect("the node's entry for A");
    a.ns.ip(&[
        "neigh",
        "replace",
        "198.18.0.1",
        "lladdr",
        &bridge_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ])
    .expect("A's entry for the node");
}

/// B's sequence numbers missing from `frames`.
fn missing(frames: &[Frame], sent: u32) -> Vec<u32> {
    let seen = sequence_numbers(frames, STREAM_PORT);
    (0..sent).filter(|n| !seen.contains_key(n)).collect()
}

/// A's kernel counters from the agent's summary line for its interface.
fn counters_of(exit: &Exit, host_if: &str) -> std::collections::HashMap<String, u64> {
    exit.fields_with(&["summary", host_if, "seen="])
        .expect("A's interface summary")
}

/// What isolation promises: B lost nothing; A's losses are all in A's
/// kernel counters, by reason, to the packet.
fn assert_isolated(o: &Outcome, what: &str) {
    let a = &o.a;
    eprintln!(
        "{what}: B sent {}, its collector missed {}; A: tcpdump {}, seen {}, mirrored {}, \
         ring_full {}",
        o.sent,
        o.missing.len(),
        o.a_tcpdump,
        a["seen"],
        a["mirrored"],
        a["lost_ring_full"]
    );
    assert!(
        o.missing.is_empty(),
        "{what}: B's collector missed {} of {} sequence numbers (first {:?})\n{}",
        o.missing.len(),
        o.sent,
        &o.missing[..o.missing.len().min(10)],
        o.exit.stderr
    );
    // tcpdump starts after the hook is attached, so a frame of A's link in
    // between (a CI run once had one) is the hook's alone; every frame
    // tcpdump saw, the hook saw.
    assert!(
        a["seen"] >= o.a_tcpdump && a["seen"] - o.a_tcpdump <= STRAYS,
        "{what}: A's hook saw {} frames, tcpdump {} (at most {STRAYS} before tcpdump started)",
        a["seen"],
        o.a_tcpdump
    );
    assert!(
        a["lost_ring_full"] > 0,
        "{what}: A's ring never filled, so this run shows nothing\n{}",
        o.exit.stderr
    );
    assert_eq!(
        a["seen"] - a["mirrored"],
        a["lost_ring_full"],
        "{what}: every copy of A's not mirrored is counted as ring_full: {a:?}"
    );
    for other in [
        "lost_rate_limit",
        "lost_copy_failed",
        "sampled_out",
        "filtered",
    ] {
        assert_eq!(a[other], 0, "{what}: {other}: {a:?}");
    }
}

/// `attach --policy`: policies "flood" on A's interface and "steady" on
/// B's, each into its own pcapng file.
fn attach_run(slots: &str) -> Outcome {
    testbed::require_root();
    let node = BridgedNode::new(2).expect("node with pods");
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let (out_a, out_b) = (dir.path().join("a.pcapng"), dir.path().join("b.pcapng"));
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        format!(
            "policies:\n  \
             - name: flood\n    interfaces: [\"{}\"]\n    collectors: [\"pcapng:{}\"]\n  \
             - name: steady\n    interfaces: [\"{}\"]\n    collectors: [\"pcapng:{}\"]\n",
            a.host_if,
            out_a.display(),
            b.host_if,
            out_b.display()
        ),
    )
    .expect("policy file");
    let agent = Agent::start(
        &node.node,
        &[
            "attach",
            "--policy",
            &file.display().to_string(),
            "--metrics-addr",
            "off",
            "--ring-size",
            RING_SIZE,
            "--ring-slots",
            slots,
        ],
    )
    .expect("agent starts");
    let (sent, exit, a_tcpdump) = traffic_and_stop(&node, agent, dir.path());
    let mirror_b = capture::read(&out_b).expect("B's pcapng");
    Outcome {
        sent,
        missing: missing(&mirror_b, sent),
        a: counters_of(&exit, &a.host_if),
        a_tcpdump,
        exit,
    }
}

#[test]
fn attach_a_flooding_policy_costs_another_policy_nothing() {
    let o = attach_run("8");
    assert_isolated(&o, "attach, a ring each");
}

/// The same with one ring for both: B loses copies to A's flood. The
/// figure for the README.
#[test]
fn attach_one_shared_ring_loses_the_neighbours_copies() {
    let o = attach_run("1");
    eprintln!(
        "attach, one shared ring: B's collector missed {} of {} (A: ring_full {})",
        o.missing.len(),
        o.sent,
        o.a["lost_ring_full"]
    );
    assert!(
        !o.missing.is_empty(),
        "one shared ring: B lost nothing to A's flood, so the isolation test proves nothing\n{}",
        o.exit.stderr
    );
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"tenant": name}}})
}

fn pod(ns: &str, name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                        "labels": {"app": name}},
           "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "example"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn collector(name: &str, address: &str, vni: u32, tenant: &str) -> Value {
    json!({"apiVersion": MIRROR, "kind": "MirrorCollector", "metadata": {"name": name},
           "spec": {"protocol": "vxlan", "address": address, "vni": vni,
                    "allowedNamespaces": {"matchLabels": {"tenant": tenant}}}})
}

fn policy(ns: &str, app: &str, collector: &str) -> Value {
    json!({"apiVersion": MIRROR, "kind": "MirrorPolicy",
           "metadata": {"name": app, "namespace": ns},
           "spec": {"podSelector": {"matchLabels": {"app": app}},
                    "collectorRef": {"name": collector}, "direction": "Both"}})
}

/// `run`: namespace "loud" with pod A under its policy, namespace "quiet"
/// with pod B under its own, each to its own VXLAN collector; B's is the
/// kernel's VXLAN device, captured by tcpdump.
#[test]
fn run_a_flooding_namespace_costs_another_namespace_nothing() {
    testbed::require_root();
    let node = BridgedNode::new(2).expect("node with pods");
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let link = CollectorLink::new(&node.node).expect("collector link");
    let vxlan_b = link.kernel_vxlan(VNI_B).expect("B's collector");
    let bpffs = BpfFs::mount().expect("bpffs");
    let dir = tempfile::tempdir().expect("tempdir");
    let netns_dir = dir.path().join("netns");
    std::fs::create_dir(&netns_dir).expect("netns dir");
    for (name, p) in [("flood", a), ("steady", b)] {
        std::os::unix::fs::symlink(format!("/run/netns/{}", p.ns.name()), netns_dir.join(name))
            .expect("symlink");
    }
    let options = Options {
        rbac: Some(Rbac::deploy().expect("deploy/rbac.yaml")),
        ..Options::default()
    };
    let server =
        join(node.node.spawn(move || ApiServer::start_with(options))).expect("fake API server");
    let kubeconfig = server.kubeconfig_file().expect("kubeconfig");
    let collector_v4 = link.collector_v4.to_string();
    for obj in [
        namespace("loud"),
        namespace("quiet"),
        collector("loud-lab", &collector_v4, VNI_A, "loud"),
        collector("quiet-lab", &collector_v4, VNI_B, "quiet"),
        policy("loud", "flood", "loud-lab"),
        policy("quiet", "steady", "quiet-lab"),
        pod("loud", "flood", &a.v4.to_string()),
        pod("quiet", "steady", &b.v4.to_string()),
    ] {
        server.create(obj).expect("create");
    }
    let at_b_collector = Tcpdump::start(&link.ns, &vxlan_b, dir.path().join("vx.pcap"), &[])
        .expect("tcpdump at B's collector");
    let mut cmd = node.node.command(&agent::binary().to_string_lossy());
    cmd.env("KUBECONFIG", kubeconfig.path())
        .env("RUST_LOG", "info")
        .args(["run", "--node-name", NODE, "--metrics-addr", "off"])
        .arg("--pin-dir")
        .arg(bpffs.path().join("mirror"))
        .arg("--netns-path")
        .arg(&netns_dir)
        .args(["--ring-size", RING_SIZE])
        .stdout(Stdio::null());
    let agent = Agent::start_command(cmd).expect("agent starts");
    for p in [a, b] {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while attached(&node.node, &p.host_if).expect("query").is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} not hooked within 15 s",
                p.host_if
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (sent, exit, a_tcpdump) = traffic_and_stop(&node, agent, dir.path());
    let at_b = capture::read(&at_b_collector.stop().expect("tcpdump at B's collector"))
        .expect("B's collector's capture");
    let o = Outcome {
        sent,
        missing: missing(&at_b, sent),
        a: counters_of(&exit, &a.host_if),
        a_tcpdump,
        exit,
    };
    assert_isolated(&o, "run, two namespaces");
}
