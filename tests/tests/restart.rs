//! Restarts and upgrades with pinned hooks (`attach --pin-dir`): while no
//! agent runs the hooks go on copying into the pinned ring, and the next
//! agent adopts them and sends what they copied. Checked with numbered UDP
//! datagrams, received through the kernel's own VXLAN device and tcpdump.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    thread::{self},
    time::Duration,
};

use aya::programs::links::{FdLink, PinnedLink};
use nix::sys::signal::Signal;
use testbed::{
    agent::{self, Agent, Exit},
    bpffs::BpfFs,
    capture::{self},
    hooks::attached,
    netns::Netns,
    numbered::{EVERY, NumberedStream, sequence_numbers},
    tcpdump::Tcpdump,
    topology::{CollectorLink, PodPair},
};

const VNI: u32 = 77;
const PORT: u16 = 5555;
fn missing(seen: &BTreeMap<u32, u32>, sent: u32) -> Vec<u32> {
    (0..sent).filter(|n| !seen.contains_key(n)).collect()
}

struct Bed {
    pair: PodPair,
    link: CollectorLink,
    bpffs: BpfFs,
    vxlan_dev: String,
}

impl Bed {
    fn new() -> Self {
        testbed::require_root();
        let pair = PodPair::new(false).expect("topology");
        let link = CollectorLink::new(&pair.node).expect("collector link");
        let vxlan_dev = link.kernel_vxlan(VNI).expect("kernel vxlan device");
        let bpffs = BpfFs::mount().expect("a bpf filesystem of our own");
        Self {
            pair,
            link,
            bpffs,
            vxlan_dev,
        }
    }

    fn pin_dir(&self) -> String {
        self.bpffs.path().join("mirror").display().to_string()
    }

    fn output(&self) -> String {
        format!("vxlan://{}?vni={VNI}", self.link.collector_v4)
    }

    fn agent(&self, extra: &[&str]) -> Agent {
        let (pin_dir, output) = (self.pin_dir(), self.output());
        let mut args = vec![
            "attach",
            "-i",
            &self.pair.host_if,
            "--output",
            &output,
            "--pin-dir",
            &pin_dir,
            "--metrics-addr",
            "off",
        ];
        args.extend(extra);
        Agent::start(&self.pair.node, &args).expect("agent starts")
    }

    fn collector(&self, dir: &Path) -> Tcpdump {
        Tcpdump::start(&self.link.ns, &self.vxlan_dev, dir.join("vx.pcap"), &[])
            .expect("tcpdump on the kernel vxlan device")
    }

    fn link_ids(&self) -> Vec<(u32, u32)> {
        ["ingress", "egress"]
            .iter()
            .map(|dir| {
                let path = Path::new(&self.pin_dir()).join("links").join(format!(
                    "{}-{dir}",
                    if_index(&self.pair.node, &self.pair.host_if)
                ));
                let link = FdLink::from(PinnedLink::from_pin(&path).expect("pinned link"));
                let info = link.info().expect("link info");
                (info.id(), info.program_id())
            })
            .collect()
    }
}

fn if_index(ns: &Netns, interface: &str) -> u32 {
    ns.exec(&["cat", &format!("/sys/class/net/{interface}/ifindex")])
        .expect("ifindex")
        .trim()
        .parse()
        .expect("a number")
}

fn pins_line(exit_or_agent_log: &str) -> std::collections::HashMap<String, u64> {
    let line = exit_or_agent_log
        .lines()
        .find(|l| l.contains(" pins"))
        .expect("a pins line in the log");
    agent::fields(line)
}

