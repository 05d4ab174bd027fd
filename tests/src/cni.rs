//! Simulated CNI shapes: a node namespace and two pods wired the way a
//! family of CNIs wires them, for discovery and attach-point tests. IPv4
//! only (IPv6 off, so the links carry nothing but the test's traffic).
//!
//! Every pod's interface is `eth0` with ifindex [`POD_IFINDEX`], as in a
//! real cluster where the pods' indexes repeat: an index alone never
//! identifies a pod's peer. The test bed sets every index, name and MAC
//! itself, so tests compare discovery against facts they made, not
//! against discovery's own output.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::{
    netns::{Netns, run},
    rawbpf::{Hook, TcProgram, TcxLink},
    unique_name,
};

/// The ifindex of every pod's `eth0`, each in its own namespace.
pub const POD_IFINDEX: u32 = 1000;

/// The pods' gateway in the routed shapes: an address no interface holds,
/// answered by proxy ARP (calico uses 169.254.1.1) or by a pinned
/// neighbour (cilium answers ARP in BPF).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 19, 255, 1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// flannel-like: veths whose host ends are ports of a bridge; the
    /// pods share a /24 with the bridge's address as gateway.
    Bridge,
    /// calico-like: veths with no address on the host end, proxy ARP
    /// there, pods on /32s routed by the node.
    Routed,
    /// macvlan (bridge mode) pods on a parent in the node: no host end.
    Macvlan,
    /// ipvlan (L2 mode), as macvlan; needs CONFIG_IPVLAN.
    Ipvlan,
    /// cilium-like: veths, and on each host end's tcx ingress a program of
    /// the test's own that delivers everything the pod sends straight into
    /// the other pod with `bpf_redirect_peer`, bypassing the other host
    /// end. The pods' gateway is a neighbour pinned to their own host end.
    RedirectPeer,
}

impl Shape {
    /// The kind the kernel reports for the pod's interface.
    pub fn pod_kind(self) -> &'static str {
        match self {
            Self::Bridge | Self::Routed | Self::RedirectPeer => "veth",
            Self::Macvlan => "macvlan",
            Self::Ipvlan => "ipvlan",
        }
    }
}

/// Why the running kernel cannot make `shape`'s links, or `None` when it
/// can: the shape is tried for real on a throwaway veth. Only the kernel's
/// own refusal of the link type counts as "cannot" (`Unknown device type`,
/// EOPNOTSUPP from rtnetlink: no CONFIG_IPVLAN, built in or as a module);
/// any other failure of the probe panics, as the test itself would.
pub fn kernel_cannot_make(shape: Shape) -> Option<String> {
    let kind = shape.pod_kind();
    if kind == "veth" {
        return None;
    }
    let ns = Netns::new("mdq").expect("probe namespace");
    let (parent, other, child) = (unique_name("mdq"), unique_name("mdr"), unique_name("mds"));
    ns.ip(&[
        "link", "add", &parent, "type", "veth", "peer", "name", &other,
    ])
    .expect("probe parent veth");
    match ns.ip(&[
        "link", "add", "link", &parent, "name", &child, "type", kind, "mode", "l2",
    ]) {
        Ok(_) => None,
        Err(e) if e.to_string().contains("Unknown device type") => Some(format!(
            "this kernel ({}) has no {kind} links: creating one was refused with \"{}\"",
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim(),
            e.to_string()
                .rsplit("): ")
                .next()
                .unwrap_or_default()
                .trim()
        )),
        Err(e) => panic!("probing for {kind} links failed for another reason: {e:#}"),
    }
}

/// For a test of `shape`: true when the kernel can make its links. When
/// it cannot, says so on the test process's real standard error (not
/// libtest's captured output, so the run's log shows it) and returns
/// false, and the test returns without checking anything.
pub fn kernel_can_make(shape: Shape, test: &str) -> bool {
    use std::io::Write;
    let Some(why) = kernel_cannot_make(shape) else {
        return true;
    };
    let _ = writeln!(
        std::io::stderr(),
        // Its own line, whatever libtest printed last.
        "\nNOT RUN {test}: {why}; a kernel with it runs this test"
    );
    false
}

