//! Draining the BPF ring buffers, one per tenant slot: wait on their fds
//! with epoll (tokio's `AsyncFd`) until any has records, then read them in
//! place, round-robin, a share of each ring per turn ([`ROUND_RECORDS`]),
//! so that a tenant whose ring is always full (a flood, a slow collector)
//! cannot keep the others' records waiting. Records stay in the rings
//! until released (see [`hold`](super::hold)), so a restarted agent reads
//! again whatever its predecessor had not yet sent.

use std::{future::poll_fn, io, task::Poll};

use tokio::io::{Interest, unix::AsyncFd};

use crate::kernel::ring::Ring;

/// Records taken from one ring before the next ring's turn: small enough
/// that a full ring's turn is short (tens of microseconds), large enough
/// that the hand-over to the outputs after each turn stays cheap per record.
pub const ROUND_RECORDS: usize = 256;
/// Turns of every ring per drain before the drain loop looks at its other
/// work (outputs' progress, timers, new interfaces); what is left is read
/// on the next one, at once.
const ROUNDS: usize = 64;

pub struct Drain {
    rings: Vec<AsyncFd<Ring>>,
    /// The ring that goes first in the next round: each round starts one
    /// further on, so no ring is always first.
    first: usize,
    /// The last drain stopped after [`ROUNDS`] with records left.
    behind: bool,
}

impl Drain {
    pub fn new(rings: Vec<Ring>) -> io::Result<Self> {
        let rings = rings
            .into_iter()
            .map(|ring| {
                // SAFETY: the Ring owns the map's fd and keeps it open,
                // unchanged, for as long as it lives, which is as long as
                // this AsyncFd.
                unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                    .map_err(io::Error::from)
            })
            .collect::<io::Result<_>>()?;
        Ok(Self {
            rings,
            first: 0,
            behind: false,
        })
    }

    /// Waits until some ring has records (at once if the last drain left
    /// some). Clears the readiness it saw before anything is read: a
    /// wakeup that comes in meanwhile stays pending, so no record is left
    /// waiting.
    pub async fn ready(&mut self) -> io::Result<()> {
        if std::mem::take(&mut self.behind) {
            return Ok(());
        }
        poll_fn(|cx| {
            let mut any = false;
            for ring in &mut self.rings {
                match ring.poll_read_ready_mut(cx) {
                    Poll::Ready(Ok(mut guard)) => {
                        guard.clear_ready();
                        any = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if any {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Reads every ring in turns of at most [`ROUND_RECORDS`] each, ready
    /// or not, until all are empty or [`ROUNDS`] rounds have gone: `f` gets
    /// each ring's turn, its index and the ring, and reads from it (records
    /// are borrowed from the ring's memory; nothing is copied). Returns how
    /// many records were read.
    pub fn rounds(&mut self, mut f: impl FnMut(usize, &mut Ring) -> usize) -> usize {
        let n = self.rings.len();
        let mut total = 0;
        for _ in 0..ROUNDS {
            let mut round = 0;
            for turn in 0..n {
                let i = (self.first + turn) % n;
                round += f(i, self.rings[i].get_mut());
            }
            self.first = (self.first + 1) % n.max(1);
            total += round;
            if round == 0 {
                return total;
            }
        }
        self.behind = true;
        total
    }

    pub fn rings(&self) -> impl Iterator<Item = &Ring> {
        self.rings.iter().map(AsyncFd::get_ref)
    }
}
