//! The hand-off between the drain thread and one exporter's sender thread:
//! whole batches of encoded packets, bounded in bytes. The drain side never
//! waits: a batch that would overflow the bound is dropped and counted.
//! Emptied batches travel back for reuse, so steady state allocates nothing.
//! Both ends count whole batches (handed over, finished), so the drain knows
//! when what it read has been sent and its ring space can be released.

use std::{
    io::{self, Write},
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, Sender, SyncSender, TrySendError},
    },
};

use tokio::sync::Notify;

use super::{
    Stats,
    loan::{self, Lending, Loan},
    pcapng::BlockFile,
};
use crate::metrics::cpu;

/// Encoded packets: one buffer, and where each packet lies in it.
#[derive(Default)]
pub struct Batch {
    pub buf: Vec<u8>,
    pub packets: Vec<Span>,
    /// pcapng interface blocks to write before `buf` (interfaces added to a
    /// running stream), and after the section header on every reconnect.
    pub idbs: Vec<u8>,
    /// Bytes the stream takes from lent memory (a file output writes
    /// packets straight from the ring), as the drain fills the batch...
    pub lending: Lending,
    /// ...and as the sender gets it.
    pub loan: Option<Arc<Loan>>,
    /// The bytes counted against the queue's bound for it, from hand-over
    /// until the sender is done with it.
    counted: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub start: usize,
    pub len: usize,
    /// Which of the sender's sockets carries it (flow hash), where that matters.
    pub lane: u32,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    pub fn bytes(&self, span: Span) -> &[u8] {
        &self.buf[span.start..span.start + span.len]
    }

    /// Bytes of its stream: its own and those lent.
    pub fn len(&self) -> usize {
        self.buf.len() + self.lending.bytes()
    }

    /// Writes `head`, then the batch, its lent packets straight from where
    /// they were lent ([`loan::gather`]), holding the loan for each
    /// `writev` only.
    pub fn write_to(&self, out: &mut BlockFile, head: &[u8]) -> io::Result<()> {
        let total = head.len() + self.len();
        out.write_gathered(total, |mut file, from| {
            let held = self.loan.as_ref().map(|l| l.hold());
            let mut slices = Vec::new();
            loan::gather(head, &self.buf, held.as_ref(), from, &mut slices);
            file.write_vectored(&slices)
        })
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.packets.clear();
        self.idbs.clear();
        self.lending.clear();
        if let Some(loan) = self.loan.take() {
            loan.finished();
        }
    }
}

/// Batches in flight: enough to absorb a burst while the byte bound decides.
const CHANNEL_BATCHES: usize = 256;

/// A batch's buffer is cut down to what it holds (plus this) before it is
/// queued: a buffer reused after a big round keeps its capacity, and many
/// small batches in such buffers would hold far more memory than the bound.
const SLACK: usize = 64 << 10;

/// The drain thread's end.
pub struct Outbox {
    tx: Option<SyncSender<Batch>>,
    back: Receiver<Batch>,
    queued: Arc<AtomicUsize>,
    queued_packets: Arc<AtomicUsize>,
    limit: usize,
    /// Batches handed to the sender so far.
    handed: u64,
    finished: Arc<AtomicU64>,
    /// The sender thread's CPU time (ns), as of its last finished batch.
    sender_cpu: Arc<AtomicU64>,
    pub current: Batch,
}

/// The sender thread's end.
pub struct Inbox {
    rx: Receiver<Batch>,
    back: Sender<Batch>,
    queued: Arc<AtomicUsize>,
    queued_packets: Arc<AtomicUsize>,
    finished: Arc<AtomicU64>,
    sender_cpu: Arc<AtomicU64>,
    /// When `sender_cpu` was last read from the thread's clock.
    cpu_read: std::cell::Cell<Option<std::time::Instant>>,
    /// Woken after each finished batch: the drain may release ring space.
    progress: Arc<Notify>,
}

pub fn channel(limit_bytes: usize, progress: Arc<Notify>) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::sync_channel(CHANNEL_BATCHES);
    let (back_tx, back_rx) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let queued_packets = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let sender_cpu = Arc::new(AtomicU64::new(0));
    (
        Outbox {
            tx: Some(tx),
            back: back_rx,
            queued: queued.clone(),
            queued_packets: queued_packets.clone(),
            limit: limit_bytes,
            handed: 0,
            finished: finished.clone(),
            sender_cpu: sender_cpu.clone(),
            current: Batch::default(),
        },
        Inbox {
            rx,
            back: back_tx,
            queued,
            queued_packets,
            finished,
            sender_cpu,
            cpu_read: std::cell::Cell::new(None),
            progress,
        },
    )
}

