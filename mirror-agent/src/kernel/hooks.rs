//! Ownership of everything the agent puts in the kernel: the loaded eBPF
//! object, its maps, and every TC attachment. Dropping [`Hooks`] detaches all
//! of it, so no exit path (error, signal, panic unwind) leaves a hook behind,
//! unless it was told to keep its pins ([`Hooks::keep_pins`]): then the
//! pinned links and maps stay, hooks keep filling the ring buffer, and the
//! next agent adopts them (see [`crate::kernel::pin`]).

use std::{
    collections::{BTreeSet, HashMap as StdHashMap, HashSet},
    fmt,
    path::PathBuf,
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{
        Array, HashMap, MapData, PerCpuArray, PerCpuValues, ProgramArray,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    },
};
use mirror_common::{
    Counters, DIR_EGRESS, DIR_INGRESS, GLOBAL_NETNS_COOKIE, IfaceConfig, IfaceKey, MAIN_EGRESS,
    MAIN_INGRESS, MAP_CONFIG, MAP_COUNTERS, MAP_LPM_DST4, MAP_LPM_DST6, MAP_LPM_SRC4, MAP_LPM_SRC6,
    MAP_MAINS, MAP_NS_SCRATCH, MAP_NS_SELF, MAP_POLICIES, MAP_RECORDS, MAP_RULES, MAPS,
    MAX_INTERFACES, MAX_KERNEL_RULES, MAX_POLICIES, PROG_EGRESS, PROG_INGRESS, PROG_NS_EGRESS,
    PROG_NS_INGRESS,
};
use tracing::{debug, info, warn};

use crate::{
    kernel::{
        netns::{self, Namespace, NetnsError},
        pin::{LinkKey, PinDir, PinError},
        prefilter::PrefilterMaps,
        qdisc::{self, Action, QdiscError},
        ring::{Ring, RingError},
    },
    model::{
        direction::Directions,
        record::{IfIndex, IfaceId, NetnsCookie, PolicyId},
        values::{AttachMode, End},
    },
};

/// The eBPF object built by build.rs from `mirror-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror"));
/// The entry programs for other namespaces, a small object of their own
/// (`mirror-ebpf/src/entry.rs`), parsed and loaded once per namespace.
static ENTRY_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror-entry"));

/// Filter priority under netlink: 1 runs before filters added with the
/// default priority, as a CNI's usually are.
const NETLINK_PRIORITY: u16 = 1;

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

/// A network interface to hook: its name and index in its network
/// namespace, which is the agent's own or a pod's.
#[derive(Clone)]
pub struct Interface {
    pub name: String,
    /// What outputs and metrics call it: the name, or under `run` the pod
    /// (`NAMESPACE/POD`), as pods' own interfaces are all `eth0`.
    pub label: String,
    pub index: IfIndex,
    pub netns: NetnsCookie,
    /// Which end of a pod's link this is: a host end transmits what its pod
    /// receives. An interface named on the command line or in a policy file
    /// counts as the pod's own.
    pub end: End,
    /// The namespace, open, when it is not the agent's: hooks are attached
    /// from inside it.
    pub ns: Option<Arc<Namespace>>,
}

impl Interface {
    /// An interface of the agent's own namespace.
    pub fn local(name: String, index: IfIndex, netns: NetnsCookie, end: End) -> Self {
        Self {
            label: name.clone(),
            name,
            index,
            netns,
            end,
            ns: None,
        }
    }

    pub fn id(&self) -> IfaceId {
        IfaceId {
            netns: self.netns,
            index: self.index,
        }
    }

    /// The hook direction bits on this interface for a policy's directions
    /// as its pods see them.
    pub fn hook_bits(&self, directions: Directions) -> u32 {
        directions.hook_bits(self.end)
    }

    /// Runs `f` in the interface's namespace: here, or on a thread that
    /// entered the pod's.
    pub fn run_in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        match &self.ns {
            None => Ok(f()),
            Some(ns) => ns.run(f),
        }
    }

    /// Whether the interface is still there under its name and index, so an
    /// index reused by a new interface is not taken for the old one.
    pub fn exists(&self) -> bool {
        let name = self.name.as_str();
        self.run_in_ns(|| nix::net::if_::if_nametoindex(name))
            .is_ok_and(|i| i == Ok(self.index.0))
    }
}

