//! `mirror-agent collect`: bind every listener and the first file, start
//! the receiver and writer threads, and wait for SIGINT or SIGTERM.

use std::{
    num::{NonZeroU64, NonZeroUsize},
    sync::{Arc, atomic::AtomicBool, atomic::Ordering},
    thread::JoinHandle,
    time::Duration,
};

use nix::sys::signal::{SigSet, Signal};
use tracing::{info, warn};

use crate::{
    cli::CollectArgs,
    collect::{
        Bound, OutputDir, bind,
        limits::StreamLimits,
        listen::Listen,
        queue,
        reorder::Reorder,
        retention::Limits,
        stats::ListenerStats,
        tcp,
        writer::{Rotation, Writer, WriterError, WriterSummary},
    },
};

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
        keep: Limits {
            max_files: args.max_files,
            max_total_bytes: args.max_total_bytes,
            max_age: args.max_age.map(|s| Duration::from_secs(s.get())),
        },
        max_senders: Some(args.max_senders),
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
    let (tx, rx) = queue::queue(args.queue_bytes);
    let reorder = Reorder::new(Duration::from_millis(args.reorder_ms), args.queue_bytes);
    let writer_thread = spawn("collect-writer", move || writer.run(&rx, reorder))?;
    let streams = bound
        .iter()
        .filter(|(_, b)| matches!(b, Bound::Stream(..)))
        .count();
    let limits = StreamLimits {
        max_connections: descriptor_headroom(
            args.max_connections.get(),
            streams,
            args.max_senders.get(),
        ),
        max_per_source: args.max_connections_per_source.get(),
        idle: Duration::from_secs(args.idle_timeout.get()),
        block: Duration::from_secs(args.read_timeout.get()),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut listeners: Vec<Arc<ListenerStats>> = Vec::new();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (listen, bound) in bound {
        let stats = Arc::new(ListenerStats::new(listen.to_string()));
        let (s, tx, stop) = (stats.clone(), tx.clone(), stop.clone());
        let thread = match bound {
            Bound::Datagram(socket) => spawn("collect-recv", move || socket.run(&s, &tx, &stop))?,
            Bound::Stream(listener, wrap) => {
                let shared = tcp::Shared {
                    wrap,
                    limits,
                    stats: s,
                    packets: tx,
                };
                spawn("collect-stream", move || tcp::run(listener, shared, &stop))?
            }
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
                crate::collect::metrics::collect_families(&shared, &written)
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
        max_total_bytes = args.max_total_bytes.map_or(0, NonZeroU64::get),
        max_senders = args.max_senders.get(),
        max_age = args.max_age.map_or(0, NonZeroU64::get),
        max_connections = limits.max_connections,
        max_connections_per_source = limits.max_per_source,
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

/// File descriptors kept beyond the stream connections and one open file
/// per sender: /metrics scrapes and probes, the datagram sockets.
const RESERVED_FDS: u64 = 128;

/// The connection limit per stream listener that leaves [`RESERVED_FDS`]
/// descriptors free, and one per sender's file: raises the soft RLIMIT_NOFILE toward the hard one, and
/// lowers the limit (with a warning) if even that is not enough, so a flood
/// of connections can never starve /metrics, the probes or the files.
fn descriptor_headroom(max_connections: usize, streams: usize, senders: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return max_connections;
    };
    let reserved = RESERVED_FDS.saturating_add(senders as u64);
    let want = (max_connections as u64)
        .saturating_mul(streams as u64)
        .saturating_add(reserved);
    let soft = if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want.min(hard), hard).is_ok() {
        want.min(hard)
    } else {
        soft
    };
    if want <= soft || streams == 0 {
        return max_connections;
    }
    let fit = usize::try_from(soft.saturating_sub(reserved) / streams as u64)
        .unwrap_or(usize::MAX)
        .max(1);
    warn!(
        requested = max_connections,
        limit = fit,
        nofile = soft,
        "--max-connections lowered so that one file per sender (--max-senders), /metrics and the \
         probes keep file descriptors (raise the open-files limit to allow more)"
    );
    fit
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
        folded = w.folded,
        dropped_retention = w.dropped_retention,
        dropped_senders = w.dropped_senders,
        late = w.late,
        "collector summary"
    );
}
