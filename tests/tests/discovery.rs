//! Pod discovery and attach points under four simulated CNI shapes (see
//! `testbed::cni`): discovery finds the interfaces and host ends the test
//! bed made, `auto` picks the end that sees the pod's traffic both ways,
//! and the real agent attached there mirrors exactly what tcpdump sees
//! inside the pod, in each direction. Then coexistence: with another
//! program already on the same tcx hook, both run and traffic flows.

use std::{net::IpAddr, path::Path};

use anyhow::Result;
use mirror_agent::{
    discovery::{self, DiscoveryError, LinkKind, PodNetwork, Reason},
    kernel::{
        netns::Namespace,
        tc::{self, TcApi},
    },
    model::record::IfIndex,
    model::values::{AttachPoint, End},
};
use testbed::{
    agent::{Agent, Exit},
    capture::{self, Dir, Frame},
    cni::{CniNode, POD_IFINDEX, Pod, Shape},
    netns::Netns,
    rawbpf::{self, Hook, Stats, TcProgram},
    require_root,
    scenario::assert_same_frames,
    tcpdump::Tcpdump,
    traffic,
};

/// The agent's program names (mirror_common::PROG_*), as tcx lists them.
const OUR_INGRESS: &str = "mirror_ingress";
const OUR_EGRESS: &str = "mirror_egress";

/// Discovery of pod `i` of `node`, from the node's namespace as the host.
fn discover(node: &CniNode, i: usize) -> PodNetwork {
    let host = Namespace::open(CniNode::path(&node.node)).expect("node namespace");
    let pod = &node.pods[i];
    let ns = Namespace::open(CniNode::path(&pod.ns)).expect("pod namespace");
    discovery::discover(&host, &ns, &[IpAddr::V4(pod.v4)]).expect("discovery")
}

fn kind(shape: Shape) -> LinkKind {
    match shape.pod_kind() {
        "veth" => LinkKind::Veth,
        "macvlan" => LinkKind::MacVlan,
        "ipvlan" => LinkKind::IpVlan,
        other => panic!("no kind {other}"),
    }
}

/// What `auto` must choose for each shape.
fn auto_end(shape: Shape) -> End {
    match shape {
        Shape::Bridge | Shape::Routed => End::Host,
        Shape::Macvlan | Shape::Ipvlan | Shape::RedirectPeer => End::Pod,
    }
}

fn check_discovery(shape: Shape) {
    require_root();
    let node = CniNode::new(shape).expect("topology");
    for (i, pod) in node.pods.iter().enumerate() {
        let net = discover(&node, i);
        let found = &net.interface;
        assert_eq!(found.name, pod.ifname);
        assert_eq!(found.index, IfIndex(POD_IFINDEX));
        assert_eq!(found.kind, kind(shape));
        assert!(found.addresses.contains(&IpAddr::V4(pod.v4)));
        assert!(net.others.is_empty(), "other interfaces: {:?}", net.others);

        match (&pod.host, &net.host_peer) {
            (None, None) => {}
            (Some(want), Some(got)) => {
                assert_eq!(
                    (got.name.as_str(), got.index),
                    (want.name.as_str(), IfIndex(want.ifindex)),
                    "host end of pod {i}"
                );
            }
            (want, got) => panic!("pod {i}: host end {want:?}, discovered {got:?}"),
        }

        let auto = net.decide(AttachPoint::Auto).expect("auto");
        assert_eq!(auto.end, auto_end(shape), "{shape:?}: {}", auto.reason);
        let (want_if, want_index) = match (auto.end, &pod.host) {
            (End::Host, Some(h)) => (h.name.as_str(), h.ifindex),
            (End::Pod, _) => (pod.ifname, pod.ifindex),
            (End::Host, None) => panic!("host end chosen without one"),
        };
        assert_eq!(
            (auto.interface.as_str(), auto.index),
            (want_if, IfIndex(want_index))
        );
        eprintln!(
            "{shape:?} pod {i}: {} {}#{} (host end {:?}) -> auto {:?} {} ({})",
            found.kind,
            found.name,
            found.index.0,
            net.host_peer
                .as_ref()
                .map(|h| format!("{}#{}", h.name, h.index.0)),
            auto.end,
            auto.interface,
            auto.reason
        );

        match shape {
            Shape::RedirectPeer => {
                // The bypass is seen in the test's own program on this
                // pod's host end, by id.
                let (_, prog) = &node.redirects[i];
                let Reason::HostEndBypassed(programs) = &auto.reason else {
                    panic!("reason {:?}", auto.reason);
                };
                assert!(
                    programs
                        .iter()
                        .any(|p| p.id == Some(prog.id()) && p.name == prog.name()),
                    "{programs:?} lacks {} ({})",
                    prog.name(),
                    prog.id()
                );
            }
            Shape::Macvlan | Shape::Ipvlan => {
                assert_eq!(auto.reason, Reason::NoHostEnd);
                let err = net.decide(AttachPoint::Host).unwrap_err();
                let text = err.to_string();
                assert!(
                    text.contains("eth0")
                        && text.contains(pod.ns.name())
                        && text.contains(shape.pod_kind()),
                    "{text}"
                );
            }
            Shape::Bridge | Shape::Routed => {
                assert_eq!(auto.reason, Reason::HostEndOnPath);
            }
        }
        let pod_end = net.decide(AttachPoint::Pod).expect("pod end");
        assert_eq!(
            (pod_end.end, pod_end.interface.as_str()),
            (End::Pod, "eth0")
        );
    }
}

