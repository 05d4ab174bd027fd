//! Small topologies built from namespaces and veths.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{netns::Netns, unique_name};

/// Creates a veth pair with one end in each namespace, both up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    crate::netns::run(std::process::Command::new("ip").args([
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]))?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Waits out the MLD reports IPv6 sends a few times after a link comes up,
/// so a capture that starts afterwards sees only the test's own traffic.
pub fn settle() {
    thread::sleep(Duration::from_millis(2500));
}

/// A pod and the node it runs on, joined by one veth: the shape the mirror
/// hooks. The hook goes on `host_if` in `node`; the pod's end is `pod_if`.
pub struct PodPair {
    pub host_if: String,
    pub pod_if: String,
    pub node_v4: Ipv4Addr,
    pub pod_v4: Ipv4Addr,
    pub node_v6: Option<Ipv6Addr>,
    pub pod_v6: Option<Ipv6Addr>,
    // Dropped last: deleting the namespaces removes the veth.
    pub node: Netns,
    pub pod: Netns,
}

impl PodPair {
    /// IPv4 only (IPv6 disabled, so no background traffic at all), or dual stack.
    pub fn new(ipv6: bool) -> Result<Self> {
        Self::build(ipv6, None)
    }

    /// IPv4 only, the host end numbered `index` in the node's namespace
    /// (as interfaces are after that many were made there).
    pub fn with_host_index(index: u32) -> Result<Self> {
        Self::build(false, Some(index))
    }

    fn build(ipv6: bool, host_index: Option<u32>) -> Result<Self> {
        let node = Netns::new("mtn")?;
        let pod = Netns::new("mtp")?;
        if !ipv6 {
            node.disable_ipv6()?;
            pod.disable_ipv6()?;
        }
        let host_if = unique_name("mth");
        let pod_if = unique_name("mtq");
        match host_index {
            None => veth(&node, &host_if, &pod, &pod_if)?,
            Some(index) => {
                let index = index.to_string();
                node.ip(&[
                    "link",
                    "add",
                    &host_if,
                    "index",
                    &index,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &pod_if,
                    "netns",
                    pod.name(),
                ])?;
                node.ip(&["link", "set", &host_if, "up"])?;
                pod.ip(&["link", "set", &pod_if, "up"])?;
            }
        }
        let (node_v4, pod_v4) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
        node.ip(&["addr", "add", "198.18.0.1/24", "dev", &host_if])?;
        pod.ip(&["addr", "add", "198.18.0.2/24", "dev", &pod_if])?;
        let (mut node_v6, mut pod_v6) = (None, None);
        if ipv6 {
            node.ip(&["addr", "add", "fd00:198:18::1/64", "dev", &host_if, "nodad"])?;
            pod.ip(&["addr", "add", "fd00:198:18::2/64", "dev", &pod_if, "nodad"])?;
            node_v6 = Some("fd00:198:18::1".parse()?);
            pod_v6 = Some("fd00:198:18::2".parse()?);
            settle();
        }
        Ok(Self {
            host_if,
            pod_if,
            node_v4,
            pod_v4,
            node_v6,
            pod_v6,
            node,
            pod,
        })
    }

    /// Forgets learned neighbours on both ends, so the next packet needs ARP/ND.
    pub fn flush_neighbours(&self) -> Result<()> {
        self.node.ip(&["neigh", "flush", "dev", &self.host_if])?;
        self.pod.ip(&["neigh", "flush", "dev", &self.pod_if])?;
        Ok(())
    }
}

/// A pod on a bridged node (flannel-like): its own namespace, a veth whose
/// host end is a port of the node's bridge.
pub struct BridgedPod {
    pub name: String,
    pub host_if: String,
    pub v4: Ipv4Addr,
    pub ns: Netns,
}

/// A node namespace with a bridge and `n` pods on 198.18.0.0/24.
pub struct BridgedNode {
    pub bridge: String,
    pub pods: Vec<BridgedPod>,
    pub node: Netns,
}

