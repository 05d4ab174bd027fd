//! `mirror-agent collect`: receive mirrored packets from many agents at once
//! (VXLAN, GENEVE, GRE/TEB, ERSPAN II and III, pcapng streams over TCP),
//! decapsulate them and write rotating pcapng files, one interface block per
//! (agent, interface), named so a person sees the node and the pod.
//!
//! Threads, all blocking: one per listener (and per stream connection)
//! decodes, one writer owns the files, and the main thread waits for
//! SIGINT or SIGTERM. Receivers hand packets to the writer over a bounded
//! channel: when the disk is slower than the network, UDP receivers wait and
//! the kernel's socket buffers absorb (then drop) the excess, and TCP pushes
//! back on the agents, whose queues count what they drop.
//!
//! Foreign, short or garbled input is counted per listener and reason, the
//! first of each logged, and skipped; the decoders never panic (each has a
//! `cargo fuzz` target in `mirror-agent/fuzz`).

pub mod datagram;
pub mod listen;
pub mod receive;
pub mod stats;
pub mod stream;
pub mod tcp;
pub mod writer;

use std::{
    fmt,
    net::TcpListener,
    num::{NonZeroU64, NonZeroUsize},
    path::PathBuf,
    str::FromStr,
    sync::{Arc, atomic::AtomicBool, atomic::Ordering, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use clap::Args;
use nix::sys::signal::{SigSet, Signal};
use tracing::{info, warn};

use self::{
    datagram::Tunnel,
    listen::Listen,
    receive::DatagramSocket,
    stats::ListenerStats,
    writer::{Rotation, Writer, WriterError, WriterSummary},
};

/// Packets in flight between the receivers and the writer.
const QUEUE_PACKETS: usize = 16_384;

#[derive(Debug, Args)]
pub struct CollectArgs {
    /// Where to receive; repeat for more: `vxlan://ADDR[:PORT]` (UDP 4789),
    /// `geneve://ADDR[:PORT]` (UDP 6081), `gre://ADDR` (GRE/TEB and ERSPAN II/III),
    /// `tcp://ADDR:PORT` (pcapng streams from `--output tcp://`),
    /// `tls://ADDR:PORT?ca=PATH&cert=PATH&key=PATH` (the same over mutual TLS: only
    /// agents with a certificate signed by `ca` get in). ADDR is an address of this
    /// host, or 0.0.0.0 / [::] for all.
    #[arg(short, long = "listen", value_name = "URI", required = true)]
    pub listen: Vec<Listen>,

    /// The directory for the rotating pcapng files, as `pcapng:DIR`. It must exist.
    #[arg(short, long, value_name = "pcapng:DIR")]
    pub output: OutputDir,

    /// Start a new file once the current one holds this many bytes.
    #[arg(long, value_name = "BYTES", default_value = "104857600")]
    pub rotate_size: NonZeroU64,

    /// Start a new file once the current one is this many seconds old (and holds packets).
    #[arg(long, value_name = "N")]
    pub rotate_seconds: Option<NonZeroU64>,

    /// Keep at most N files in DIR (ours, earlier runs' included), deleting the oldest.
    /// Default: keep them all.
    #[arg(long, value_name = "N")]
    pub max_files: Option<NonZeroUsize>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, and the probes /healthz
    /// (200 while the collector runs) and /readyz (200 once every listener is bound);
    /// `off` for none.
    #[arg(long, value_name = "ADDR:PORT", default_value = crate::metrics::DEFAULT_ADDR)]
    pub metrics_addr: crate::metrics::MetricsAddr,
}

/// `--output pcapng:DIR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputDir(pub PathBuf);

impl FromStr for OutputDir {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("pcapng:") {
            Some("-") => Err("the collector writes rotating files: give a directory, not -".into()),
            Some(dir) if !dir.is_empty() => Ok(Self(PathBuf::from(dir))),
            _ => Err(format!(
                "expected pcapng:DIR, a directory for rotating pcapng files, not '{s}'"
            )),
        }
    }
}

impl fmt::Display for OutputDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pcapng:{}", self.0.display())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("--listen {listen}: {source}")]
    Listen {
        listen: Listen,
        source: std::io::Error,
    },
    #[error("--output {output}: {source}")]
    Output {
        output: OutputDir,
        source: WriterError,
    },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("{context}: {source}")]
    System {
        context: &'static str,
        source: std::io::Error,
    },
}

impl CollectError {
    /// 2 for bad input (an address we cannot listen on, an unusable
    /// directory), as clap does for usage errors; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Listen { .. } | Self::Output { .. } => 2,
            Self::Metrics(e) => e.exit_code(),
            Self::System { .. } => 1,
        }
    }
}

fn system(context: &'static str) -> impl FnOnce(std::io::Error) -> CollectError {
    move |source| CollectError::System { context, source }
}

/// A bound listener, before its thread starts.
enum Bound {
    Datagram(DatagramSocket),
    Stream(TcpListener, tcp::Wrap),
}

