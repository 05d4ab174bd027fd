//! Moves records from the ring buffer through the fanout to the outputs,
//! and gives their ring space back to the kernel only once every output has
//! sent them (or the hold limits say to stop waiting; see
//! [`crate::datapath::hold`]). An agent killed at any moment thus leaves what
//! it had not sent in the ring, and the next agent sends it: a copy may be
//! sent twice across a crash, but none is lost to it.

use std::{io, time::Duration, time::Instant};

use crate::{
    datapath::{
        drain::Drain,
        fanout::Fanout,
        hold::{Holds, Limits},
    },
    kernel::ring::Ring,
};

/// While ring space is held, the kernel does not wake the reader (it wakes
/// it only when the released position has caught up), so the drain loop
/// polls the ring this often instead.
pub const HOLDING_POLL: Duration = Duration::from_millis(2);
/// A stuck output holds ring space at most this long...
const HOLD_AGE: Duration = Duration::from_millis(250);
/// ...or while the held bytes are at most this share of the ring.
const HOLD_SHARE: u64 = 4;

pub struct Pump {
    drain: Drain,
    holds: Holds,
    limits: Limits,
    /// Per output: batches handed over, and finished; reused every round.
    handed: Vec<u64>,
    done: Vec<u64>,
}

impl Pump {
    pub fn new(ring: Ring) -> io::Result<Self> {
        let limits = Limits {
            age: HOLD_AGE,
            bytes: ring.size() / HOLD_SHARE,
        };
        Ok(Self {
            drain: Drain::new(ring)?,
            holds: Holds::default(),
            limits,
            handed: Vec::new(),
            done: Vec::new(),
        })
    }

    pub fn ring(&self) -> &Ring {
        self.drain.ring()
    }

    /// Waits for records, then moves all that are ready.
    pub async fn wait(&mut self, fanout: &mut Fanout) -> io::Result<()> {
        self.drain.next_batch(|r| fanout.record(r)).await?;
        self.handed_over(fanout);
        Ok(())
    }

    /// Moves whatever records are ready now, without waiting.
    pub fn poll(&mut self, fanout: &mut Fanout) {
        self.drain.drain_now(|r| fanout.record(r));
        self.handed_over(fanout);
    }

    /// An output finished a batch (or a timer fired): release what has been
    /// sent. The kernel wakes the reader only for records written when the
    /// released position had caught up with them, so after a release, read
    /// again for those written while space was held.
    pub fn progress(&mut self, fanout: &mut Fanout) {
        self.release(fanout);
        self.poll(fanout);
    }

    /// Whether read records still hold ring space, so that the kernel will
    /// not wake the reader for new ones: the drain loop then polls
    /// ([`HOLDING_POLL`]).
    pub fn holding(&self) -> bool {
        self.drain.ring().held() > 0
    }

    /// The outputs were replaced: what was read so far belongs to the old
    /// ones, which finish sending it on their own; stop holding it.
    pub fn forget_holds(&mut self) {
        self.holds = Holds::default();
        let ring = self.drain.ring();
        ring.release(ring.position());
    }

    fn handed_over(&mut self, fanout: &mut Fanout) {
        fanout.flush();
        self.handed.clear();
        self.handed
            .extend(fanout.exporters().map(|e| e.progress().0));
        let position = self.drain.ring().position();
        self.holds.mark(position, Instant::now(), &self.handed);
        self.release(fanout);
    }

    fn release(&mut self, fanout: &Fanout) -> bool {
        self.done.clear();
        self.done.extend(fanout.exporters().map(|e| e.progress().1));
        let ring = self.drain.ring();
        match self
            .holds
            .release(Instant::now(), ring.held(), self.limits, &self.done)
        {
            Some(position) => {
                ring.release(position);
                true
            }
            None => false,
        }
    }
}
