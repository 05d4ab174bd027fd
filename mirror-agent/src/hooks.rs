//! Ownership of everything the agent puts in the kernel: the loaded eBPF
//! object, its maps, and every TC attachment. Dropping [`Hooks`] detaches all
//! of it, so no exit path (error, signal, panic unwind) leaves a hook behind.

use aya::{
    Ebpf, EbpfLoader, Pod,
    maps::{
        Array, HashMap, MapData, PerCpuArray, RingBuf,
        lpm_trie::{Key, LpmTrie},
    },
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError, TcHandle},
    },
};
use mirror_common::{
    Counters, DIR_EGRESS, DIR_INGRESS, IfaceConfig, MAP_CONFIG, MAP_COUNTERS, MAP_LPM_DST4,
    MAP_LPM_DST6, MAP_LPM_SRC4, MAP_LPM_SRC6, MAP_POLICIES, MAP_RECORDS, MAP_RULES, MAX_INTERFACES,
    MAX_KERNEL_RULES, MAX_POLICIES, PROG_EGRESS, PROG_INGRESS,
};
use tracing::{debug, warn};

use crate::{
    cli::AttachMode,
    kfilter::Compiled,
    qdisc::{self, Action, QdiscError},
    record::{IfIndex, PolicyId},
};

/// The eBPF object built by build.rs from `mirror-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mirror"));

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
}

/// A network interface of the agent's namespace, resolved from its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: IfIndex,
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
    prog: &'static str,
    link: SchedClassifierLinkId,
}

pub struct Hooks {
    ebpf: Ebpf,
    attachments: Vec<Attachment>,
    slots: u32,
}

impl Hooks {
    /// Loads the object and both programs; attaches nothing yet.
    pub fn load(ring_bytes: u32) -> Result<Self, HookError> {
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(MAP_RECORDS, ring_bytes)
            .load(EBPF_OBJECT)?;
        for prog in [PROG_INGRESS, PROG_EGRESS] {
            classifier(&mut ebpf, prog)?
                .load()
                .map_err(|source| HookError::Program { prog, source })?;
        }
        Ok(Self {
            ebpf,
            attachments: Vec::new(),
            slots: 0,
        })
    }

    /// Writes an interface's config (before attaching, so the hook never runs
    /// without it) and gives it a fresh counter slot.
    pub fn configure(
        &mut self,
        iface: &Interface,
        mut config: IfaceConfig,
    ) -> Result<Slot, HookError> {
        if self.slots >= MAX_INTERFACES {
            return Err(HookError::TooManyInterfaces);
        }
        let slot = Slot(self.slots);
        self.slots += 1;
        config.counter_slot = slot.0;
        let map = self
            .ebpf
            .map_mut(MAP_CONFIG)
            .ok_or(HookError::Missing(MAP_CONFIG))?;
        let mut map: HashMap<_, u32, IfaceConfig> =
            HashMap::try_from(map).map_err(|source| map_err(MAP_CONFIG, source))?;
        map.insert(iface.index.0, config, 0)
            .map_err(|source| map_err(MAP_CONFIG, source))?;
        Ok(slot)
    }

