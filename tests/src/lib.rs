//! Test bed for the mirror: network namespaces joined by veths, real traffic
//! between them, and the real agent, tcpdump and tshark run against them.
//!
//! Every namespace, link and process made here is owned by a guard that
//! removes it on drop, so a failing test leaves nothing behind. Names are
//! unique per process and call, so tests can run in parallel. Addresses come
//! only from 198.18.0.0/15 and fd00:198:18::/48.

pub mod agent;
pub mod apiserver;
pub mod bpffs;
pub mod capture;
pub mod cni;
pub mod collector;
pub mod hooks;
pub mod http;
pub mod netns;
pub mod numbered;
pub mod pki;
pub mod process;
pub mod rawbpf;
pub mod scapy;
pub mod scenario;
pub mod tcpdump;
pub mod tmpfs;
pub mod topology;
pub mod traffic;
pub mod tshark;
pub mod webhook;
pub mod wire;

use std::sync::atomic::{AtomicU32, Ordering};

/// A name no other test or run uses now: `<prefix><pid><n>`, at most 15
/// bytes so it also fits an interface name.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{:x}{n:x}", std::process::id());
    assert!(name.len() <= 15, "name {name} is too long for an interface");
    name
}

/// Fails with a clear message unless running as root: these tests need
/// network namespaces and BPF, and must never pass by skipping.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, BPF); run it through `cargo xtask test` as root"
    );
}
