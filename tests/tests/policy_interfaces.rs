//! `interfaces` of a policy file: a glob picks every link whose name
//! matches and only those (each mirrored exactly as tcpdump saw it), and
//! an interface two policies want is refused before anything is attached.

use std::net::IpAddr;

use testbed::{agent, scenario::assert_same_frames, traffic};

fn policy_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, text).expect("write policy");
    path.display().to_string()
}

/// A glob in `interfaces` picks the links whose names match, and only
/// them: `PREFIX*` over three pods' host veths (not the bridge they hang
/// on). Each veth's copies are exactly the frames tcpdump saw on it.
#[test]
fn an_interface_glob_mirrors_every_matching_link_and_only_them() {
    testbed::require_root();
    let node = testbed::topology::BridgedNode::new(3).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("mirror.pcapng");
    let names: Vec<&str> = node.pods.iter().map(|p| p.host_if.as_str()).collect();
    // The veths' names share their test's prefix; the bridge's differs.
    let byte = |n: &str, i: usize| n.as_bytes().get(i).copied();
    let common = (0..names[0].len())
        .find(|&i| names.iter().any(|n| byte(n, i) != byte(names[0], i)))
        .unwrap_or(names[0].len());
    let glob = format!("{}*", &names[0][..common]);
    assert!(
        !node.bridge.starts_with(&names[0][..common]),
        "{glob} would match the bridge {}",
        node.bridge
    );
    let file = policy_file(
        &dir,
        &format!(
            "policies:\n  - name: pods\n    interfaces: [\"{glob}\"]\n    collectors: [\"pcapng:{}\"]\n",
            out.display()
        ),
    );
    let oracles: Vec<testbed::tcpdump::Tcpdump> = names
        .iter()
        .map(|n| {
            let pcap = dir.path().join(format!("{n}.pcap"));
            testbed::tcpdump::Tcpdump::start(&node.node, n, pcap, &[]).expect("tcpdump")
        })
        .collect();
    let bridge_pcap = dir.path().join("bridge.pcap");
    let bridge = testbed::tcpdump::Tcpdump::start(&node.node, &node.bridge, bridge_pcap, &[])
        .expect("tcpdump on the bridge");
    let agent = agent::Agent::start(
        &node.node,
        &["attach", "--policy", &file, "--metrics-addr", "off"],
    )
    .expect("agent starts");
    for (i, p) in node.pods.iter().enumerate() {
        let next = &node.pods[(i + 1) % node.pods.len()];
        traffic::ping(&p.ns, IpAddr::V4(next.v4), 2).expect("ping between pods");
    }
    // The bridge's own address: traffic the bridge device itself carries.
    traffic::ping(&node.pods[0].ns, "198.18.0.1".parse().expect("ip"), 2).expect("ping");
    // Each ping had its answer: every frame passed the hooks, and the
    // agent drains its ring before it exits.
    let exit = agent.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let mirror = testbed::capture::read(&out).expect("mirror");
    let on_bridge = testbed::capture::read(&bridge.stop().expect("tcpdump")).expect("read");
    assert!(
        on_bridge.len() >= 4,
        "the bridge carried {}",
        on_bridge.len()
    );
    // The kernel's own IGMP reports, sent at random after a link comes up
    // (maybe before the agent started), are left out on both sides.
    let ours = |f: &&testbed::capture::Frame| !(f.data[12..14] == [8, 0] && f.data[23] == 2);
    for (name, tcpdump) in names.iter().zip(oracles) {
        let seen: Vec<_> = testbed::capture::read(&tcpdump.stop().expect("tcpdump"))
            .expect("read")
            .iter()
            .filter(ours)
            .cloned()
            .collect();
        let mine: Vec<_> = mirror
            .iter()
            .filter(|f| f.interface.as_deref() == Some(*name))
            .filter(ours)
            .cloned()
            .collect();
        assert!(seen.len() >= 8, "{name}: tcpdump saw {}", seen.len());
        assert_same_frames(&seen, &mine);
    }
    let elsewhere: Vec<_> = mirror
        .iter()
        .filter_map(|f| f.interface.as_deref())
        .filter(|i| !names.contains(i))
        .collect();
    assert!(elsewhere.is_empty(), "mirrored off the glob: {elsewhere:?}");
}

/// One interface wanted by two policies (a glob and a name) is refused
/// before anything is attached: exit code 2, the message naming both
/// policies, the field and the interface, and no hook on any veth (not
/// even on the one only the glob wants).
#[test]
fn an_interface_two_policies_want_is_refused_naming_both() {
    testbed::require_root();
    let node = testbed::topology::BridgedNode::new(2).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (&node.pods[0].host_if, &node.pods[1].host_if);
    let prefix = &a[..a.len() - 1];
    let file = policy_file(
        &dir,
        &format!(
            "policies:\n  - name: globbed\n    interfaces: [\"{prefix}*\"]\n    collectors: [\"pcapng:/dev/null\"]\n  - name: named\n    interfaces: [\"{a}\"]\n    collectors: [\"pcapng:/dev/null\"]\n"
        ),
    );
    let exit = agent::run(&node.node, &["attach", "--policy", &file]).expect("agent runs");
    assert_eq!(exit.status.code(), Some(2), "{}", exit.stderr);
    let says = format!(
        "policy \"named\": interfaces: interface \"{a}\" also matches policy \"globbed\"; an \
         interface has one policy"
    );
    assert!(
        exit.stderr.contains(&says),
        "{says}\nnot in:\n{}",
        exit.stderr
    );
    assert!(!exit.stderr.contains("attached"), "{}", exit.stderr);
    for i in [a, b] {
        let left = testbed::hooks::attached(&node.node, i).expect("query");
        assert!(left.is_empty(), "{i}: {left:?}");
    }
}
