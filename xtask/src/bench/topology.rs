//! The bench's network: a client and a server namespace routed through a
//! node namespace, plus a collector namespace on its own link. The hook
//! goes on the client's host-side veth in the node, as on a real node.
//!
//! ```text
//! client 198.18.2.2 ── host_if 198.18.2.1 [node] 198.18.3.1 ── server 198.18.3.2
//!                                          [node] 198.18.1.1 ── collector 198.18.1.2
//! ```

use std::{
    net::{Ipv4Addr, UdpSocket},
    sync::mpsc,
    thread,
};

use anyhow::{Context, Result, bail};
use testbed::{
    netns::{Netns, join},
    topology::{CollectorLink, veth},
    unique_name,
};

pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 2);
pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 3, 2);
/// Where trafgen's UDP goes; a socket that is never read sits on it, so the
/// server drops the datagrams quietly instead of answering with ICMP.
pub const UDP_SINK_PORT: u16 = 9001;

pub struct BenchNet {
    pub client_if: String,
    /// The client's host-side veth, in the node: every configuration hooks here.
    pub host_if: String,
    pub server_if: String,
    pub host_mac: [u8; 6],
    pub client_mac: [u8; 6],
    pub collector: CollectorLink,
    pub client: Netns,
    pub node: Netns,
    pub server: Netns,
}

impl BenchNet {
    pub fn new() -> Result<Self> {
        let node = Netns::new("mbn")?;
        let client = Netns::new("mbc")?;
        let server = Netns::new("mbs")?;
        // IPv4 only: no router solicitations or MLD reports in the counts.
        for ns in [&node, &client, &server] {
            ns.disable_ipv6()?;
        }
        node.sysctl("net.ipv4.ip_forward", "1")?;

        let client_if = unique_name("mba");
        let host_if = unique_name("mbh");
        veth(&client, &client_if, &node, &host_if)?;
        let node_srv_if = unique_name("mbt");
        let server_if = unique_name("mbu");
        veth(&node, &node_srv_if, &server, &server_if)?;

        client.ip(&["addr", "add", "198.18.2.2/24", "dev", &client_if])?;
        node.ip(&["addr", "add", "198.18.2.1/24", "dev", &host_if])?;
        node.ip(&["addr", "add", "198.18.3.1/24", "dev", &node_srv_if])?;
        server.ip(&["addr", "add", "198.18.3.2/24", "dev", &server_if])?;
        client.ip(&["route", "add", "default", "via", "198.18.2.1"])?;
        server.ip(&["route", "add", "default", "via", "198.18.3.1"])?;

        // Its MTU is each session's (configs.rs: ordinary, or jumbo for
        // the tuned rows).
        let collector = CollectorLink::new(&node)?;

        let client_mac = mac(&client, &client_if)?;
        let host_mac = mac(&node, &host_if)?;
        // Permanent neighbours on every hop: no ARP in the middle of a run,
        // and none in the frame counts.
        let pairs = [
            (&client, &client_if, "198.18.2.1", host_mac),
            (&node, &host_if, "198.18.2.2", client_mac),
            (&node, &node_srv_if, "198.18.3.2", mac(&server, &server_if)?),
            (&server, &server_if, "198.18.3.1", mac(&node, &node_srv_if)?),
            (
                &node,
                &collector.node_if,
                "198.18.1.2",
                mac(&collector.ns, &collector.collector_if)?,
            ),
            (
                &collector.ns,
                &collector.collector_if,
                "198.18.1.1",
                mac(&node, &collector.node_if)?,
            ),
        ];
        for (ns, dev, ip, lladdr) in pairs {
            ns.ip(&[
                "neigh",
                "replace",
                ip,
                "lladdr",
                &mac_string(&lladdr),
                "dev",
                dev,
                "nud",
                "permanent",
            ])?;
        }
        client
            .exec(&["ping", "-n", "-q", "-c", "1", "-W", "2", "198.18.3.2"])
            .context("the client cannot reach the server through the node")?;
        Ok(Self {
            client_if,
            host_if,
            server_if,
            host_mac,
            client_mac,
            collector,
            client,
            node,
            server,
        })
    }

