//! Netlink attach next to a plain `ingress` qdisc (as the CNI bandwidth
//! plugin installs on pod veths): it takes the slot `clsact` needs and has no
//! egress hook, so only an ingress hook can share it.

use std::net::IpAddr;

use testbed::{
    agent,
    capture::Dir,
    hooks,
    scenario::{self, assert_same_frames},
    topology::PodPair,
    traffic,
};

fn pair_with_ingress_qdisc() -> PodPair {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    pair.node
        .exec(&["tc", "qdisc", "add", "dev", &pair.host_if, "ingress"])
        .expect("ingress qdisc");
    pair
}

/// The kind of qdisc in the interface's ingress slot, as `tc` reports it.
fn ingress_slot_kind(pair: &PodPair) -> String {
    let text = pair
        .node
        .exec(&["tc", "qdisc", "show", "dev", &pair.host_if, "ingress"])
        .expect("tc qdisc show");
    text.split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// The ingress hook files its filter on the existing `ingress` qdisc, sees
/// exactly what `tcpdump -Q in` sees, marks it all inbound, and leaves the
/// qdisc as it found it.
#[test]
fn ingress_only_shares_an_ingress_qdisc() {
    let pair = pair_with_ingress_qdisc();
    let c = scenario::run(
        &pair,
        &["--attach-mode", "netlink", "--direction", "ingress"],
        &["-Q", "in"],
        |p| {
            // `tc filter show ... egress` lists the `ingress` qdisc's one
            // block too, so the same filter shows on both sides: what
            // matters is that only the ingress program is there.
            let attached = hooks::attached(&p.node, &p.host_if)?;
            anyhow::ensure!(
                attached
                    .iter()
                    .all(|a| a.starts_with("tc/") && a.contains("mirror_ingress"))
                    && !attached.is_empty(),
                "expected only the netlink ingress hook, got {attached:?}"
            );
            p.flush_neighbours()?;
            traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 3)?;
            traffic::udp(&p.pod, &p.node, IpAddr::V4(p.node_v4), 5001, &[10, 3000])?;
            traffic::udp(&p.node, &p.pod, IpAddr::V4(p.pod_v4), 5002, &[20, 2000])
        },
    )
    .expect("mirror run");
    assert!(
        c.oracle.len() >= 6,
        "too little inbound traffic: {}",
        c.oracle.len()
    );
    assert_same_frames(&c.oracle, &c.mirror);
    assert!(
        c.mirror.iter().all(|f| f.dir == Some(Dir::In)),
        "a frame not marked inbound"
    );
    assert_eq!(
        ingress_slot_kind(&pair),
        "ingress",
        "the qdisc was replaced"
    );
    let left = hooks::attached(&pair.node, &pair.host_if).expect("query hooks");
    assert!(left.is_empty(), "left attached: {left:?}");
}

/// An egress hook cannot go there: a runtime refusal (exit 1) that names the
/// interface and the way out, with nothing left attached.
#[test]
fn egress_next_to_an_ingress_qdisc_is_refused() {
    let pair = pair_with_ingress_qdisc();
    let dir = tempfile::tempdir().expect("tempdir");
    for direction in ["both", "egress"] {
        // A file of its own each time: outputs never overwrite one.
        let out = format!(
            "pcapng:{}",
            dir.path().join(format!("{direction}.pcapng")).display()
        );
        let exit = agent::run(
            &pair.node,
            &[
                "attach",
                "-i",
                &pair.host_if,
                "--attach-mode",
                "netlink",
                "--direction",
                direction,
                "--output",
                &out,
            ],
        )
        .expect("agent runs");
        assert_eq!(
            exit.status.code(),
            Some(1),
            "--direction {direction}\n{}",
            exit.stderr
        );
        for needle in [
            pair.host_if.as_str(),
            "`ingress` qdisc",
            "--direction ingress",
            "tcx",
        ] {
            assert!(
                exit.stderr.contains(needle),
                "--direction {direction}: error does not say {needle}:\n{}",
                exit.stderr
            );
        }
        let left = hooks::attached(&pair.node, &pair.host_if).expect("query hooks");
        assert!(
            left.is_empty(),
            "--direction {direction} left attached: {left:?}"
        );
        assert_eq!(
            ingress_slot_kind(&pair),
            "ingress",
            "the qdisc was replaced"
        );
    }
}
