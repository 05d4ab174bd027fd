//! Exporters: one per `--output`, each with its own sender thread and its
//! own byte-bounded queue, so a slow or absent collector costs only its own
//! copies (counted), never the drain or the other outputs.
//!
//! The drain thread calls [`Exporter::push`] for every record, which encodes
//! the packet into the exporter's current batch (tunnel header or pcapng
//! block, then the bytes, copied once out of the ring buffer; a file lends
//! them from the ring instead, see [`loan`]), and [`Exporter::flush`] after
//! each drained batch, which hands the batch over.

pub mod encap;
mod lane;
pub mod loan;
pub mod output;
pub mod own;
pub mod pcapng;
mod queue;
mod stream;
pub mod tls;
mod tunnel;
pub mod wire;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::warn;

use crate::{
    export::{output::Output, pcapng::InterfaceId},
    model::record::{IfaceId, Record},
};

pub use lane::flow_hash;

/// Default bound of one exporter's queue.
pub const DEFAULT_QUEUE_BYTES: usize = 64 << 20;

/// A batch is handed over once it holds this many bytes, or a quarter of
/// the queue's bound if that is less, even in the middle of a drain round.
/// A batch is admitted to the queue whole or not at all, so one larger than
/// the bound (a round after a stall can hold the whole ring) would be
/// dropped even by an idle output; and the batch in the making is memory
/// the bound does not count.
const MAX_BATCH_BYTES: usize = 1 << 20;

/// `SO_MARK` put on every socket the agent sends mirrored copies with. The
/// hook passes over packets whose mark matches under [`SocketMark::mask`], so
/// the agent never mirrors its own tunnels, even through a mirrored interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketMark {
    pub value: u32,
    pub mask: u32,
}

/// Counters of one exporter, shared with its sender thread.
#[derive(Debug, Default)]
pub struct Stats {
    pub sent_packets: AtomicU64,
    pub sent_bytes: AtomicU64,
    /// Dropped because the queue was over its byte bound.
    pub queue_full: AtomicU64,
    /// Dropped because sending failed (collector down, unreachable, disk full).
    pub send_errors: AtomicU64,
    /// Sent, but cut to fit the path MTU.
    pub mtu_truncated: AtomicU64,
    /// GSO/GRO super-packets cut into wire-size segments, and the segments
    /// made of them (see [`wire`]).
    pub super_packets: AtomicU64,
    pub segments: AtomicU64,
    /// Partial checksums finished.
    pub checksums_finished: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_queue_full(&self, n: usize) {
        Self::add(&self.queue_full, n);
    }

    pub fn add_send_errors(&self, n: usize) {
        Self::add(&self.send_errors, n);
    }