    /// Writes a policy's kernel prefilter (before any of its interfaces is
    /// attached, so the hook never runs with half of it).
    pub fn configure_policy(&mut self, id: PolicyId, compiled: &Compiled) -> Result<(), HookError> {
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
            self.lpm_insert(name, entries)?;
        }
        for (name, entries) in [
            (MAP_LPM_SRC6, &compiled.src6),
            (MAP_LPM_DST6, &compiled.dst6),
        ] {
            self.lpm_insert(name, entries)?;
        }
        let mut policies: Array<_, mirror_common::PolicyFilter> = self.map(MAP_POLICIES)?;
        policies
            .set(id.0, compiled.filter, 0)
            .map_err(|source| map_err(MAP_POLICIES, source))
    }

    fn lpm_insert<K: Pod>(
        &mut self,
        name: &'static str,
        entries: &[(u32, K, u64)],
    ) -> Result<(), HookError> {
        let mut trie: LpmTrie<_, K, u64> = self.map(name)?;
        for (prefix_len, key, bits) in entries {
            trie.insert(&Key::new(*prefix_len, *key), bits, 0)
                .map_err(|source| map_err(name, source))?;
        }
        Ok(())
    }

    /// A typed view of one of our maps.
    fn map<'a, T>(&'a mut self, name: &'static str) -> Result<T, HookError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(HookError::Missing(name))?;
        T::try_from(map).map_err(|source| map_err(name, source))
    }

    /// Attaches the hooks for `directions` (bits of `DIR_*`) to an interface.
    pub fn attach(
        &mut self,
        iface: &Interface,
        directions: u32,
        mode: AttachMode,
    ) -> Result<Mode, HookError> {
        let mut used = Mode::Tcx;
        for (bit, prog, kind) in [
            (DIR_INGRESS, PROG_INGRESS, TcAttachType::Ingress),
            (DIR_EGRESS, PROG_EGRESS, TcAttachType::Egress),
        ] {
            if directions & bit != 0 {
                used = self.attach_one(iface, prog, kind, mode)?;
            }
        }
        Ok(used)
    }

    fn attach_one(
        &mut self,
        iface: &Interface,
        prog: &'static str,
        kind: TcAttachType,
        mode: AttachMode,
    ) -> Result<Mode, HookError> {
        let program = classifier(&mut self.ebpf, prog)?;
        let attach_err = |mode: Mode| {
            let interface = iface.name.clone();
            move |source| HookError::Attach {
                interface,
                mode: mode.as_str(),
                source,
            }
        };
        if mode != AttachMode::Netlink {
            // First in the tcx chain, so no earlier program's verdict can hide packets from us.
            let tcx = program.attach_with_options(
                &iface.name,
                kind,
                TcAttachOptions::TcxOrder(LinkOrder::first()),
            );
            match tcx {
                Ok(link) => {
                    self.attachments.push(Attachment { prog, link });
                    debug!(interface = %iface.name, ?kind, "attached with tcx");
                    return Ok(Mode::Tcx);
                }
                Err(source) if mode == AttachMode::Tcx => {
                    return Err(attach_err(Mode::Tcx)(source));
                }
                Err(source) => {
                    warn!(interface = %iface.name, error = %source, "tcx attach failed; falling back to netlink");
                }
            }
        }
        netlink_qdisc(iface, kind)?;
        let program = classifier(&mut self.ebpf, prog)?;
        let link = program
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
        self.attachments.push(Attachment { prog, link });
        debug!(interface = %iface.name, ?kind, "attached with netlink cls_bpf");
        Ok(Mode::Netlink)
    }

    /// Detaches every hook, keeping the maps so the ring can still be drained
    /// and the counters read. Failures are logged: the rest still detach.
    pub fn detach_all(&mut self) {
        for Attachment { prog, link } in self.attachments.drain(..) {
            match classifier(&mut self.ebpf, prog) {
                Ok(program) => {
                    if let Err(error) = program.detach(link) {
                        warn!(%error, prog, "detaching failed");
                    }
                }
                Err(error) => warn!(%error, "detaching failed"),
            }
        }
    }

    /// Hands the ring buffer to its reader.
    pub fn take_ring(&mut self) -> Result<RingBuf<MapData>, HookError> {
        let map = self
            .ebpf
            .take_map(MAP_RECORDS)
            .ok_or(HookError::Missing(MAP_RECORDS))?;
        RingBuf::try_from(map).map_err(|source| map_err(MAP_RECORDS, source))
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
    }
}

/// Makes sure the interface's ingress slot holds a qdisc that serves `kind`
/// before a netlink filter goes there: an `ingress` qdisc would accept an
/// egress filter but run it on inbound packets.
fn netlink_qdisc(iface: &Interface, kind: TcAttachType) -> Result<(), HookError> {
    let qdisc_err = |source| HookError::Qdisc {
        interface: iface.name.clone(),
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
            interface: iface.name.clone(),
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