impl Outbox {
    /// Hands the current batch to the sender, or drops it (counted) if the
    /// queue is over its byte bound or the sender has gone.
    /// Returns whether it was handed over.
    pub fn submit(&mut self, stats: &Stats) -> bool {
        if self.current.is_empty() {
            return false;
        }
        let used = self.current.buf.len();
        if self.current.buf.capacity() > used + SLACK {
            self.current.buf.shrink_to(used + SLACK);
        }
        let spans = self.current.packets.len() + SLACK / std::mem::size_of::<Span>();
        if self.current.packets.capacity() > spans {
            self.current.packets.shrink_to(spans);
        }
        // The bound is on memory: what the buffers take, not only what they
        // use, and lent bytes as the copy a forced release would make.
        let len = self.current.buf.capacity()
            + self.current.packets.capacity() * std::mem::size_of::<Span>()
            + self.current.lending.bytes();
        let packets = self.current.packets.len();
        let over = self.queued.load(Ordering::Relaxed) + len > self.limit;
        let Some(tx) = self.tx.as_ref().filter(|_| !over) else {
            stats.add_queue_full(packets);
            self.current.clear();
            return false;
        };
        let next = self.back.try_recv().unwrap_or_default();
        self.current.counted = len;
        self.current.loan = self.current.lending.into_loan();
        let batch = std::mem::replace(&mut self.current, next);
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.queued_packets.fetch_add(packets, Ordering::Relaxed);
        match tx.try_send(batch) {
            Ok(()) => {
                self.handed += 1;
                true
            }
            Err(TrySendError::Full(mut b) | TrySendError::Disconnected(mut b)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                self.queued_packets.fetch_sub(packets, Ordering::Relaxed);
                stats.add_queue_full(packets);
                b.clear();
                self.current = b;
                false
            }
        }
    }

    /// Batches handed to the sender so far.
    pub fn handed(&self) -> u64 {
        self.handed
    }

    /// Batches the sender has finished (sent, or given up on and counted).
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Acquire)
    }

    /// Bytes waiting for the sender.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Packets waiting for the sender.
    pub fn queued_packets(&self) -> usize {
        self.queued_packets.load(Ordering::Relaxed)
    }

    /// CPU time the sender thread has used, as of its last finished batch
    /// (its sending, segmenting and checksums: all for this output's policy).
    pub fn sender_cpu(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.sender_cpu.load(Ordering::Relaxed))
    }

    /// No more batches: the sender finishes what it has and stops.
    pub fn close(&mut self) {
        self.tx = None;
    }
}

impl Inbox {
    /// The next batch, or `None` once the drain side has closed and all is sent.
    pub fn recv(&self) -> Option<Batch> {
        self.rx.recv().ok()
    }

