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

    std::thread::sleep(Duration::from_millis(300));
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
    std::thread::sleep(Duration::from_millis(300));
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
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    let ping = || traffic::ping(&p1.ns, IpAddr::V4(p2.v4), 3).expect("ping");
    ping();
    std::fs::write(&file, policy(&[&p1.host_if, &p2.host_if])).expect("write");
    hup(&mut agent, "policy reloaded");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while testbed::hooks::attached(&node.node, &p2.host_if)
        .expect("query")
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "never attached");
        std::thread::sleep(Duration::from_millis(10));
    }
    ping();
    std::thread::sleep(Duration::from_millis(300));
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
        let seen: Vec<Frame> = capture::read(&tcpdump.stop().expect("tcpdump"))
            .expect("read")
            .into_iter()
            .filter(|f| f.ts_ns >= started)
            .collect();
        let mut mine: Vec<Frame> = mirror
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
        if p.host_if == p2.host_if {
            // Mirrored from the reload on: tcpdump's frames from then.
            let from = mine.iter().map(|f| f.ts_ns).min().expect("p2 mirrored");
            let seen: Vec<Frame> = seen.into_iter().filter(|f| f.ts_ns >= from).collect();
            assert_same_frames(&seen, &mine);
        } else {
            mine.retain(|f| f.ts_ns >= started);
            assert_same_frames(&seen, &mine);
        }
    }
}
