//! The mirror holds exactly the frames tcpdump sees on the same interface:
//! same bytes, same original lengths, nothing missing or extra, with the
//! direction of each frame right.

use std::net::IpAddr;

use anyhow::Result;
use testbed::{
    capture::{Dir, Frame},
    scenario::{self, Captures, assert_same_frames},
    topology::PodPair,
    traffic,
};

fn mac(ns: &testbed::netns::Netns, iface: &str) -> Vec<u8> {
    let text = ns.ip(&["link", "show", iface]).expect("ip link show");
    let hex = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("interface has a MAC");
    hex.split(':')
        .map(|b| u8::from_str_radix(b, 16).expect("hex"))
        .collect()
}

/// Frames the pod sent arrive on the host veth's ingress; frames to the pod
/// leave by its egress. The source MAC, read from the kernel, tells which.
fn check_directions(pair: &PodPair, frames: &[Frame]) {
    let pod_mac = mac(&pair.pod, &pair.pod_if);
    let host_mac = mac(&pair.node, &pair.host_if);
    for f in frames {
        let src = &f.data[6..12];
        let want = if src == pod_mac.as_slice() {
            Dir::In
        } else {
            assert_eq!(src, host_mac.as_slice(), "frame from an unknown MAC");
            Dir::Out
        };
        assert_eq!(f.dir, Some(want), "wrong direction flag on a frame");
        assert_eq!(f.interface.as_deref(), Some(pair.host_if.as_str()));
    }
}

/// Every packet the hook saw was mirrored and written; none lost.
fn check_counters(c: &Captures) {
    let s = c.exit.summary().expect("summary");
    let n = c.mirror.len() as u64;
    assert_eq!(
        s["seen"], n,
        "seen counter vs frames written\n{}",
        c.exit.stderr
    );
    assert_eq!(s["mirrored"], n);
    assert_eq!(s["written"], n);
    assert_eq!(s["lost"], 0);
}

fn compare(
    pair: &PodPair,
    agent_args: &[&str],
    traffic: impl FnOnce(&PodPair) -> Result<()>,
) -> Captures {
    let c = scenario::run(pair, agent_args, &[], traffic).expect("mirror run");
    assert!(
        !c.oracle.is_empty(),
        "tcpdump saw nothing: the test sent no traffic"
    );
    assert_same_frames(&c.oracle, &c.mirror);
    check_directions(pair, &c.mirror);
    check_counters(&c);
    c
}

fn count(frames: &[Frame], pred: impl Fn(&Frame) -> bool) -> usize {
    frames.iter().filter(|f| pred(f)).count()
}

fn ethertype(f: &Frame) -> u16 {
    u16::from_be_bytes([f.data[12], f.data[13]])
}

fn icmp_and_arp(mode: &str) {
    let pair = PodPair::new(false).expect("topology");
    let c = compare(&pair, &["--attach-mode", mode], |p| {
        p.flush_neighbours()?;
        traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 5)
    });
    assert!(
        count(&c.oracle, |f| ethertype(f) == 0x0806) >= 2,
        "no ARP exchange captured"
    );
    // 5 echo requests and 5 replies.
    assert!(count(&c.oracle, |f| ethertype(f) == 0x0800 && f.data[23] == 1) >= 10);
}

#[test]
fn icmp_and_arp_tcx() {
    icmp_and_arp("tcx");
}

#[test]
fn icmp_and_arp_netlink() {
    icmp_and_arp("netlink");
}

/// An interface numbered beyond the hook's config array
/// (`mirror_common::CONFIG_HERE_SLOTS`, which the hook finds its own
/// namespace's interfaces in) is found in the hash instead: mirrored all the same.
#[test]
fn ifindex_beyond_the_config_array() {
    let index = mirror_common::CONFIG_HERE_SLOTS + 1000;
    let pair = PodPair::with_host_index(index).expect("topology");
    let actual = pair
        .node
        .ip(&["-o", "link", "show", &pair.host_if])
        .expect("ip link show");
    assert!(
        actual.starts_with(&format!("{index}: ")),
        "the host veth did not get index {index}: {actual}"
    );
    let c = compare(&pair, &[], |p| {
        p.flush_neighbours()?;
        traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 5)
    });
    assert!(count(&c.oracle, |f| ethertype(f) == 0x0800 && f.data[23] == 1) >= 10);
}

/// UDP from empty to 30000 bytes: above 1472 the kernel sends IP fragments.
fn udp_sizes(mode: &str) {
    let pair = PodPair::new(false).expect("topology");
    let sizes = [0, 1, 18, 100, 1000, 1472, 1473, 3000, 8000, 30000];
    let c = compare(&pair, &["--attach-mode", mode], |p| {
        traffic::udp(&p.pod, &p.node, IpAddr::V4(p.node_v4), 5001, &sizes)
    });
    // IPv4 frames with MF set or a fragment offset.
    let fragments = count(&c.mirror, |f| {
        ethertype(f) == 0x0800 && u16::from_be_bytes([f.data[20], f.data[21]]) & 0x3fff != 0
    });
    assert!(
        fragments >= 2 + 3 + 6 + 21,
        "expected IP fragments, saw {fragments}"
    );
}

#[test]
fn udp_sizes_and_fragments_tcx() {
    udp_sizes("tcx");
}

#[test]
fn udp_sizes_and_fragments_netlink() {
    udp_sizes("netlink");
}

/// A TCP bulk transfer over veth hands the hooks GSO packets far larger than
/// the MTU; the mirror must hold them whole, as tcpdump does.
#[test]
fn tcp_bulk_with_gso_packets() {
    let pair = PodPair::new(false).expect("topology");
    let c = compare(&pair, &[], |p| {
        traffic::tcp_bulk(&p.pod, &p.node, IpAddr::V4(p.node_v4), 5002, 16 << 20)
    });
    let largest = c.mirror.iter().map(|f| f.data.len()).max().unwrap_or(0);
    assert!(
        largest > 1514,
        "no GSO packet seen (largest frame {largest} bytes)"
    );
}

#[test]
fn ipv6_ping_udp_tcp() {
    let pair = PodPair::new(true).expect("topology");
    let node6 = IpAddr::V6(pair.node_v6.expect("dual stack"));
    let c = compare(&pair, &[], |p| {
        p.flush_neighbours()?;
        traffic::ping(&p.pod, node6, 3)?;
        traffic::udp(&p.pod, &p.node, node6, 5003, &[10, 1452, 1453, 5000])?;
        traffic::tcp_bulk(&p.pod, &p.node, node6, 5004, 1 << 20)
    });
    assert!(
        count(&c.mirror, |f| ethertype(f) == 0x86dd) > 10,
        "few IPv6 frames"
    );
}
