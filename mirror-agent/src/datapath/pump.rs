//! Moves records from the ring buffers (one per tenant slot) through the
//! fanout to the outputs, and gives their ring space back to the kernel
//! only once every output they went to has sent them (or the hold limits say to stop waiting; see
//! [`crate::datapath::hold`]). An agent killed at any moment thus leaves what
//! it had not sent in the ring, and the next agent sends it: a copy may be
//! sent twice across a crash, but none is lost to it.

use std::{io, time::Duration, time::Instant};

use crate::{
    datapath::{
        drain::{Drain, ROUND_RECORDS},
        fanout::Fanout,
        hold::{Holds, Limits},
    },
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
                Releaser::new(Limits {
                    age: HOLD_AGE,
                    bytes: ring.size() / HOLD_SHARE,
                })
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
}

impl Releaser {
    fn new(limits: Limits) -> Self {
        Self {
            holds: Holds::default(),
            limits,
            before: Vec::new(),
            handed: Vec::new(),
            done: Vec::new(),
        }
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
        match self
            .holds
            .release(Instant::now(), space.held(), self.limits, &self.done)
        {
            Some(position) => {
                space.release(position);
                true
            }
            None => false,
        }
    }

    fn forget(&mut self, space: &impl Space) {
        self.holds = Holds::default();
        space.release(space.position());
    }
}

#[cfg(test)]
mod tests {
    use std::{
        cell::Cell,
        collections::HashMap,
        fs::{File, OpenOptions},
        io::Read,
        os::unix::fs::OpenOptionsExt,
        path::Path,
        sync::Arc,
        time::Duration,
    };

    use mirror_common::DIR_INGRESS;
    use nix::{
        fcntl::{FcntlArg, fcntl},
        libc,
        sys::stat::Mode,
    };
    use tokio::sync::Notify;

    use super::*;
    use crate::{
        datapath::{
            fanout::{PolicyStats, Running},
            testing::{eventually, frame, iface, pcapng_output, record},
        },
        model::record::{IfaceId, WallClock},
    };

    /// The ring's space as the test moves it: what the drain has read up
    /// to, and what has been given back.
    #[derive(Default)]
    struct Fake {
        read: Cell<u64>,
        released: Cell<u64>,
    }

    impl Space for Fake {
        fn position(&self) -> u64 {
            self.read.get()
        }

        fn held(&self) -> u64 {
            self.read.get() - self.released.get()
        }

        fn release(&self, position: u64) {
            self.released.set(position);
        }
    }

    /// Holding bounded neither by time nor by bytes (within a test).
    const PATIENT: Limits = Limits {
        age: Duration::from_secs(3600),
        bytes: u64::MAX,
    };

    /// A pcapng output into a pipe the test reads, or does not: its sender
    /// finishes a batch only once the pipe has taken all of it, and the
    /// pipe is made as small as it can be.
    struct Stuck {
        pipe: File,
        capacity: usize,
    }

    impl Stuck {
        fn open(path: &Path) -> Self {
            nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");
            // Opened for reading first, without waiting for a writer, so
            // that the output's own open does not wait either.
            let pipe = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .expect("the pipe's read end");
            fcntl(&pipe, FcntlArg::F_SETPIPE_SZ(4096)).expect("shrinking the pipe");
            let capacity = fcntl(&pipe, FcntlArg::F_GETPIPE_SZ).expect("the pipe's size");
            Self {
                pipe,
                capacity: capacity as usize,
            }
        }