// The open namespace is not part of what an interface is: the cookie names it.
impl PartialEq for Interface {
    fn eq(&self, other: &Self) -> bool {
        (&self.name, &self.label, self.index, self.netns, self.end)
            == (
                &other.name,
                &other.label,
                other.index,
                other.netns,
                other.end,
            )
    }
}
impl Eq for Interface {}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.label == self.name {
            f.write_str(&self.name)
        } else {
            write!(f, "{} ({})", self.label, self.name)
        }
    }
}

impl fmt::Debug for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interface")
            .field("name", &self.name)
            .field("label", &self.label)
            .field("index", &self.index.0)
            .field("netns", &self.netns.0)
            .field("end", &self.end)
            .finish()
    }
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
    /// Loads the object and both programs; attaches nothing yet. With a pin
    /// directory, maps already pinned there for this ABI version are used
    /// (with what they hold: config, counters, records not yet read), and
    /// new ones are pinned.
    pub fn load(ring_bytes: u32, pins: Option<PinDir>) -> Result<Self, HookError> {
        let own = netns::current_cookie().map_err(HookError::OwnNetns)?;
        let mut ebpf = load_object(ring_bytes, pins.as_ref(), own)?;
        // An earlier agent's entry programs, pinned in pods' namespaces,
        // run these mirror programs from now on.
        let mut mains_set = false;
        if let Some(path) = pins.as_ref().map(|p| p.map(MAP_MAINS))
            && path.exists()
        {
            let map = MapData::from_pin(&path).map_err(|source| map_err(MAP_MAINS, source))?;
            set_mains(&mut ebpf, aya::maps::Map::ProgramArray(map))?;
            mains_set = true;
        }
        let mut hooks = Self {
            ebpf,
            entry: None,
            own,
            attachments: Vec::new(),
            slots: StdHashMap::new(),
            pins,
            keep_pins: false,
            adopted: 0,
            mains_set,
            entry_loader: None,
        };
        let config: HashMap<_, IfaceKey, IfaceConfig> = hooks.map_ref(MAP_CONFIG)?;
        let pinned = config
            .iter()
            .map(|e| e.map(|(key, c)| (IfaceId::from_key(key), Slot(c.counter_slot))))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| map_err(MAP_CONFIG, source))?;
        hooks.slots.extend(pinned);
        Ok(hooks)
    }

    /// On drop (and [`Hooks::release`]), leave pinned hooks and maps in place
    /// for the next agent instead of removing them.
    pub fn keep_pins(&mut self, keep: bool) {
        self.keep_pins = keep;
    }

    /// Writes an interface's config (before attaching, so the hook never runs
    /// without it) and gives it a counter slot: its own if it had one (an
    /// adopted interface), else a free one, zeroed.
    pub fn configure(
        &mut self,
        iface: &Interface,
        mut config: IfaceConfig,
    ) -> Result<Slot, HookError> {
        let slot = match self.slots.get(&iface.id()) {
            Some(slot) => *slot,
            None => {
                let used: BTreeSet<u32> = self.slots.values().map(|s| s.0).collect();
                let free = (0..MAX_INTERFACES)
                    .find(|s| !used.contains(s))
                    .ok_or(HookError::TooManyInterfaces)?;
                self.zero_counters(free)?;
                self.slots.insert(iface.id(), Slot(free));
                Slot(free)
            }
        };
        config.counter_slot = slot.0;
        let mut map: HashMap<_, IfaceKey, IfaceConfig> = self.map(MAP_CONFIG)?;
        map.insert(iface.id().key(), config, 0)
            .map_err(|source| map_err(MAP_CONFIG, source))?;
        Ok(slot)
    }

    fn zero_counters(&mut self, slot: u32) -> Result<(), HookError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| HookError::Cpus(e))?;
        let zeros =
            PerCpuValues::try_from(vec![Counters::default(); cpus]).map_err(HookError::Cpus)?;
        let mut counters: PerCpuArray<_, Counters> = self.map(MAP_COUNTERS)?;
        counters
            .set(slot, zeros, 0)
            .map_err(|source| map_err(MAP_COUNTERS, source))
    }

    /// Writes a policy's kernel prefilter (before any of its interfaces is
    /// attached, so the hook never runs with half of it).
    pub fn configure_policy(
        &mut self,
        id: PolicyId,
        compiled: &PrefilterMaps,
    ) -> Result<(), HookError> {
        if id.0 >= MAX_POLICIES {
            return Err(HookError::TooManyPolicies(id.0));
        }
        for (i, rule) in compiled.rules.iter().enumerate() {
            let mut rules: Array<_, mirror_common::KernelRule> = self.map(MAP_RULES)?;
            rules
                .set(id.0 * MAX_KERNEL_RULES + i as u32, rule, 0)
                .map_err(|source| map_err(MAP_RULES, source))?;
        }
        for (name, entries) in [
            (MAP_LPM_SRC4, &compiled.src4),
            (MAP_LPM_DST4, &compiled.dst4),
        ] {
            self.lpm_replace(name, id, entries, |k| k.policy)?;
        }
        for (name, entries) in [
            (MAP_LPM_SRC6, &compiled.src6),
            (MAP_LPM_DST6, &compiled.dst6),
        ] {
            self.lpm_replace(name, id, entries, |k| k.policy)?;
        }
        let mut policies: Array<_, mirror_common::PolicyFilter> = self.map(MAP_POLICIES)?;
        policies
            .set(id.0, compiled.filter, 0)
            .map_err(|source| map_err(MAP_POLICIES, source))
    }

    /// Inserts a policy's prefixes, then removes any others of that policy
    /// (left by an earlier agent's version of it, in pinned maps): in that
    /// order, a running hook never sees the policy with none.
    fn lpm_replace<K: Pod + PartialEq>(
        &mut self,
        name: &'static str,
        id: PolicyId,
        entries: &[(u32, K, u64)],
        policy_of: impl Fn(&K) -> [u8; 4],
    ) -> Result<(), HookError> {
        let mut trie: LpmTrie<_, K, u64> = self.map(name)?;
        for (prefix_len, key, bits) in entries {
            trie.insert(&Key::new(*prefix_len, *key), bits, 0)
                .map_err(|source| map_err(name, source))?;
        }
        let stale: Vec<Key<K>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                policy_of(&k.data()) == id.0.to_be_bytes()
                    && !entries
                        .iter()
                        .any(|(len, key, _)| *len == k.prefix_len() && *key == k.data())
            })
            .collect();
        for key in stale {
            trie.remove(&key).map_err(|source| map_err(name, source))?;
        }
        Ok(())
    }

    fn map_ref<'a, T>(&'a self, name: &'static str) -> Result<T, HookError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map(name).ok_or(HookError::Missing(name))?;
        T::try_from(map).map_err(|source| map_err(name, source))
    }

    /// A typed view of one of our maps.
    fn map<'a, T>(&'a mut self, name: &'static str) -> Result<T, HookError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(HookError::Missing(name))?;
        T::try_from(map).map_err(|source| map_err(name, source))
    }

    /// The program to attach for `prog` in the interface's namespace: the
    /// mirror program itself in the agent's own, else the entry program of
    /// a copy for that namespace, loaded if it has none yet.
    fn program(
        &mut self,
        iface: &Interface,
        prog: &'static str,
    ) -> Result<&mut SchedClassifier, HookError> {
        if iface.netns == self.own {
            return classifier(&mut self.ebpf, prog);
        }
        let prog = if prog == PROG_INGRESS {
            PROG_NS_INGRESS
        } else {
            PROG_NS_EGRESS
        };
        let own_programs = &mut self.ebpf;
        let mains_set = &mut self.mains_set;
        let entry_loader = &mut self.entry_loader;
        if self.entry.as_ref().is_none_or(|(n, _)| *n != iface.netns) {
            let Some(pins) = &self.pins else {
                return Err(HookError::ForeignNeedsPins {
                    interface: iface.to_string(),
                });
            };
            let loader = entry_loader.get_or_insert_with(|| entry_loader_for(pins));
            let mut loaded = load_entry(loader, iface.netns)?;
            if !*mains_set {
                let mains = loaded
                    .take_map(MAP_MAINS)
                    .ok_or(HookError::Missing(MAP_MAINS))?;
                set_mains(own_programs, mains)?;
                *mains_set = true;
            }
            debug!(
                netns = iface.netns.0,
                "loaded the programs for another namespace"
            );
            self.entry = Some((iface.netns, loaded));
        }
        match &mut self.entry {
            Some((_, ebpf)) => classifier(ebpf, prog),
            None => Err(HookError::Missing(prog)),
        }
    }

    /// Attaches the hooks for `directions` (bits of `DIR_*`) to an interface.
    pub fn attach(
        &mut self,
        iface: &Interface,
        directions: u32,
        mode: AttachMode,
    ) -> Result<Mode, HookError> {
        let mut used = Ok(Mode::Tcx);
        for (bit, prog, kind) in [
            (DIR_INGRESS, PROG_INGRESS, TcAttachType::Ingress),
            (DIR_EGRESS, PROG_EGRESS, TcAttachType::Egress),
        ] {
            if directions & bit != 0 {
                used = self.attach_one(iface, prog, kind, mode);
                if used.is_err() {
                    break;
                }
            }
        }
        // The links hold the namespace's entry programs now; the parsed
        // object (about 100 KiB) is not kept per pod. Another interface of
        // that namespace loads a copy again.
        self.entry = None;
        used
    }

    fn attach_one(
        &mut self,
        iface: &Interface,
        prog: &'static str,
        kind: TcAttachType,
        mode: AttachMode,
    ) -> Result<Mode, HookError> {
        let key = LinkKey::new(iface.id(), kind);
        if let Some(a) = self.attachments.iter().find(|a| a.key == key) {
            return Ok(a.mode);
        }
        if let Some(adopted) = self.adopt(iface, prog, key)? {
            self.attachments.push(adopted);
            return Ok(Mode::Tcx);
        }
        let program = self.program(iface, prog)?;
        let netns_err = |source| HookError::Netns {
            interface: iface.to_string(),
            source,
        };
        let attach_err = |mode: Mode| {
            let interface = iface.to_string();
            move |source| HookError::Attach {
                interface,
                mode: mode.as_str(),
                source,
            }
        };
        if mode != AttachMode::Netlink {
            // First in the tcx chain, so no earlier program's verdict can hide packets from us.
            // tcx names the device by index in the calling thread's namespace.
            let tcx = iface
                .run_in_ns(|| {
                    program.attach_with_options(
                        &iface.name,
                        kind,
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                })
                .map_err(netns_err)?;
            match tcx {
                Ok(id) => {
                    let link = program.take_link(id).map_err(attach_err(Mode::Tcx))?;
                    let attachment = self.pin(iface, key, link)?;
                    self.attachments.push(attachment);
                    debug!(interface = %iface, ?kind, "attached with tcx");
                    return Ok(Mode::Tcx);
                }
                Err(source)
                    if mode == AttachMode::Tcx || self.pins.is_some() || iface.ns.is_some() =>
                {
                    return Err(attach_err(Mode::Tcx)(source));
                }
                Err(source) => {
                    warn!(interface = %iface, error = %source, "tcx attach failed; falling back to netlink");
                }
            }
        }
        if iface.ns.is_some() {
            return Err(HookError::ForeignNeedsTcx {
                interface: iface.to_string(),
            });
        }
        if self.pins.is_some() {
            return Err(HookError::PinNeedsTcx {
                interface: iface.to_string(),
            });
        }
        netlink_qdisc(iface, kind)?;
        let program = classifier(&mut self.ebpf, prog)?;
        let id = program
            .attach_with_options(
                &iface.name,
                kind,
                TcAttachOptions::Netlink(NlOptions {
                    priority: NETLINK_PRIORITY,
                    handle: TcHandle::AUTO_ASSIGN,
                    classid: None,
                }),
            )
            .map_err(attach_err(Mode::Netlink))?;
        let link = program.take_link(id).map_err(attach_err(Mode::Netlink))?;
        self.attachments.push(Attachment {
            key,
            mode: Mode::Netlink,
            link,
            pin: None,
        });
        debug!(interface = %iface, ?kind, "attached with netlink cls_bpf");
        Ok(Mode::Netlink)
    }

    /// Takes over a hook an earlier agent pinned for this interface and
    /// direction, moving it onto our program in one atomic link update: the
    /// interface is never without a hook. A pin whose link is gone (its
    /// interface was deleted and this index reused) is removed instead.
    fn adopt(
        &mut self,
        iface: &Interface,
        prog: &'static str,
        key: LinkKey,
    ) -> Result<Option<Attachment>, HookError> {
        let Some(path) = self.pins.as_ref().map(|p| p.link(key)) else {
            return Ok(None);
        };
        if !path.exists() {
            return Ok(None);
        }
        let pin_err = |reason: String| HookError::PinLink {
            interface: iface.to_string(),
            reason,
        };
        let pinned = PinnedLink::from_pin(&path).map_err(|e| pin_err(e.to_string()))?;
        let adopted = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|e| e.to_string())
            .and_then(|link| {
                let program = self.program(iface, prog).map_err(|e| e.to_string())?;
                let id = program.attach_to_link(link).map_err(|e| e.to_string())?;
                program.take_link(id).map_err(|e| e.to_string())
            });
        match adopted {
            Ok(link) => {
                self.adopted += 1;
                debug!(interface = %iface, kind = ?key.kind(), "adopted pinned hook");
                Ok(Some(Attachment {
                    key,
                    mode: Mode::Tcx,
                    link,
                    pin: Some(path),
                }))
            }
            Err(reason) => {
                warn!(interface = %iface, %reason, "pinned hook is gone; attaching anew");
                std::fs::remove_file(&path).map_err(|e| pin_err(e.to_string()))?;
                Ok(None)
            }
        }
    }

    /// Pins a fresh tcx link, if the agent pins at all.
    fn pin(
        &self,
        iface: &Interface,
        key: LinkKey,
        link: SchedClassifierLink,
    ) -> Result<Attachment, HookError> {
        let Some(path) = self.pins.as_ref().map(|p| p.link(key)) else {
            return Ok(Attachment {
                key,
                mode: Mode::Tcx,
                link,
                pin: None,
            });
        };
        let pin_err = |reason: String| HookError::PinLink {
            interface: iface.to_string(),
            reason,
        };
        let fd = FdLink::try_from(link).map_err(|e| pin_err(e.to_string()))?;
        let pinned = fd.pin(&path).map_err(|e| pin_err(e.to_string()))?;
        let link = SchedClassifierLink::try_from(FdLink::from(pinned))
            .map_err(|e| pin_err(e.to_string()))?;
        Ok(Attachment {
            key,
            mode: Mode::Tcx,
            link,
            pin: Some(path),
        })
    }

    /// After attaching everything asked for: removes pinned hooks and config
    /// of interfaces no longer asked for, and retires the maps of other ABI
    /// versions (their hooks have been moved onto ours by now).
    pub fn settle_pins(&mut self) -> Result<Adopted, HookError> {
        let mut adopted = Adopted {
            links: self.adopted,
            ..Adopted::default()
        };
        let Some(pins) = &self.pins else {
            return Ok(Adopted::default());
        };
        let ours: HashSet<LinkKey> = self.attachments.iter().map(|a| a.key).collect();
        for key in pins.links()? {
            if ours.contains(&key) {
                continue;
            }
            // Unpinning the only reference detaches it.
            let path = pins.link(key);
            std::fs::remove_file(&path).map_err(|source| PinError::Io { path, source })?;
            adopted.removed += 1;
        }
        let configured: HashSet<IfaceId> = self.attachments.iter().map(|a| a.key.iface).collect();
        for (version, dir) in pins.other_abis()? {
            let records = other_ring_records(&dir);
            warn!(version, records, dir = %dir.display(), "retiring the maps of another ABI version; records still in its ring are not read");
            PinDir::remove_maps(&dir)?;
            adopted.other_abis += 1;
            adopted.abandoned_records += records;
        }
        let stale: Vec<IfaceId> = self
            .slots
            .keys()
            .filter(|i| !configured.contains(i))
            .copied()
            .collect();
        let mut config: HashMap<_, IfaceKey, IfaceConfig> = self.map(MAP_CONFIG)?;
        for id in &stale {
            // Gone already if another agent removed it.
            let _ = config.remove(&id.key());
        }
        for id in stale {
            self.slots.remove(&id);
        }
        Ok(adopted)
    }

    /// Detaches every hook (or, keeping pins, lets go of them: they stay
    /// attached), keeping the maps so the ring can still be drained and the
    /// counters read. Failures are logged: the rest still go.
    pub fn detach_all(&mut self) {
        for Attachment { key, link, pin, .. } in self.attachments.drain(..) {
            match pin {
                Some(_) if self.keep_pins => {}
                Some(path) => {
                    if let Err(error) = std::fs::remove_file(&path) {
                        warn!(%error, path = %path.display(), "unpinning failed");
                    }
                }
                None => {}
            }
            // Dropping detaches a link that is no longer pinned.
            drop(link);
            debug!(ifindex = key.iface.index.0, netns = key.iface.netns.0, kind = ?key.kind(), "released hook");
        }
    }

    /// Whether any hook of ours is on the interface.
    pub fn is_attached(&self, iface: IfaceId) -> bool {
        self.attachments.iter().any(|a| a.key.iface == iface)
    }

    /// Stops mirroring one interface: detaches its hooks (unpinning them,
    /// kept pins or not: it is no longer wanted) and removes its config.
    /// An interface that has gone is fine: its hooks went with it.
    pub fn forget(&mut self, iface: IfaceId) -> Result<(), HookError> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attachments)
            .into_iter()
            .partition(|a| a.key.iface == iface);
        self.attachments = kept;
        for a in gone {
            if let Some(path) = &a.pin
                && let Err(error) = std::fs::remove_file(path)
            {
                warn!(%error, path = %path.display(), "unpinning failed");
            }
        }
        let mut config: HashMap<_, IfaceKey, IfaceConfig> = self.map(MAP_CONFIG)?;
        // Already gone if its interface was deleted.
        let _ = config.remove(&iface.key());
        self.slots.remove(&iface);
        Ok(())
    }

    /// After [`Hooks::detach_all`]: removes the pinned maps too, unless pins
    /// are kept. The maps themselves live on while this object holds them.
    pub fn remove_pins(&mut self) {
        if self.keep_pins {
            return;
        }
        if let Some(pins) = self.pins.take() {
            let root = pins.root().to_owned();
            match pins.remove_all() {
                Ok(()) => info!(pin_dir = %root.display(), "removed pins"),
                Err(error) => warn!(%error, "removing pins failed"),
            }
        }
    }

    /// Hands the ring buffer to its reader.
    pub fn take_ring(&mut self) -> Result<Ring, HookError> {
        let map = self
            .ebpf
            .take_map(MAP_RECORDS)
            .ok_or(HookError::Missing(MAP_RECORDS))?;
        let aya::maps::Map::RingBuf(data) = map else {
            return Err(HookError::Missing(MAP_RECORDS));
        };
        Ok(Ring::new(data)?)
    }

    /// One interface's counters, summed over CPUs.
    pub fn counters(&self, slot: Slot) -> Result<Counters, HookError> {
        let map = self
            .ebpf
            .map(MAP_COUNTERS)
            .ok_or(HookError::Missing(MAP_COUNTERS))?;
        let array: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(map).map_err(|source| map_err(MAP_COUNTERS, source))?;
        let per_cpu = array
            .get(&slot.0, 0)
            .map_err(|source| map_err(MAP_COUNTERS, source))?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        Ok(sum)
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        // Dropping the Ebpf object would detach too; doing it here logs failures.
        self.detach_all();
        self.remove_pins();
    }
}

