//! The kernel-only mirror the bench compares with: `tc mirred` into a
//! kernel VXLAN device.

use anyhow::Result;
use testbed::unique_name;

use super::topology::BenchNet;

const KERNEL_VNI: u32 = 43;

/// The kernel-only mirror: a VXLAN device in the node toward the collector,
/// and `tc` u32 filters with `mirred egress mirror` on both directions of
/// the hooked interface.
pub struct KernelMirror<'a> {
    net: &'a BenchNet,
    dev: String,
    removed: bool,
}

impl<'a> KernelMirror<'a> {
    pub fn add(net: &'a BenchNet) -> Result<Self> {
        let dev = unique_name("mbv");
        let node = &net.node;
        node.ip(&[
            "link",
            "add",
            &dev,
            "type",
            "vxlan",
            "id",
            &KERNEL_VNI.to_string(),
            "remote",
            &net.collector.collector_v4.to_string(),
            "local",
            &net.collector.node_v4.to_string(),
            "dstport",
            "4789",
            "dev",
            &net.collector.node_if,
        ])?;
        // From here on Drop removes whatever was made.
        let guard = Self {
            net,
            dev,
            removed: false,
        };
        node.ip(&["link", "set", &guard.dev, "up"])?;
        node.exec(&["tc", "qdisc", "add", "dev", &net.host_if, "clsact"])?;
        for dir in ["ingress", "egress"] {
            node.exec(&[
                "tc",
                "filter",
                "add",
                "dev",
                &net.host_if,
                dir,
                "protocol",
                "all",
                "u32",
                "match",
                "u32",
                "0",
                "0",
                "action",
                "mirred",
                "egress",
                "mirror",
                "dev",
                &guard.dev,
            ])?;
        }
        Ok(guard)
    }

    pub fn remove(mut self) -> Result<()> {
        self.removed = true;
        let node = &self.net.node;
        node.exec(&["tc", "qdisc", "del", "dev", &self.net.host_if, "clsact"])?;
        node.ip(&["link", "del", &self.dev])?;
        Ok(())
    }
}

impl Drop for KernelMirror<'_> {
    fn drop(&mut self) {
        if !self.removed {
            let node = &self.net.node;
            let _ = node.exec(&["tc", "qdisc", "del", "dev", &self.net.host_if, "clsact"]);
            let _ = node.ip(&["link", "del", &self.dev]);
        }
    }
}
