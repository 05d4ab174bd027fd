//! `--snaplen`, `--sample` and `--direction`, each checked against tcpdump
//! given the equivalent option (`-s`, `-Q`) on the same interface.

use std::net::{IpAddr, SocketAddr};

use testbed::{
    capture::{self, Dir},
    scenario::{self, assert_same_frames},
    tcpdump::SMALL_FRAMES,
    topology::PodPair,
    traffic,
};

/// Cut frames keep their original length, exactly as `tcpdump -s 100` does.
#[test]
fn snaplen_cuts_bytes_and_keeps_original_lengths() {
    let pair = PodPair::new(false).expect("topology");
    let c = scenario::run(&pair, &["--snaplen", "100"], &["-s", "100"], |p| {
        traffic::udp(
            &p.pod,
            &p.node,
            IpAddr::V4(p.node_v4),
            5001,
            &[10, 58, 59, 500, 4000],
        )?;
        traffic::tcp_bulk(&p.pod, &p.node, IpAddr::V4(p.node_v4), 5002, 1 << 20)
    })
    .expect("mirror run");
    assert_same_frames(&c.oracle, &c.mirror);
    let long = c.mirror.iter().filter(|f| f.orig_len > 100).count();
    assert!(long > 10, "the traffic had too few long packets ({long})");
    for f in &c.mirror {
        assert_eq!(f.data.len() as u32, f.orig_len.min(100));
    }
    let s = c.exit.summary().expect("summary");
    assert_eq!(s["truncated"], long as u64, "truncated counter");
    assert_eq!(s["written"], c.mirror.len() as u64);
}

/// Each frame the mirror keeps is one tcpdump saw going that way, and no
/// frame going the other way is kept.
fn one_direction(agent_dir: &str, tcpdump_q: &str, want: Dir) {
    let pair = PodPair::new(false).expect("topology");
    let c = scenario::run(
        &pair,
        &["--direction", agent_dir],
        &["-Q", tcpdump_q],
        |p| {
            p.flush_neighbours()?;
            traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 3)?;
            traffic::udp(&p.pod, &p.node, IpAddr::V4(p.node_v4), 5001, &[10, 3000])?;
            traffic::udp(&p.node, &p.pod, IpAddr::V4(p.pod_v4), 5002, &[20, 2000])
        },
    )
    .expect("mirror run");
    assert!(c.oracle.len() >= 6, "too little traffic one way");
    assert_same_frames(&c.oracle, &c.mirror);
    assert!(c.mirror.iter().all(|f| f.dir == Some(want)));
}

#[test]
fn direction_ingress_matches_tcpdump_q_in() {
    one_direction("ingress", "in", Dir::In);
}

#[test]
fn direction_egress_matches_tcpdump_q_out() {
    one_direction("egress", "out", Dir::Out);
}

/// 1-in-10 sampling, chosen at random per packet: the mirrored count is
/// Binomial(seen, 0.1). The test allows 5 standard deviations (a false
/// failure about once in 1.7 million runs), and checks that every sampled
/// frame is one tcpdump saw.
#[test]
fn sampling_one_in_ten_within_five_sigma() {
    let pair = PodPair::new(false).expect("topology");
    let sent = 20_000;
    let c = scenario::run(
        &pair,
        &["--sample", "10", "--direction", "ingress"],
        &["-Q", "in", SMALL_FRAMES[0], SMALL_FRAMES[1]],
        |p| {
            let dst = SocketAddr::new(IpAddr::V4(p.node_v4), 9);
            traffic::udp_flood(&p.pod, dst, sent, 64).map(drop)
        },
    )
    .expect("mirror run");
    let s = c.exit.summary().expect("summary");
    let (seen, mirrored) = (s["seen"], s["mirrored"]);
    assert!(seen >= sent as u64, "hook saw {seen} of {sent} packets");
    assert_eq!(
        seen,
        c.oracle.len() as u64,
        "hook and tcpdump saw different counts"
    );
    assert_eq!(s["sampled_out"] + mirrored, seen);
    assert_eq!(c.mirror.len() as u64, mirrored);
    let mean = seen as f64 / 10.0;
    let sigma = (seen as f64 * 0.1 * 0.9).sqrt();
    assert!(
        (mirrored as f64 - mean).abs() <= 5.0 * sigma,
        "mirrored {mirrored} of {seen}: outside {mean:.0} ± {:.0}",
        5.0 * sigma
    );
    eprintln!(
        "sampling 1 in 10: {mirrored} of {seen} mirrored (expected {mean:.0} ± {:.0})",
        5.0 * sigma
    );
    let extra = capture::difference(&c.oracle, &c.mirror).extra;
    assert!(
        extra.is_empty(),
        "{} sampled frames tcpdump never saw",
        extra.len()
    );
}
