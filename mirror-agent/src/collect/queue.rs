//! The queue between the receivers and the writer, bounded in bytes (not
//! packets: a packet can be 64 bytes or 256 KiB). A sender waits while the
//! queued packets would exceed the bound: datagram threads block (the
//! kernel's socket buffers absorb, then drop, the excess), stream tasks
//! await (TCP pushes back on the agents). The writer frees the bytes of
//! each packet it takes.

use std::{
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    time::Duration,
};

use tokio::sync::Notify;

use super::writer::Packet;

/// Default bound of the queue (`collect --queue-bytes`).
pub const DEFAULT_QUEUE_BYTES: usize = 64 << 20;
/// What a queued packet costs beyond its bytes (the struct, the channel slot).
const OVERHEAD: usize = 128;

/// The writer is gone: nothing more can be queued.
#[derive(Debug, thiserror::Error)]
#[error("the writer has stopped")]
pub struct Closed;

struct Budget {
    max: usize,
    used: Mutex<Used>,
    /// Wakes blocked datagram threads.
    freed: Condvar,
    /// Wakes stream tasks.
    freed_async: Notify,
}

struct Used {
    bytes: usize,
    closed: bool,
}

impl Budget {
    fn lock(&self) -> std::sync::MutexGuard<'_, Used> {
        self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `cost` bytes if they fit (one packet always fits an empty queue).
    fn try_take(&self, cost: usize) -> Result<bool, Closed> {
        let mut used = self.lock();
        if used.closed {
            return Err(Closed);
        }
        if used.bytes == 0 || used.bytes + cost <= self.max {
            used.bytes += cost;
            return Ok(true);
        }
        Ok(false)
    }

    fn free(&self, cost: usize) {
        let mut used = self.lock();
        used.bytes = used.bytes.saturating_sub(cost);
        drop(used);
        self.freed.notify_all();
        self.freed_async.notify_waiters();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.freed.notify_all();
        self.freed_async.notify_waiters();
    }
}

fn cost(p: &Packet) -> usize {
    p.data.len() + p.interface.len() + OVERHEAD
}

/// Creates a queue of at most `max_bytes` bytes.
pub fn queue(max_bytes: usize) -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::channel();
    let budget = Arc::new(Budget {
        max: max_bytes.max(1),
        used: Mutex::new(Used {
            bytes: 0,
            closed: false,
        }),
        freed: Condvar::new(),
        freed_async: Notify::new(),
    });
    (
        QueueTx {
            tx,
            budget: budget.clone(),
        },
        QueueRx { rx, budget },
    )
}

#[derive(Clone)]
pub struct QueueTx {
    tx: Sender<Packet>,
    budget: Arc<Budget>,
}

impl QueueTx {
    /// Queues `p`, blocking the thread while the queue is full.
    pub fn send_blocking(&self, p: Packet) -> Result<(), Closed> {
        let cost = cost(&p);
        let mut used = self.budget.lock();
        loop {
            if used.closed {
                return Err(Closed);
            }
            if used.bytes == 0 || used.bytes + cost <= self.budget.max {
                used.bytes += cost;
                break;
            }
            used = self
                .budget
                .freed
                .wait(used)
                .unwrap_or_else(PoisonError::into_inner);
        }
        drop(used);
        self.tx.send(p).map_err(|_| Closed)
    }

    /// Queues `p`, waiting (without blocking the thread) while the queue is full.
    pub async fn send(&self, p: Packet) -> Result<(), Closed> {
        let cost = cost(&p);
        loop {
            let freed = self.budget.freed_async.notified();
            tokio::pin!(freed);
            // Registered before the check, so a free in between is not missed.
            freed.as_mut().enable();
            if self.budget.try_take(cost)? {
                break;
            }
            freed.await;
        }
        self.tx.send(p).map_err(|_| Closed)
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        self.budget.lock().bytes
    }
}

pub struct QueueRx {
    rx: Receiver<Packet>,
    budget: Arc<Budget>,
}

impl QueueRx {
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Packet, RecvTimeoutError> {
        let p = self.rx.recv_timeout(timeout)?;
        self.budget.free(cost(&p));
        Ok(p)
    }
}

impl Drop for QueueRx {
    /// Senders waiting for room learn that none will come.
    fn drop(&mut self) {
        self.budget.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(len: usize) -> Packet {
        Packet {
            interface: "198.18.0.1/eth0".into(),
            source: [198, 18, 0, 1].into(),
            unix_ns: 0,
            orig_len: len as u32,
            direction: None,
            data: vec![0; len],
        }
    }

    #[test]
    fn bounded_in_bytes_not_packets() {
        let (tx, rx) = queue(10_000);
        tx.send_blocking(packet(4000)).unwrap();
        tx.send_blocking(packet(4000)).unwrap();
        assert_eq!(tx.queued_bytes(), 2 * (4000 + 15 + OVERHEAD));
        // A third would pass the bound: it waits until the writer takes one.
        let t = {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send_blocking(packet(4000)))
        };
        std::thread::sleep(Duration::from_millis(100));
        assert!(!t.is_finished(), "the third packet must wait for room");
        rx.recv_timeout(Duration::from_secs(1)).unwrap();
        t.join().unwrap().unwrap();
        assert_eq!(tx.queued_bytes(), 2 * (4000 + 15 + OVERHEAD));
        // One packet larger than the bound still goes through an empty queue.
        rx.recv_timeout(Duration::from_secs(1)).unwrap();
        rx.recv_timeout(Duration::from_secs(1)).unwrap();
        tx.send_blocking(packet(20_000)).unwrap();
        drop(rx);
        assert!(tx.send_blocking(packet(1)).is_err());
    }

    #[test]
    fn async_senders_wake_when_room_is_freed() {
        let (tx, rx) = queue(5000);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        tx.send_blocking(packet(4000)).unwrap();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            rx.recv_timeout(Duration::from_secs(1)).unwrap();
            rx.recv_timeout(Duration::from_secs(5)).unwrap()
        });
        rt.block_on(tx.send(packet(3000))).unwrap();
        assert_eq!(reader.join().unwrap().data.len(), 3000);
    }
}
