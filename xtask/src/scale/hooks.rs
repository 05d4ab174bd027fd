//! Which pod ends carry the agent's tcx hooks, asked of the kernel
//! (BPF_PROG_QUERY) every [`POLL`] while the agent attaches or detaches.
//!
//! The ends may be in many namespaces (the pods' `eth0`, with
//! `--attach-point pod`) or in one (the host ends, in the node's), and tcx
//! names a device in the calling thread's namespace. So one watcher thread
//! of its own enters each end's namespace in turn (`setns`) before asking,
//! and ends when the phase does: no other work ever runs on a thread that
//! has moved.

use std::{
    fs::File,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use aya::programs::{SchedClassifier, TcAttachType};
use nix::sched::{CloneFlags, setns};

use super::{GIVE_UP, POLL, PROGS_EGRESS, PROGS_INGRESS, report, topology::End};
use crate::bench::measure;

/// What the watcher waits for on every end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    /// Both our programs (ingress and egress).
    Attached,
    /// Neither of them.
    Detached,
}

/// When each end reached the wanted state.
pub struct HookTimes {
    /// Since the phase started; `None`: not within [`GIVE_UP`].
    pub at: Vec<Option<Duration>>,
    /// The agent's CPU time (ns) when the last one did.
    pub cpu_at_done: Option<f64>,
}

impl HookTimes {
    pub fn count(&self) -> usize {
        self.at.iter().flatten().count()
    }

    pub fn last(&self) -> Option<Duration> {
        report::all_done(&self.at)
    }
}

/// Asks the kernel every [`POLL`], from a thread of its own, which of
/// `ends` are as wanted, until all are, [`GIVE_UP`] passes, or `cancel` is
/// raised. Ends are asked until they get there, not after.
pub fn watch(
    ends: Vec<End>,
    want: Want,
    start: Instant,
    pid: u32,
    cancel: Arc<AtomicBool>,
) -> Result<thread::JoinHandle<Result<HookTimes>>> {
    thread::Builder::new()
        .name("scale-hooks".to_owned())
        .spawn(move || watch_on_this_thread(&ends, want, start, pid, &cancel))
        .context("starting the hook watcher thread")
}

/// [`watch`]'s loop. It moves the calling thread between namespaces: call
/// it only on a thread that ends with it.
fn watch_on_this_thread(
    ends: &[End],
    want: Want,
    start: Instant,
    pid: u32,
    cancel: &AtomicBool,
) -> Result<HookTimes> {
    let mut times = HookTimes {
        at: vec![None; ends.len()],
        cpu_at_done: None,
    };
    // The namespace this thread is in, once it has entered one of ours:
    // the host ends are all in the node's, entered once.
    let mut here: Option<&Path> = None;
    let mut left: Vec<usize> = (0..ends.len()).collect();
    loop {
        let round = Instant::now();
        let mut still = Vec::with_capacity(left.len());
        for i in left {
            let end = &ends[i];
            if here != Some(end.netns.as_path()) {
                enter(&end.netns)?;
                here = Some(&end.netns);
            }
            let ours = our_hooks(&end.iface)
                .with_context(|| format!("in network namespace {}", end.netns.display()))?;
            let there = match want {
                Want::Attached => ours == 2,
                Want::Detached => ours == 0,
            };
            if there {
                times.at[i] = Some(start.elapsed());
            } else {
                still.push(i);
            }
        }
        left = still;
        if left.is_empty() {
            times.cpu_at_done = measure::process_cpu_ns(pid).ok();
            break;
        }
        if cancel.load(Ordering::SeqCst) || start.elapsed() > GIVE_UP {
            break;
        }
        thread::sleep(POLL.saturating_sub(round.elapsed()));
    }
    Ok(times)
}

/// Moves the calling thread into the network namespace bound at `path`.
fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering network namespace {}", path.display()))
}

/// On how many of `iface`'s tcx hooks (ingress, egress) one of our
/// programs for that direction is, by BPF_PROG_QUERY in the calling
/// thread's namespace.
fn our_hooks(iface: &str) -> Result<usize> {
    let mut n = 0;
    for (kind, label, ours) in [
        (TcAttachType::Ingress, "ingress", PROGS_INGRESS),
        (TcAttachType::Egress, "egress", PROGS_EGRESS),
    ] {
        let (_, progs) = SchedClassifier::query_tcx(iface, kind)
            .with_context(|| format!("querying tcx {label} of {iface}"))?;
        if progs
            .iter()
            .any(|p| p.name_as_str().is_some_and(|name| is_one_of(name, &ours)))
        {
            n += 1;
        }
    }
    Ok(n)
}

/// The kernel keeps a program's name to [`KERNEL_NAME_LEN`] bytes
/// (BPF_OBJ_NAME_LEN with its NUL): `mirror_ns_ingress` reads back as
/// `mirror_ns_ingre`.
const KERNEL_NAME_LEN: usize = 15;

/// Whether `kernel_name`, as BPF_PROG_QUERY reports it, is one of `names`.
fn is_one_of(kernel_name: &str, names: &[&str]) -> bool {
    names
        .iter()
        .any(|n| n.get(..KERNEL_NAME_LEN).unwrap_or(n) == kernel_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_the_kernel_keeps_them() {
        assert!(is_one_of("mirror_ingress", &PROGS_INGRESS));
        assert!(is_one_of("mirror_ns_ingre", &PROGS_INGRESS));
        assert!(is_one_of("mirror_ns_egres", &PROGS_EGRESS));
        assert!(!is_one_of("mirror_ns_egres", &PROGS_INGRESS));
        assert!(!is_one_of("mirror_ingres", &PROGS_INGRESS));
        assert!(!is_one_of("cil_from_contai", &PROGS_EGRESS));
    }
}
