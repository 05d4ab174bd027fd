//! TC programs of the test's own, standing in for a CNI's datapath: a few
//! hand-assembled instructions loaded with raw `bpf(2)` calls (there is no
//! clang on these machines, and the agent's object must not be the one
//! under test), attached with tcx links that detach when dropped.
//!
//! - [`TcProgram::redirect_peer`]: `return bpf_redirect_peer(IFINDEX, 0)`,
//!   what Cilium does to deliver into a pod: the packet jumps from a tc
//!   ingress hook straight into the peer of veth IFINDEX, skipping that
//!   veth's own transmit path (and its egress hook);
//! - [`TcProgram::pass`]: `return TCX_NEXT`, a program that only runs.

use std::{
    mem::size_of,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use anyhow::{Context, Result, bail};
use aya::programs::{SchedClassifier, TcAttachType};
use nix::libc;

use crate::netns::{Netns, join};

// bpf(2) commands, program type, attach types and helper id, from
// include/uapi/linux/bpf.h.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const BPF_FUNC_REDIRECT_PEER: i32 = 155;
/// tcx: go on to the next program in the chain.
const TCX_NEXT: i32 = -1;

/// One eBPF instruction (`struct bpf_insn`): opcode, dst and src registers
/// in one byte (dst in the low nibble), offset, immediate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// `dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
const fn mov64_imm(dst: u8, imm: i32) -> Insn {
    Insn {
        code: 0xb7,
        regs: dst,
        off: 0,
        imm,
    }
}

/// `r0 = helper(r1..r5)` (BPF_JMP | BPF_CALL).
const fn call(helper: i32) -> Insn {
    Insn {
        code: 0x85,
        regs: 0,
        off: 0,
        imm: helper,
    }
}

/// `return r0` (BPF_JMP | BPF_EXIT).
const EXIT: Insn = Insn {
    code: 0x95,
    regs: 0,
    off: 0,
    imm: 0,
};

/// The `BPF_PROG_LOAD` part of `union bpf_attr`, up to the last field set;
/// the kernel zero-fills the rest of the union.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// The `BPF_LINK_CREATE` part for tcx: prog, interface, attach type,
/// flags, then the tcx relative fd and expected revision (0: append, any).
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    relative_fd: u32,
    _pad: u32,
    expected_revision: u64,
}

/// The `BPF_OBJ_GET_INFO_BY_FD` part.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// `bpf(cmd, attr, sizeof attr)`; a new fd or 0 on success.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<RawFd> {
    // SAFETY: attr is a live, initialised #[repr(C)] prefix of union
    // bpf_attr for this command, and its size is passed; every pointer in
    // it points at memory that outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            size_of::<T>(),
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    RawFd::try_from(ret).map_err(|_| std::io::Error::other("bpf(2) returned no fd"))
}

/// A tc hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn attach_type(self) -> u32 {
        match self {
            Self::Ingress => BPF_TCX_INGRESS,
            Self::Egress => BPF_TCX_EGRESS,
        }
    }

    fn aya(self) -> TcAttachType {
        match self {
            Self::Ingress => TcAttachType::Ingress,
            Self::Egress => TcAttachType::Egress,
        }
    }
}

/// A loaded program; unloaded when dropped with all its links.
pub struct TcProgram {
    fd: OwnedFd,
    id: u32,
    name: &'static str,
}

impl TcProgram {
    /// `return bpf_redirect_peer(ifindex, 0)`: every packet goes into the
    /// peer of veth `ifindex` (an index of the namespace it runs in). Only
    /// valid on a tc ingress hook.
    pub fn redirect_peer(ifindex: u32) -> Result<Self> {
        let ifindex = i32::try_from(ifindex).context("ifindex")?;
        Self::load(
            "mt_redir_peer",
            &[
                mov64_imm(1, ifindex),
                mov64_imm(2, 0),
                call(BPF_FUNC_REDIRECT_PEER),
                EXIT,
            ],
        )
    }

