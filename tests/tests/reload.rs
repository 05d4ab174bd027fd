//! SIGHUP reloads the policy file in place: the new snaplen, rules and
//! collectors apply to what follows, the hooks stay on (no packet goes
//! unmirrored across the reload), and a bad new file changes nothing.

use std::{net::IpAddr, path::Path, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use testbed::{
    agent::Agent,
    capture::{self, Frame},
    tcpdump::Tcpdump,
    topology::PodPair,
    traffic,
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
