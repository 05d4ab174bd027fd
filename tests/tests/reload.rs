//! SIGHUP reloads the policy file in place: the new snaplen, rules and
//! collectors apply to what follows, the hooks stay on (no packet goes
//! unmirrored across the reload), and a bad new file changes nothing.

use std::{net::IpAddr, path::Path, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use testbed::{
    agent::Agent,
    capture::{self, Frame},
    scenario::assert_same_frames,
    tcpdump::Tcpdump,
    topology::{BridgedNode, PodPair},
    traffic,
    tshark::Tshark,
};

const SIZE: usize = 600;

fn policy(host_if: &str, out: &Path, snaplen: u32, port: u16) -> String {
    format!(
        "policies:\n  - name: reloaded\n    interfaces: [\"{host_if}\"]\n    collectors: [\"pcapng:{}\"]\n    \
         snaplen: {snaplen}\n    rules:\n      - action: Accept\n        protocol: UDP\n        \
         destinationPorts: [{{from: {port}}}]\n",
        out.display()
    )
}

fn with_port(frames: &[Frame], port: u16) -> Vec<&Frame> {
    frames
        .iter()
        .filter(|f| f.udp_dst_port() == Some(port))
        .collect()
}

fn hup(agent: &mut Agent, expect: &str) -> String {
    let pid = agent.process().pid().expect("running");
    nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGHUP).expect("SIGHUP");
    agent
        .process()
        .wait_for_line(expect, Duration::from_secs(10))
        .expect("the reload is logged")
}

#[test]
fn sighup_applies_a_new_policy_and_refuses_a_bad_one() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second) = (
        dir.path().join("first.pcapng"),
        dir.path().join("second.pcapng"),
    );
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy(&pair.host_if, &first, 100, 7001)).expect("write");
    let tcpdump = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("veth.pcap"), &[])
        .expect("tcpdump");
    let file_arg = file.display().to_string();
    let mut agent = Agent::start(
        &pair.node,
        &["attach", "--policy", &file_arg, "--metrics-addr", "off"],
    )
    .expect("agent starts");
    let send = |port| {
        traffic::udp(
            &pair.pod,
            &pair.node,
            IpAddr::V4(pair.node_v4),
            port,
            &[SIZE; 10],
        )
        .expect("udp")
    };
    send(7001);
    send(7002);

    // A new snaplen, rule and collector.
    std::fs::write(&file, policy(&pair.host_if, &second, 200, 7002)).expect("write");
    hup(&mut agent, "policy reloaded");
    send(7001);
    send(7002);

    // A bad file: refused, naming the field; the policy in force stays.
    std::fs::write(
        &file,
        policy(&pair.host_if, &second, 200, 7002).replace("snaplen: 200", "snaplen: 300000"),
    )
    .expect("write");
    let refused = hup(&mut agent, "keeping the current policy");
    assert!(refused.contains("snaplen"), "{refused}");
    send(7002);

    tcpdump.settle().expect("the traffic is past the hook");
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let veth = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    let first = capture::read(&first).expect("first capture");
    let second = capture::read(&second).expect("second capture");

    // tcpdump saw each batch of 10 whole; the mirror kept what each policy asked.
    assert_eq!(with_port(&veth, 7001).len(), 20);
    assert_eq!(with_port(&veth, 7002).len(), 30);
    let before = with_port(&first, 7001);
    assert_eq!(
        before.len(),
        10,
        "the first policy's port, before the reload"
    );
    assert!(
        with_port(&first, 7002).is_empty(),
        "the first policy rejected 7002"
    );
    assert!(
        before
            .iter()
            .all(|f| f.data.len() == 100 && f.orig_len as usize == SIZE + 42)
    );
    let after = with_port(&second, 7002);
    assert_eq!(
        after.len(),
        20,
        "the new policy's port, after the reload and after the refused one"
    );
    assert!(
        with_port(&second, 7001).is_empty(),
        "the new policy rejects 7001"
    );
    assert!(
        after
            .iter()
            .all(|f| f.data.len() == 200 && f.orig_len as usize == SIZE + 42)
    );
}

