//! `attach --policy FILE`: ordered rules and a pcap-filter expression keep
//! exactly what tcpdump keeps given the equivalent expression on the same
//! interface; bad files are refused naming the policy, field and reason.

use std::net::{IpAddr, SocketAddr};

use testbed::{
    agent,
    scenario::{self, assert_same_frames},
    tcpdump::SMALL_FRAMES,
    topology::PodPair,
    traffic,
};

fn policy_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, text).expect("write policy");
    path.display().to_string()
}

/// Reject UDP to 5002, accept other UDP and ICMP, then keep only packets
/// over 200 bytes (pcap-filter `greater 200`). tcpdump's equivalent:
/// `((udp and not dst port 5002) or icmp) and greater 200`.
#[test]
fn rules_and_filter_keep_what_tcpdump_keeps() {
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("mirror.pcapng");
    let file = policy_file(
        &dir,
        &format!(
            r#"
policies:
  - name: udp-and-ping
    interfaces: ["{host}"]
    collectors: ["pcapng:{out}"]
    rules:
      - action: Reject
        protocol: UDP
        destinationPorts: [{{from: 5002}}]
      - action: Accept
        protocol: UDP
      - action: Accept
        protocol: ICMP
    filter: "greater 200"
"#,
            host = pair.host_if,
            out = out.display()
        ),
    );
    // scenario::run adds -i/--output for the flags form; a policy run needs
    // neither, so it drives tcpdump and the agent the same way by hand.
    let tcpdump_filter = "((udp and not dst port 5002) or icmp) and greater 200";
    let c = scenario::run_with(
        &pair,
        &["attach", "--policy", &file],
        &out,
        &[tcpdump_filter],
        |p| {
            let node = IpAddr::V4(p.node_v4);
            traffic::ping(&p.pod, node, 2)?;
            p.pod.exec(&[
                "ping",
                "-c",
                "2",
                "-s",
                "500",
                "-i",
                "0.05",
                &p.node_v4.to_string(),
            ])?;
            traffic::udp(&p.pod, &p.node, node, 5001, &[10, 300, 1000])?;
            traffic::udp(&p.pod, &p.node, node, 5002, &[10, 300, 1000])?;
            traffic::tcp_bulk(&p.pod, &p.node, node, 5003, 64 << 10)
        },
    )
    .expect("mirror run");
    // 2 large echo requests and replies, and the 300- and 1000-byte datagrams to 5001.
    assert!(
        c.oracle.len() >= 6,
        "too little traffic kept: {}",
        c.oracle.len()
    );
    assert_same_frames(&c.oracle, &c.mirror);
    let policy = c.exit.fields_of("policy summary").expect("policy summary");
    assert!(policy["rejected_by_rules"] > 0, "{}", c.exit.stderr);
    // TCP matches no Accept rule: the hook's prefilter drops it in the kernel.
    let total = c.exit.summary().expect("summary");
    assert!(
        total["filtered"] > 0,
        "kernel prefilter dropped nothing:\n{}",
        c.exit.stderr
    );
    assert!(policy["rejected_by_filter"] > 0, "{}", c.exit.stderr);
}

/// tcpdump for floods of small frames, one way.
const FLOOD_TCPDUMP: [&str; 4] = ["-Q", "in", SMALL_FRAMES[0], SMALL_FRAMES[1]];