/// The host end of a pod's veth, in the node's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostEnd {
    pub name: String,
    pub ifindex: u32,
    pub mac: String,
}

pub struct Pod {
    pub v4: Ipv4Addr,
    pub ifname: &'static str,
    pub ifindex: u32,
    pub mac: String,
    pub host: Option<HostEnd>,
    pub ns: Netns,
}

/// A node and two pods of one shape; removed with everything in them on drop.
pub struct CniNode {
    pub shape: Shape,
    /// The redirect programs' links (cilium-like only), in pod order;
    /// dropped first, so they detach before the interfaces go.
    pub redirects: Vec<(TcxLink, TcProgram)>,
    pub pods: Vec<Pod>,
    pub node: Netns,
}

impl CniNode {
    pub fn new(shape: Shape) -> Result<Self> {
        let node = Netns::new("mdn")?;
        node.disable_ipv6()?;
        let mut pods = Vec::new();
        for i in 1..=2u8 {
            let ns = Netns::new("mdp")?;
            ns.disable_ipv6()?;
            pods.push(Pod {
                v4: Ipv4Addr::new(198, 18, 0, 10 + i),
                ifname: "eth0",
                ifindex: POD_IFINDEX,
                mac: format!("02:00:00:00:02:{i:02x}"),
                host: None,
                ns,
            });
        }
        let mut me = Self {
            shape,
            redirects: Vec::new(),
            pods,
            node,
        };
        match shape {
            Shape::Bridge => me.bridge()?,
            Shape::Routed => me.routed()?,
            Shape::Macvlan => me.vlan("macvlan", "bridge")?,
            Shape::Ipvlan => me.vlan("ipvlan", "l2")?,
            Shape::RedirectPeer => me.redirect_peer()?,
        }
        Ok(me)
    }

    /// A veth per pod: the host end (index 100 + i, in the node) and the
    /// pod's eth0, both up.
    fn veths(&mut self) -> Result<()> {
        for (i, pod) in self.pods.iter_mut().enumerate() {
            let host = HostEnd {
                name: unique_name("mdh"),
                ifindex: 101 + u32::try_from(i)?,
                mac: format!("02:00:00:00:01:{:02x}", i + 1),
            };
            run(std::process::Command::new("ip").args([
                "-n",
                self.node.name(),
                "link",
                "add",
                &host.name,
                "index",
                &host.ifindex.to_string(),
                "address",
                &host.mac,
                "type",
                "veth",
                "peer",
                "name",
                pod.ifname,
                "netns",
                pod.ns.name(),
                "index",
                &pod.ifindex.to_string(),
                "address",
                &pod.mac,
            ]))?;
            self.node.ip(&["link", "set", &host.name, "up"])?;
            pod.ns.ip(&["link", "set", pod.ifname, "up"])?;
            pod.host = Some(host);
        }
        Ok(())
    }

