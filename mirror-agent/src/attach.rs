//! `mirror-agent attach`: mirror named interfaces of this network namespace
//! into pcapng until SIGINT or SIGTERM, then detach and report.

use std::{collections::HashMap, io, time::Duration};

use caps::{CapSet, Capability};
use mirror_common::{Counters, IfaceConfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    cli::AttachArgs,
    export::{self, Exporter, SocketMark, Stats},
    fanout::{Fanout, PolicyStats, Running},
    hooks::{HookError, Hooks, Interface, Slot},
    kfilter,
    metrics::{self, AgentMetrics, Endpoint, MetricsError, Requests, Source},
    output::{Output, Tunnel},
    pin::{PinDir, PinError},
    plan::{self, Planned},
    pump::Pump,
    ratelimit::RateLimiter,
    record::{IfIndex, WallClock},
};
/// Even with no wakeup (none is lost, but be sure), the ring is read this often.
const IDLE_DRAIN: Duration = Duration::from_millis(200);
/// How long shutdown waits for each output to send what it holds.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error("--output {0}")]
    Output(#[from] export::ExportError),
    #[error(
        "not permitted: mirroring needs root or the capabilities CAP_BPF (or CAP_SYS_ADMIN) \
         and CAP_NET_ADMIN, plus CAP_NET_RAW for gre and erspan outputs; missing {0}"
    )]
    Privileges(String),
    #[error("policy \"{0}\": filter: {1}")]
    Filter(String, crate::pcapfilter::PcapFilterError),
    #[error(transparent)]
    Hook(#[from] HookError),
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
            Self::Plan(_) | Self::Output(_) | Self::Privileges(_) | Self::KeepWithoutPins => 2,
            Self::Hook(_) | Self::Io { .. } | Self::Filter(..) => 1,
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
    check_privileges(false)?;
    let plan = match &args.policy {
        Some(path) => plan::from_file(path)?,
        None => plan::from_flags(&args)?,
    };
    // GRE and ERSPAN go out through raw sockets.
    let raw = plan.iter().flat_map(|p| &p.outputs).any(|o| {
        matches!(
            o,
            Output::Tunnel {
                tunnel: Tunnel::Gre { .. } | Tunnel::Erspan2 { .. } | Tunnel::Erspan3 { .. },
                ..
            }
        )
    });
    check_privileges(raw)?;
    // Bound before anything is attached: a bad --metrics-addr changes nothing.
    let (endpoint, requests) = match metrics::bind(args.metrics_addr)? {
        Some(bound) => {
            let (source, requests) = Source::owner();
            (Some(bound.serve(source)?), requests)
        }
        None => (None, Requests::none()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("starting the runtime"))?;
    runtime.block_on(mirror(args, plan, endpoint.as_ref(), requests))
}

fn check_privileges(raw_sockets: bool) -> Result<(), AttachError> {
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    let mut missing = Vec::new();
    if !has(Capability::CAP_BPF) && !has(Capability::CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(Capability::CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if raw_sockets && !has(Capability::CAP_NET_RAW) {
        missing.push("CAP_NET_RAW (for gre and erspan outputs)");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(AttachError::Privileges(missing.join(" and ")))
    }
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

    // Outputs first: a bad path or an unresolvable collector attaches nothing.
    let mark = SocketMark {
        value: args.socket_mark.value,
        mask: args.socket_mark.mask,
    };
    let node = node_name(&args);
    let progress = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut policies = Vec::with_capacity(plan.len());
    let mut routes = HashMap::new();
    for (index, p) in plan.iter().enumerate() {
        let listed: Vec<(IfIndex, String)> = p
            .interfaces
            .iter()
            .map(|i| (i.index, i.name.clone()))
            .collect();
        let ctx = export::Context {
            node: &node,
            interfaces: &listed,
            snaplen: p.snaplen.get(),
            mark,
            queue_bytes: args.queue_bytes,
            progress: progress.clone(),
        };
        let exporters = p
            .outputs
            .iter()
            .map(|o| Exporter::open(o, &ctx))
            .collect::<Result<Vec<_>, _>>()?;
        let body = p.body.as_ref();
        let filters = body
            .map(|b| b.filters())
            .transpose()
            .map_err(|e| AttachError::Filter(p.name.clone(), e))?;
        for (ifindex, name) in listed {
            routes.insert(ifindex, (name, index));
        }
        policies.push(Running {
            name: p.name.clone(),
            filters,
            limiter: body.and_then(|b| RateLimiter::new(&b.rate_limit)),
            exporters,
            stats: PolicyStats::default(),
        });
    }

    let pins = args.pin_dir.as_deref().map(PinDir::open).transpose()?;
    let mut hooks = Hooks::load(args.ring_size.get(), pins)?;
    hooks.keep_pins(!args.cleanup_on_exit);
    let mut slots: Vec<(Interface, Slot)> = Vec::new();
    for p in &plan {
        let rules = p.body.as_ref().map(|b| &b.rules);
        hooks.configure_policy(p.id, &kfilter::compile(p.id, rules))?;
        for iface in &p.interfaces {
            let slot = hooks.configure(
                iface,
                IfaceConfig {
                    policy_id: p.id.0,
                    directions: p.directions,
                    snaplen: p.snaplen.get(),
                    sample_every: p.sample.get(),
                    counter_slot: 0,
                    skip_mark: mark.value,
                    skip_mask: mark.mask,
                    _pad: 0,
                },
            )?;
            slots.push((iface.clone(), slot));
        }
    }
    let view = AgentMetrics::new(&plan, &slots);
    let mut pump = Pump::new(hooks.take_ring()?).map_err(io_err("polling the ring buffer"))?;
    let clock = WallClock::now()
        .map_err(|e| io_err("reading the clocks")(io::Error::from_raw_os_error(e as i32)))?;
    let mut fanout = Fanout::new(policies, routes, clock);
    for p in &plan {
        for iface in &p.interfaces {
            let mode = hooks.attach(iface, p.directions, args.attach_mode)?;
            info!(interface = %iface.name, ifindex = iface.index.0, policy = %p.name, mode = mode.as_str(), "attached");
        }
    }
    let adopted = hooks.settle_pins()?;
    if let Some(dir) = &args.pin_dir {
        info!(
            pin_dir = %dir.display(),
            adopted = adopted.links,
            removed = adopted.removed,
            other_abis = adopted.other_abis,
            abandoned_records = adopted.abandoned_records,
            pending_bytes = pump.ring().pending(),
            "pins"
        );
    }
    info!(
        policies = plan.len(),
        interfaces = slots.len(),
        outputs = plan.iter().map(|p| p.outputs.len()).sum::<usize>(),
        "mirroring started"
    );
    metrics::set_ready(endpoint, true);

    let mut tick = tokio::time::interval(IDLE_DRAIN);
    loop {
        tokio::select! {
            batch = pump.wait(&mut fanout) => batch.map_err(io_err("polling the ring buffer"))?,
            () = progress.notified() => pump.progress(&mut fanout),
            _ = tick.tick() => {
                pump.poll(&mut fanout);
                pump.progress(&mut fanout);
            }
            reply = scrapes.next() => reply.send(view.families(&hooks, &fanout, pump.ring(), slots.len())),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    metrics::set_ready(endpoint, false);

    // Detach first so nothing new arrives (or, keeping pins, let go of the
    // hooks, which go on filling the ring for the next agent), then take
    // what is left in the ring, and release what the outputs sent.
    hooks.detach_all();
    pump.poll(&mut fanout);
    for exporter in fanout.policies.iter_mut().flat_map(|p| &mut p.exporters) {
        exporter.close(CLOSE_TIMEOUT);
    }
    pump.progress(&mut fanout);
    summarize(&hooks, &slots, &fanout);
    hooks.remove_pins();
    Ok(())
}

fn summarize(hooks: &Hooks, slots: &[(Interface, Slot)], fanout: &Fanout) {
    let mut total = Counters::default();
    for (iface, slot) in slots {
        match hooks.counters(*slot) {
            Ok(c) => {
                info!(
                    interface = %iface.name,
                    seen = c.seen_packets,
                    mirrored = c.mirrored_packets,
                    truncated = c.truncated,
                    sampled_out = c.sampled_out,
                    own_traffic = c.own_traffic,
                    filtered = c.filtered,
                    lost_ring_full = c.ring_full,
                    lost_copy_failed = c.load_failed,
                    "summary"
                );
                total.add(&c);
            }
            Err(error) => warn!(interface = %iface.name, %error, "reading counters failed"),
        }
    }
    for p in &fanout.policies {
        info!(
            policy = %p.name,
            rejected_by_rules = p.stats.rejected_by_rules,
            rejected_by_filter = p.stats.rejected_by_filter,
            rate_limited = p.stats.rate_limited,
            "policy summary"
        );
    }
    let mut lost_output = 0;
    for e in fanout.policies.iter().flat_map(|p| &p.exporters) {
        let s = e.stats();
        let (queue_full, send_errors) = (Stats::get(&s.queue_full), Stats::get(&s.send_errors));
        lost_output += queue_full + send_errors;
        info!(
            output = e.name(),
            sent = Stats::get(&s.sent_packets),
            sent_bytes = Stats::get(&s.sent_bytes),
            mtu_truncated = Stats::get(&s.mtu_truncated),
            lost_queue_full = queue_full,
            lost_send_error = send_errors,
            "output summary"
        );
    }
    let stats = &fanout.stats;
    let lost = total.ring_full + total.load_failed + stats.malformed + lost_output;
    info!(
        seen = total.seen_packets,
        mirrored = total.mirrored_packets,
        written = stats.delivered,
        truncated = total.truncated,
        sampled_out = total.sampled_out,
        own_traffic = total.own_traffic,
        filtered = total.filtered,
        lost,
        lost_ring_full = total.ring_full,
        lost_copy_failed = total.load_failed,
        lost_malformed = stats.malformed,
        lost_output,
        "summary total"
    );
    if stats.unknown_interface > 0 {
        warn!(
            records = stats.unknown_interface,
            "records from interfaces not asked for"
        );
    }
}