/// A flood of 5000 frames of 106 bytes into a policy limited by `limit`
/// (YAML), which lets `per_sec` such frames a second through. The hook's
/// budget holds one second's worth, so it may keep at most `per_sec` plus
/// `per_sec` for every second the flood lasted as tcpdump timed it (a few
/// milliseconds): a limiter letting 2x through fails. What it kept must be
/// frames tcpdump saw, all the others counted as rate-limited in the kernel.
fn rate_limit_keeps_one_seconds_worth(limit: &str, per_sec: f64) {
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("mirror.pcapng");
    let file = policy_file(
        &dir,
        &format!(
            "policies:\n  - name: limited\n    interfaces: [\"{}\"]\n    collectors: [\"pcapng:{}\"]\n    direction: Ingress\n    rateLimit: {limit}\n",
            pair.host_if,
            out.display()
        ),
    );
    // In a policy file the named interface stands in for the pod's own, so
    // Ingress is what it receives: the flood.
    let c = scenario::run_with(
        &pair,
        &["attach", "--policy", &file],
        &out,
        &FLOOD_TCPDUMP,
        |p| {
            traffic::udp_flood(&p.pod, SocketAddr::new(IpAddr::V4(p.node_v4), 9), 5000, 64)
                .map(drop)
        },
    )
    .expect("mirror run");
    let flood: Vec<_> = c
        .oracle
        .iter()
        .filter(|f| f.udp_dst_port() == Some(9))
        .collect();
    assert_eq!(
        flood.len(),
        5000,
        "tcpdump saw {} of the flood",
        flood.len()
    );
    assert!(flood.iter().all(|f| f.orig_len == 106));
    let first = flood.iter().map(|f| f.ts_ns).min().expect("a flood");
    let last = flood.iter().map(|f| f.ts_ns).max().expect("a flood");
    let secs = (last - first) as f64 / 1e9;
    let s = c.exit.summary().expect("summary");
    let kept = c.mirror.len() as f64;
    // The bucket starts full: the first second's worth passes at once.
    assert!(kept >= per_sec, "fewer than the burst passed: {kept}");
    assert!(
        kept <= per_sec + per_sec * secs + 1.0,
        "{kept} passed for a flood of {secs:.3} s at {per_sec}/s"
    );
    // Every frame kept is one tcpdump saw (cut to its 256 bytes, as the flood is).
    // Both as a wire carries them: the file's copies have their checksums
    // finished, tcpdump's bytes are taken before checksum offload.
    let seen = testbed::wire::finished(&c.oracle);
    let missing = testbed::capture::difference_exact(&c.mirror, &seen).missing;
    assert!(
        missing.is_empty(),
        "kept frames tcpdump never saw: {}",
        missing.len()
    );
    // The budget is the hook's: what it kept is what it mirrored, and
    // everything else tcpdump saw it counted as rate-limited.
    assert_eq!(
        s["mirrored"] + s["lost_rate_limit"],
        c.oracle.len() as u64,
        "{}",
        c.exit.stderr
    );
    assert_eq!(s["mirrored"], c.mirror.len() as u64);
    assert_eq!(s["written"], c.mirror.len() as u64);
    eprintln!("rate limit {limit}: kept {kept} of 5000 over {secs:.3} s");
}

/// 100 packets per second.
#[test]
fn rate_limit_bounds_what_is_sent() {
    rate_limit_keeps_one_seconds_worth("{packetsPerSecond: 100, bytesPerSecond: 0}", 100.0);
}

/// 10600 bytes per second, of the frames' original length: 100 frames of 106.
#[test]
fn byte_rate_limit_bounds_what_is_sent() {
    rate_limit_keeps_one_seconds_worth("{packetsPerSecond: 0, bytesPerSecond: 10600}", 100.0);
}

/// `bytesPerSecond` counts bytes, not packets: 53,000 bytes a second over
/// a flood of 1,000 frames of 1,042 bytes, then 3,000 of 106. The bucket
/// starts with one second's worth, so what passes holds at most 53,000
/// bytes plus 53,000 for every second the floods lasted (as tcpdump timed
/// them) plus one frame, and at least 53,000 less one frame. A limiter
/// counting packets (or one frame size for all) keeps far more of the
/// large frames. Every kept frame is one tcpdump saw, and every other
/// one is counted as rate-limited.
#[test]
fn byte_rate_limit_counts_the_bytes_of_frames_of_mixed_sizes() {
    const RATE: f64 = 53_000.0;
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("mirror.pcapng");
    let file = policy_file(
        &dir,
        &format!(
            "policies:\n  - name: limited\n    interfaces: [\"{}\"]\n    collectors: [\"pcapng:{}\"]\n    direction: Ingress\n    rateLimit: {{packetsPerSecond: 0, bytesPerSecond: {RATE}}}\n",
            pair.host_if,
            out.display()
        ),
    );
    let c = scenario::run_with(
        &pair,
        &["attach", "--policy", &file],
        &out,
        &["-Q", "in", "-s", "2048"],
        |p| {
            let discard = SocketAddr::new(IpAddr::V4(p.node_v4), 9);
            traffic::udp_flood(&p.pod, discard, 1000, 1000)?;
            traffic::udp_flood(&p.pod, discard, 3000, 64).map(drop)
        },
    )
    .expect("mirror run");
    let flood: Vec<_> = c
        .oracle
        .iter()
        .filter(|f| f.udp_dst_port() == Some(9))
        .collect();
    assert_eq!(
        flood.len(),
        4000,
        "tcpdump saw {} of the floods",
        flood.len()
    );
    let first = flood.iter().map(|f| f.ts_ns).min().expect("a flood");
    let last = flood.iter().map(|f| f.ts_ns).max().expect("a flood");
    let secs = (last - first) as f64 / 1e9;
    let kept: f64 = c.mirror.iter().map(|f| f64::from(f.orig_len)).sum();
    let large = c.mirror.iter().filter(|f| f.orig_len == 1042).count();
    assert!(
        kept >= RATE - 1042.0,
        "fewer bytes than the burst passed: {kept}"
    );
    assert!(
        kept <= RATE * (1.0 + secs) + 1042.0,
        "{kept} bytes ({large} large frames) passed for floods of {secs:.3} s at {RATE} B/s"
    );
    let seen = testbed::wire::finished(&c.oracle);
    let missing = testbed::capture::difference_exact(&c.mirror, &seen).missing;
    assert!(
        missing.is_empty(),
        "kept frames tcpdump never saw: {}",
        missing.len()
    );
    let s = c.exit.summary().expect("summary");
    assert_eq!(
        s["mirrored"] + s["lost_rate_limit"],
        c.oracle.len() as u64,
        "{}",
        c.exit.stderr
    );
    assert_eq!(s["mirrored"], c.mirror.len() as u64);
    eprintln!(
        "byte rate limit: kept {kept} bytes in {} frames ({large} of 1042) over {secs:.3} s",
        c.mirror.len()
    );
}