#[test]
fn discovery_bridge() {
    check_discovery(Shape::Bridge);
}

#[test]
fn discovery_routed_proxy_arp() {
    check_discovery(Shape::Routed);
}

#[test]
fn discovery_macvlan() {
    check_discovery(Shape::Macvlan);
}

/// Runs where the kernel has ipvlan (see `cni::kernel_can_make`); where it
/// has not, discovery_macvlan covers the no-host-end shape.
#[test]
fn discovery_ipvlan() {
    if testbed::cni::kernel_can_make(Shape::Ipvlan, "discovery_ipvlan") {
        check_discovery(Shape::Ipvlan);
    }
}

#[test]
fn discovery_redirect_peer() {
    check_discovery(Shape::RedirectPeer);
}

#[test]
fn a_host_network_pod_is_refused_by_name() {
    require_root();
    let node = Netns::new("mdn").expect("namespace");
    let path = format!("/run/netns/{}", node.name());
    let host = Namespace::open(&path).expect("open");
    let same = Namespace::open(&path).expect("open");
    let err = discovery::discover(&host, &same, &[]).unwrap_err();
    assert!(matches!(err, DiscoveryError::HostNetwork { .. }), "{err}");
    assert!(err.to_string().contains(&path), "{err}");
}

/// Programs attached the netlink way (`cls_bpf`) count too: the agent's
/// own (netlink mode) leave `auto` at the host end; a foreign filter (a
/// classic-BPF one, as `tc` can add with no compiler) moves it to the pod end.
#[test]
fn discovery_reads_cls_bpf_filters_on_the_host_end() {
    require_root();
    let node = CniNode::new(Shape::Bridge).expect("topology");
    let host = node.pods[0].host.clone().expect("veth");
    let dir = tempfile::tempdir().expect("tempdir");
    let output = format!("pcapng:{}", dir.path().join("mirror.pcapng").display());
    let agent = Agent::start(
        &node.node,
        &[
            "attach",
            "-i",
            &host.name,
            "--attach-mode",
            "netlink",
            "--output",
            &output,
            "--metrics-addr",
            "off",
        ],
    )
    .expect("agent");

    let net = discover(&node, 0);
    let peer = net.host_peer.as_ref().expect("host end");
    let mut ours: Vec<(Hook, &str)> = peer
        .programs
        .iter()
        .filter(|p| p.api == TcApi::ClsBpf)
        .map(|p| (hook(p.hook), p.name.as_str()))
        .collect();
    ours.sort_by_key(|(h, _)| *h == Hook::Egress);
    assert_eq!(
        ours,
        [(Hook::Ingress, OUR_INGRESS), (Hook::Egress, OUR_EGRESS)],
        "{:?}",
        peer.programs
    );
    let auto = net.decide(AttachPoint::Auto).expect("auto");
    assert_eq!((auto.end, auto.reason), (End::Host, Reason::HostEndOnPath));

    // Classic BPF `ret #-1`: matches every packet, no action, so it passes.
    node.node
        .exec(&[
            "tc",
            "filter",
            "add",
            "dev",
            &host.name,
            "ingress",
            "pref",
            "100",
            "bpf",
            "bytecode",
            "1,6 0 0 4294967295,",
        ])
        .expect("tc filter");
    let auto = discover(&node, 0).decide(AttachPoint::Auto).expect("auto");
    let Reason::HostEndBypassed(foreign) = &auto.reason else {
        panic!("auto: {:?}", auto.reason);
    };
    assert_eq!(auto.end, End::Pod);
    assert!(
        foreign
            .iter()
            .all(|p| p.api == TcApi::ClsBpf && p.hook == tc::Hook::Ingress),
        "{foreign:?}"
    );
    assert_eq!(foreign.len(), 1, "{foreign:?}");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
}