/// A SIGHUP to a valid file whose output cannot be opened (its directory
/// does not exist): refused, the log naming the output, and the policy in
/// force goes on whole (same file, same snaplen) for what follows.
#[test]
fn sighup_with_an_output_that_cannot_be_opened_keeps_the_policy() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first.pcapng");
    let unopenable = dir.path().join("no/such/dir/second.pcapng");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy(&pair.host_if, &first, 100, 7001)).expect("write");
    let tcpdump = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("veth.pcap"), &[])
        .expect("tcpdump");
    let file_arg = file.display().to_string();
    let mut agent = Agent::start(
        &pair.node,
        &["attach", "--policy", &file_arg, "--metrics-addr", "off"],
    )
    .expect("agent starts");
    let send = || {
        traffic::udp(
            &pair.pod,
            &pair.node,
            IpAddr::V4(pair.node_v4),
            7001,
            &[SIZE; 10],
        )
        .expect("udp")
    };
    send();
    std::fs::write(&file, policy(&pair.host_if, &unopenable, 200, 7001)).expect("write");
    let refused = hup(&mut agent, "SIGHUP:");
    assert!(
        refused.contains("no/such/dir") && refused.contains("keeping"),
        "the refusal does not name the output: {refused}"
    );
    send();
    tcpdump.settle().expect("the traffic is past the hook");
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let veth = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    let kept = capture::read(&first).expect("first capture");
    assert_eq!(with_port(&veth, 7001).len(), 20);
    let kept = with_port(&kept, 7001);
    assert_eq!(kept.len(), 20, "the policy in force stopped writing");
    assert!(
        kept.iter().all(|f| f.data.len() == 100),
        "the refused policy's snaplen applied"
    );
    assert!(!unopenable.exists());
}

/// A SIGHUP that adds an interface to a policy writing a pcapng file: the
/// file keeps its one section, with an interface block for the new veth
/// before its first packet. tshark reads every frame in section 1, on the
/// right interface, and each veth's frames are those tcpdump saw there.
#[test]
fn sighup_adding_an_interface_keeps_the_file_section() {
    testbed::require_root();
    let node = BridgedNode::new(2).expect("topology");
    let (p1, p2) = (&node.pods[0], &node.pods[1]);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("mirror.pcapng");
    let file = dir.path().join("policy.yaml");
    let policy = |interfaces: &[&str]| {
        format!(
            "policies:\n  - name: grows\n    interfaces: [{}]\n    collectors: [\"pcapng:{}\"]\n",
            interfaces
                .iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(", "),
            out.display()
        )
    };
    std::fs::write(&file, policy(&[&p1.host_if])).expect("write");
    let file_arg = file.display().to_string();
    let mut agent = Agent::start(
        &node.node,
        &["attach", "--policy", &file_arg, "--metrics-addr", "off"],
    )
    .expect("agent starts");
    let oracles: Vec<Tcpdump> = [p1, p2]
        .iter()
        .map(|p| {
            let pcap = dir.path().join(format!("{}.pcap", p.host_if));
            Tcpdump::start(&node.node, &p.host_if, pcap, &[]).expect("tcpdump")
        })
        .collect();
    // Datagrams to a port of each phase, so frames are told apart by
    // content, not by anyone's clock: before the reload only p1 is hooked.
    const BEFORE: u16 = 7401;
    const AFTER: u16 = 7402;
    let send = |port| {
        traffic::udp(&p1.ns, &p2.ns, IpAddr::V4(p2.v4), port, &[100, 200, 300]).expect("udp");
    };
    send(BEFORE);
    std::fs::write(&file, policy(&[&p1.host_if, &p2.host_if])).expect("write");
    hup(&mut agent, "policy reloaded");
    // Both hooks, so both directions are mirrored from the first frame on.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !["ingress", "egress"].iter().all(|dir| {
        testbed::hooks::attached(&node.node, &p2.host_if)
            .expect("query")
            .iter()
            .any(|h| h.contains(dir))
    }) {
        assert!(std::time::Instant::now() < deadline, "never attached");
        std::thread::sleep(Duration::from_millis(10));
    }
    send(AFTER);
    for t in &oracles {
        t.settle().expect("the traffic is past the hooks");
    }
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);

    let rows = Tshark::new(&out)
        .fields(&["frame.section_number", "frame.interface_name"])
        .expect("tshark reads the file");
    assert!(!rows.is_empty());
    assert!(
        rows.iter().all(|r| r["frame.section_number"] == ["1"]),
        "one section: {rows:?}"
    );
    let mirror = capture::read(&out).expect("mirror");
    for (p, tcpdump) in [p1, p2].iter().zip(oracles) {
        let seen = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
        let mine: Vec<Frame> = mirror
            .iter()
            .filter(|f| f.interface.as_deref() == Some(p.host_if.as_str()))
            .cloned()
            .collect();
        let on_tshark = rows
            .iter()
            .filter(|r| r["frame.interface_name"] == [p.host_if.clone()])
            .count();
        assert_eq!(
            on_tshark,
            mine.len(),
            "tshark and the pcapng agree on {}",
            p.host_if
        );
        // p2 is mirrored from the reload on: the second phase only. (An
        // ARP from before tcpdump listened may be in the mirror only.)
        let ports: &[u16] = if p.host_if == p2.host_if {
            &[AFTER]
        } else {
            &[BEFORE, AFTER]
        };
        let ours = |f: &&Frame| f.udp_dst_port().is_some_and(|d| ports.contains(&d));
        let seen: Vec<Frame> = seen.iter().filter(ours).cloned().collect();
        assert_eq!(seen.len(), 3 * ports.len(), "tcpdump on {}", p.host_if);
        let mine: Vec<Frame> = mine.iter().filter(ours).cloned().collect();
        assert_same_frames(&seen, &mine);
    }
    // Nothing of the first phase on p2: hooked only by the reload.
    assert!(
        mirror
            .iter()
            .all(|f| f.interface.as_deref() != Some(p2.host_if.as_str())
                || f.udp_dst_port() != Some(BEFORE))
    );
}

