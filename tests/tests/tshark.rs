//! tshark, an independent reader, opens the agent's pcapng without errors
//! and reads the same interface names, directions, lengths and times; and
//! `--output pcapng:-` streams into `tshark -r -` like `tcpdump -w -`.

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    time::{SystemTime, UNIX_EPOCH},
};

use testbed::{
    agent::Agent,
    capture::Dir,
    netns::run,
    process::Process,
    scenario::{self, assert_same_frames},
    topology::PodPair,
    traffic,
};

fn tshark(args: &[&str]) -> String {
    let mut cmd = Command::new("tshark");
    cmd.args(args);
    run(&mut cmd).expect("tshark runs (`cargo xtask setup` installs it)")
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

#[test]
fn tshark_reads_the_pcapng_cleanly() {
    let pair = PodPair::new(false).expect("topology");
    let start = now_ns();
    let c = scenario::run(&pair, &["--snaplen", "200"], &["-s", "200"], |p| {
        p.flush_neighbours()?;
        traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 3)?;
        traffic::udp(&p.pod, &p.node, IpAddr::V4(p.node_v4), 5001, &[50, 4000])?;
        traffic::tcp_bulk(&p.pod, &p.node, IpAddr::V4(p.node_v4), 5002, 256 << 10)
    })
    .expect("mirror run");
    let end = now_ns();
    assert_same_frames(&c.oracle, &c.mirror);
    let file = c.mirror_path.to_string_lossy().into_owned();

    let bad = tshark(&[
        "-r",
        &file,
        "-Y",
        "_ws.malformed || _ws.expert.severity >= 0x00800000",
    ]);
    assert!(
        bad.trim().is_empty(),
        "tshark found malformed or error-level packets:\n{bad}"
    );

    let rows = tshark(&[
        "-r",
        &file,
        "-T",
        "fields",
        "-E",
        "separator=,",
        "-e",
        "frame.interface_name",
        "-e",
        "frame.packet_flags_direction",
        "-e",
        "frame.len",
        "-e",
        "frame.cap_len",
        "-e",
        "frame.time_epoch",
    ]);
    let rows: Vec<Vec<&str>> = rows.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows.len(),
        c.mirror.len(),
        "tshark and pcap-file count differently"
    );
    for (row, frame) in rows.iter().zip(&c.mirror) {
        assert_eq!(row[0], pair.host_if, "interface name");
        // tshark prints the pcapng epb_flags direction bits in hex.
        let dir = match frame.dir {
            Some(Dir::In) => "0x00000001",
            Some(Dir::Out) => "0x00000002",
            None => panic!("frame without direction"),
        };
        assert_eq!(row[1], dir, "direction flag");
        assert_eq!(row[2], frame.orig_len.to_string(), "original length");
        assert_eq!(row[3], frame.data.len().to_string(), "captured length");
        // Wall-clock time from the boot-time stamp: within the run.
        let secs: f64 = row[4].parse().expect("epoch seconds");
        let ns = (secs * 1e9) as u128;
        assert!(
            ns + 1_000_000 >= start && ns <= end + 1_000_000,
            "time {secs} outside the run"
        );
    }
}

#[test]
fn stdout_streams_into_tshark() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let mut cmd = pair
        .node
        .command(&testbed::agent::binary().to_string_lossy());
    cmd.args(["attach", "-i", &pair.host_if, "--output", "pcapng:-"])
        .stdout(Stdio::piped());
    let mut agent = Agent::start_command(cmd).expect("agent starts");
    let pipe = agent.process().stdout().expect("agent stdout");
    let mut reader = Command::new("tshark");
    reader
        .args(["-r", "-", "-T", "fields", "-e", "frame.len"])
        .stdin(Stdio::from(pipe))
        .stdout(Stdio::piped());
    let tshark = Process::spawn("tshark", reader).expect("tshark starts");
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 4).expect("ping");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let written = exit.summary().expect("summary")["written"];
    let mut tshark = tshark;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut tshark.stdout().expect("tshark stdout"), &mut out)
        .expect("read tshark");
    let (status, stderr) = tshark
        .wait(std::time::Duration::from_secs(10))
        .expect("tshark ends at the end of the stream");
    assert!(status.success(), "tshark: {stderr}");
    assert!(
        written >= 8,
        "4 pings make at least 8 frames, agent wrote {written}"
    );
    assert_eq!(
        out.lines().count() as u64,
        written,
        "tshark read a different count"
    );
}