fn hook(h: tc::Hook) -> Hook {
    match h {
        tc::Hook::Ingress => Hook::Ingress,
        tc::Hook::Egress => Hook::Egress,
    }
}

/// Pings both ways, UDP both ways (with IP fragments), a TCP transfer.
fn traffic(node: &CniNode) -> Result<()> {
    let (a, b) = (&node.pods[0], &node.pods[1]);
    let (a_ip, b_ip) = (IpAddr::V4(a.v4), IpAddr::V4(b.v4));
    traffic::ping(&a.ns, b_ip, 5)?;
    traffic::ping(&b.ns, a_ip, 3)?;
    traffic::udp(&a.ns, &b.ns, b_ip, 5301, &[0, 100, 1472, 3000])?;
    traffic::udp(&b.ns, &a.ns, a_ip, 5302, &[200, 2000])?;
    traffic::tcp_bulk(&a.ns, &b.ns, b_ip, 5303, 256 << 10)
}

/// tcpdump `-Q DIR` on pod `pod`'s eth0, inside the pod: the oracle.
fn tcpdump(ns: &Netns, iface: &str, dir: &str, out: &Path) -> Tcpdump {
    Tcpdump::start(
        ns,
        iface,
        out.join(format!("{}-{iface}-{dir}.pcap", ns.name())),
        &["-Q", dir],
    )
    .expect("tcpdump")
}

/// The agent on `iface` in `ns`, writing `out/mirror.pcapng`.
fn agent(ns: &Netns, iface: &str, out: &Path) -> Agent {
    let output = format!("pcapng:{}", out.join("mirror.pcapng").display());
    Agent::start(
        ns,
        &[
            "attach",
            "-i",
            iface,
            "--output",
            &output,
            "--metrics-addr",
            "off",
        ],
    )
    .expect("agent")
}

/// Stops the agent once the traffic has passed the hook, as the oracles'
/// captures, each at the hooked link or its pod end, show by settling.
fn stop(agent: Agent, out: &Path, oracles: &[&Tcpdump]) -> (Exit, Vec<Frame>) {
    for t in oracles {
        t.settle().expect("the traffic is past the hook");
    }
    let exit = agent.stop().expect("agent stops");
    assert!(
        exit.status.success(),
        "agent failed: {}\n{}",
        exit.status,
        exit.stderr
    );
    let mirror = capture::read(&out.join("mirror.pcapng")).expect("mirror");
    let s = exit.summary().expect("summary");
    let n = mirror.len() as u64;
    assert_eq!(
        (s["seen"], s["written"], s["lost"]),
        (n, n, 0),
        "{}",
        exit.stderr
    );
    (exit, mirror)
}

fn read(t: Tcpdump) -> Vec<Frame> {
    capture::read(&t.stop().expect("tcpdump")).expect("oracle")
}

/// Mirror frames split by the pod's direction: (sent by the pod, received).
/// At the host end the hook's ingress is what the pod sent.
fn by_pod_direction(end: End, frames: &[Frame]) -> (Vec<Frame>, Vec<Frame>) {
    let sent_dir = match end {
        End::Pod => Dir::Out,
        End::Host => Dir::In,
    };
    let (sent, received): (Vec<Frame>, Vec<Frame>) = frames
        .iter()
        .cloned()
        .partition(|f| f.dir == Some(sent_dir));
    assert!(
        received.iter().all(|f| f.dir.is_some()),
        "frames without a direction"
    );
    (sent, received)
}