/// Points the entry programs' tail calls at our mirror programs.
fn set_mains(own: &mut Ebpf, mains: aya::maps::Map) -> Result<(), HookError> {
    let mut mains = ProgramArray::try_from(mains).map_err(|source| map_err(MAP_MAINS, source))?;
    for (index, prog) in [(MAIN_INGRESS, PROG_INGRESS), (MAIN_EGRESS, PROG_EGRESS)] {
        let fd = classifier(own, prog)?
            .fd()
            .map_err(|source| HookError::Program { prog, source })?;
        mains
            .set(index, fd, 0)
            .map_err(|source| map_err(MAP_MAINS, source))?;
    }
    Ok(())
}

/// The loader of entry objects: sharing the pinned maps, with no kernel
/// BTF (there is no CO-RE to relocate; this drops what `new` parsed).
fn entry_loader_for(pins: &PinDir) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    give_back_freed_memory();
    for name in [MAP_NS_SCRATCH, MAP_MAINS] {
        loader.map_pin_path(name, pins.map(name));
    }
    loader
}

/// Parsing the kernel's BTF leaves megabytes freed but scattered in the
/// heap, which glibc keeps (20 MiB of RSS here): hand them back.
fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages; nothing is in use.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Loads the entry object and its two programs for interfaces of the
/// namespace `netns`, and tells them which namespace that is.
fn load_entry(loader: &mut EbpfLoader<'static>, netns: NetnsCookie) -> Result<Ebpf, HookError> {
    let mut ebpf = loader.load(ENTRY_OBJECT)?;
    let map = ebpf
        .map_mut(MAP_NS_SELF)
        .ok_or(HookError::Missing(MAP_NS_SELF))?;
    Array::<_, u64>::try_from(map)
        .and_then(|mut own| own.set(0, netns.0, 0))
        .map_err(|source| map_err(MAP_NS_SELF, source))?;
    for prog in [PROG_NS_INGRESS, PROG_NS_EGRESS] {
        classifier(&mut ebpf, prog)?
            .load()
            .map_err(|source| HookError::Program { prog, source })?;
    }
    Ok(ebpf)
}