    fn bridge(&mut self) -> Result<()> {
        let bridge = unique_name("mdb");
        // No multicast snooping: with it the bridge joins the snoopers'
        // group and reports that (IGMP) through its ports a moment later,
        // into the captures of a test that has started meanwhile.
        self.node.ip(&[
            "link",
            "add",
            &bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        self.node
            .ip(&["addr", "add", "198.18.0.1/24", "dev", &bridge])?;
        self.node.ip(&["link", "set", &bridge, "up"])?;
        self.veths()?;
        for pod in &self.pods {
            if let Some(host) = &pod.host {
                self.node
                    .ip(&["link", "set", &host.name, "master", &bridge])?;
            }
            pod.ns
                .ip(&["addr", "add", &format!("{}/24", pod.v4), "dev", pod.ifname])?;
            pod.ns
                .ip(&["route", "add", "default", "via", "198.18.0.1"])?;
        }
        Ok(())
    }

    /// The node's own address on an uplink (a veth pair inside the node),
    /// with the default route: proxy ARP answers only for addresses the
    /// node routes out of another interface, and the node needs a source
    /// address for its ARP requests into address-less host ends.
    fn uplink(&self) -> Result<String> {
        let (a, b) = (unique_name("mdu"), unique_name("mdv"));
        self.node
            .ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        for dev in [&a, &b] {
            self.node.ip(&["link", "set", dev, "up"])?;
        }
        self.node.ip(&["addr", "add", "198.19.0.1/24", "dev", &a])?;
        self.node
            .ip(&["route", "add", "default", "via", "198.19.0.2", "dev", &a])?;
        Ok(a)
    }

    /// Each pod: its address as a /32, the gateway on-link, default via it.
    fn pod_routes(pod: &Pod) -> Result<()> {
        let gw = GATEWAY.to_string();
        pod.ns
            .ip(&["addr", "add", &format!("{}/32", pod.v4), "dev", pod.ifname])?;
        pod.ns
            .ip(&["route", "add", &gw, "dev", pod.ifname, "scope", "link"])?;
        pod.ns
            .ip(&["route", "add", "default", "via", &gw, "dev", pod.ifname])?;
        Ok(())
    }

    fn routed(&mut self) -> Result<()> {
        self.uplink()?;
        self.node.sysctl("net.ipv4.ip_forward", "1")?;
        self.veths()?;
        for pod in &self.pods {
            let Some(host) = &pod.host else { continue };
            Self::pod_routes(pod)?;
            self.node
                .sysctl(&format!("net.ipv4.conf.{}.proxy_arp", host.name), "1")?;
            // Calico's setting too: without it proxy replies wait up to 0.8 s.
            self.node
                .sysctl(&format!("net.ipv4.neigh.{}.proxy_delay", host.name), "0")?;
            self.node
                .ip(&["route", "add", &format!("{}/32", pod.v4), "dev", &host.name])?;
        }
        Ok(())
    }

    /// macvlan or ipvlan: the pods' interfaces are made on a parent in the
    /// node (a veth pair kept inside the node, up) and placed straight
    /// into the pods; they have no host end.
    fn vlan(&mut self, kind: &str, mode: &str) -> Result<()> {
        let (parent, other) = (unique_name("mdu"), unique_name("mdv"));
        self.node.ip(&[
            "link", "add", &parent, "type", "veth", "peer", "name", &other,
        ])?;
        for dev in [&parent, &other] {
            self.node.ip(&["link", "set", dev, "up"])?;
        }
        for pod in &self.pods {
            let index = pod.ifindex.to_string();
            let mut args = vec![
                "link",
                "add",
                "link",
                &parent,
                "name",
                pod.ifname,
                "netns",
                pod.ns.name(),
            ];
            args.extend(["index", &index]);
            // ipvlan slaves share the parent's MAC.
            if kind == "macvlan" {
                args.extend(["address", &pod.mac]);
            }
            args.extend(["type", kind, "mode", mode]);
            self.node.ip(&args)?;
            pod.ns.ip(&["link", "set", pod.ifname, "up"])?;
            pod.ns
                .ip(&["addr", "add", &format!("{}/24", pod.v4), "dev", pod.ifname])?;
        }
        Ok(())
    }

    fn redirect_peer(&mut self) -> Result<()> {
        self.veths()?;
        for pod in &self.pods {
            let Some(host) = &pod.host else { continue };
            Self::pod_routes(pod)?;
            // The gateway is the pod's own host end, as under Cilium; no ARP.
            pod.ns.ip(&[
                "neigh",
                "add",
                &GATEWAY.to_string(),
                "lladdr",
                &host.mac,
                "dev",
                pod.ifname,
                "nud",
                "permanent",
            ])?;
        }
        // Whatever pod i sends enters its host end and is redirected into
        // the other pod's eth0, the peer of the other host end.
        let hosts: Vec<HostEnd> = self.pods.iter().filter_map(|p| p.host.clone()).collect();
        for (i, from) in hosts.iter().enumerate() {
            let to = &hosts[(i + 1) % hosts.len()];
            let prog = TcProgram::redirect_peer(to.ifindex)?;
            let link = prog.attach(&self.node, &from.name, Hook::Ingress)?;
            self.redirects.push((link, prog));
        }
        Ok(())
    }

    /// `/run/netns/NAME` of a namespace, as the agent would open it.
    pub fn path(ns: &Netns) -> String {
        format!("/run/netns/{}", ns.name())
    }
}
