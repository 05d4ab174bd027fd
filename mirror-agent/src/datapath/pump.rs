//! Moves records from the ring buffers (one per tenant slot) through the
//! fanout to the outputs, and gives their ring space back to the kernel
//! only once every output they went to has sent them (or the hold limits say to stop waiting; see
//! [`crate::datapath::hold`]). An agent killed at any moment thus leaves what
//! it had not sent in the ring, and the next agent sends it: a copy may be
//! sent twice across a crash, but none is lost to it. File outputs write
//! records from the ring itself ([`crate::export::loan`]): space goes back
//! only as far as each ring's ledger allows, after it has copied what a
//! forced release would take from a batch not yet written.

use std::{io, sync::Arc, time::Duration, time::Instant};

use crate::{
    datapath::{
        drain::{Drain, ROUND_RECORDS},
        fanout::Fanout,
        hold::{Holds, Limits},
    },
    export::loan::{Ledger, Memory, Source},
    kernel::ring::{Ring, largest},
};

/// While ring space is held, the kernel does not wake the reader (it wakes
/// it only when the released position has caught up), so the drain loop
/// polls the rings this often instead.
pub const HOLDING_POLL: Duration = Duration::from_millis(2);
/// A stuck output holds ring space at most this long...
const HOLD_AGE: Duration = Duration::from_millis(250);
/// ...or while the held bytes are at most this share of its ring.
const HOLD_SHARE: u64 = 4;

/// The rings' fill, summed over them, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingFill {
    size: u64,
    pending: u64,
}

impl RingFill {
    /// Bytes of ring space in all.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes the hooks have written and the agent not yet released.
    pub fn pending(&self) -> u64 {
        self.pending
    }
}

pub struct Pump {
    drain: Drain,
    /// One per ring, in the drain's order: each ring's space is held and
    /// released on its own, so a tenant whose output is slow holds only
    /// its own ring's.
    releasers: Vec<Releaser>,
}

impl Pump {
    pub fn new(rings: Vec<Ring>) -> io::Result<Self> {
        let releasers = rings
            .iter()
            .map(|ring| {
                let records = ring.records();
                // SAFETY: the ring's records stay mapped as long as `keep`
                // (the Arc of its mapping, which each batch that lends from
                // it holds, whatever becomes of the ring: a plan change,
                // shutdown, a new ring). The kernel changes a record only
                // once its space is released, and this pump releases only
                // what the ledger's `reclaim` allows ([`Releaser::release`],
                // [`Releaser::forget`]); no other process releases it
                // meanwhile (one agent per pin directory holds its lock; an
                // agent without pins has rings of its own).
                let memory = unsafe { Memory::new(records.keep, records.base, records.len) };
                Releaser::new(Limits {
                    age: HOLD_AGE,
                    bytes: ring.size() / HOLD_SHARE,
                })
                .lending(memory)
            })
            .collect();
        Ok(Self {
            drain: Drain::new(rings)?,
            releasers,
        })
    }

    /// The tenants' rings' fill (those no slot uses, a page each, hold nothing).
    pub fn fill(&self) -> RingFill {
        let rings: Vec<&Ring> = self.drain.rings().collect();
        let sizes: Vec<u64> = rings.iter().map(|r| r.size()).collect();
        largest(&sizes).fold(RingFill::default(), |f, i| RingFill {
            size: f.size + rings[i].size(),
            pending: f.pending + rings[i].pending(),
        })
    }

    /// Waits for records, then moves those that are ready.
    pub async fn wait(&mut self, fanout: &mut Fanout) -> io::Result<()> {
        self.drain.ready().await?;
        self.poll(fanout);
        Ok(())
    }

    /// Moves whatever records are ready now, without waiting: the rings in
    /// turn, a share of each, each turn's records handed to the outputs
    /// and marked on its own ring.
    pub fn poll(&mut self, fanout: &mut Fanout) {
        let releasers = &mut self.releasers;
        self.drain.rounds(|i, ring| {
            let from = ring.position();
            let releaser = &mut releasers[i];
            releaser.begin(fanout);
            fanout.lend_from(releaser.source(from));
            let n = ring.read_some(ROUND_RECORDS, |r| fanout.record(r));
            // Discarded records move the position too, with nothing read.
            if ring.position() != from {
                releaser.handed_over(ring, fanout);
            }
            n
        });
    }

    /// An output finished a batch (or a timer fired): release what has been
    /// sent. The kernel wakes the reader only for records written when the
    /// released position had caught up with them, so after a release, read
    /// again for those written while space was held.
    pub fn progress(&mut self, fanout: &mut Fanout) {
        for (releaser, ring) in self.releasers.iter_mut().zip(self.drain.rings()) {
            releaser.release(ring, fanout);
        }
        self.poll(fanout);
    }

