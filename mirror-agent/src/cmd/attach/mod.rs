//! `mirror-agent attach`: mirror named interfaces of this network namespace
//! into pcapng until SIGINT or SIGTERM, then detach and report.

mod plan;

use std::io;

use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    cli::AttachArgs,
    datapath::{
        mirror::{Mirror, MirrorError, Settings},
        plan::Planned,
    },
    export::{
        SocketMark,
        output::{Output, Tunnel},
    },
    kernel::{
        pin::{PinDir, PinError},
        privileges::{self, MissingPrivileges},
    },
    metrics::{self, Endpoint, MetricsError, Requests},
    model::record::WallClock,
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
            Self::Plan(_) | Self::Privileges(_) | Self::KeepWithoutPins => 2,
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
    if !args.cleanup_on_exit && args.pin_dir.is_none() {
        return Err(AttachError::KeepWithoutPins);
    }
    privileges::check(false)?;
    let plan = match &args.policy {
        Some(path) => plan::from_file(path)?,
        None => plan::from_flags(&args)?,
    };
    // GRE and ERSPAN go out through raw sockets.
    let raw = plan.iter().flat_map(|p| &p.outputs).any(|o| {
        matches!(
            o.base(),
            Output::Tunnel {
                tunnel: Tunnel::Gre { .. } | Tunnel::Erspan2 { .. } | Tunnel::Erspan3 { .. },
                ..
            }
        )
    });
    privileges::check(raw)?;
    // Bound before anything is attached: a bad --metrics-addr changes nothing.
    let (endpoint, requests) = metrics::start(args.metrics_addr)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("starting the runtime"))?;
    runtime.block_on(mirror(args, plan, endpoint.as_ref(), requests))
}

fn node_name(args: &AttachArgs) -> String {
    args.node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
        .unwrap_or_default()
}

async fn mirror(
    args: AttachArgs,
    plan: Vec<Planned>,
    endpoint: Option<&Endpoint>,
    mut scrapes: Requests,
) -> Result<(), AttachError> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io_err("installing SIGHUP"))?;

    let settings = Settings {
        node: node_name(&args),
        mark: SocketMark {
            value: args.socket_mark.value,
            mask: args.socket_mark.mask,
        },
        queue_bytes: args.queue_bytes,
        attach_mode: args.attach_mode,
        clock: WallClock::now()
            .map_err(|e| io_err("reading the clocks")(io::Error::from_raw_os_error(e as i32)))?,
    };
    let pins = args.pin_dir.as_deref().map(PinDir::open).transpose()?;
    let (mut mirror, adopted) = Mirror::start(
        &plan,
        settings,
        args.ring_size.get(),
        pins,
        !args.cleanup_on_exit,
        true,
    )?;
    if let Some(dir) = &args.pin_dir {
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
    info!(
        policies = plan.len(),
        interfaces = mirror.interfaces(),
        outputs = plan.iter().map(|p| p.outputs.len()).sum::<usize>(),
        "mirroring started"
    );
    metrics::set_ready(endpoint, true);

    loop {
        tokio::select! {
            drained = mirror.drain() => drained.map_err(io_err("polling the ring buffer"))?,
            reply = scrapes.next() => reply.send(mirror.families()),
            _ = sighup.recv() => reload(&args, &mut mirror),
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
fn reload(args: &AttachArgs, mirror: &mut Mirror) {
    let Some(path) = &args.policy else {
        info!("SIGHUP: no --policy file to reload; nothing changes");
        return;
    };
    let plan = match plan::from_file(path) {
        Ok(plan) => plan,
        Err(error) => {
            warn!(%error, "SIGHUP: the new policy file is refused; keeping the current policy");
            return;
        }
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
