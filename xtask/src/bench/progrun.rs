//! The hook's program alone: `BPF_PROG_TEST_RUN` in repeat mode on the
//! ingress program attached to the hooked interface, with the bench's
//! 64-byte UDP frame, as if it had arrived on that interface. No traffic,
//! no statistics: the kernel times the loop around the program itself.
//! That loop has a cost of its own (it resets the skb between runs), which
//! the same test run of a program that returns at once measures: the floor.
//!
//! aya 0.14 runs a test only on a program it loaded itself (`TestRun` on
//! `SchedClassifier`), not on one found by id as the agent's are here, so
//! the `bpf_attr` of this one command is written out below, as the
//! kernel's uapi `linux/bpf.h` lays it out. The floor is the test bed's
//! two-instruction pass program (`testbed::rawbpf::TcProgram::pass`).

use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result, ensure};
use aya::programs::{SchedClassifier, TcAttachType};
use nix::{errno::Errno, libc, net::if_::if_nametoindex};
use testbed::{
    netns::{Netns, join},
    rawbpf::TcProgram,
};

use super::topology::{BenchNet, CLIENT_V4, SERVER_V4, UDP_SINK_PORT};

/// Runs per measurement: long enough (~0.1 s) that the timer's own cost is noise.
pub const REPEAT: u32 = 1_000_000;

/// `BPF_PROG_TEST_RUN` (alias `BPF_PROG_RUN`) in `enum bpf_cmd`.
const BPF_PROG_TEST_RUN: libc::c_long = 10;
/// What one test run measured, in ns per run.
#[derive(Clone, Copy, Debug)]
pub struct ProgRun {
    /// Our ingress program.
    pub program_ns: f64,
    /// A program that returns at once: the harness's own cost.
    pub floor_ns: f64,
}

/// The `test` member of `union bpf_attr` (linux/bpf.h), padded to 8 bytes;
/// the kernel requires whatever follows its last field to be zero.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}
const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 80);

/// The head of `struct __sk_buff` up to `ifindex` (offset 40): the kernel
/// takes the packet's device from it, and requires the rest to be zero.
#[repr(C)]
#[derive(Default)]
struct SkbCtx {
    words: [u32; 10],
    ifindex: u32,
}
const _: () = assert!(std::mem::size_of::<SkbCtx>() == 44);

/// ns per run of our ingress program on `iface` in `ns`, and of the
/// floor program on the same frame and device, as `BPF_PROG_TEST_RUN`
/// reports them (its total ÷ `REPEAT`).
pub fn ns_per_run(ns: &Netns, iface: &str, frame: Vec<u8>) -> Result<ProgRun> {
    let iface = iface.to_owned();
    join(ns.spawn(move || {
        let (_, progs) = SchedClassifier::query_tcx(&iface, TcAttachType::Ingress)
            .with_context(|| format!("querying the tcx programs of {iface}"))?;
        let prog = progs
            .into_iter()
            .find(|p| p.name_as_str().is_some_and(|n| n.starts_with("mirror_")))
            .with_context(|| format!("no mirror_* program on {iface}'s tcx ingress"))?;
        let fd = prog.fd().context("opening the program by id")?;
        let ifindex =
            if_nametoindex(iface.as_str()).with_context(|| format!("ifindex of {iface}"))?;
        let program_ns = test_run(fd.as_fd().as_raw_fd(), ifindex, &frame)
            .with_context(|| format!("BPF_PROG_TEST_RUN on {iface}'s mirror program"))?;
        let floor = TcProgram::pass().context("loading the floor program")?;
        let floor_ns = test_run(floor.fd().as_raw_fd(), ifindex, &frame)
            .context("BPF_PROG_TEST_RUN on the floor program")?;
        Ok(ProgRun {
            program_ns,
            floor_ns,
        })
    }))
}

/// ns per run of program `fd` on `frame`, received on device `ifindex`.
fn test_run(fd: i32, ifindex: u32, frame: &[u8]) -> Result<f64> {
    let ctx = SkbCtx {
        ifindex,
        ..SkbCtx::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(fd).context("program fd")?,
        data_size_in: u32::try_from(frame.len()).context("frame length")?,
        data_in: frame.as_ptr() as u64,
        repeat: REPEAT,
        ctx_size_in: std::mem::size_of::<SkbCtx>() as u32,
        ctx_in: std::ptr::addr_of!(ctx) as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size given, and
    // the buffers it points to (frame, ctx) outlive the call; with no
    // output buffers the kernel writes only into `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    ensure!(rc == 0, "{}", Errno::last());
    // TC_ACT_UNSPEC (-1): the program hands the packet on, as always.
    ensure!(
        attr.retval as i32 == -1,
        "the program returned {} under test, not TC_ACT_UNSPEC",
        attr.retval as i32
    );
    Ok(f64::from(attr.duration))
}

/// The bench's 64-byte UDP frame, client -> server (as trafgen sends it,
/// see `measure::write_trafgen_config`), with a valid IPv4 checksum.
pub fn udp_frame(net: &BenchNet) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend(net.host_mac);
    f.extend(net.client_mac);
    f.extend([0x08, 0x00]);
    let mut ip = [
        0x45, 0x00, 0x00, 0x32, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    ip[12..16].copy_from_slice(&CLIENT_V4.octets());
    ip[16..20].copy_from_slice(&SERVER_V4.octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let folded = (sum & 0xffff) + (sum >> 16);
    let csum = !((folded & 0xffff) + (folded >> 16)) as u16;
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend(ip);
    f.extend([0x30, 0x39]);
    f.extend(UDP_SINK_PORT.to_be_bytes());
    f.extend([0x00, 0x1e, 0x00, 0x00]);
    f.resize(64, 0x5a);
    f
}
