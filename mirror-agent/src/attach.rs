//! `mirror-agent attach`: mirror named interfaces of this network namespace
//! into pcapng until SIGINT or SIGTERM, then detach and report.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufWriter, Write},
    time::Duration,
};

use caps::{CapSet, Capability};
use mirror_common::{Counters, IfaceConfig};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    cli::{AttachArgs, Output},
    hooks::{HookError, Hooks, Interface, Slot},
    pcapng::{InterfaceId, PcapngWriter},
    record::{IfIndex, PolicyId, Record, WallClock},
    ringbuf::Drain,
};

/// `attach` has a single policy: every interface named on the command line.
const CLI_POLICY: PolicyId = PolicyId(1);
/// Even with no wakeup (none is lost, but be sure), the ring is read this often.
const IDLE_DRAIN: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("--interface {0}: no such interface in this network namespace")]
    UnknownInterface(String),
    #[error("--interface {0}: given more than once")]
    DuplicateInterface(String),
    #[error("--output {output}: cannot write there: {source}")]
    Output { output: Output, source: io::Error },
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
            | Self::Output { .. }
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
    // Open the output before touching the kernel, so a bad path attaches nothing.
    let sink = open_output(&args.output)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_err("starting the runtime"))?;
    runtime.block_on(mirror(args, interfaces, sink))
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

type Sink = PcapngWriter<BufWriter<Box<dyn Write>>>;

fn open_output(output: &Output) -> Result<Sink, AttachError> {
    let err = |source| AttachError::Output {
        output: output.clone(),
        source,
    };
    let raw: Box<dyn Write> = match output {
        Output::PcapngFile(path) => Box::new(File::create(path).map_err(err)?),
        Output::PcapngStdout => Box::new(io::stdout().lock()),
    };
    let app = concat!("mirror-agent ", env!("CARGO_PKG_VERSION"));
    PcapngWriter::new(BufWriter::with_capacity(1 << 20, raw), app).map_err(err)
}

/// What the agent itself did with the records it read.
#[derive(Debug, Default)]
struct AgentStats {
    written: u64,
    malformed: u64,
    unknown_interface: u64,
    write_errors: u64,
}

struct Writer {
    sink: Sink,
    clock: WallClock,
    ids: HashMap<IfIndex, InterfaceId>,
    stats: AgentStats,
}

impl Writer {
    fn record(&mut self, bytes: &[u8]) {
        let record = match Record::parse(bytes) {
            Ok(r) => r,
            Err(error) => {
                if self.stats.malformed == 0 {
                    warn!(%error, "malformed ring-buffer record (counted, not written)");
                }
                self.stats.malformed += 1;
                return;
            }
        };
        let Some(&id) = self.ids.get(&record.ifindex) else {
            self.stats.unknown_interface += 1;
            return;
        };
        let ts = self.clock.unix_ns(record.boot_ns);
        match self
            .sink
            .write_packet(id, ts, record.orig_len, record.direction, record.data)
        {
            Ok(()) => self.stats.written += 1,
            Err(error) => self.write_failed(&error),
        }
    }

    fn flush(&mut self) {
        if let Err(error) = self.sink.flush() {
            self.write_failed(&error);
        }
    }

    fn write_failed(&mut self, error: &io::Error) {
        // Log the first failure; keep draining so the counters stay true.
        if self.stats.write_errors == 0 {
            warn!(%error, "writing the output failed; later failures are only counted");
        }
        self.stats.write_errors += 1;
    }
}

async fn mirror(
    args: AttachArgs,
    interfaces: Vec<Interface>,
    mut sink: Sink,
) -> Result<(), AttachError> {
    let mut sigint = signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM"))?;

    let mut hooks = Hooks::load(args.ring_size.get())?;
    let mut ids = HashMap::new();
    let mut slots: Vec<(Interface, Slot)> = Vec::new();
    for iface in &interfaces {
        let id = sink
            .add_interface(&iface.name, args.snaplen.get())
            .map_err(|source| AttachError::Output {
                output: args.output.clone(),
                source,
            })?;
        ids.insert(iface.index, id);
        let slot = hooks.configure(
            iface,
            IfaceConfig {
                policy_id: CLI_POLICY.0,
                directions: args.direction.bits(),
                snaplen: args.snaplen.get(),
                sample_every: args.sample.get(),
                counter_slot: 0,
                _pad: 0,
            },
        )?;
        slots.push((iface.clone(), slot));
    }
    let mut drain = Drain::new(hooks.take_ring()?).map_err(io_err("polling the ring buffer"))?;
    let clock = WallClock::now()
        .map_err(|e| io_err("reading the clocks")(io::Error::from_raw_os_error(e as i32)))?;
    let mut writer = Writer {
        sink,
        clock,
        ids,
        stats: AgentStats::default(),
    };
    for iface in &interfaces {
        let mode = hooks.attach(iface, args.direction.bits(), args.attach_mode)?;
        info!(interface = %iface.name, ifindex = iface.index.0, mode = mode.as_str(), "attached");
    }
    writer.flush();
    info!(
        interfaces = interfaces.len(),
        direction = ?args.direction,
        snaplen = args.snaplen.get(),
        sample = args.sample.get(),
        output = %args.output,
        "mirroring started"
    );

    let mut tick = tokio::time::interval(IDLE_DRAIN);
    loop {
        tokio::select! {
            batch = drain.next_batch(|r| writer.record(r)) => {
                batch.map_err(io_err("polling the ring buffer"))?;
                writer.flush();
            }
            _ = tick.tick() => {
                drain.drain_now(|r| writer.record(r));
                writer.flush();
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    // Detach first so nothing new arrives, then take what is left in the ring.
    hooks.detach_all();
    drain.drain_now(|r| writer.record(r));
    writer.flush();
    summarize(&hooks, &slots, &writer.stats);
    Ok(())
}

fn summarize(hooks: &Hooks, slots: &[(Interface, Slot)], stats: &AgentStats) {
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
                    lost_ring_full = c.ring_full,
                    lost_copy_failed = c.load_failed,
                    "summary"
                );
                total.add(&c);
            }
            Err(error) => warn!(interface = %iface.name, %error, "reading counters failed"),
        }
    }
    let lost = total.ring_full + total.load_failed + stats.malformed + stats.write_errors;
    info!(
        seen = total.seen_packets,
        mirrored = total.mirrored_packets,
        written = stats.written,
        truncated = total.truncated,
        sampled_out = total.sampled_out,
        lost,
        lost_ring_full = total.ring_full,
        lost_copy_failed = total.load_failed,
        lost_malformed = stats.malformed,
        lost_write_error = stats.write_errors,
        "summary total"
    );
    if stats.unknown_interface > 0 {
        warn!(
            records = stats.unknown_interface,
            "records from interfaces not asked for"
        );
    }
}
