//! The agent's pins on bpffs: where maps and links live between agents, so
//! hooks keep mirroring into the ring buffer while no agent runs and the next
//! agent adopts them.
//!
//! ```text
//! PIN_DIR/abi-N/MIRROR_*        maps, by name, of ABI version N (mirror_common::ABI_VERSION)
//! PIN_DIR/links/IFINDEX-ingress tcx links, one per interface and direction,
//! PIN_DIR/links/IFINDEX-egress    of interfaces in the agent's own namespace
//! PIN_DIR/links/COOKIE-IFINDEX-ingress  and in a pod's (by its netns cookie)
//! PIN_DIR/labels/COOKIE-IFINDEX  what the hooked interface is (its name, pod and
//!                                policy), for `mirror-agent status`
//! ```
//!
//! Maps sit under their ABI version because their layout is the ABI: an
//! agent of another version makes its own maps and moves the links onto its
//! programs atomically. Links are not versioned: a link is the attachment
//! itself, and replacing its program never leaves the interface unhooked.
//! One agent at a time: the directory is locked (flock) while an agent uses it.
//!
//! Labels are symbolic links whose target is a small JSON text: bpffs holds
//! only pins, directories and symbolic links, and keeping the names beside
//! the pins means they live, move to the next agent and go with `uninstall`
//! exactly as the hooks do, with no second directory to mount.

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use aya::programs::TcAttachType;
use mirror_common::ABI_VERSION;
use nix::fcntl::{Flock, FlockArg};

use crate::{
    kernel::netns::{self, NetnsError},
    model::record::{IfIndex, IfaceId, NetnsCookie},
};

/// Where `run` pins by default.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/mirror";

const LINKS: &str = "links";
const LABELS: &str = "labels";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("--pin-dir {path}: {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error(
        "--pin-dir {0}: another agent is using it (one agent per pin directory; \
         stop it, or choose another --pin-dir)"
    )]
    Busy(PathBuf),
    #[error("--pin-dir {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

impl PinError {
    /// 2 for a bad --pin-dir, as for other bad flags; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Dir { .. } => 2,
            Self::Busy(_) | Self::Io { .. } | Self::Netns(_) => 1,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PinError + '_ {
    move |source| PinError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One interface hook, as named among the link pins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LinkKey {
    pub iface: IfaceId,
    pub ingress: bool,
}

impl LinkKey {
    pub fn new(iface: IfaceId, kind: TcAttachType) -> Self {
        Self {
            iface,
            ingress: matches!(kind, TcAttachType::Ingress),
        }
    }

    pub fn kind(self) -> TcAttachType {
        if self.ingress {
            TcAttachType::Ingress
        } else {
            TcAttachType::Egress
        }
    }

    /// Interfaces of the agent's own namespace (`own`) keep the names that
    /// agents before pod-end hooks gave them, so those are adopted too.
    fn file_name(self, own: NetnsCookie) -> String {
        // bpffs refuses names with a dot.
        let dir = if self.ingress { "ingress" } else { "egress" };
        if self.iface.netns == own {
            format!("{}-{dir}", self.iface.index.0)
        } else {
            format!("{}-{}-{dir}", self.iface.netns.0, self.iface.index.0)
        }
    }

    fn parse(name: &str, own: NetnsCookie) -> Option<Self> {
        let (rest, dir) = name.rsplit_once('-')?;
        let ingress = match dir {
            "ingress" => true,
            "egress" => false,
            _ => return None,
        };
        let (netns, index) = match rest.split_once('-') {
            None => (own, rest),
            Some((cookie, index)) => (NetnsCookie(cookie.parse().ok()?), index),
        };
        Some(Self {
            iface: IfaceId {
                netns,
                index: IfIndex(index.parse().ok()?),
            },
            ingress,
        })
    }
}

/// A locked pin directory on bpffs.
pub struct PinDir {
    root: PathBuf,
    /// The agent's own network namespace, for link names.
    own: NetnsCookie,
    /// None when opened only to look ([`PinDir::inspect`]).
    _lock: Option<Flock<File>>,
}

impl PinDir {
    /// Creates the directory (and its bpffs parents) if needed and locks it.
    /// It must be on a bpffs mount: anywhere else pins cannot be made.
    pub fn open(root: &Path) -> Result<Self, PinError> {
        let dir_err = |reason: String| PinError::Dir {
            path: root.to_owned(),
            reason,
        };
        let mut probe = root;
        while !probe.exists() {
            probe = probe
                .parent()
                .ok_or_else(|| dir_err("no existing parent".into()))?;
        }
        let fs = nix::sys::statfs::statfs(probe)
            .map_err(|e| dir_err(format!("{}: {e}", probe.display())))?;
        if fs.filesystem_type() != nix::sys::statfs::BPF_FS_MAGIC {
            return Err(dir_err(format!(
                "{} is not on a bpf filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)",
                probe.display()
            )));
        }
        std::fs::create_dir_all(root.join(LINKS)).map_err(io_err(root))?;
        std::fs::create_dir_all(root.join(LABELS)).map_err(io_err(root))?;
        std::fs::create_dir_all(root.join(abi_dir(ABI_VERSION))).map_err(io_err(root))?;
        let dir = File::open(root).map_err(io_err(root))?;
        let lock = Flock::lock(dir, FlockArg::LockExclusiveNonblock)
            .map_err(|_| PinError::Busy(root.to_owned()))?;
        Ok(Self {
            root: root.to_owned(),
            own: netns::current_cookie()?,
            _lock: Some(lock),
        })
    }

