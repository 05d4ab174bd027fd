//! `mirror-agent run`: the node agent under Kubernetes. It watches its
//! node's pods and the mirror's policies and collectors ([`watch`]), and on
//! every change reconciles ([`Reconciler`]): works out what to mirror and
//! moves the running mirror there ([`crate::datapath::mirror::Mirror::apply`]),
//! writing each policy's status on this node ([`status`]). A link made or
//! deleted on the node ([`link_events`]) has pods looked for again with no
//! change in the cluster ([`Reconciler::relocate`]). Hooks are pinned
//! and kept on SIGTERM, so a restarted agent adopts them with no gap. This
//! file wires those together and handles signals.
//!
//! [`watch`]: crate::controller::watch
//! [`link_events`]: crate::kernel::link_events

use std::{io, path::Path, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};
use tracing::info;

use super::stop::StopSignals;
use crate::{
    cli::RunArgs,
    controller::{
        desired::Node,
        reconcile::Reconciler,
        status::{self, StatusWriter},
        watch::Cluster,
    },
    datapath::mirror::{Mirror, MirrorError, Settings},
    discovery::{locate::Locator, podns::NetnsIndex},
    export::SocketMark,
    kernel::{
        link_events::{self, LinkEventsError},
        netns::{self, Namespace, NetnsError},
        pin::{PinDir, PinError},
        privileges::{self, MissingPrivileges},
    },
    metrics::{self, MetricsAddr, MetricsError, Requests},
    model::{record::WallClock, rings::RingLayout},
};

/// Changes arriving together are applied together: a reconcile waits this
/// long after the first one (pods starting in a burst, a policy and its
/// collector created together).
const SETTLE: Duration = Duration::from_millis(50);
/// How often statuses are looked at (each is written at most once per --status-interval).
const STATUS_TICK: Duration = Duration::from_secs(1);
/// How often pods' interfaces are looked at with no announcement: the
/// kernel announces link changes of the agent's own namespace only, so an
/// interface re-made inside a pod with no host end (ipvlan, macvlan) is
/// found again within this.
const RELOCATE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error(transparent)]
    Privileges(#[from] MissingPrivileges),
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
    #[error("connecting to the Kubernetes API server: {0}")]
    Client(#[from] kube::Error),
    #[error("this agent's network namespace: {0}")]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    LinkEvents(#[from] LinkEventsError),
    #[error("--node-name: must not be empty")]
    NoNode,
    #[error("$POD_IP: {0}")]
    PodIp(String),
}

impl RunError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Mirror(e) => e.exit_code(),
            Self::Pin(e) => e.exit_code(),
            Self::Privileges(_) => 2,
            Self::Io { .. } => 1,
            Self::Metrics(e) => e.exit_code(),
            Self::NoNode | Self::PodIp(_) => 2,
            Self::Client(_) | Self::Netns(_) | Self::LinkEvents(_) => 1,
        }
    }
}

pub fn run(args: RunArgs) -> Result<(), RunError> {
    let stop = StopSignals::install().map_err(io_err("installing SIGINT and SIGTERM"))?;
    if args.node_name.trim().is_empty() {
        return Err(RunError::NoNode);
    }
    privileges::check(true)?;
    let addr = match &args.metrics_addr {
        Some(a) => *a,
        None => default_metrics_addr()?,
    };
    let (endpoint, requests) = metrics::start(addr)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("starting the runtime"))?;
    runtime.block_on(agent(args, endpoint.as_ref(), requests, &stop))
}

/// The pod IP from the downward API, else loopback; port 9464.
fn default_metrics_addr() -> Result<MetricsAddr, RunError> {
    let host = std::env::var("POD_IP").unwrap_or_else(|_| "127.0.0.1".into());
    let text = if host.contains(':') {
        format!("[{host}]:9464")
    } else {
        format!("{host}:9464")
    };
    text.parse().map_err(RunError::PodIp)
}

