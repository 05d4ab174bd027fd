//! `mirror-agent attach`: mirror named interfaces of this network namespace
//! into pcapng until SIGINT or SIGTERM, then detach and report.

pub(super) mod plan;

use std::{io, path::PathBuf};

use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::stop::StopSignals;
use crate::{
    cli::{AttachArgs, FileChecksums},
    datapath::{
        mirror::{Mirror, MirrorError, Settings},
        plan::{Planned, tenants},
    },
    export::{
        SocketMark,
        output::{Output, Tunnel},
        wire::Wire,
    },
    kernel::{
        pin::{PinDir, PinError},
        privileges::{self, MissingPrivileges},
    },
    metrics::{self, Endpoint, MetricsError, Requests},
    model::{record::WallClock, rings::RingLayout, values::AttachMode},
};

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Privileges(#[from] MissingPrivileges),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("--cleanup-on-exit=false needs --pin-dir: without pins, the hooks go with the agent")]
    KeepWithoutPins,
    #[error(
        "--segment with --checksums keep: segments get their own headers and checksums, \
         so their bytes cannot be kept as the hook saw them; give one or the other"
    )]
    SegmentAndKeep,
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
}

impl AttachError {
    /// 2 for bad input (flags, privileges), as clap does for usage errors; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Plan(_) | Self::Privileges(_) | Self::KeepWithoutPins | Self::SegmentAndKeep => 2,
            Self::Io { .. } => 1,
            Self::Mirror(e) => e.exit_code(),
            Self::Metrics(e) => e.exit_code(),
            Self::Pin(e) => e.exit_code(),
        }
    }
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> AttachError {
    move |source| AttachError::Io { context, source }
}

pub fn run(args: AttachArgs) -> Result<(), AttachError> {
    let stop = StopSignals::install().map_err(io_err("installing SIGINT and SIGTERM"))?;
    if !args.cleanup_on_exit && args.pin_dir.is_none() {
        return Err(AttachError::KeepWithoutPins);
    }
    let files = file_wire(&args)?;
    privileges::check(false)?;
    let plan = match &args.policy {
        Some(path) => {
            // Said first: a large file takes seconds to read and compile.
            info!(policy = %path.display(), "reading the policy file");
            let path = path.clone();
            match stop.unless_stopped(move || plan::from_file(&path)) {
                Some(plan) => plan?,
                None => {
                    stopped_early();
                    return Ok(());
                }
            }
        }
        None => plan::from_flags(&args)?,
    };
    let plan = plan::with_file_wire(plan, files);
    privileges::check(needs_raw_sockets(&plan))?;
    // Bound before anything is attached: a bad --metrics-addr changes nothing.
    let (endpoint, requests) = metrics::start(args.metrics_addr)?;
    let local = Local {
        node: node_name(&args),
        mark: SocketMark {
            value: args.socket_mark.value,
            mask: args.socket_mark.mask,
        },
        queue_bytes: args.queue_bytes,
        attach_mode: args.attach_mode,
        ring: RingLayout::new(args.ring_size, args.ring_slots.at_most(tenants(&plan))),
        pin_dir: args.pin_dir.clone(),
        keep: !args.cleanup_on_exit,
    };
    let policy = args.policy.clone();
    let reload = move || {
        let next = plan::from_file(policy.as_deref()?);
        Some(next.map(|p| plan::with_file_wire(p, files)))
    };
    block_on(local, plan, endpoint.as_ref(), requests, reload, &stop)
}

/// A stop signal came while starting; what was hooked, if anything, has
/// been let go.
pub(super) fn stopped_early() {
    info!("stopped by a signal during start-up");
}

/// What file outputs do to the bytes, by `--segment` and `--checksums`.
fn file_wire(args: &AttachArgs) -> Result<Wire, AttachError> {
    match (args.segment, args.checksums) {
        (true, FileChecksums::Keep) => Err(AttachError::SegmentAndKeep),
        (true, FileChecksums::Finish) => Ok(Wire::WIRE),
        (false, FileChecksums::Keep) => Ok(Wire::KEEP),
        (false, FileChecksums::Finish) => Ok(Wire::FILE),
    }
}

/// GRE and ERSPAN go out through raw sockets.
pub(super) fn needs_raw_sockets(plan: &[Planned]) -> bool {
    plan.iter().flat_map(|p| &p.outputs).any(|o| {
        matches!(
            o.base(),
            Output::Tunnel {
                tunnel: Tunnel::Gre { .. } | Tunnel::Erspan2 { .. } | Tunnel::Erspan3 { .. },
                ..
            }
        )
    })
}

fn node_name(args: &AttachArgs) -> String {
    args.node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
        .unwrap_or_default()
}