    /// Opens an existing directory to read it, without locking it (an agent
    /// may be using it) and without creating anything.
    pub fn inspect(root: &Path) -> Result<Self, PinError> {
        if !root.join(LINKS).is_dir() {
            return Err(PinError::Dir {
                path: root.to_owned(),
                reason: "no agent's pins there (no links/ directory)".into(),
            });
        }
        Ok(Self {
            root: root.to_owned(),
            own: netns::current_cookie()?,
            _lock: None,
        })
    }

    /// Whether an agent holds the directory now (its lock is taken).
    pub fn in_use(&self) -> Result<bool, PinError> {
        let dir = File::open(&self.root).map_err(io_err(&self.root))?;
        Ok(Flock::lock(dir, FlockArg::LockSharedNonblock).is_err())
    }

    /// The agent's own network namespace, as link names assume it.
    pub fn own_netns(&self) -> NetnsCookie {
        self.own
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a map of this agent's ABI is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.root.join(abi_dir(ABI_VERSION)).join(name)
    }

    pub fn link(&self, key: LinkKey) -> PathBuf {
        self.root.join(LINKS).join(key.file_name(self.own))
    }

    /// Every link pin there is, whoever made it.
    pub fn links(&self) -> Result<Vec<LinkKey>, PinError> {
        let dir = self.root.join(LINKS);
        let mut keys = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let key = entry
                .file_name()
                .to_str()
                .and_then(|n| LinkKey::parse(n, self.own));
            if let Some(key) = key {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn label_path(&self, iface: IfaceId) -> PathBuf {
        self.root
            .join(LABELS)
            .join(format!("{}-{}", iface.netns.0, iface.index.0))
    }

    /// Notes what a hooked interface is; kept as is when it says the same.
    pub fn write_label(&self, iface: IfaceId, text: &str) -> Result<(), PinError> {
        let path = self.label_path(iface);
        if std::fs::read_link(&path).is_ok_and(|t| t.as_os_str() == text) {
            return Ok(());
        }
        // A directory made by an agent from before labels.
        std::fs::create_dir_all(self.root.join(LABELS)).map_err(io_err(&self.root))?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&path)(e)),
            _ => {}
        }
        std::os::unix::fs::symlink(text, &path).map_err(io_err(&path))
    }

    /// Removes an interface's label; fine if it has none.
    pub fn remove_label(&self, iface: IfaceId) -> Result<(), PinError> {
        let path = self.label_path(iface);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    /// Every label there is, with its text.
    pub fn labels(&self) -> Result<Vec<(IfaceId, String)>, PinError> {
        let dir = self.root.join(LABELS);
        let mut found = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
            other => other.map_err(io_err(&dir))?,
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let Some(id) = entry.file_name().to_str().and_then(parse_iface) else {
                continue;
            };
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            if let Some(text) = target.to_str() {
                found.push((id, text.to_owned()));
            }
        }
        Ok(found)
    }

    /// The maps of this agent's ABI version, as pinned.
    pub fn maps_dir(&self) -> PathBuf {
        self.root.join(abi_dir(ABI_VERSION))
    }

    /// Map directories of other ABI versions, left by agents of those versions.
    pub fn other_abis(&self) -> Result<Vec<(u32, PathBuf)>, PinError> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let entry = entry.map_err(io_err(&self.root))?;
            let name = entry.file_name();
            let version = name
                .to_str()
                .and_then(|n| n.strip_prefix("abi-"))
                .and_then(|v| v.parse::<u32>().ok());
            if let Some(v) = version.filter(|v| *v != ABI_VERSION) {
                found.push((v, entry.path()));
            }
        }
        Ok(found)
    }

    /// Removes a map directory and the maps pinned in it (the maps go once
    /// no program uses them).
    pub fn remove_maps(dir: &Path) -> Result<(), PinError> {
        std::fs::remove_dir_all(dir).map_err(io_err(dir))
    }

    /// Removes everything left in the directory, links included (hooks whose
    /// links are unpinned detach once no process holds them), and the
    /// directory itself.
    pub fn remove_all(self) -> Result<(), PinError> {
        let root = self.root.clone();
        drop(self);
        std::fs::remove_dir_all(&root).map_err(io_err(&root))
    }
}

fn parse_iface(name: &str) -> Option<IfaceId> {
    let (cookie, index) = name.split_once('-')?;
    Some(IfaceId {
        netns: NetnsCookie(cookie.parse().ok()?),
        index: IfIndex(index.parse().ok()?),
    })
}

fn abi_dir(version: u32) -> String {
    format!("abi-{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_names_round_trip() {
        let own = NetnsCookie(1);
        let id = |netns, index| IfaceId {
            netns: NetnsCookie(netns),
            index: IfIndex(index),
        };
        for key in [
            LinkKey::new(id(1, 7), TcAttachType::Ingress),
            LinkKey::new(id(1, 4_000_000_000), TcAttachType::Egress),
            LinkKey::new(id(u64::MAX, 2), TcAttachType::Egress),
        ] {
            let name = key.file_name(own);
            assert_eq!(LinkKey::parse(&name, own), Some(key));
            assert!(!name.contains('.'));
        }
        // Own-namespace names are those of agents before pod-end hooks.
        assert_eq!(
            LinkKey::new(id(1, 7), TcAttachType::Ingress).file_name(own),
            "7-ingress"
        );
        assert_eq!(
            LinkKey::new(id(9, 2), TcAttachType::Egress).file_name(own),
            "9-2-egress"
        );
        for bad in [
            "7",
            "7-both",
            "x-ingress",
            "-ingress",
            "7-ingress-1",
            "x-2-egress",
            "1-2-3-egress",
        ] {
            assert_eq!(LinkKey::parse(bad, own), None, "{bad}");
        }
    }
}