    pub fn add_sent(&self, packets: usize, bytes: usize) {
        Self::add(&self.sent_packets, packets);
        Self::add(&self.sent_bytes, bytes);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What every exporter needs to know about the mirror it serves.
pub struct Context<'a> {
    /// This node's name (GENEVE option, pcapng interface names at a collector).
    pub node: &'a str,
    /// Mirrored interfaces, in pcapng interface-block order.
    pub interfaces: &'a [(IfaceId, String)],
    pub snaplen: u32,
    pub mark: SocketMark,
    pub queue_bytes: usize,
    /// Woken whenever an output finishes a batch.
    pub progress: Arc<tokio::sync::Notify>,
    /// Files are appended to (a new pcapng section), not truncated: the
    /// output is being reopened for a new plan.
    pub append: bool,
    /// Where TCP and TLS outputs publish their connections, so the drain
    /// never mirrors them.
    pub own: Arc<own::OwnConnections>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{output}: {reason}")]
    Open { output: String, reason: String },
}

fn open_err(output: &Output, reason: impl std::fmt::Display) -> ExportError {
    ExportError::Open {
        output: output.to_string(),
        reason: reason.to_string(),
    }
}

/// Interfaces one pcapng section describes at most, those added to a
/// running stream included (ids are never reused); past it, the output is
/// reopened with a new section. The collector refuses more.
const MAX_SECTION_INTERFACES: usize = 4096;

enum Encoder {
    Pcapng(Pcapng),
    Tunnel(tunnel::Encode),
}

/// A pcapng stream's interfaces: their ids in the section, and interface
/// blocks added since it began that the sender has not been handed yet.
struct Pcapng {
    ids: HashMap<IfaceId, InterfaceId>,
    snaplen: u32,
    unannounced: Vec<u8>,
}

pub struct Exporter {
    name: String,
    output: Output,
    encoder: Encoder,
    shaper: wire::Shaper,
    outbox: queue::Outbox,
    stats: Arc<Stats>,
    thread: Option<JoinHandle<()>>,
    /// See [`MAX_BATCH_BYTES`].
    max_batch: usize,
    /// A file: its sender writes packets from the ring ([`loan`]).
    lends: bool,
}

impl Exporter {
    /// Opens the output (files are created, tunnel sockets bound, names
    /// resolved) and starts its sender thread. TCP and TLS collectors are
    /// connected by the sender, which retries until they answer.
    pub fn open(output: &Output, ctx: &Context<'_>) -> Result<Self, ExportError> {
        let (outbox, inbox) = queue::channel(ctx.queue_bytes, ctx.progress.clone());
        let stats = Arc::new(Stats::default());
        let (encoder, thread) = match output.base() {
            Output::Tunnel {
                tunnel,
                to,
                mtu,
                gso,
            } => {
                let (encode, sender) =
                    tunnel::open(tunnel, to, *mtu, *gso, ctx).map_err(|e| open_err(output, e))?;
                let stats = stats.clone();
                let thread = spawn(output, move || sender.run(&inbox, &stats))?;
                (Encoder::Tunnel(encode), thread)
            }
            _ => {
                let ids = ctx
                    .interfaces
                    .iter()
                    .enumerate()
                    .map(|(i, (id, _))| (*id, InterfaceId(i as u32)))
                    .collect();
                let sink = stream::open(output, ctx).map_err(|e| open_err(output, e))?;
                let stats = stats.clone();
                let thread = spawn(output, move || sink.run(&inbox, &stats))?;
                let pcapng = Pcapng {
                    ids,
                    snaplen: ctx.snaplen,
                    unannounced: Vec::new(),
                };
                (Encoder::Pcapng(pcapng), thread)
            }
        };
        Ok(Self {
            name: output.to_string(),
            output: output.clone(),
            encoder,
            shaper: wire::Shaper::new(output.wire(), ctx.snaplen),
            outbox,
            stats,
            thread: Some(thread),
            max_batch: (ctx.queue_bytes / 4).clamp(1, MAX_BATCH_BYTES),
            // Not standard output: it is not ours to make non-blocking (see
            // [`pcapng::BlockFile`]), and a blocked write there would hold
            // the ring.
            lends: matches!(output.base(), Output::PcapngFile(_)),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it was opened for.
    pub fn output(&self) -> &Output {
        &self.output
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Batches handed to the sender so far, and how many it has finished.
    pub fn progress(&self) -> (u64, u64) {
        (self.outbox.handed(), self.outbox.finished())
    }

    /// CPU time its sender thread has used so far.
    pub fn sender_cpu(&self) -> Duration {
        self.outbox.sender_cpu()
    }

    /// Bytes waiting in this exporter's queue.
    pub fn queued_bytes(&self) -> usize {
        self.outbox.queued()
    }

    /// Makes the interfaces of a new plan known to a running output: a
    /// pcapng stream gets an interface block for each new one, in the same
    /// section, so its file or connection goes on (interfaces gone keep
    /// their ids, unused). Tunnels need nothing. False when the section
    /// would describe too many interfaces: the output must be reopened.
    pub fn add_interfaces(&mut self, interfaces: &[(IfaceId, String)]) -> bool {
        let Encoder::Pcapng(p) = &mut self.encoder else {
            return true;
        };
        let new: Vec<&(IfaceId, String)> = interfaces
            .iter()
            .filter(|(id, _)| !p.ids.contains_key(id))
            .collect();
        if p.ids.len() + new.len() > MAX_SECTION_INTERFACES {
            return false;
        }
        for (id, name) in new {
            let next = InterfaceId(p.ids.len() as u32);
            p.ids.insert(*id, next);
            crate::export::pcapng::interface_block(&mut p.unannounced, name, p.snaplen);
        }
        true
    }

    /// Encodes one mirrored packet into the current batch: one copy, or
    /// one per wire segment of a super-packet, checksums finished (as the
    /// output's [`wire::Wire`] says). A file lends what it can from
    /// `source` (the memory the record lies in) instead of copying it.
    pub fn push(
        &mut self,
        record: &Record<'_>,
        unix_ns: u64,
        interface: &str,
        source: Option<&loan::Source>,
    ) {
        let source = source.filter(|_| self.lends);
        if self.outbox.current.lending.other_than(source) {
            self.flush();
        }
        let batch = &mut self.outbox.current;
        let start = batch.buf.len();
        let stats = &self.stats;
        let shaped = match &mut self.encoder {
            Encoder::Pcapng(p) => {
                // Records only come from interfaces we configured.
                let Some(&id) = p.ids.get(&record.iface) else {
                    return;
                };
                self.shaper.shape_patched(
                    record.data,
                    record.orig_len,
                    record.gso_size,
                    |data, orig_len, patch| {
                        let head = pcapng::PacketHead {
                            interface: id,
                            unix_ns,
                            orig_len,
                            direction: Some(record.direction),
                        };
                        head.write(&mut batch.buf, data.len());
                        lend_or_copy(batch, source, data, patch);
                        head.write_tail(&mut batch.buf, data.len());
                    },
                )
            }
            Encoder::Tunnel(encode) => self.shaper.shape(
                record.data,
                record.orig_len,
                record.gso_size,
                |data, orig_len| {
                    encode.push(batch, record, data, orig_len, unix_ns, interface, stats)
                },
            ),
        };
        // A stream's copies of one record are one span (its segments' blocks
        // back to back): sent or lost together, counted as the record.
        if let Encoder::Pcapng(_) = self.encoder
            && batch.buf.len() > start
        {
            batch.packets.push(queue::Span {
                start,
                len: batch.buf.len() - start,
                lane: 0,
            });
        }
        if shaped.segments > 0 {
            Stats::add(&stats.super_packets, 1);
            Stats::add(&stats.segments, shaped.segments);
        }
        if shaped.finished > 0 {
            Stats::add(&stats.checksums_finished, shaped.finished);
        }
        if self.outbox.current.len() >= self.max_batch {
            self.flush();
        }
    }

    /// Hands the batch to the sender thread, with the interface blocks
    /// not handed over yet: they go with every batch until one is taken
    /// (a batch dropped by a full queue must not take them along).
    pub fn flush(&mut self) {
        if let Encoder::Pcapng(p) = &mut self.encoder
            && !p.unannounced.is_empty()
            && !self.outbox.current.is_empty()
        {
            self.outbox.current.idbs.extend_from_slice(&p.unannounced);
            if self.outbox.submit(&self.stats) {
                p.unannounced.clear();
            }
            return;
        }
        self.outbox.submit(&self.stats);
    }

    /// Sends what is queued and stops, waiting at most `timeout` (a collector
    /// that does not answer must not hold up shutdown).
    pub fn close(&mut self, timeout: Duration) {
        self.flush();
        self.outbox.close();
        if let Some(thread) = self.thread.take() {
            let deadline = Instant::now() + timeout;
            while !thread.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                // What it still holds will never be sent: count it as lost.
                let unsent = self.outbox.queued_packets();
                self.stats.add_send_errors(unsent);
                warn!(output = %self.name, unsent, "gave up waiting for the output to finish sending");
            }
        }
    }
}

/// Bytes below which a piece is copied even when it could be lent: a
/// `writev` slice costs the kernel more than copying a small frame here.
const LEND_MIN: usize = 256;

/// Puts a packet's bytes in the batch: lent from `source` if they lie in
/// its memory (and are not small), else copied; `patch` (a finished checksum) in the batch's
/// own bytes either way.
fn lend_or_copy(
    batch: &mut queue::Batch,
    source: Option<&loan::Source>,
    data: &[u8],
    patch: Option<wire::Patch>,
) {
    let lend = |batch: &mut queue::Batch, data: &[u8]| match source {
        Some(s) if data.len() >= LEND_MIN => batch.lending.lend(s, data, batch.buf.len()),
        _ => false,
    };
    let copy = |batch: &mut queue::Batch, data: &[u8]| {
        if !lend(batch, data) {
            batch.buf.extend_from_slice(data);
        }
    };
    match patch {
        None => copy(batch, data),
        Some(p) => {
            copy(batch, &data[..p.at]);
            batch.buf.extend_from_slice(&p.bytes);
            copy(batch, &data[p.at + 2..]);
        }
    }
}

fn spawn(
    output: &Output,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, ExportError> {
    std::thread::Builder::new()
        .name("exporter".into())
        .spawn(f)
        .map_err(|e| open_err(output, e))
}