/// How a mirror of this network namespace's own interfaces runs: `attach`'s
/// flags, or `sidecar`'s.
pub(super) struct Local {
    pub node: String,
    pub mark: SocketMark,
    pub queue_bytes: usize,
    pub attach_mode: AttachMode,
    pub ring: RingLayout,
    pub pin_dir: Option<PathBuf>,
    /// Keep the pinned hooks on exit.
    pub keep: bool,
}

/// Runs `plan` on a current-thread runtime until SIGINT or SIGTERM, then
/// stops: detach, drain, flush, summarize. On SIGHUP, `reload` gives the
/// next plan (`None`: there is nothing to reload). `stop` tells of a stop
/// signal while the mirror starts, before the drain loop listens.
pub(super) fn block_on(
    local: Local,
    plan: Vec<Planned>,
    endpoint: Option<&Endpoint>,
    requests: Requests,
    reload: impl Fn() -> Option<Result<Vec<Planned>, plan::PlanError>>,
    stop: &StopSignals,
) -> Result<(), AttachError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("starting the runtime"))?;
    runtime.block_on(mirror(local, plan, endpoint, requests, reload, stop))
}

async fn mirror(
    local: Local,
    plan: Vec<Planned>,
    endpoint: Option<&Endpoint>,
    mut scrapes: Requests,
    reload: impl Fn() -> Option<Result<Vec<Planned>, plan::PlanError>>,
    stop: &StopSignals,
) -> Result<(), AttachError> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io_err("installing SIGHUP"))?;

    let settings = Settings {
        node: local.node,
        mark: local.mark,
        queue_bytes: local.queue_bytes,
        attach_mode: local.attach_mode,
        clock: WallClock::now()
            .map_err(|e| io_err("reading the clocks")(io::Error::from_raw_os_error(e as i32)))?,
    };
    let pins = local.pin_dir.as_deref().map(PinDir::open).transpose()?;
    let started = Mirror::start(&plan, settings, local.ring, pins, local.keep, true, &|| {
        stop.raised()
    })?;
    let Some((mut mirror, adopted)) = started else {
        stopped_early();
        return Ok(());
    };
    if let Some(dir) = &local.pin_dir {
        info!(
            pin_dir = %dir.display(),
            adopted = adopted.links,
            removed = adopted.removed,
            other_abis = adopted.other_abis,
            abandoned_records = adopted.abandoned_records,
            pending_bytes = mirror.ring_pending(),
            "pins"
        );
    }
    // Ready before the line that says so: whoever waits on the line may
    // ask /readyz at once.
    metrics::set_ready(endpoint, true);
    info!(
        policies = plan.len(),
        interfaces = mirror.interfaces(),
        outputs = plan.iter().map(|p| p.outputs.len()).sum::<usize>(),
        ring_bytes = local.ring.total(),
        rings = local.ring.slots(),
        tenants_per_ring = mirror.tenants_per_ring(),
        "mirroring started"
    );

    loop {
        tokio::select! {
            drained = mirror.drain() => drained.map_err(io_err("polling the ring buffer"))?,
            reply = scrapes.next() => reply.send(mirror.families()),
            _ = sighup.recv() => apply_reload(reload(), &mut mirror),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    metrics::set_ready(endpoint, false);
    mirror.stop();
    Ok(())
}

/// SIGHUP: read the policy file again and move to it. A file that does not
/// parse, or whose outputs cannot be opened, changes nothing: the mirror
/// goes on with the policy it has, and the log says why.
fn apply_reload(next: Option<Result<Vec<Planned>, plan::PlanError>>, mirror: &mut Mirror) {
    let plan = match next {
        None => {
            info!("SIGHUP: no --policy file to reload; nothing changes");
            return;
        }
        Some(Err(error)) => {
            warn!(%error, "SIGHUP: the new policy file is refused; keeping the current policy");
            return;
        }
        Some(Ok(plan)) => plan,
    };
    match mirror.apply(&plan) {
        Ok(_) => info!(
            policies = plan.len(),
            interfaces = mirror.interfaces(),
            "policy reloaded"
        ),
        Err(error) => {
            warn!(%error, "SIGHUP: applying the new policy failed; keeping what could not change")
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn wire(flags: &[&str]) -> Result<Wire, AttachError> {
        let mut argv = vec!["mirror-agent", "attach", "-i", "lo", "-o", "pcapng:-"];
        argv.extend(flags);
        let crate::cli::Command::Attach(args) = crate::cli::Cli::parse_from(argv).command else {
            panic!("attach");
        };
        file_wire(&args)
    }

    #[test]
    fn the_file_flags_choose_what_files_do_to_the_bytes() {
        assert_eq!(wire(&[]).expect("defaults"), Wire::FILE);
        assert_eq!(wire(&["--segment"]).expect("segment"), Wire::WIRE);
        assert_eq!(wire(&["--checksums", "keep"]).expect("keep"), Wire::KEEP);
        let e = wire(&["--segment", "--checksums", "keep"]).expect_err("both");
        assert!(e.to_string().contains("--segment"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }
}
