//! `mirror-agent collect`: bind every listener and the first file, start
//! the receiver and writer threads, and wait for SIGINT or SIGTERM.

use std::{
    num::{NonZeroU64, NonZeroUsize},
    sync::{Arc, atomic::AtomicBool, atomic::Ordering, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use nix::sys::signal::{SigSet, Signal};
use tracing::{info, warn};

use crate::{
    cli::CollectArgs,
    collect::{
        Bound, OutputDir, QUEUE_PACKETS, bind,
        listen::Listen,
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