/// Pod A's traffic, mirrored at the end `auto` chose, against tcpdump on
/// pod A's eth0 inside the pod, per direction.
fn mirror_both_directions(shape: Shape) {
    require_root();
    let node = CniNode::new(shape).expect("topology");
    let decision = discover(&node, 0).decide(AttachPoint::Auto).expect("auto");
    assert_eq!(decision.end, auto_end(shape));
    let pod: &Pod = &node.pods[0];
    let agent_ns = match decision.end {
        End::Host => &node.node,
        End::Pod => &pod.ns,
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let sent_oracle = tcpdump(&pod.ns, pod.ifname, "out", dir.path());
    let received_oracle = tcpdump(&pod.ns, pod.ifname, "in", dir.path());
    // Under redirect_peer: what leaves the pod's own host end towards it.
    let bypassed = match (shape, &pod.host) {
        (Shape::RedirectPeer, Some(h)) => Some(tcpdump(&node.node, &h.name, "out", dir.path())),
        _ => None,
    };
    let agent = agent(agent_ns, &decision.interface, dir.path());
    traffic(&node).expect("traffic flows");
    let (_, mirror) = stop(agent, dir.path(), &[&sent_oracle, &received_oracle]);
    let (sent_oracle, received_oracle) = (read(sent_oracle), read(received_oracle));

    let (sent, received) = by_pod_direction(decision.end, &mirror);
    assert!(!sent_oracle.is_empty() && !received_oracle.is_empty());
    assert_same_frames(&sent_oracle, &sent);
    assert_same_frames(&received_oracle, &received);
    let mut figures = format!(
        "{shape:?}: mirror at the {:?} end ({}): pod sent {} frames, received {}, as tcpdump in the pod",
        decision.end,
        decision.interface,
        sent.len(),
        received.len()
    );
    if let Some(t) = bypassed {
        // The redirect delivered into the pod past its host end.
        let past = read(t);
        assert!(
            past.is_empty(),
            "{} frames left the host end towards the pod",
            past.len()
        );
        figures.push_str(&format!(
            "; its host end transmitted {} of the {} it received",
            past.len(),
            received.len()
        ));
    }
    eprintln!("{figures}");
}

#[test]
fn mirror_bridge_at_the_host_end() {
    mirror_both_directions(Shape::Bridge);
}

#[test]
fn mirror_routed_proxy_arp_at_the_host_end() {
    mirror_both_directions(Shape::Routed);
}

#[test]
fn mirror_macvlan_at_the_pod_end() {
    mirror_both_directions(Shape::Macvlan);
}

/// As discovery_ipvlan: only where the kernel has ipvlan.
#[test]
fn mirror_ipvlan_at_the_pod_end() {
    if testbed::cni::kernel_can_make(Shape::Ipvlan, "mirror_ipvlan_at_the_pod_end") {
        mirror_both_directions(Shape::Ipvlan);
    }
}

#[test]
fn mirror_redirect_peer_at_the_pod_end() {
    mirror_both_directions(Shape::RedirectPeer);
}

fn run_count(ns: &Netns, iface: &str, hook: Hook, id: u32) -> u64 {
    let chain = rawbpf::chain(ns, iface, hook).expect("tcx query");
    chain
        .iter()
        .find(|p| p.id == id)
        .unwrap_or_else(|| panic!("program {id} is not on {iface} {hook:?}: {chain:?}"))
        .run_count
}

/// Asserts the agent's program runs first on the hook, `other` after it.
fn assert_first(ns: &Netns, iface: &str, hook: Hook, ours: &str, other: u32) {
    let chain = rawbpf::chain(ns, iface, hook).expect("tcx query");
    let names: Vec<&str> = chain.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names.first().copied(), Some(ours), "{chain:?}");
    assert_eq!(chain.get(1).map(|p| p.id), Some(other), "{chain:?}");
}