impl BridgedNode {
    pub fn new(n: u8) -> Result<Self> {
        let node = Netns::new("mtn")?;
        node.disable_ipv6()?;
        let bridge = unique_name("mtb");
        node.ip(&["link", "add", &bridge, "type", "bridge"])?;
        node.ip(&["addr", "add", "198.18.0.1/24", "dev", &bridge])?;
        node.ip(&["link", "set", &bridge, "up"])?;
        let mut pods = Vec::new();
        for i in 1..=n {
            let ns = Netns::new("mtp")?;
            ns.disable_ipv6()?;
            let host_if = unique_name("mth");
            veth(&node, &host_if, &ns, "eth0")?;
            node.ip(&["link", "set", &host_if, "master", &bridge])?;
            let v4 = Ipv4Addr::new(198, 18, 0, 10 + i);
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
            ns.ip(&["route", "add", "default", "via", "198.18.0.1"])?;
            pods.push(BridgedPod {
                name: format!("pod{i}"),
                host_if,
                v4,
                ns,
            });
        }
        Ok(Self { bridge, pods, node })
    }
}

/// A collector host reached from the node by its own veth on 198.18.1.0/24
/// (fd00:198:18:1::/64), away from the mirrored pod link.
pub struct CollectorLink {
    pub node_if: String,
    pub collector_if: String,
    pub node_v4: Ipv4Addr,
    pub collector_v4: Ipv4Addr,
    pub ns: Netns,
}

impl CollectorLink {
    pub fn new(node: &Netns) -> Result<Self> {
        let ns = Netns::new("mtc")?;
        ns.disable_ipv6()?;
        let node_if = unique_name("mtk");
        let collector_if = unique_name("mtl");
        veth(node, &node_if, &ns, &collector_if)?;
        node.ip(&["addr", "add", "198.18.1.1/24", "dev", &node_if])?;
        ns.ip(&["addr", "add", "198.18.1.2/24", "dev", &collector_if])?;
        Ok(Self {
            node_if,
            collector_if,
            node_v4: Ipv4Addr::new(198, 18, 1, 1),
            collector_v4: Ipv4Addr::new(198, 18, 1, 2),
            ns,
        })
    }

    /// Makes the node's end of the link (in `node`) cut UDP GSO messages
    /// into datagrams before sending them, as a NIC does on a wire: a veth
    /// otherwise passes them on whole, so a capture at the collector would
    /// see one merged packet where a wire carries many.
    pub fn segment_like_a_nic(&self, node: &Netns) -> Result<()> {
        node.exec(&[
            "ethtool",
            "-K",
            &self.node_if,
            "gso",
            "off",
            "tx-udp-segmentation",
            "off",
        ])
        .map(drop)
        .context("ethtool -K (`cargo xtask setup` installs ethtool)")
    }

    /// A pod, its node, and a collector host on a 9000-byte link, so no copy
    /// is ever cut to fit the path (the agent would count and cut it).
    pub fn jumbo_with_pod() -> (PodPair, CollectorLink) {
        Self::jumbo_with(false)
    }

    /// [`Self::jumbo_with_pod`] with a dual-stack pod (the collector link
    /// stays IPv4: tunnels carry the pod's IPv6 inside).
    pub fn jumbo_with_dual_stack_pod() -> (PodPair, CollectorLink) {
        Self::jumbo_with(true)
    }

    fn jumbo_with(ipv6: bool) -> (PodPair, CollectorLink) {
        crate::require_root();
        let pair = PodPair::new(ipv6).expect("pod pair");
        let link = CollectorLink::new(&pair.node).expect("collector link");
        for (ns, dev) in [(&pair.node, &link.node_if), (&link.ns, &link.collector_if)] {
            ns.ip(&["link", "set", dev, "mtu", "9000"])
                .expect("mtu 9000");
        }
        (pair, link)
    }

