//! This process's memory limit, from its cgroup (v2): what a container's
//! `resources.limits.memory` becomes.

use std::{fs, io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: expected a number of bytes or \"max\", found {found:?}")]
    Parse { path: PathBuf, found: String },
}

/// The `memory.max` of this process's cgroup: `None` when it is `max`, or
/// when there is no cgroup v2 hierarchy to read (no limit is known).
pub fn memory_limit() -> Result<Option<u64>, CgroupError> {
    let root = PathBuf::from("/sys/fs/cgroup");
    // "0::/PATH" on a v2 host; inside a container's cgroup namespace, "0::/".
    let own = fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("0::")
                    .map(|p| p.trim_start_matches('/').to_owned())
            })
        })
        .unwrap_or_default();
    for dir in [root.join(&own), root] {
        let path = dir.join("memory.max");
        match fs::read_to_string(&path) {
            Ok(text) => return parse_max(&text).ok_or(CgroupError::Parse { path, found: text }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => return Err(CgroupError::Read { path, source }),
        }
    }
    Ok(None)
}

/// `memory.max`'s text: bytes, or `max` for none.
pub fn parse_max(text: &str) -> Option<Option<u64>> {
    match text.trim() {
        "max" => Some(None),
        n => n.parse().ok().map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_max_reads_bytes_or_max() {
        assert_eq!(parse_max("67108864\n"), Some(Some(64 << 20)));
        assert_eq!(parse_max("max\n"), Some(None));
        assert_eq!(parse_max("lots"), None);
    }
}
