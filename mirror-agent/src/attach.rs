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
    hooks::{HookError, Hooks, Interface, Slot},
    record::{IfIndex, PolicyId, Record, WallClock},
    ringbuf::Drain,
};

/// `attach` has a single policy: every interface named on the command line.
const CLI_POLICY: PolicyId = PolicyId(1);
/// Even with no wakeup (none is lost, but be sure), the ring is read this often.
const IDLE_DRAIN: Duration = Duration::from_millis(200);
/// How long shutdown waits for each output to send what it holds.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("--interface {0}: no such interface in this network namespace")]
    UnknownInterface(String),
    #[error("--interface {0}: given more than once")]
    DuplicateInterface(String),
    #[error("--output {0}")]
    Output(#[from] export::ExportError),
    #[error(
        "not permitted: mirroring needs root or the capabilities CAP_BPF (or CAP_SYS_ADMIN) \
         and CAP_NET_ADMIN; missing {0}"
    )]
    Privileges(String),
    #[error(transparent)]
    Hook(#[from] HookError),
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
            Self::UnknownInterface(_)
            | Self::DuplicateInterface(_)
            | Self::Output(_)
            | Self::Privileges(_) => 2,
            Self::Hook(_) | Self::Io { .. } => 1,
        }
    }
}

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> AttachError {
    move |source| AttachError::Io { context, source }
}

pub fn run(args: AttachArgs) -> Result<(), AttachError> {
    check_privileges()?;
    let interfaces = resolve(&args.interfaces)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("starting the runtime"))?;
    runtime.block_on(mirror(args, interfaces))
}

fn check_privileges() -> Result<(), AttachError> {
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    let mut missing = Vec::new();
    if !has(Capability::CAP_BPF) && !has(Capability::CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(Capability::CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(AttachError::Privileges(missing.join(" and ")))
    }
}

fn resolve(names: &[String]) -> Result<Vec<Interface>, AttachError> {
    let mut out: Vec<Interface> = Vec::with_capacity(names.len());
    for name in names {
        if out.iter().any(|i| &i.name == name) {
            return Err(AttachError::DuplicateInterface(name.clone()));
        }
        let index = nix::net::if_::if_nametoindex(name.as_str())
            .map_err(|_| AttachError::UnknownInterface(name.clone()))?;
        out.push(Interface {
            name: name.clone(),
            index: IfIndex(index),
        });
    }
    Ok(out)
}

/// What the agent itself did with the records it read.
#[derive(Debug, Default)]
struct AgentStats {
    delivered: u64,
    malformed: u64,
    unknown_interface: u64,
}

/// Hands each record to every output.
struct Fanout {
    exporters: Vec<Exporter>,
    clock: WallClock,
    names: HashMap<IfIndex, String>,
    stats: AgentStats,
}

impl Fanout {
    fn record(&mut self, bytes: &[u8]) {
        let record = match Record::parse(bytes) {
            Ok(r) => r,
            Err(error) => {
                if self.stats.malformed == 0 {
                    warn!(%error, "malformed ring-buffer record (counted, not sent)");
                }
                self.stats.malformed += 1;
                return;
            }
        };
        let Some(name) = self.names.get(&record.ifindex) else {
            self.stats.unknown_interface += 1;
            return;
        };
        let ts = self.clock.unix_ns(record.boot_ns);
        for exporter in &mut self.exporters {
            exporter.push(&record, ts, name);
        }
        self.stats.delivered += 1;
    }

    fn flush(&mut self) {
        for exporter in &mut self.exporters {
            exporter.flush();
        }
    }
}

fn node_name(args: &AttachArgs) -> String {
    args.node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .or_else(|| nix::unistd::gethostname().ok()?.into_string().ok())
        .unwrap_or_default()
}

async fn mirror(args: AttachArgs, interfaces: Vec<Interface>) -> Result<(), AttachError> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM"))?;

    // Outputs first: a bad path or an unresolvable collector attaches nothing.
    let mark = SocketMark {
        value: args.socket_mark.value,
        mask: args.socket_mark.mask,
    };
    let node = node_name(&args);
    let listed: Vec<(IfIndex, String)> = interfaces
        .iter()
        .map(|i| (i.index, i.name.clone()))
        .collect();
    let ctx = export::Context {
        node: &node,
        interfaces: &listed,
        snaplen: args.snaplen.get(),
        mark,
        queue_bytes: args.queue_bytes,
    };
    let exporters = args
        .outputs
        .iter()
        .map(|o| Exporter::open(o, &ctx))
        .collect::<Result<Vec<_>, _>>()?;

    let mut hooks = Hooks::load(args.ring_size.get())?;
    let mut slots: Vec<(Interface, Slot)> = Vec::new();
    for iface in &interfaces {
        let slot = hooks.configure(
            iface,
            IfaceConfig {
                policy_id: CLI_POLICY.0,
                directions: args.direction.bits(),
                snaplen: args.snaplen.get(),
                sample_every: args.sample.get(),
                counter_slot: 0,
                skip_mark: mark.value,
                skip_mask: mark.mask,
                _pad: 0,
            },
        )?;
        slots.push((iface.clone(), slot));
    }
    let mut drain = Drain::new(hooks.take_ring()?).map_err(io_err("polling the ring buffer"))?;
    let clock = WallClock::now()
        .map_err(|e| io_err("reading the clocks")(io::Error::from_raw_os_error(e as i32)))?;
    let mut fanout = Fanout {
        exporters,
        clock,
        names: listed.into_iter().collect(),
        stats: AgentStats::default(),
    };
    for iface in &interfaces {
        let mode = hooks.attach(iface, args.direction.bits(), args.attach_mode)?;
        info!(interface = %iface.name, ifindex = iface.index.0, mode = mode.as_str(), "attached");
    }
    info!(
        interfaces = interfaces.len(),
        direction = ?args.direction,
        snaplen = args.snaplen.get(),
        sample = args.sample.get(),
        outputs = args.outputs.len(),
        "mirroring started"
    );

    let mut tick = tokio::time::interval(IDLE_DRAIN);
    loop {
        tokio::select! {
            batch = drain.next_batch(|r| fanout.record(r)) => {
                batch.map_err(io_err("polling the ring buffer"))?;
                fanout.flush();
            }
            _ = tick.tick() => {
                drain.drain_now(|r| fanout.record(r));
                fanout.flush();
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    // Detach first so nothing new arrives, then take what is left in the ring.
    hooks.detach_all();
    drain.drain_now(|r| fanout.record(r));
    for exporter in &mut fanout.exporters {
        exporter.close(CLOSE_TIMEOUT);
    }
    summarize(&hooks, &slots, &fanout);
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
                    lost_ring_full = c.ring_full,
                    lost_copy_failed = c.load_failed,
                    "summary"
                );
                total.add(&c);
            }
            Err(error) => warn!(interface = %iface.name, %error, "reading counters failed"),
        }
    }
    let mut lost_output = 0;
    for e in &fanout.exporters {
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