/// `kill -9` the agent mid-stream, start another on the same pins: the
/// collector gets every sequence number. While no agent ran, the hooks went
/// on copying into the pinned ring; records the killed agent had read but
/// not sent stayed in the ring (they are released only once sent), so the
/// new agent sent those too. Some may arrive twice; none is missing.
#[test]
fn kill_9_and_restart_loses_no_sequence_number() {
    let bed = Bed::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = bed.collector(dir.path());
    let first = bed.agent(&["--cleanup-on-exit=false"]);
    let stream = NumberedStream::start(
        &bed.pair.pod,
        &bed.pair.node,
        SocketAddr::from((bed.pair.node_v4, PORT)),
    )
    .expect("stream");
    // Each phase lasts 500 datagrams (about a second): with the first
    // agent, with none, with the second.
    stream.wait_for(500);
    let killed = first.signal(Signal::SIGKILL).expect("kill -9");
    assert!(!killed.status.success());
    stream.wait_for(500);
    let second = bed.agent(&[]);
    stream.wait_for(500);
    let sent = stream.finish().expect("sender");
    let exit = second.stop().expect("second agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let frames = capture::read(&collector.stop().expect("tcpdump")).expect("read");

    let pins = pins_line(&exit.stderr);
    assert_eq!(
        pins["adopted"], 2,
        "ingress and egress hooks adopted: {pins:?}"
    );
    assert!(
        pins["pending_bytes"] > 0,
        "the ring held what was copied while no agent ran: {pins:?}"
    );
    let seen = sequence_numbers(&frames, PORT);
    let lost = missing(&seen, sent);
    let twice = seen.values().filter(|c| **c > 1).count();
    eprintln!(
        "sent {sent}, received {} distinct, {twice} twice",
        seen.len()
    );
    assert!(
        lost.is_empty(),
        "{} of {sent} lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert_clean(&bed, &exit);
}

/// The second agent exited with cleanup: no hook, no pin is left.
fn assert_clean(bed: &Bed, exit: &Exit) {
    // The kernel lets go of a link once its last pin and fd are gone, a
    // moment later (the detach waits for an RCU grace period).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !attached(&bed.pair.node, &bed.pair.host_if)
        .expect("query")
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "hooks left after cleanup: {}",
            exit.stderr
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !Path::new(&bed.pin_dir()).exists(),
        "pins left after cleanup"
    );
}

/// An agent of another ABI version left the pins (simulated by renaming its
/// map directory to that of version 2): the new agent makes maps of its own
/// ABI and moves each pinned link onto its program with one atomic update,
/// so the link (and the hook) is never removed. What the old ring still held
/// cannot be read across ABIs: it is counted, and it is the whole gap.
#[test]
fn abi_upgrade_replaces_programs_in_place_and_counts_the_gap() {
    let bed = Bed::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let collector = bed.collector(dir.path());
    let first = bed.agent(&["--cleanup-on-exit=false"]);
    let stream = NumberedStream::start(
        &bed.pair.pod,
        &bed.pair.node,
        SocketAddr::from((bed.pair.node_v4, PORT)),
    )
    .expect("stream");
    // Each phase lasts a number of datagrams, as in the test above.
    stream.wait_for(500);
    first.signal(Signal::SIGKILL).expect("kill -9");
    let before = bed.link_ids();
    let pin_dir = Path::new(&bed.pin_dir()).to_owned();
    let current = std::fs::read_dir(&pin_dir)
        .expect("pin dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("abi-"))
        .expect("an abi-N map directory");
    std::fs::rename(pin_dir.join(&current), pin_dir.join("abi-2")).expect("rename");
    stream.wait_for(250);
    let second = bed.agent(&[]);
    let after = bed.link_ids();
    stream.wait_for(500);
    let sent = stream.finish().expect("sender");
    let exit = second.stop().expect("second agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let frames = capture::read(&collector.stop().expect("tcpdump")).expect("read");

    for ((link_before, prog_before), (link_after, prog_after)) in before.iter().zip(&after) {
        assert_eq!(link_before, link_after, "the same link, never detached");
        assert_ne!(prog_before, prog_after, "with the new program in it");
    }
    let pins = pins_line(&exit.stderr);
    assert_eq!(pins["other_abis"], 1, "{pins:?}");
    let seen = sequence_numbers(&frames, PORT);
    let lost = missing(&seen, sent);
    eprintln!(
        "sent {sent}; gap {} datagrams ({:?} at {EVERY:?} each); old ring held {} records",
        lost.len(),
        EVERY * lost.len() as u32,
        pins["abandoned_records"]
    );
    assert!(
        !lost.is_empty(),
        "the old ring's records cannot be read across ABIs"
    );
    assert!(
        lost.len() as u64 <= pins["abandoned_records"],
        "every lost datagram was hooked and left in the old ring: lost {}, {pins:?}",
        lost.len()
    );
    let (first_lost, last_lost) = (lost[0], lost[lost.len() - 1]);
    assert_eq!(
        (last_lost - first_lost + 1) as usize,
        lost.len(),
        "one gap, around the upgrade: {lost:?}"
    );
    assert_clean(&bed, &exit);
}

/// `attach --cleanup-on-exit=false` leaves its hooks mirroring after a
/// clean exit; `uninstall` removes them and the pins.
#[test]
fn uninstall_removes_what_a_kept_agent_left() {
    let bed = Bed::new();
    let kept = bed.agent(&["--cleanup-on-exit=false"]);
    let exit = kept.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let hooks = attached(&bed.pair.node, &bed.pair.host_if).expect("query");
    assert_eq!(hooks.len(), 2, "hooks kept after exit: {hooks:?}");

    let pin_dir = bed.pin_dir();
    let exit =
        agent::run(&bed.pair.node, &["uninstall", "--pin-dir", &pin_dir]).expect("uninstall");
    assert!(exit.status.success(), "{}", exit.stderr);
    assert_eq!(
        agent::fields(
            exit.stderr
                .lines()
                .find(|l| l.contains("uninstalled"))
                .expect("log")
        )["hooks"],
        2
    );
    assert_clean(&bed, &exit);
    // Nothing left to do is not an error.
    let again =
        agent::run(&bed.pair.node, &["uninstall", "--pin-dir", &pin_dir]).expect("uninstall");
    assert!(again.status.success(), "{}", again.stderr);
}

/// One agent per pin directory; bad pin flags are refused up front.
#[test]
fn pin_directory_misuse_is_refused_clearly() {
    let bed = Bed::new();
    let running = bed.agent(&[]);
    let pin_dir = bed.pin_dir();
    let output = bed.output();
    let base = [
        "attach",
        "-i",
        &bed.pair.host_if,
        "--output",
        &output,
        "--metrics-addr",
        "off",
    ];

    let mut args = base.to_vec();
    args.extend(["--pin-dir", &pin_dir]);
    let second = agent::run(&bed.pair.node, &args).expect("runs");
    assert_eq!(second.status.code(), Some(1), "{}", second.stderr);
    assert!(
        second.stderr.contains("another agent is using it"),
        "{}",
        second.stderr
    );

    let not_bpf = std::env::temp_dir().display().to_string();
    let mut args = base.to_vec();
    args.extend(["--pin-dir", &not_bpf]);
    let refused = agent::run(&bed.pair.node, &args).expect("runs");
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("--pin-dir") && refused.stderr.contains("not on a bpf filesystem"),
        "{}",
        refused.stderr
    );

    let mut args = base.to_vec();
    args.push("--cleanup-on-exit=false");
    let refused = agent::run(&bed.pair.node, &args).expect("runs");
    assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("needs --pin-dir"),
        "{}",
        refused.stderr
    );

    let exit = running.stop().expect("stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    assert_clean(&bed, &exit);
}