    /// Returns a batch that has been sent (or given up on) for reuse.
    pub fn done(&self, mut batch: Batch) {
        // At most once a millisecond, never per packet: the clock is a
        // system call. What the last millisecond's batches cost shows with
        // the next read.
        let now = std::time::Instant::now();
        if self
            .cpu_read
            .get()
            .is_none_or(|at| now - at >= cpu::READ_EVERY)
        {
            self.cpu_read.set(Some(now));
            let used = cpu::nanos(cpu::thread_cpu());
            self.sender_cpu.store(used, Ordering::Relaxed);
        }
        self.queued.fetch_sub(batch.counted, Ordering::Relaxed);
        let packets = batch.packets.len();
        let left = self
            .queued_packets
            .fetch_sub(packets, Ordering::Relaxed)
            .saturating_sub(packets);
        batch.clear();
        let _ = self.back.send(batch);
        self.finished.fetch_add(1, Ordering::Release);
        // Only once caught up: waking the drain after every batch under load
        // makes it read a few records per wakeup and hand over tiny batches
        // (a wakeup ping-pong that cost ten times the CPU per copy). Behind,
        // the drain's own poll while holding ring space releases in bulk.
        if left == 0 {
            self.progress.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    /// Fills the drain side's current batch with `packets` packets of
    /// `len` bytes each (in buffers no larger than that: the bound counts
    /// what they take).
    fn fill(out: &mut Outbox, packets: usize, len: usize) {
        out.current.buf.reserve_exact(packets * len);
        out.current.packets.reserve_exact(packets);
        for _ in 0..packets {
            let start = out.current.buf.len();
            out.current.buf.extend(std::iter::repeat_n(0xab, len));
            out.current.packets.push(Span {
                start,
                len,
                lane: 0,
            });
        }
    }

    fn queue_full(stats: &Stats) -> u64 {
        Stats::get(&stats.queue_full)
    }

    #[test]
    fn a_batch_past_the_byte_bound_is_refused_and_counted_until_the_sender_catches_up() {
        let (mut out, inbox) = channel(100_000, Arc::new(Notify::new()));
        let stats = Stats::default();
        fill(&mut out, 10, 4_000);
        assert!(out.submit(&stats));
        fill(&mut out, 10, 4_000);
        assert!(out.submit(&stats));
        let two = out.queued();
        assert!((80_000..100_000).contains(&two), "{two}");
        assert_eq!(out.queued_packets(), 20);

        // A third would take it past the bound: dropped whole, counted.
        fill(&mut out, 10, 4_000);
        assert!(!out.submit(&stats));
        assert_eq!(queue_full(&stats), 10);
        assert_eq!(
            (out.handed(), out.queued(), out.queued_packets()),
            (2, two, 20)
        );
        assert!(out.current.is_empty(), "what was refused is gone");

        // The sender finishes one: room again.
        let first = inbox.recv().expect("a batch");
        assert_eq!((first.packets.len(), first.buf.len()), (10, 40_000));
        inbox.done(first);
        assert!(out.queued() < two);
        assert_eq!(out.finished(), 1);
        fill(&mut out, 10, 4_000);
        assert!(out.submit(&stats));
        assert_eq!((out.handed(), queue_full(&stats)), (3, 10));
    }

    #[test]
    fn a_big_reused_buffer_is_cut_down_before_it_counts() {
        let (mut out, inbox) = channel(1 << 20, Arc::new(Notify::new()));
        let stats = Stats::default();
        // As after a round that held the whole ring.
        out.current.buf = Vec::with_capacity(8 << 20);
        fill(&mut out, 1, 100);
        assert!(out.submit(&stats));
        assert!(out.queued() <= 100 + SLACK + SLACK, "{}", out.queued());
        assert_eq!(
            inbox.recv().expect("a batch").bytes(Span {
                start: 0,
                len: 100,
                lane: 0
            }),
            [0xab; 100]
        );
        assert_eq!(queue_full(&stats), 0);
    }

    #[test]
    fn the_drain_is_woken_once_the_sender_has_caught_up() {
        let progress = Arc::new(Notify::new());
        let (mut out, inbox) = channel(1 << 20, progress.clone());
        let stats = Stats::default();
        for _ in 0..2 {
            fill(&mut out, 3, 100);
            assert!(out.submit(&stats));
        }
        inbox.done(inbox.recv().expect("the first batch"));
        assert_eq!(out.finished(), 1);
        assert!(
            progress.notified().now_or_never().is_none(),
            "one batch still waits: no wakeup"
        );
        inbox.done(inbox.recv().expect("the second batch"));
        assert_eq!(
            (out.finished(), out.queued(), out.queued_packets()),
            (2, 0, 0)
        );
        assert!(progress.notified().now_or_never().is_some());
    }

    #[test]
    fn closed_the_sender_gets_what_was_queued_and_later_batches_are_counted() {
        let (mut out, inbox) = channel(1 << 20, Arc::new(Notify::new()));
        let stats = Stats::default();
        assert!(!out.submit(&stats), "an empty batch is not handed over");
        assert_eq!(out.handed(), 0);
        fill(&mut out, 2, 10);
        assert!(out.submit(&stats));
        out.close();
        fill(&mut out, 5, 10);
        assert!(!out.submit(&stats));
        assert_eq!(queue_full(&stats), 5);
        assert_eq!(inbox.recv().map(|b| b.packets.len()), Some(2));
        assert!(inbox.recv().is_none());
    }

    #[test]
    fn emptied_batches_come_back_for_reuse() {
        let (mut out, inbox) = channel(1 << 20, Arc::new(Notify::new()));
        let stats = Stats::default();
        fill(&mut out, 1, 5_000);
        assert!(out.submit(&stats));
        inbox.done(inbox.recv().expect("a batch"));
        fill(&mut out, 1, 10);
        assert!(out.submit(&stats));
        // The next batch to fill is the first one's buffer, emptied.
        assert!(out.current.is_empty());
        assert!(out.current.buf.capacity() >= 5_000);
    }
}
