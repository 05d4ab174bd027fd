//! SIGINT and SIGTERM during a long start-up (issue 17): the agent stops
//! promptly, leaves nothing attached and exits 0. Two long starts: hooking
//! hundreds of interfaces (each tcx attach waits for an RCU grace period),
//! and reading a policy file of 200,000 CIDRs. The oracle for "nothing
//! attached" is the kernel, asked with `BPF_PROG_QUERY` on every interface;
//! the signal is sent once the agent's log shows it inside the long step.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TcAttachType};
use nix::sys::signal::Signal;
use testbed::{
    agent::binary,
    hooks,
    netns::{Netns, join},
    process::Process,
};

/// Interfaces to hook: both directions of each take about 30 ms, so the
/// whole start would take about 10 s.
const INTERFACES: usize = 300;
/// How long the agent may take from the signal to its exit.
const PROMPT: Duration = Duration::from_secs(3);

fn agent(ns: &Netns, args: &[&str]) -> Process {
    let mut cmd = ns.command(&binary().to_string_lossy());
    cmd.args(args).stdout(std::process::Stdio::null());
    Process::spawn("mirror-agent", cmd).expect("the agent runs")
}

/// `INTERFACES` veth pairs inside `ns` (one `ip -batch`), and the names
/// of the ends to hook: `va0`, `va1`... (their peers are `vb0`...).
fn veths(ns: &Netns, dir: &Path) -> Vec<String> {
    let names: Vec<String> = (0..INTERFACES).map(|i| format!("va{i}")).collect();
    let mut batch = String::new();
    for (i, n) in names.iter().enumerate() {
        writeln!(
            batch,
            "link add {n} type veth peer name vb{i}\nlink set {n} up"
        )
        .expect("fmt");
    }
    let file = dir.join("links.batch");
    std::fs::write(&file, batch).expect("batch file");
    ns.ip(&["-batch", &file.display().to_string()])
        .expect("veth pairs");
    names
}

/// The interfaces that have a tcx program on either hook, asked of the
/// kernel from inside the namespace.
fn hooked(ns: &Netns, names: &[String]) -> Vec<String> {
    let names = names.to_vec();
    join(ns.spawn(move || {
        let mut hooked = Vec::new();
        for n in names {
            for kind in [TcAttachType::Ingress, TcAttachType::Egress] {
                let (_, progs) = SchedClassifier::query_tcx(&n, kind)?;
                if !progs.is_empty() {
                    hooked.push(format!("{n} {kind:?}"));
                }
            }
        }
        Ok(hooked)
    }))
    .expect("BPF_PROG_QUERY")
}

/// Each signal in turn, sent once the first interfaces are hooked: the
/// agent lets go of them and exits 0 within `PROMPT`, long before it would
/// have hooked them all, and the kernel shows no hook on any interface.
#[test]
fn a_stop_signal_while_hooking_interfaces_detaches_and_exits_promptly() {
    testbed::require_root();
    let ns = Netns::new("mtsig").expect("namespace");
    let dir = tempfile::tempdir().expect("tempdir");
    let names = veths(&ns, dir.path());
    for (round, signal) in [Signal::SIGTERM, Signal::SIGINT].into_iter().enumerate() {
        let policy = dir.path().join(format!("many-{round}.yaml"));
        let out = dir.path().join(format!("out-{round}.pcapng"));
        std::fs::write(
            &policy,
            format!(
                "policies:\n  - name: many\n    interfaces: [\"va*\"]\n    collectors: [\"pcapng:{}\"]\n",
                out.display()
            ),
        )
        .expect("policy");
        let mut agent = agent(
            &ns,
            &[
                "attach",
                "--policy",
                &policy.display().to_string(),
                "--attach-mode",
                "tcx",
                "--metrics-addr",
                "off",
            ],
        );
        agent
            .wait_for_line("attached", Duration::from_secs(30))
            .expect("the agent starts hooking");
        let sent = Instant::now();
        let (status, stderr) = agent
            .stop(signal, Duration::from_secs(30))
            .expect("the agent exits");
        let took = sent.elapsed();
        let attached = stderr.lines().filter(|l| l.contains(" attached ")).count();
        assert!(status.success(), "{signal}: exit {status}:\n{stderr}");
        assert!(
            stderr.contains("start-up interrupted") && !stderr.contains("mirroring started"),
            "{signal}: the start-up was not interrupted:\n{stderr}"
        );
        assert!(
            attached < INTERFACES / 2,
            "{signal}: {attached} of {INTERFACES} hooked before the agent stopped"
        );
        assert!(
            took < PROMPT,
            "{signal}: {took:?} from the signal to the exit"
        );
        let left = hooked(&ns, &names);
        assert!(left.is_empty(), "{signal}: hooks left behind: {left:?}");
        // No netlink filter either (tc's own view), on the first few.
        for n in &names[..4] {
            let on = hooks::attached(&ns, n).expect("tc");
            assert!(on.is_empty(), "{signal}: {n}: {on:?}");
        }
        eprintln!(
            "{signal} while hooking: exit 0 after {took:?}; {attached} of {INTERFACES} \
             interfaces had been hooked; none left hooked"
        );
    }
}

/// A policy file of 200,000 CIDRs (under the 4 MiB cap) takes the agent
/// seconds to read and compile before it refuses it (the kernel's tables
/// hold 16,384). Run once to its refusal to know how long that is; then
/// SIGTERM, sent once the agent says it is reading the file, ends it at
/// once with exit 0.
#[test]
fn a_stop_signal_while_a_huge_policy_file_is_read_exits_at_once() {
    testbed::require_root();
    let ns = Netns::new("mtsigp").expect("namespace");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cidrs = String::new();
    for i in 0..200_000u32 {
        let a = std::net::Ipv4Addr::from(0x0A00_0000 | (i << 4));
        write!(cidrs, "\"{a}/28\",").expect("fmt");
    }
    let policy = dir.path().join("huge.yaml");
    std::fs::write(
        &policy,
        format!(
            "policies:\n  - name: huge\n    interfaces: [lo]\n    collectors: [\"pcapng:{}\"]\n    \
             rules:\n      - action: Accept\n        sourceCIDRs: [{cidrs}]\n",
            dir.path().join("out.pcapng").display()
        ),
    )
    .expect("policy");
    let args = [
        "attach",
        "--policy",
        &policy.display().to_string(),
        "--metrics-addr",
        "off",
    ];

    let started = Instant::now();
    let (status, stderr) = agent(&ns, &args)
        .wait(Duration::from_secs(120))
        .expect("the agent ends");
    let full = started.elapsed();
    assert_eq!(status.code(), Some(2), "refused:\n{stderr}");
    assert!(stderr.contains("16384"), "{stderr}");

    let mut run = agent(&ns, &args);
    run.wait_for_line("reading the policy file", Duration::from_secs(30))
        .expect("the agent reads the file");
    let sent = Instant::now();
    let (status, stderr) = run
        .stop(Signal::SIGTERM, Duration::from_secs(120))
        .expect("the agent exits");
    let took = sent.elapsed();
    assert!(status.success(), "exit {status}:\n{stderr}");
    assert!(
        stderr.contains("stopped by a signal during start-up"),
        "{stderr}"
    );
    assert!(
        took < full / 2 && took < PROMPT,
        "{took:?} from SIGTERM to the exit; reading the file to its refusal took {full:?}"
    );
    eprintln!(
        "SIGTERM while reading 200,000 CIDRs: exit 0 after {took:?} (reading it to its refusal: {full:?})"
    );
}