    /// Whether read records still hold ring space, so that the kernel will
    /// not wake the reader for new ones: the drain loop then polls
    /// ([`HOLDING_POLL`]).
    pub fn holding(&self) -> bool {
        self.drain.rings().any(|r| r.held() > 0)
    }

    /// The outputs were replaced: what was read so far belongs to the old
    /// ones, which finish sending it on their own; stop holding it.
    pub fn forget_holds(&mut self) {
        for (releaser, ring) in self.releasers.iter_mut().zip(self.drain.rings()) {
            releaser.forget(ring);
        }
    }
}

/// A ring's space as the pump gives it back: kept apart from reading
/// records, so that when space is released can be tested without a BPF
/// ring buffer (making one takes privileges).
trait Space {
    /// Where reading has got to.
    fn position(&self) -> u64;
    /// Bytes read but not yet released.
    fn held(&self) -> u64;
    /// Gives back the space of every record before `position`.
    fn release(&self, position: u64);
}

impl Space for Ring {
    fn position(&self) -> u64 {
        Ring::position(self)
    }

    fn held(&self) -> u64 {
        Ring::held(self)
    }

    fn release(&self, position: u64) {
        Ring::release(self, position);
    }
}

/// Marks what each turn of one ring handed to the outputs, and releases
/// its space as they send it.
struct Releaser {
    holds: Holds,
    limits: Limits,
    /// Per output: batches handed over before this turn ([`Releaser::begin`]),
    /// after it, and finished; reused every turn.
    before: Vec<u64>,
    handed: Vec<u64>,
    done: Vec<u64>,
    /// The ring's records, which file outputs write from...
    memory: Option<Arc<Memory>>,
    /// ...and what they have been lent: space is released only as far as
    /// [`Ledger::reclaim`] allows.
    ledger: Arc<Ledger>,
    /// A release that had to wait for a write in progress; retried.
    owed: Option<u64>,
}

impl Releaser {
    fn new(limits: Limits) -> Self {
        Self {
            holds: Holds::default(),
            limits,
            before: Vec::new(),
            handed: Vec::new(),
            done: Vec::new(),
            memory: None,
            ledger: Arc::default(),
            owed: None,
        }
    }

    /// Records read from `memory` may be lent to outputs.
    fn lending(mut self, memory: Memory) -> Self {
        self.memory = Some(Arc::new(memory));
        self
    }

    /// Where the records of a turn that starts at `position` lie.
    fn source(&self, position: u64) -> Option<Source> {
        Some(Source {
            memory: self.memory.clone()?,
            position,
            ledger: self.ledger.clone(),
        })
    }

    /// A turn of this ring starts: notes what each output had been handed.
    fn begin(&mut self, fanout: &Fanout) {
        self.before.clear();
        self.before
            .extend(fanout.exporters().map(|e| e.progress().0));
    }

    /// A turn has handed records up to the space's position to the
    /// fanout: send them on, mark the turn, and release what can be. Only
    /// the outputs this turn handed something wait for it: another
    /// tenant's slow output never holds this ring's space.
    fn handed_over(&mut self, space: &impl Space, fanout: &mut Fanout) {
        fanout.flush();
        self.handed.clear();
        let before = &self.before;
        self.handed
            .extend(fanout.exporters().enumerate().map(|(i, e)| {
                let now = e.progress().0;
                if before.get(i) == Some(&now) { 0 } else { now }
            }));
        self.before.clear();
        self.holds
            .mark(space.position(), Instant::now(), &self.handed);
        self.release(space, fanout);
    }

    fn release(&mut self, space: &impl Space, fanout: &Fanout) -> bool {
        self.done.clear();
        self.done.extend(fanout.exporters().map(|e| e.progress().1));
        let due = self
            .holds
            .release(Instant::now(), space.held(), self.limits, &self.done)
            .max(self.owed);
        match due {
            Some(position) => {
                self.give_back(space, position);
                true
            }
            None => false,
        }
    }

    /// Releases up to `position`, once what outputs were lent of it is
    /// theirs (a forced release copies it for them); as far as a write in
    /// progress allows, and the rest later.
    fn give_back(&mut self, space: &impl Space, position: u64) {
        let upto = self.ledger.reclaim(position);
        self.owed = (upto < position).then_some(position);
        space.release(upto);
    }

    fn forget(&mut self, space: &impl Space) {
        self.holds = Holds::default();
        self.give_back(space, space.position());
    }
}

#[cfg(test)]
mod tests;