#[test]
fn bad_policy_files_are_refused_naming_the_field() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let h = &pair.host_if;
    let cases = [
        (
            format!(
                "policies:\n  - name: web\n    interfaces: [{h}]\n    collectors: [\"pcapng:/dev/null\"]\n    rules:\n      - action: Accept\n        destinationPorts: [{{from: 9000, to: 8000}}]\n"
            ),
            "policy \"web\": rules[0].destinationPorts[0]",
        ),
        (
            format!(
                "policies:\n  - name: web\n    interfaces: [{h}]\n    collectors: [\"pcapng:/dev/null\"]\n    filter: \"tcp port\"\n"
            ),
            "policy \"web\": filter",
        ),
        (
            format!(
                "policies:\n  - name: web\n    interfaces: [{h}]\n    collectors: [\"vxlan://198.18.1.2\"]\n"
            ),
            "policy \"web\": collectors[0]: missing parameter vni",
        ),
        (
            format!(
                "policies:\n  - name: web\n    interfaces: [{h}]\n    collectors: [\"pcapng:/dev/null\"]\n    snaplen: 300000\n"
            ),
            "snaplen",
        ),
        (
            "policies:\n  - name: web\n    interfaces: [nomatch*]\n    collectors: [\"pcapng:/dev/null\"]\n".to_owned(),
            "no interface",
        ),
    ];
    for (text, needle) in cases {
        let file = policy_file(&dir, &text);
        let exit = agent::run(&pair.node, &["attach", "--policy", &file]).expect("agent runs");
        assert_eq!(exit.status.code(), Some(2), "{text}\n{}", exit.stderr);
        assert!(
            exit.stderr.contains(needle),
            "{needle} not in:\n{}",
            exit.stderr
        );
        let left = testbed::hooks::attached(&pair.node, h).expect("query");
        assert!(left.is_empty(), "{left:?}");
    }
}

