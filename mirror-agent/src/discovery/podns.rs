//! Which network namespace is a pod's, from kernel facts alone: the one
//! whose interfaces hold the pod's IP. Namespaces are found where CNIs and
//! runtimes leave them (bind mounts such as /run/netns/*) and through the
//! processes in them (/proc/PID/ns/net), each looked at once, by inode.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use netlink_packet_route::{
    RouteNetlinkMessage,
    address::{AddressAttribute, AddressMessage},
};
use tracing::debug;

use crate::kernel::{netlink, netns::Namespace};

/// A namespace's identity: the device and inode of its nsfs file.
type NsKey = (u64, u64);

struct Seen {
    path: PathBuf,
    ips: Vec<IpAddr>,
}

pub struct NetnsIndex {
    roots: Vec<PathBuf>,
    host: Option<NsKey>,
    seen: HashMap<NsKey, Seen>,
}

impl NetnsIndex {
    /// `roots`: directories of namespace files, or `/proc`; `host`: the
    /// agent's own namespace file, never a pod's.
    pub fn new(roots: Vec<PathBuf>, host: &Path) -> Self {
        Self {
            roots,
            host: key(host),
            seen: HashMap::new(),
        }
    }

    /// Looks at namespaces not seen before, and forgets those gone.
    pub fn refresh(&mut self) {
        let mut present = HashSet::new();
        for path in self.candidates() {
            let Some(k) = key(&path) else { continue };
            if Some(k) == self.host || !present.insert(k) || self.seen.contains_key(&k) {
                continue;
            }
            match addresses(&path) {
                Ok(ips) => {
                    debug!(netns = %path.display(), ?ips, "network namespace");
                    self.seen.insert(k, Seen { path, ips });
                }
                // Gone since listed, or not a namespace we may enter.
                Err(error) => debug!(netns = %path.display(), %error, "skipped"),
            }
        }
        self.seen.retain(|k, _| present.contains(k));
    }

    /// The namespaces holding any of `ips`.
    pub fn find(&self, ips: &[IpAddr]) -> Vec<&Path> {
        self.seen
            .values()
            .filter(|s| s.ips.iter().any(|ip| ips.contains(ip)))
            .map(|s| s.path.as_path())
            .collect()
    }

    fn candidates(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for root in &self.roots {
            let Ok(entries) = std::fs::read_dir(root) else {
                continue;
            };
            let proc = root == Path::new("/proc");
            for entry in entries.flatten() {
                let name = entry.file_name();
                if proc {
                    if name
                        .to_str()
                        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    {
                        out.push(entry.path().join("ns/net"));
                    }
                } else {
                    out.push(entry.path());
                }
            }
        }
        out
    }
}

fn key(path: &Path) -> Option<NsKey> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Every address of every interface in the namespace at `path`.
fn addresses(path: &Path) -> Result<Vec<IpAddr>, String> {
    let ns = Namespace::open(path).map_err(|e| e.to_string())?;
    let replies = ns
        .run(|| netlink::dump(RouteNetlinkMessage::GetAddress(AddressMessage::default())))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            }),
            _ => None,
        })
        .collect())
}
