//! What is attached to an interface, asked of the kernel directly: tcx via
//! `BPF_PROG_QUERY` (through aya's query, from a thread inside the
//! namespace) and netlink filters via `tc filter show`.

use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};

use crate::netns::{Netns, join};

/// Every BPF program on the interface's TC hooks, as `tcx/ingress:NAME` or
/// `tc/egress:...` lines. Empty when nothing is attached.
pub fn attached(ns: &Netns, interface: &str) -> Result<Vec<String>> {
    let iface = interface.to_owned();
    let mut out = join(ns.spawn(move || {
        let mut names = Vec::new();
        for (kind, label) in [
            (TcAttachType::Ingress, "ingress"),
            (TcAttachType::Egress, "egress"),
        ] {
            let (_, progs) = SchedClassifier::query_tcx(&iface, kind)
                .with_context(|| format!("querying tcx {label} of {iface}"))?;
            for p in progs {
                names.push(format!("tcx/{label}:{}", p.name_as_str().unwrap_or("?")));
            }
        }
        Ok(names)
    }))?;
    for dir in ["ingress", "egress"] {
        let text = ns.exec(&["tc", "filter", "show", "dev", interface, dir])?;
        out.extend(
            text.lines()
                .filter(|l| l.contains("bpf") && l.contains("handle"))
                .map(|l| format!("tc/{dir}:{}", l.trim())),
        );
    }
    Ok(out)
}