        /// Reads what the sender writes until `done`.
        fn read_until(&mut self, mut done: impl FnMut() -> bool) {
            let mut buf = vec![0; 1 << 16];
            eventually("the stuck output has sent", || {
                while let Ok(n) = self.pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                }
                done()
            });
        }
    }

    /// A fanout with one policy on interface `a`, sending to a pcapng file
    /// and to the stuck output at `pipe`.
    fn fanout(dir: &Path, a: IfaceId) -> (Fanout, Stuck) {
        let progress = Arc::new(Notify::new());
        let listed = [(a, "veth-a".to_owned())];
        let stuck = Stuck::open(&dir.join("pipe"));
        let outputs = vec![
            pcapng_output(&dir.join("file.pcapng"), &listed, &progress),
            pcapng_output(&dir.join("pipe"), &listed, &progress),
        ];
        let policy = Running::new("web".into(), None, outputs, PolicyStats::default());
        let routes = HashMap::from([(a, ("veth-a".to_owned(), 0))]);
        let clock = WallClock::now().expect("the clocks");
        (Fanout::new(vec![policy], routes, clock), stuck)
    }

    /// The outputs of [`fanout`], in order.
    const FILE: usize = 0;
    const PIPE: usize = 1;

    /// Batches output `i` has finished.
    fn finished(fanout: &Fanout, i: usize) -> u64 {
        fanout.exporters().nth(i).expect("two outputs").progress().1
    }

    /// Hands the fanout records from `a` that take more than `bytes` in a
    /// pcapng stream, as a drain round that read up to `position` would.
    fn drain_round(
        r: &mut Releaser,
        space: &Fake,
        fanout: &mut Fanout,
        a: IfaceId,
        bytes: usize,
        position: u64,
    ) {
        let f = frame(true, 1400);
        for _ in 0..=bytes / f.len() {
            fanout.record(&record(a, 1, DIR_INGRESS, &f));
        }
        space.read.set(position);
        r.handed_over(space, fanout);
    }

    #[test]
    fn ring_space_is_released_only_once_every_output_has_sent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = iface(7);
        let (mut fanout, mut stuck) = fanout(dir.path(), a);
        let (space, mut r) = (Fake::default(), Releaser::new(PATIENT));

        drain_round(&mut r, &space, &mut fanout, a, 2 * stuck.capacity, 1000);
        eventually("the file output has sent", || finished(&fanout, FILE) == 1);
        assert_eq!(finished(&fanout, PIPE), 0, "the pipe cannot hold the batch");
        assert!(!r.release(&space, &fanout));
        assert_eq!(space.released.get(), 0);

        stuck.read_until(|| finished(&fanout, PIPE) == 1);
        assert!(r.release(&space, &fanout));
        assert_eq!(space.released.get(), 1000);

        // A second round is held on its own: the first stays released.
        drain_round(&mut r, &space, &mut fanout, a, 2 * stuck.capacity, 2500);
        assert!(!r.release(&space, &fanout));
        assert_eq!(space.released.get(), 1000);
        stuck.read_until(|| finished(&fanout, PIPE) == 2);
        eventually("the file output has sent", || finished(&fanout, FILE) == 2);
        assert!(r.release(&space, &fanout));
        assert_eq!(space.released.get(), 2500);
        drop(stuck);
    }

    #[test]
    fn a_round_with_nothing_for_the_outputs_is_released_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = iface(7);
        let (mut fanout, stuck) = fanout(dir.path(), a);
        let (space, mut r) = (Fake::default(), Releaser::new(PATIENT));
        // Records of an interface no policy asked for: nothing handed over.
        drain_round(&mut r, &space, &mut fanout, iface(9), 3000, 700);
        assert_eq!(space.released.get(), 700);
        assert!(fanout.exporters().all(|e| e.progress() == (0, 0)));
        drop(stuck);
    }

    #[test]
    fn a_stuck_output_holds_no_more_than_the_byte_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = iface(7);
        let (mut fanout, mut stuck) = fanout(dir.path(), a);
        let space = Fake::default();
        let limits = Limits {
            age: Duration::from_secs(3600),
            bytes: 1500,
        };
        let mut r = Releaser::new(limits);
        drain_round(&mut r, &space, &mut fanout, a, 2 * stuck.capacity, 1000);
        assert_eq!(finished(&fanout, PIPE), 0);
        assert_eq!(space.released.get(), 0, "1000 bytes held: within the limit");
        drain_round(&mut r, &space, &mut fanout, a, 10, 2000);
        assert_eq!(finished(&fanout, PIPE), 0);
        assert_eq!(space.released.get(), 2000, "2000 bytes held: past it");
        stuck.read_until(|| finished(&fanout, PIPE) == 2);
    }

    /// Two tenants: policy "quiet" on `b` into a file, policy "loud" on
    /// `a` into the stuck pipe, each tenant's records from its own ring.
    #[test]
    fn another_tenants_stuck_output_does_not_hold_this_ring() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (iface(7), iface(8));
        let progress = Arc::new(Notify::new());
        let mut stuck = Stuck::open(&dir.path().join("pipe"));
        let loud = Running::new(
            "loud".into(),
            None,
            vec![pcapng_output(
                &dir.path().join("pipe"),
                &[(a, "veth-a".to_owned())],
                &progress,
            )],
            PolicyStats::default(),
        );
        let quiet = Running::new(
            "quiet".into(),
            None,
            vec![pcapng_output(
                &dir.path().join("b.pcapng"),
                &[(b, "veth-b".to_owned())],
                &progress,
            )],
            PolicyStats::default(),
        );
        let routes = HashMap::from([(a, ("veth-a".to_owned(), 0)), (b, ("veth-b".to_owned(), 1))]);
        let clock = WallClock::now().expect("the clocks");
        let mut fanout = Fanout::new(vec![loud, quiet], routes, clock);
        let (ring_a, ring_b) = (Fake::default(), Fake::default());
        let (mut ra, mut rb) = (Releaser::new(PATIENT), Releaser::new(PATIENT));

        ra.begin(&fanout);
        drain_round(&mut ra, &ring_a, &mut fanout, a, 2 * stuck.capacity, 1000);
        assert_eq!(finished(&fanout, 0), 0, "the pipe cannot hold A's batch");
        rb.begin(&fanout);
        drain_round(&mut rb, &ring_b, &mut fanout, b, 3000, 500);
        // B's ring waits for B's output only.
        eventually("B's ring is released", || {
            rb.release(&ring_b, &fanout);
            ring_b.released.get() == 500
        });
        assert_eq!(
            ring_a.released.get(),
            0,
            "A's ring waits for A's stuck output"
        );
        stuck.read_until(|| finished(&fanout, 0) == 1);
        assert!(ra.release(&ring_a, &fanout));
        assert_eq!(ring_a.released.get(), 1000);
    }

    #[test]
    fn forgetting_releases_all_that_was_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = iface(7);
        let (mut fanout, stuck) = fanout(dir.path(), a);
        let (space, mut r) = (Fake::default(), Releaser::new(PATIENT));
        drain_round(&mut r, &space, &mut fanout, a, 2 * stuck.capacity, 1000);
        assert_eq!(space.released.get(), 0);
        space.read.set(1200);
        r.forget(&space);
        assert_eq!(space.released.get(), 1200);
        drop(stuck);
    }
}
