//! The agent's memory as the scale report breaks it down: /proc/PID/status,
//! its Pss, and the RSS of its mappings of BPF maps (the ring buffer).

use std::fmt::Write as _;

use anyhow::Result;

use super::report::mib;

/// The agent's memory, KiB, from /proc/PID/status.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss: u64,
    pub hwm: u64,
    /// Heap and stacks.
    pub anon: u64,
    /// File-backed pages, including the BPF maps the agent has mmapped
    /// (the ring buffer's pages are inserted at mmap time).
    pub file: u64,
    pub shmem: u64,
    /// Proportional set size (/proc/PID/smaps_rollup): a page mapped twice
    /// by the agent counts once here, twice in VmRSS.
    pub pss: Option<u64>,
    /// Rss of the agent's mappings of BPF maps (`anon_inode:bpf-map` in
    /// /proc/PID/smaps): the ring buffer, its data pages mapped twice.
    pub bpf_maps: Option<u64>,
}

impl Memory {
    pub fn of(pid: u32) -> Result<Self> {
        let get = crate::bench::measure::status_kib(pid)?;
        Ok(Self {
            rss: get("VmRSS:")?,
            hwm: get("VmHWM:")?,
            anon: get("RssAnon:")?,
            file: get("RssFile:")?,
            shmem: get("RssShmem:")?,
            pss: smaps_rollup_pss(pid),
            bpf_maps: bpf_map_rss(pid),
        })
    }

    pub fn breakdown(&self) -> String {
        let mut t = format!(
            "{} (RssAnon {}, RssFile {}, RssShmem {}",
            mib(self.rss),
            mib(self.anon),
            mib(self.file),
            mib(self.shmem)
        );
        if let Some(b) = self.bpf_maps {
            let _ = write!(t, "; BPF map mappings {}", mib(b));
        }
        if let Some(p) = self.pss {
            let _ = write!(t, "; Pss {}", mib(p));
        }
        t.push(')');
        t
    }
}

/// `Pss:` of /proc/PID/smaps_rollup, KiB.
fn smaps_rollup_pss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The summed `Rss:` of the mappings named `anon_inode:bpf-map` in
/// /proc/PID/smaps, KiB.
fn bpf_map_rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut in_map = false;
    let mut total = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && first.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            // A mapping's header: range, perms, offset, dev, inode, [name].
            in_map = fields.nth(4) == Some("anon_inode:bpf-map");
        } else if in_map && first == "Rss:" {
            total += fields.next()?.parse::<u64>().ok()?;
        }
    }
    Some(total)
}