    /// `return TCX_NEXT`: runs and passes every packet on.
    pub fn pass() -> Result<Self> {
        Self::load("mt_pass", &[mov64_imm(0, TCX_NEXT), EXIT])
    }

    fn load(name: &'static str, insns: &[Insn]) -> Result<Self> {
        let license = c"GPL";
        let mut log = vec![0u8; 64 * 1024];
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: u32::try_from(insns.len())?,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            // The verifier's log, for a readable failure.
            log_level: 1,
            log_size: u32::try_from(log.len())?,
            log_buf: log.as_mut_ptr() as u64,
            ..Default::default()
        };
        attr.prog_name[..name.len()].copy_from_slice(name.as_bytes());
        let fd = bpf(BPF_PROG_LOAD, &mut attr).map_err(|e| {
            let text = String::from_utf8_lossy(&log);
            anyhow::anyhow!(
                "loading {name}: {e}\nverifier: {}",
                text.trim_end_matches('\0')
            )
        })?;
        // SAFETY: a new fd, owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let id = prog_id(&fd)?;
        Ok(Self { fd, id, name })
    }

    /// The program's descriptor, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The kernel's id of the program.
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Attaches at the end of `interface`'s tcx `hook` chain in `ns`.
    pub fn attach(&self, ns: &Netns, interface: &str, hook: Hook) -> Result<TcxLink> {
        let prog_fd = u32::try_from(self.fd.as_raw_fd())?;
        let iface = interface.to_owned();
        let fd = join(ns.spawn(move || {
            // The link names the interface by index, resolved in the
            // calling thread's namespace: this one's.
            let ifindex = nix::net::if_::if_nametoindex(iface.as_str())
                .with_context(|| format!("no interface {iface}"))?;
            let mut attr = LinkCreateAttr {
                prog_fd,
                target_ifindex: ifindex,
                attach_type: hook.attach_type(),
                ..Default::default()
            };
            let fd = bpf(BPF_LINK_CREATE, &mut attr)
                .with_context(|| format!("attaching to tcx {hook:?} of {iface}"))?;
            // SAFETY: a new fd, owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }))?;
        Ok(TcxLink { _fd: fd })
    }
}

/// A tcx link: closing its fd (it is never pinned) detaches the program.
pub struct TcxLink {
    _fd: OwnedFd,
}

/// The id of a loaded program: the first two words of `bpf_prog_info`
/// (type, id); the kernel fills no more than the length asked for.
fn prog_id(fd: &OwnedFd) -> Result<u32> {
    let mut info = [0u32; 2];
    let mut attr = InfoAttr {
        bpf_fd: u32::try_from(fd.as_raw_fd())?,
        info_len: u32::try_from(size_of::<[u32; 2]>())?,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("reading the program's info")?;
    if info[1] == 0 {
        bail!("the kernel gave the program no id");
    }
    Ok(info[1])
}

/// One program on a tcx chain, as the kernel lists it (through aya).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chained {
    pub id: u32,
    pub name: String,
    /// Runs counted while [`Stats`] is held.
    pub run_count: u64,
}

/// The programs on `interface`'s tcx `hook` in `ns`, in run order.
pub fn chain(ns: &Netns, interface: &str, hook: Hook) -> Result<Vec<Chained>> {
    let iface = interface.to_owned();
    join(ns.spawn(move || {
        let (_, infos) = SchedClassifier::query_tcx(&iface, hook.aya())
            .with_context(|| format!("querying tcx {hook:?} of {iface}"))?;
        Ok(infos
            .iter()
            .map(|i| Chained {
                id: i.id(),
                name: i.name_as_str().unwrap_or_default().to_owned(),
                run_count: i.run_count(),
            })
            .collect())
    }))
}

/// The kernel counts program runs while this is held (`BPF_ENABLE_STATS`:
/// reference-counted, so other holders are unaffected, and dropping it
/// restores whatever `kernel.bpf_stats_enabled` says).
pub struct Stats {
    _fd: OwnedFd,
}

impl Stats {
    pub fn enable() -> Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("enabling BPF run statistics")?;
        Ok(Self { _fd: fd })
    }
}
