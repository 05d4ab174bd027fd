//! What the hostile*.rs tests share: a peer's opening bytes, and the
//! kernel's measure of a process's peak memory.
// Each test file that includes this uses only some of it.
#![allow(dead_code)]

use anyhow::{Context, Result};

/// VmHWM of `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

/// A section header (little-endian, no options) and the first 8 bytes of
/// a packet block announcing `len` bytes: a peer that then trickles.
pub fn shb_and_big_block_head(len: u32) -> Vec<u8> {
    let mut s = Vec::new();
    for w in [0x0A0D_0D0A_u32, 28, 0x1A2B_3C4D] {
        s.extend_from_slice(&w.to_le_bytes());
    }
    s.extend_from_slice(&1u16.to_le_bytes());
    s.extend_from_slice(&0u16.to_le_bytes());
    s.extend_from_slice(&u64::MAX.to_le_bytes());
    s.extend_from_slice(&28u32.to_le_bytes());
    s.extend_from_slice(&6u32.to_le_bytes());
    s.extend_from_slice(&len.to_le_bytes());
    s
}