/// Loads the object and its two mirror programs, for interfaces of the
/// namespace `netns`, with the maps pinned under `pins` (made there if
/// missing).
fn load_object(
    ring_bytes: u32,
    pins: Option<&PinDir>,
    netns: NetnsCookie,
) -> Result<Ebpf, HookError> {
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(MAP_RECORDS, ring_bytes);
    let cookie = netns.0;
    loader.override_global(GLOBAL_NETNS_COOKIE, &cookie, true);
    let paths: Vec<(&str, PathBuf)> = match pins {
        Some(p) => MAPS.iter().map(|m| (*m, p.map(m))).collect(),
        None => Vec::new(),
    };
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    for prog in [PROG_INGRESS, PROG_EGRESS] {
        classifier(&mut ebpf, prog)?
            .load()
            .map_err(|source| HookError::Program { prog, source })?;
    }
    Ok(ebpf)
}

/// How many records a retired ring of another ABI version still holds
/// (their layout is not ours, but the ring's own framing is the kernel's).
fn other_ring_records(dir: &std::path::Path) -> u64 {
    let Ok(map) = MapData::from_pin(dir.join(MAP_RECORDS)) else {
        return 0;
    };
    match Ring::new(map) {
        Ok(mut ring) => ring.read(|_| {}) as u64,
        Err(_) => 0,
    }
}