    /// Frames received and sent by the hooked interface (both directions
    /// cross the hook).
    pub fn hook_frames(&self) -> Result<(u64, u64)> {
        let s = self.site_stats(false)?;
        Ok((s.rx_packets, s.tx_packets))
    }

    /// Where our programs hook: the node's end of the client's link, or
    /// (`in_pod`, the sidecar) the server's own interface, in its namespace,
    /// where the same flows arrive. (Not the client's: trafgen's packet
    /// socket bypasses the qdisc layer, so the client's egress hook never
    /// sees its frames.)
    pub fn hook_site(&self, in_pod: bool) -> (&Netns, &str) {
        if in_pod {
            (&self.server, &self.server_if)
        } else {
            (&self.node, &self.host_if)
        }
    }

    /// The counters of the interface [`BenchNet::hook_site`] names.
    pub fn site_stats(&self, in_pod: bool) -> Result<LinkStats> {
        let (ns, dev) = self.hook_site(in_pod);
        link_stats(ns, dev)
    }

    /// Sets the MTU of both ends of the collector's link.
    pub fn set_collector_mtu(&self, mtu: u32) -> Result<()> {
        let mtu = mtu.to_string();
        self.node
            .ip(&["link", "set", &self.collector.node_if, "mtu", &mtu])?;
        self.collector
            .ns
            .ip(&["link", "set", &self.collector.collector_if, "mtu", &mtu])?;
        Ok(())
    }

    /// Frames the server received: production traffic that got through.
    pub fn server_rx(&self) -> Result<u64> {
        Ok(link_stats(&self.server, &self.server_if)?.rx_packets)
    }

    /// Frames that arrived on the collector's link.
    pub fn collector_rx(&self) -> Result<u64> {
        Ok(link_stats(&self.collector.ns, &self.collector.collector_if)?.rx_packets)
    }
}

/// A link's packet and byte counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The counters of `dev` in `ns`, from `ip -s -j link`.
pub fn link_stats(ns: &Netns, dev: &str) -> Result<LinkStats> {
    let text = ns.ip(&["-s", "-j", "link", "show", "dev", dev])?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing `ip -s -j link` of {dev}"))?;
    let stats = &json[0]["stats64"];
    let get = |dir: &str, what: &str| {
        stats[dir][what]
            .as_u64()
            .with_context(|| format!("no {dir} {what} count for {dev} in: {text}"))
    };
    Ok(LinkStats {
        rx_packets: get("rx", "packets")?,
        tx_packets: get("tx", "packets")?,
        rx_bytes: get("rx", "bytes")?,
        tx_bytes: get("tx", "bytes")?,
    })
}

fn mac(ns: &Netns, dev: &str) -> Result<[u8; 6]> {
    let text = ns.ip(&["-j", "link", "show", "dev", dev])?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing `ip -j link` of {dev}"))?;
    let s = json[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC address for {dev} in: {text}"))?;
    let mut out = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("unexpected MAC address {s} for {dev}");
    }
    for (byte, part) in out.iter_mut().zip(parts) {
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("MAC address {s}"))?;
    }
    Ok(out)
}

pub fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A UDP socket in the server namespace that is never read: datagrams fill
/// its buffer and are dropped there, with no ICMP back through the hook.
pub struct UdpSink {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<Result<()>>>,
}

impl UdpSink {
    pub fn start(server: &Netns) -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread = server.spawn(move || {
            let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_SINK_PORT))
                .context("binding the UDP sink")?;
            ready_tx.send(()).ok();
            // Blocks until the guard drops (its sender goes away).
            let _ = stop_rx.recv();
            drop(sock);
            Ok(())
        });
        let mut sink = Self {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        if ready_rx.recv().is_err() {
            // The thread ended before binding: its error says why.
            sink.stop.take();
            let result = sink.thread.take().map(join).transpose();
            result?;
            bail!("the UDP sink did not start");
        }
        Ok(sink)
    }
}

impl Drop for UdpSink {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
