//! Ownership of everything the agent puts in the kernel: the loaded eBPF
//! object, its maps, and every TC attachment. Dropping [`Hooks`] detaches all
//! of it, so no exit path (error, signal, panic unwind) leaves a hook behind,
//! unless it was told to keep its pins ([`Hooks::keep_pins`]): then the
//! pinned links and maps stay, hooks keep filling the ring buffer, and the
//! next agent adopts them (see [`crate::kernel::pin`]).
//!
//! The parts: `interface.rs` what is hooked; `objects.rs` the embedded
//! eBPF objects; `load.rs` their loading; `maps.rs` what the agent writes
//! and reads in their maps; `links.rs` attaching and detaching; `adopt.rs`
//! the pins: taking over an earlier agent's hooks, pinning new ones, and
//! clearing what is no longer wanted; `run.rs` one run of a program on a
//! frame, for the tests.

mod adopt;
mod interface;
mod links;
mod load;
mod maps;
mod objects;
mod run;

use std::{collections::HashMap as StdHashMap, path::PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::tc::{SchedClassifierLink, TcError},
};
use mirror_common::{MAX_INTERFACES, MAX_POLICIES};

pub use self::{interface::Interface, run::FrameRun};
use crate::{
    kernel::{
        netns::NetnsError,
        pin::{LinkKey, PinDir, PinError},
        qdisc::QdiscError,
        ring::RingError,
    },
    model::record::{IfaceId, NetnsCookie},
};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("loading program {prog} into the kernel failed: {source}")]
    Program {
        prog: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("attaching to {interface} ({mode}) failed: {source}")]
    Attach {
        interface: String,
        mode: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("adding the clsact qdisc to {interface} failed: {source}")]
    Clsact { interface: String, source: TcError },
    #[error("cannot attach to {interface} with netlink: {source}")]
    Qdisc {
        interface: String,
        source: QdiscError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },
    #[error("more than {MAX_INTERFACES} interfaces")]
    TooManyInterfaces,
    #[error("policy id {0} is out of range (at most {MAX_POLICIES} policies)")]
    TooManyPolicies(u32),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("pinning the hook on {interface}: {reason}")]
    PinLink { interface: String, reason: String },
    #[error(
        "{interface}: pinned hooks need tcx (Linux 6.6 or later); netlink filters cannot be \
         pinned. Drop --pin-dir, or use --attach-mode tcx"
    )]
    PinNeedsTcx { interface: String },
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("counting the possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("attaching to {interface}: {source}")]
    Netns {
        interface: String,
        source: NetnsError,
    },
    #[error(
        "{interface}: an interface in another network namespace can only be hooked with tcx \
         (Linux 6.6 or later)"
    )]
    ForeignNeedsTcx { interface: String },
    #[error(
        "{interface}: an interface in another network namespace can only be hooked with a pin \
         directory, through which its programs share the maps"
    )]
    ForeignNeedsPins { interface: String },
    #[error("the agent's own network namespace: {0}")]
    OwnNetns(NetnsError),
}

/// Counter slot of one interface in the per-CPU counters map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(u32);

/// How a hook was actually attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Tcx,
    Netlink,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        }
    }
}

struct Attachment {
    key: LinkKey,
    mode: Mode,
    /// Dropping it detaches, unless it is pinned.
    link: SchedClassifierLink,
    pin: Option<PathBuf>,
}

/// What adoption found and did, for the log and the tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct Adopted {
    /// Hooks taken over from pins, their program replaced atomically.
    pub links: usize,
    /// Hooks pinned for interfaces no longer asked for, removed.
    pub removed: usize,
    /// Map sets of other ABI versions retired, and what their rings still held.
    pub other_abis: usize,
    pub abandoned_records: u64,
}

pub struct Hooks {
    /// The programs for the agent's own namespace, and every map.
    ebpf: Ebpf,
    /// The entry programs of the pod namespace being attached, sharing the
    /// maps through their pins (`PROG_NS_INGRESS`). Dropped once both hooks
    /// hold them: nothing per pod is kept.
    entry: Option<(NetnsCookie, Ebpf)>,
    own: NetnsCookie,
    attachments: Vec<Attachment>,
    /// Counter slot of each configured interface; carried over from pinned
    /// config, so an adopted interface keeps its counters.
    slots: StdHashMap<IfaceId, Slot>,
    pins: Option<PinDir>,
    keep_pins: bool,
    /// Hooks taken over from pins so far.
    adopted: usize,
    /// Loads the entry object for each namespace. One for all: creating a
    /// loader reads and parses the kernel's BTF, megabytes of it, which
    /// would cost every pod tens of milliseconds.
    entry_loader: Option<EbpfLoader<'static>>,
    /// Whether the pinned `MAP_MAINS` holds our mirror programs. Set once:
    /// each update of a tail-call array patches the JITed callers, which
    /// takes the kernel tens of milliseconds.
    mains_set: bool,
}

impl Hooks {
    /// On drop (and [`Hooks::release`]), leave pinned hooks and maps in place
    /// for the next agent instead of removing them.
    pub fn keep_pins(&mut self, keep: bool) {
        self.keep_pins = keep;
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        // Dropping the Ebpf object would detach too; doing it here logs failures.
        self.detach_all();
        self.remove_pins();
    }
}

fn map_err(map: &'static str, source: aya::maps::MapError) -> HookError {
    HookError::Map { map, source }
}