/// `n` distinct /24 source CIDRs in 10.0.0.0/8 from the `first`-th on,
/// none of them the pod's, as a YAML flow list's items.
fn cidrs(first: u32, n: u32) -> String {
    (first..first + n)
        .map(|i| {
            format!(
                "\"{}/24\"",
                std::net::Ipv4Addr::from(0x0A00_0000 | (i << 8))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn cidr_policy(name: &str, interface: &str, out: &Path, sources: &str) -> String {
    format!(
        "  - name: {name}\n    interfaces: [\"{interface}\"]\n    collectors: [\"pcapng:{}\"]\n    \
         rules:\n      - action: Accept\n        sourceCIDRs: [{sources}]\n",
        out.display()
    )
}

/// Near the kernel's prefix tables' capacity (16,384 each): policies of
/// 10,000 and 6,000 source CIDRs are replaced on SIGHUP by one of 12,000
/// other CIDRs and the pod's address. The reload applies only if the
/// dropped policy gives its room back and the replaced prefixes make way
/// for the new (inserting the new beside the old would need 28,001
/// entries). Then the pod's datagrams, which no rule matched before, are
/// mirrored: as many as tcpdump saw.
#[test]
fn a_reload_near_the_prefix_tables_capacity_makes_room() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    // The second policy's interface.
    pair.node
        .ip(&[
            "link", "add", "mtxa", "type", "veth", "peer", "name", "mtxb",
        ])
        .expect("veth");
    let dir = tempfile::tempdir().expect("tempdir");
    let (before, other, after) = (
        dir.path().join("before.pcapng"),
        dir.path().join("other.pcapng"),
        dir.path().join("after.pcapng"),
    );
    let file = dir.path().join("policy.yaml");
    std::fs::write(
        &file,
        format!(
            "policies:\n{}{}",
            cidr_policy("a", &pair.host_if, &before, &cidrs(0, 10_000)),
            cidr_policy("b", "mtxa", &other, &cidrs(10_000, 6_000))
        ),
    )
    .expect("write");
    let tcpdump = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("veth.pcap"), &[])
        .expect("tcpdump");
    let file_arg = file.display().to_string();
    let mut agent = Agent::start(
        &pair.node,
        &["attach", "--policy", &file_arg, "--metrics-addr", "off"],
    )
    .expect("agent starts");
    let send = |port| {
        traffic::udp(
            &pair.pod,
            &pair.node,
            IpAddr::V4(pair.node_v4),
            port,
            &[SIZE; 10],
        )
        .expect("udp")
    };
    send(7101);

    let sources = format!("{}, \"{}\"", cidrs(16_000, 12_000), pair.pod_v4);
    std::fs::write(
        &file,
        format!(
            "policies:\n{}",
            cidr_policy("a", &pair.host_if, &after, &sources)
        ),
    )
    .expect("write");
    hup(&mut agent, "policy reloaded");
    send(7102);
    tcpdump.settle().expect("the datagrams are past the hook");
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    assert!(
        !exit.stderr.contains("applying the new policy failed"),
        "{}",
        exit.stderr
    );
    let veth = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    assert_eq!(with_port(&veth, 7101).len(), 10);
    assert_eq!(with_port(&veth, 7102).len(), 10);
    let before = capture::read(&before).expect("the first capture");
    assert!(
        with_port(&before, 7101).is_empty(),
        "no rule matched the pod before the reload"
    );
    let after = capture::read(&after).expect("the second capture");
    assert_eq!(
        with_port(&after, 7102).len(),
        10,
        "the new rules mirror the pod"
    );
}

/// A SIGHUP that changes only a policy's snaplen, its pcapng file kept: the
/// file gets a second section (header and interface blocks) whose
/// interface says the new snaplen, and the frames after the reload are in
/// it, cut to that snaplen. capinfos lists each section's interface with
/// its capture length, and tshark places each frame in its section and on
/// its interface.
#[test]
fn sighup_with_a_new_snaplen_starts_a_new_section_in_the_same_file() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("mirror.pcapng");
    let file = dir.path().join("policy.yaml");
    std::fs::write(&file, policy(&pair.host_if, &out, 100, 7001)).expect("write");
    let file_arg = file.display().to_string();
    let mut agent = Agent::start(
        &pair.node,
        &["attach", "--policy", &file_arg, "--metrics-addr", "off"],
    )
    .expect("agent starts");
    let send = |n| {
        traffic::udp(
            &pair.pod,
            &pair.node,
            IpAddr::V4(pair.node_v4),
            7001,
            &vec![SIZE; n],
        )
        .expect("udp")
    };
    send(10);
    std::fs::write(&file, policy(&pair.host_if, &out, 200, 7001)).expect("write");
    hup(&mut agent, "policy reloaded");
    // Each datagram arrived, so each passed the hook; the agent drains
    // its ring before it exits.
    send(7);
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);

    // capinfos: per section, "Interface #N info:" blocks (numbered across
    // the file), each with "Capture length = N".
    let report = testbed::netns::run(std::process::Command::new("capinfos").arg("-I").arg(&out))
        .expect("capinfos reads the file");
    let mut snaplens = std::collections::BTreeMap::new();
    let mut interface = None;
    for line in report.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("Interface #") {
            interface = n.split_whitespace().next().map(str::to_owned);
        } else if let Some(n) = line.strip_prefix("Capture length = ") {
            let at = interface.clone().expect("a length inside an interface");
            snaplens.insert(at, n.trim().to_owned());
        }
    }
    let sections = report.lines().filter(|l| l.starts_with("Section ")).count();
    assert_eq!(sections, 2, "{report}");
    assert_eq!(
        snaplens.into_iter().collect::<Vec<_>>(),
        [("0".into(), "100".into()), ("1".into(), "200".into())],
        "the interfaces' snaplens:\n{report}"
    );
    let rows = Tshark::new(&out)
        .fields(&[
            "frame.section_number",
            "frame.interface_id",
            "frame.cap_len",
            "frame.len",
        ])
        .expect("tshark reads the file");
    let of = |section: &str| -> Vec<&testbed::tshark::Row> {
        rows.iter()
            .filter(|r| r["frame.section_number"] == [section])
            .collect()
    };
    let (first, second) = (of("1"), of("2"));
    assert_eq!(first.len() + second.len(), rows.len(), "{rows:?}");
    assert_eq!(first.len(), 10, "before the reload: {first:?}");
    assert_eq!(second.len(), 7, "after the reload: {second:?}");
    let whole = [(SIZE + 42).to_string()];
    // tshark numbers interfaces within their section.
    for (frames, cap_len) in [(&first, "100"), (&second, "200")] {
        for r in frames {
            assert_eq!(r["frame.interface_id"], ["0"], "{r:?}");
            assert_eq!(r["frame.cap_len"], [cap_len], "{r:?}");
            assert_eq!(r["frame.len"], whole, "{r:?}");
        }
    }
}