/// A program that passes every packet on sits on each tcx hook of a bridged
/// pod's host end; the agent attaches there explicitly (`auto` would now
/// choose the pod end, as the rule says), runs first, the other programs
/// still run for every packet, and the mirror is complete.
#[test]
fn coexists_with_another_program_on_both_hooks() {
    require_root();
    let node = CniNode::new(Shape::Bridge).expect("topology");
    let pod = &node.pods[0];
    let host = pod.host.clone().expect("veth");
    const HOOKS: [Hook; 2] = [Hook::Ingress, Hook::Egress];
    // One program per hook, so each hook's runs are counted apart.
    let pass = HOOKS.map(|_| TcProgram::pass().expect("load"));
    let _links: Vec<_> = HOOKS
        .iter()
        .zip(&pass)
        .map(|(hook, p)| p.attach(&node.node, &host.name, *hook).expect("attach"))
        .collect();

    let net = discover(&node, 0);
    let auto = net.decide(AttachPoint::Auto).expect("auto");
    let Reason::HostEndBypassed(foreign) = &auto.reason else {
        panic!("auto: {:?}", auto.reason);
    };
    assert_eq!(
        foreign.iter().map(|p| p.id).collect::<Vec<_>>(),
        pass.iter().map(|p| Some(p.id())).collect::<Vec<_>>()
    );
    let at = net.decide(AttachPoint::Host).expect("host end");
    assert_eq!(at.interface, host.name);

    let _stats = Stats::enable().expect("stats");
    let runs = || [0, 1].map(|i| run_count(&node.node, &host.name, HOOKS[i], pass[i].id()));
    let before = runs();
    let dir = tempfile::tempdir().expect("tempdir");
    let oracle_in = tcpdump(&node.node, &host.name, "in", dir.path());
    let oracle_out = tcpdump(&node.node, &host.name, "out", dir.path());
    let agent = agent(&node.node, &host.name, dir.path());
    for (i, ours) in [OUR_INGRESS, OUR_EGRESS].into_iter().enumerate() {
        assert_first(&node.node, &host.name, HOOKS[i], ours, pass[i].id());
    }
    traffic(&node).expect("traffic flows");
    let (_, mirror) = stop(agent, dir.path(), &[&oracle_in, &oracle_out]);
    let after = runs();
    let (oracle_in, oracle_out) = (read(oracle_in), read(oracle_out));

    let (sent, received) = by_pod_direction(End::Host, &mirror);
    assert_same_frames(&oracle_in, &sent);
    assert_same_frames(&oracle_out, &received);
    let ran = [after[0] - before[0], after[1] - before[1]];
    // One run per packet (a GSO packet is one, for tcpdump too).
    assert!(
        ran[0] >= oracle_in.len() as u64 && ran[1] >= oracle_out.len() as u64,
        "the other programs ran {ran:?} times for {} + {} packets",
        oracle_in.len(),
        oracle_out.len()
    );
    // The agent's exit leaves the other programs where they were.
    for (i, hook) in HOOKS.into_iter().enumerate() {
        let chain = rawbpf::chain(&node.node, &host.name, hook).expect("query");
        assert_eq!(
            chain.iter().map(|p| p.id).collect::<Vec<_>>(),
            [pass[i].id()]
        );
    }
    eprintln!(
        "coexistence (pass programs): ingress {} and egress {} packets mirrored; the other \
         programs ran {} and {} times",
        sent.len(),
        received.len(),
        ran[0],
        ran[1]
    );
}

/// The agent at the host end of a pod under the redirect_peer datapath,
/// first on the hook that holds the redirect program: the redirect still
/// runs (traffic flows, its run count grows), the mirror holds everything
/// the pod sent, and none of what it received (delivered past this end).
#[test]
fn coexists_with_the_redirect_program() {
    require_root();
    let node = CniNode::new(Shape::RedirectPeer).expect("topology");
    let pod = &node.pods[0];
    let host = pod.host.clone().expect("veth");
    let (_, redirect) = &node.redirects[0];

    let _stats = Stats::enable().expect("stats");
    let before = run_count(&node.node, &host.name, Hook::Ingress, redirect.id());
    let dir = tempfile::tempdir().expect("tempdir");
    let sent_oracle = tcpdump(&pod.ns, pod.ifname, "out", dir.path());
    let received_oracle = tcpdump(&pod.ns, pod.ifname, "in", dir.path());
    let agent = agent(&node.node, &host.name, dir.path());
    assert_first(
        &node.node,
        &host.name,
        Hook::Ingress,
        OUR_INGRESS,
        redirect.id(),
    );
    traffic(&node).expect("traffic flows through the redirect");
    let (_, mirror) = stop(agent, dir.path(), &[&sent_oracle, &received_oracle]);
    let runs = run_count(&node.node, &host.name, Hook::Ingress, redirect.id()) - before;
    let (sent_oracle, received_oracle) = (read(sent_oracle), read(received_oracle));

    let (sent, received) = by_pod_direction(End::Host, &mirror);
    assert_same_frames(&sent_oracle, &sent);
    assert!(
        received.is_empty() && !received_oracle.is_empty(),
        "the host end saw {} of the {} frames the pod received",
        received.len(),
        received_oracle.len()
    );
    assert!(
        runs >= sent_oracle.len() as u64,
        "the redirect ran {runs} times for {} packets",
        sent_oracle.len()
    );
    let chain = rawbpf::chain(&node.node, &host.name, Hook::Ingress).expect("query");
    assert_eq!(
        chain.iter().map(|p| p.id).collect::<Vec<_>>(),
        [redirect.id()]
    );
    eprintln!(
        "coexistence (redirect_peer): the host end mirrored all {} frames the pod sent and 0 \
         of the {} it received; the redirect ran {runs} times",
        sent.len(),
        received_oracle.len()
    );
}