/// CIDRs of both families (the hook's LPM tries), a Reject before an
/// Accept, ports and TCP flags, against tcpdump's equivalent expression.
/// tcpdump's `tcp[tcpflags]` reads IPv4 only, so IPv6 SYN is `ip6[53]`.
#[test]
fn cidr_rules_of_both_families_keep_what_tcpdump_keeps() {
    let pair = PodPair::new(true).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("mirror.pcapng");
    let file = policy_file(
        &dir,
        &format!(
            r#"
policies:
  - name: cidrs
    interfaces: ["{host}"]
    collectors: ["pcapng:{out}"]
    rules:
      - action: Reject
        protocol: UDP
        sourceCIDRs: ["fd00:198:18::2/128"]
        destinationPorts: [{{from: 5010}}]
      - action: Accept
        protocol: UDP
        destinationCIDRs: ["198.18.0.0/31", "fd00:198:18::/126"]
      - action: Accept
        protocol: ICMP
        sourceCIDRs: ["198.18.0.2/32"]
      - action: Accept
        tcpFlags: [SYN]
"#,
            host = pair.host_if,
            out = out.display()
        ),
    );
    let expr = "(udp and not (ip6 src fd00:198:18::2 and udp dst port 5010) \
                and (dst net 198.18.0.0/31 or dst net fd00:198:18::/126)) \
                or (icmp and src host 198.18.0.2) \
                or (ip and tcp and tcp[tcpflags] & tcp-syn != 0) \
                or (ip6 and ip6[6] = 6 and ip6[53] & 2 != 0)";
    let c = scenario::run_with(&pair, &["attach", "--policy", &file], &out, &[expr], |p| {
        let (n4, p4) = (IpAddr::V4(p.node_v4), IpAddr::V4(p.pod_v4));
        let n6 = IpAddr::V6(p.node_v6.expect("dual stack"));
        traffic::udp(&p.pod, &p.node, n4, 5001, &[10, 1000])?;
        traffic::udp(&p.node, &p.pod, p4, 5002, &[10, 1000])?;
        traffic::udp(&p.pod, &p.node, n6, 5010, &[10, 1000])?;
        traffic::udp(&p.pod, &p.node, n6, 5011, &[10, 1000])?;
        traffic::ping(&p.pod, n4, 2)?;
        traffic::ping(&p.pod, n6, 2)?;
        traffic::tcp_bulk(&p.pod, &p.node, n4, 5003, 256 << 10)?;
        traffic::tcp_bulk(&p.pod, &p.node, n6, 5004, 256 << 10)
    })
    .expect("mirror run");
    // 2 + 2 datagrams, 2 echo requests, SYN and SYN-ACK of both connections.
    assert!(c.oracle.len() >= 10, "too little kept: {}", c.oracle.len());
    assert_same_frames(&c.oracle, &c.mirror);
    let total = c.exit.summary().expect("summary");
    assert!(
        total["filtered"] > 0,
        "kernel prefilter dropped nothing:\n{}",
        c.exit.stderr
    );
}

/// A policy's own `direction` and `sampling` (not the command line's):
/// `direction: Egress` keeps only what the interface sends (tcpdump `-Q
/// out`), and `sampling: 10` one in ten of those, within 5σ, every kept
/// frame one tcpdump saw leave.
#[test]
fn policy_direction_and_sampling_keep_one_in_ten_of_one_way() {
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("mirror.pcapng");
    let file = policy_file(
        &dir,
        &format!(
            "policies:\n  - name: sampled\n    interfaces: [\"{}\"]\n    collectors: [\"pcapng:{}\"]\n    direction: Egress\n    sampling: 10\n",
            pair.host_if,
            out.display()
        ),
    );
    let c = scenario::run_with(
        &pair,
        &["attach", "--policy", &file],
        &out,
        &["-Q", "out", SMALL_FRAMES[0], SMALL_FRAMES[1]],
        |p| {
            // Both ways: pings from the pod, a flood from the node.
            traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 3)?;
            traffic::udp_flood(
                &p.node,
                SocketAddr::new(IpAddr::V4(p.pod_v4), 9),
                20_000,
                64,
            )
            .map(drop)
        },
    )
    .expect("mirror run");
    let s = c.exit.summary().expect("summary");
    let sent_out = c.oracle.len() as f64;
    assert!(sent_out >= 20_000.0, "tcpdump saw {sent_out} leave");
    let mirrored = c.mirror.len() as f64;
    assert_eq!(s["mirrored"] as f64, mirrored, "{}", c.exit.stderr);
    assert_eq!(
        (s["sampled_out"] + s["mirrored"]) as f64,
        sent_out,
        "sampling did not see exactly the frames that left:\n{}",
        c.exit.stderr
    );
    let mean = sent_out / 10.0;
    let sigma = (sent_out * 0.1 * 0.9).sqrt();
    assert!(
        (mirrored - mean).abs() <= 5.0 * sigma,
        "mirrored {mirrored} of {sent_out}: outside {mean:.0} ± {:.0}",
        5.0 * sigma
    );
    // Nothing that came in: every kept frame is one tcpdump saw leave.
    let extra = testbed::capture::difference(&c.oracle, &c.mirror).extra;
    assert!(extra.is_empty(), "{} kept frames never left", extra.len());
}