/// Makes sure the interface's ingress slot holds a qdisc that serves `kind`
/// before a netlink filter goes there: an `ingress` qdisc would accept an
/// egress filter but run it on inbound packets.
fn netlink_qdisc(iface: &Interface, kind: TcAttachType) -> Result<(), HookError> {
    let qdisc_err = |source| HookError::Qdisc {
        interface: iface.to_string(),
        source,
    };
    let slot = qdisc::ingress_slot(iface.index.0).map_err(qdisc_err)?;
    if qdisc::decide(&slot, kind).map_err(qdisc_err)? == Action::Attach {
        return Ok(());
    }
    match tc::qdisc_add_clsact(&iface.name) {
        Ok(()) => Ok(()),
        // Someone filled the slot since we looked (a CNI, or our own other
        // hook): it may be an `ingress` qdisc, so look again.
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc_eexist()) => {
            let slot = qdisc::ingress_slot(iface.index.0).map_err(qdisc_err)?;
            match qdisc::decide(&slot, kind).map_err(qdisc_err)? {
                Action::Attach => Ok(()),
                Action::AddClsact => Err(qdisc_err(QdiscError::Vanished)),
            }
        }
        Err(source) => Err(HookError::Clsact {
            interface: iface.to_string(),
            source,
        }),
    }
}

fn classifier<'a>(
    ebpf: &'a mut Ebpf,
    prog: &'static str,
) -> Result<&'a mut SchedClassifier, HookError> {
    ebpf.program_mut(prog)
        .ok_or(HookError::Missing(prog))?
        .try_into()
        .map_err(|source| HookError::Program { prog, source })
}

fn map_err(map: &'static str, source: aya::maps::MapError) -> HookError {
    HookError::Map { map, source }
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_bits_swap_at_the_host_end() {
        let at = |end| Interface::local("veth0".into(), IfIndex(3), NetnsCookie(1), end);
        for (pod, host) in [
            (Directions::Ingress, DIR_EGRESS),
            (Directions::Egress, DIR_INGRESS),
            (Directions::Both, DIR_INGRESS | DIR_EGRESS),
        ] {
            assert_eq!(at(End::Pod).hook_bits(pod), pod.pod_end_bits());
            assert_eq!(at(End::Host).hook_bits(pod), host);
        }
    }
}