    /// A kernel VXLAN device in the collector namespace that decapsulates
    /// VNI `vni` arriving on UDP 4789: the independent receiver for our tunnel.
    /// Its GRO is off, as an IDS's capture interface has it: otherwise the
    /// kernel joins the TCP segments of a burst of datagrams (an agent's UDP
    /// GSO message arrives as one) back into a super-packet before tcpdump
    /// sees them there.
    pub fn kernel_vxlan(&self, vni: u32) -> Result<String> {
        let dev = unique_name("mtv");
        self.ns.ip(&[
            "link",
            "add",
            &dev,
            "type",
            "vxlan",
            "id",
            &vni.to_string(),
            "dstport",
            "4789",
            "dev",
            &self.collector_if,
            "nolearning",
        ])?;
        self.ns
            .exec(&["ethtool", "-K", &dev, "gro", "off"])
            .context("ethtool -K (`cargo xtask setup` installs ethtool)")?;
        self.ns.ip(&["link", "set", &dev, "up"])?;
        Ok(dev)
    }
}

/// A pod and a server, dual stack, as two ports of one Linux bridge in the
/// node's namespace; the server's port (`sink_if`) has every transmit
/// offload off (TSO, GSO, UDP segmentation, checksums). The kernel hands
/// the pod's super-packets to the bridge whole (the hook on `host_if` sees
/// them so) and cuts them into wire frames, checksums done, on their way
/// out of `sink_if`, where tcpdump sees them. A bridge forwards without
/// routing: MACs and TTL stay as the pod sent them.
pub struct SegmentingBridge {
    pub host_if: String,
    pub sink_if: String,
    pub pod_v4: Ipv4Addr,
    pub server_v4: Ipv4Addr,
    pub pod_v6: Ipv6Addr,
    pub server_v6: Ipv6Addr,
    // Dropped last: deleting the namespaces removes the links.
    pub node: Netns,
    pub pod: Netns,
    pub server: Netns,
}

impl SegmentingBridge {
    pub fn new() -> Result<Self> {
        // The node forwards only: no IPv6 of its own, so nothing but the
        // pod's and the server's packets crosses the bridge.
        let node = Netns::new("mtn")?;
        node.disable_ipv6()?;
        let (pod, server) = (Netns::new("mtp")?, Netns::new("mts")?);
        let bridge = unique_name("mtb");
        // Without snooping the bridge floods the pod's MLD reports like any
        // multicast, so both ends see them alike.
        node.ip(&[
            "link",
            "add",
            &bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        node.ip(&["link", "set", &bridge, "up"])?;
        let (host_if, sink_if) = (unique_name("mth"), unique_name("mtk"));
        let mut addrs = Vec::new();
        for (ns, port, n) in [(&pod, &host_if, 2), (&server, &sink_if, 3)] {
            veth(&node, port, ns, "eth0")?;
            node.ip(&["link", "set", port, "master", &bridge])?;
            ns.ip(&["addr", "add", &format!("198.18.0.{n}/24"), "dev", "eth0"])?;
            let v6 = format!("fd00:198:18::{n}");
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
            addrs.push(v6.parse::<Ipv6Addr>()?);
        }
        node.exec(&[
            "ethtool",
            "-K",
            &sink_if,
            "tso",
            "off",
            "gso",
            "off",
            "tx-udp-segmentation",
            "off",
            "tx",
            "off",
        ])
        .context("ethtool -K (is ethtool installed? `cargo xtask setup` installs it)")?;
        settle();
        Ok(Self {
            host_if,
            sink_if,
            pod_v4: Ipv4Addr::new(198, 18, 0, 2),
            server_v4: Ipv4Addr::new(198, 18, 0, 3),
            pod_v6: addrs[0],
            server_v6: addrs[1],
            node,
            pod,
            server,
        })
    }
}
