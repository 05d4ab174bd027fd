//! The standard comparison: tcpdump and the agent on the same interface,
//! real traffic, then both captures read back.

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use tempfile::TempDir;

use crate::{
    agent::{Agent, Exit},
    capture::{self, Frame},
    tcpdump::Tcpdump,
    topology::PodPair,
};

pub struct Captures {
    /// What tcpdump saw on the interface.
    pub oracle: Vec<Frame>,
    /// What the agent wrote.
    pub mirror: Vec<Frame>,
    pub exit: Exit,
    pub mirror_path: PathBuf,
    /// Holds the files until the captures are dropped.
    pub dir: TempDir,
}

/// Starts tcpdump (with `tcpdump_args`, e.g. `-Q in`) and then the agent
/// (`attach -i HOST_IF --output pcapng:FILE` plus `agent_args`) on the pair's
/// host-side veth, runs `traffic`, stops the agent, then tcpdump. The agent's
/// window lies inside tcpdump's, and the topology is quiet outside `traffic`.
pub fn run(
    pair: &PodPair,
    agent_args: &[&str],
    tcpdump_args: &[&str],
    traffic: impl FnOnce(&PodPair) -> Result<()>,
) -> Result<Captures> {
    let dir = tempfile::tempdir()?;
    let mirror_path = dir.path().join("mirror.pcapng");
    let output = format!("pcapng:{}", mirror_path.display());
    let mut args = vec!["attach", "-i", &pair.host_if, "--output", &output];
    args.extend_from_slice(agent_args);
    let mut c = run_with(pair, &args, &mirror_path, tcpdump_args, traffic)?;
    c.dir = dir;
    Ok(c)
}

/// As [`run`], with the agent's whole argument list given (e.g. a policy
/// file), and `mirror_path` the pcapng file it writes.
pub fn run_with(
    pair: &PodPair,
    agent_args: &[&str],
    mirror_path: &std::path::Path,
    tcpdump_args: &[&str],
    traffic: impl FnOnce(&PodPair) -> Result<()>,
) -> Result<Captures> {
    crate::require_root();
    let dir = tempfile::tempdir()?;
    let tcpdump = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dir.path().join("tcpdump.pcap"),
        tcpdump_args,
    )?;
    let agent = Agent::start(&pair.node, agent_args)?;
    traffic(pair).context("generating traffic")?;
    // The last packets past the hook before it goes.
    tcpdump.settle()?;
    let exit = agent.stop()?;
    ensure!(
        exit.status.success(),
        "agent failed: {}\n{}",
        exit.status,
        exit.stderr
    );
    let oracle_path = tcpdump.stop()?;
    Ok(Captures {
        oracle: capture::read(&oracle_path)?,
        mirror: capture::read(mirror_path)?,
        exit,
        mirror_path: mirror_path.to_owned(),
        dir,
    })
}

/// Fails with a readable list of differences unless the two frame multisets
/// are equal (bytes and original lengths), tcpdump's checksums finished as
/// the agent finishes them ([`capture::difference`]).
pub fn assert_same_frames(oracle: &[Frame], mirror: &[Frame]) {
    report(capture::difference(oracle, mirror), oracle, mirror);
}

/// As [`assert_same_frames`], byte for byte: for copies that did not pass
/// through the agent (the kernel's own VXLAN device, tcpdump's own stream),
/// which keep tcpdump's partial checksums.
pub fn assert_same_frames_exact(oracle: &[Frame], mirror: &[Frame]) {
    report(capture::difference_exact(oracle, mirror), oracle, mirror);
}

fn report(diff: capture::Difference, oracle: &[Frame], mirror: &[Frame]) {
    if diff.is_empty() {
        // A figure for the log: how much was compared.
        let bytes: usize = mirror.iter().map(|f| f.data.len()).sum();
        eprintln!(
            "{} frames ({bytes} bytes) identical to tcpdump's",
            mirror.len()
        );
    }
    if !diff.is_empty() {
        let show = |v: &[(Vec<u8>, u32)]| {
            v.iter()
                .take(5)
                .map(|(d, l)| format!("  {}", capture::describe(d, *l)))
                .collect::<Vec<_>>()
                .join("\n")
        };
        panic!(
            "mirror differs from tcpdump: {} frames in tcpdump only, {} in the mirror only \
             (of {} and {})\nmissing:\n{}\nextra:\n{}",
            diff.missing.len(),
            diff.extra.len(),
            oracle.len(),
            mirror.len(),
            show(&diff.missing),
            show(&diff.extra)
        );
    }
}