async fn agent(
    args: RunArgs,
    endpoint: Option<&metrics::Endpoint>,
    mut scrapes: Requests,
    stop: &StopSignals,
) -> Result<(), RunError> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM"))?;
    let node = args.node_name.clone();
    let client = kube::Client::try_default().await?;
    let cluster = Cluster::watch(&client, &node, &args.secrets_namespace);
    let host_cookie = netns::current_cookie()?;
    // Subscribed before the first look, so no change after it is missed.
    let links = Arc::new(Notify::new());
    let notify = links.clone();
    link_events::watch(move || notify.notify_one())?;
    let locator = Locator::new(
        NetnsIndex::new(args.netns_paths.clone(), Path::new("/proc/self/ns/net")),
        Namespace::current()?,
        host_cookie,
    );
    let mut reconciler = Reconciler::new(
        locator,
        Node {
            attach_point: args.attach_point,
            host_cookie,
            tls_dir: args.tls_dir.clone(),
        },
    );
    let mut writer = StatusWriter::new(
        &node,
        Duration::from_secs(args.status_interval.max(1)),
        Duration::from_secs(args.status_stale_after.max(1)),
    );

    // Nothing is touched until the caches have their first full list: until
    // then, pinned hooks from an earlier agent go on mirroring as they were.
    info!(node = %node, "waiting for the first list of pods, policies and collectors");
    tokio::select! {
        () = cluster.ready() => {}
        _ = sigint.recv() => return Ok(()),
        _ = sigterm.recv() => return Ok(()),
    }
    let settings = Settings {
        node: node.clone(),
        mark: SocketMark {
            value: args.tuning.socket_mark.value,
            mask: args.tuning.socket_mark.mask,
        },
        queue_bytes: args.tuning.queue_bytes,
        attach_mode: args.tuning.attach_mode,
        clock: WallClock::now()
            .map_err(|e| io_err("reading the clocks")(io::Error::from_raw_os_error(e as i32)))?,
    };
    let plan = reconciler.desire(&cluster.snapshot());
    let pins = PinDir::open(&args.pin_dir)?;
    // Hooking every pod of a busy node takes seconds: a stop signal
    // meanwhile lets go of what was hooked, as a stop does later.
    let started = Mirror::start(
        &plan,
        settings,
        RingLayout::new(args.tuning.ring_size, args.tuning.ring_slots),
        Some(pins),
        !args.cleanup_on_exit,
        false,
        &|| stop.raised(),
    )?;
    let Some((mut mirror, adopted)) = started else {
        info!("stopped by a signal during start-up");
        return Ok(());
    };
    reconciler.started(plan, &mut mirror);
    // Ready before the line that says so (see attach).
    metrics::set_ready(endpoint, true);
    info!(
        node = %node,
        policies = reconciler.outcomes().len(),
        interfaces = mirror.interfaces(),
        adopted = adopted.links,
        removed = adopted.removed,
        "mirroring started"
    );

    let mut status_tick = tokio::time::interval(STATUS_TICK);
    let mut relocate_tick = tokio::time::interval(RELOCATE_EVERY);
    relocate_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    relocate_tick.reset();
    let mut writing: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        tokio::select! {
            drained = mirror.drain() => {
                drained.map_err(io_err("polling the ring buffer"))?;
                reconciler.left_out(&mut mirror);
            }
            () = cluster.changed.notified() => {
                tokio::time::sleep(SETTLE).await;
                reconciler.reconcile(&cluster.snapshot(), &mut mirror);
            }
            // A pod's interface may have gone or come back: a CNI
            // re-plumbing it tells the API server nothing.
            () = links.notified() => {
                tokio::time::sleep(SETTLE).await;
                reconciler.relocate(&cluster.snapshot(), &mut mirror);
            }
            _ = relocate_tick.tick() => reconciler.relocate(&cluster.snapshot(), &mut mirror),
            _ = status_tick.tick() => {
                if writing.as_ref().is_none_or(|w| w.is_finished()) {
                    let due = writer.due(
                        reconciler.outcomes(),
                        |name| mirror.policy_totals(name),
                        |policy| cluster.reported(policy),
                    );
                    if !due.is_empty() {
                        writing = Some(tokio::spawn(status::write(client.clone(), node.clone(), due)));
                    }
                }
            }
            reply = scrapes.next() => reply.send(mirror.families()),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    metrics::set_ready(endpoint, false);
    mirror.stop();
    Ok(())
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> RunError {
    move |source| RunError::Io { context, source }
}