fn bind(listen: &Listen) -> std::io::Result<Bound> {
    Ok(match listen {
        Listen::Vxlan(a) => Bound::Datagram(receive::bind_udp(*a, Tunnel::Vxlan)?),
        Listen::Geneve(a) => Bound::Datagram(receive::bind_udp(*a, Tunnel::Geneve)?),
        Listen::Gre(a) => Bound::Datagram(receive::bind_gre(*a)?),
        Listen::Tcp(a) => Bound::Stream(tcp::bind(*a)?, tcp::plain()),
        Listen::Tls(a, files) => {
            // Files first: a bad certificate is refused before anything listens.
            let config = crate::tls::server_config(&files.ca, &files.cert, &files.key)
                .map_err(std::io::Error::other)?;
            let wrap: tcp::Wrap = Arc::new(move |stream| {
                crate::tls::accept(&config, stream)
                    .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>)
                    .map_err(std::io::Error::other)
            });
            Bound::Stream(tcp::bind(*a)?, wrap)
        }
    })
}

pub fn run(args: CollectArgs) -> Result<(), CollectError> {
    // The metrics port first: a bad --metrics-addr binds nothing else.
    let metrics = crate::metrics::bind(args.metrics_addr)?;
    // Sockets first, then the first file: a bad --listen leaves no file behind.
    let bound = args
        .listen
        .iter()
        .map(|l| {
            bind(l)
                .map(|b| (l.clone(), b))
                .map_err(|source| CollectError::Listen {
                    listen: l.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rotation = Rotation {
        size: Some(args.rotate_size),
        age: args.rotate_seconds.map(|s| Duration::from_secs(s.get())),
        max_files: args.max_files,
    };
    let mut writer =
        Writer::open(args.output.0.clone(), rotation).map_err(|source| CollectError::Output {
            output: args.output.clone(),
            source,
        })?;

    // Block the signals in this thread before any other starts, so every
    // thread inherits the mask and only `wait` below ever takes them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .map_err(|e| system("blocking signals")(e.into()))?;

    let written = Arc::new(std::sync::Mutex::new(WriterSummary::default()));
    writer.publish_to(written.clone());
    let (tx, rx) = mpsc::sync_channel(QUEUE_PACKETS);
    let writer_thread = spawn("collect-writer", move || writer.run(&rx))?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut listeners: Vec<Arc<ListenerStats>> = Vec::new();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (listen, bound) in bound {
        let stats = Arc::new(ListenerStats::new(listen.to_string()));
        let (s, tx, stop) = (stats.clone(), tx.clone(), stop.clone());
        let thread = match bound {
            Bound::Datagram(socket) => spawn("collect-recv", move || socket.run(&s, &tx, &stop))?,
            Bound::Stream(listener, wrap) => spawn("collect-accept", move || {
                tcp::run(&listener, &wrap, &s, &tx, &stop)
            })?,
        };
        listeners.push(stats);
        threads.push(thread);
    }
    // Only the receivers hold senders now: the writer ends when they all have.
    drop(tx);
    // Started after the signals are blocked, so its thread never takes them.
    let endpoint = match metrics {
        Some(bound) => {
            let shared = listeners.clone();
            let source = crate::metrics::Source::Shared(Box::new(move || {
                crate::metrics::collect_families(&shared, &written)
            }));
            Some(bound.serve(source)?)
        }
        None => None,
    };
    crate::metrics::set_ready(endpoint.as_ref(), true);
    info!(
        listeners = %args.listen.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        output = %args.output,
        rotate_size = args.rotate_size.get(),
        rotate_seconds = args.rotate_seconds.map_or(0, NonZeroU64::get),
        max_files = args.max_files.map_or(0, NonZeroUsize::get),
        "collector started"
    );

    let signal = signals
        .wait()
        .map_err(|e| system("waiting for a signal")(e.into()))?;
    info!(%signal, "stopping");
    crate::metrics::set_ready(endpoint.as_ref(), false);
    stop.store(true, Ordering::Relaxed);
    for (stats, thread) in listeners.iter().zip(threads) {
        if thread.join().is_err() {
            warn!(listener = %stats.name, "receiver thread panicked");
        }
    }
    let summary = writer_thread.join().unwrap_or_else(|_| {
        warn!("writer thread panicked");
        WriterSummary::default()
    });
    summarize(&listeners, &summary);
    Ok(())
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, CollectError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(f)
        .map_err(system("starting a thread"))
}

fn summarize(listeners: &[Arc<ListenerStats>], w: &WriterSummary) {
    for stats in listeners {
        stats.summarize();
    }
    let decoded: u64 = listeners.iter().map(|s| s.decoded_count()).sum();
    info!(
        decoded,
        written = w.packets,
        bytes = w.bytes,
        files_written = w.files_written,
        files_deleted = w.files_deleted,
        write_errors = w.write_errors,
        "collector summary"
    );
}
