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
        self.released.set(position.max(self.released.get()));
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

/// Reads the pipe until `done`, keeping what it read.
fn read_all(stuck: &mut Stuck, mut done: impl FnMut() -> bool) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0; 1 << 16];
    eventually("the stuck output has sent", || {
        while let Ok(n) = stuck.pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        done()
    });
    all
}

/// A file output writes records from the ring's memory (here a scratch
/// buffer the test writes as the kernel writes a ring). A stuck one must
/// not hold the ring past the limit, and what it writes later must still
/// be the records, not what the kernel put in the space since.
#[test]
fn a_forced_release_copies_what_a_stuck_file_was_lent() {
    use crate::export::loan::tests::Scratch;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = iface(7);
    let (mut fanout, mut stuck) = fanout(dir.path(), a);
    let scratch = Scratch::new(1 << 20);
    let limits = Limits {
        age: Duration::from_secs(3600),
        bytes: 1500,
    };
    let mut r = Releaser::new(limits).lending(scratch.memory());
    let space = Fake::default();

    // Records of every length around the 4-byte padding, back to back.
    let frames: Vec<Vec<u8>> = (0..4 * stuck.capacity / 700)
        .map(|i| frame(i % 2 == 0, 600 + i % 5))
        .collect();
    let mut at = 0;
    let mut records = Vec::new();
    for f in &frames {
        let rec = record(a, 1, DIR_INGRESS, f);
        scratch.put(at, &rec);
        records.push((at, rec.len()));
        at += rec.len();
    }
    r.begin(&fanout);
    fanout.lend_from(r.source(0));
    for (at, len) in &records {
        fanout.record(scratch.slice(*at, *len));
    }
    space.read.set(at as u64);
    r.handed_over(&space, &mut fanout);
    assert_eq!(finished(&fanout, PIPE), 0, "the pipe cannot hold it all");
    // Past the byte limit: released, once a write in progress returns.
    eventually("the ring is released", || {
        r.release(&space, &fanout);
        space.released.get() == at as u64
    });
    assert_eq!(r.ledger.outstanding(), 0, "nothing lent is left");
    assert_eq!(r.owed, None);

    // The kernel writes new records over the released space.
    scratch.put(0, &vec![0xee; at]);
    let bytes = read_all(&mut stuck, || finished(&fanout, PIPE) == 1);
    let pipe = dir.path().join("pipe.pcapng");
    std::fs::write(&pipe, bytes).expect("a copy of what the pipe carried");
    eventually("the file output has sent", || finished(&fanout, FILE) == 1);
    for path in [pipe, dir.path().join("file.pcapng")] {
        let data: Vec<Vec<u8>> = crate::datapath::testing::written(&path)
            .into_iter()
            .map(|w| w.data)
            .collect();
        assert_eq!(data, frames, "{}", path.display());
    }
}

/// A plan change lets go of what was read: what the old outputs were lent
/// is theirs (copied) first.
#[test]
fn forgetting_copies_what_was_lent() {
    use crate::export::loan::tests::Scratch;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = iface(7);
    let (mut fanout, mut stuck) = fanout(dir.path(), a);
    let scratch = Scratch::new(1 << 16);
    let mut r = Releaser::new(PATIENT).lending(scratch.memory());
    let space = Fake::default();
    let f = frame(false, 3 * stuck.capacity);
    let rec = record(a, 1, DIR_INGRESS, &f);
    scratch.put(0, &rec);
    r.begin(&fanout);
    fanout.lend_from(r.source(0));
    fanout.record(scratch.slice(0, rec.len()));
    space.read.set(rec.len() as u64);
    r.handed_over(&space, &mut fanout);
    assert_eq!(space.released.get(), 0);
    eventually("all was let go", || {
        r.forget(&space);
        r.release(&space, &fanout);
        space.released.get() == rec.len() as u64
    });
    scratch.put(0, &vec![0xee; rec.len()]);
    let bytes = read_all(&mut stuck, || finished(&fanout, PIPE) == 1);
    let pipe = dir.path().join("pipe.pcapng");
    std::fs::write(&pipe, bytes).expect("a copy of what the pipe carried");
    let data: Vec<Vec<u8>> = crate::datapath::testing::written(&pipe)
        .into_iter()
        .map(|w| w.data)
        .collect();
    assert_eq!(data, [f]);
}

/// A TCP frame as a local socket hands it to the NIC: its checksum field
/// holds only the folded pseudo-header sum (CHECKSUM_PARTIAL).
fn partial(mut f: Vec<u8>) -> Vec<u8> {
    let words = |b: &[u8]| -> u32 {
        b.chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum()
    };
    let tcp_len = (f.len() - 34) as u32;
    let mut s = words(&f[26..34]) + 6 + tcp_len;
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    f[50..52].copy_from_slice(&(s as u16).to_be_bytes());
    f
}

/// A frame lent from the ring with a finished checksum: the two bytes are
/// the batch's own, the rest is written from the ring, and what the file
/// holds is the frame with its checksum done (etherparse built it so).
#[test]
fn a_lent_frame_gets_its_checksum_finished_in_place() {
    use crate::export::loan::tests::Scratch;
    let dir = tempfile::tempdir().expect("tempdir");
    let a = iface(7);
    let (mut fanout, stuck) = fanout(dir.path(), a);
    let scratch = Scratch::new(1 << 16);
    let mut r = Releaser::new(PATIENT).lending(scratch.memory());
    let space = Fake::default();
    let whole = frame(false, 1000);
    let sent = partial(whole.clone());
    assert_ne!(sent, whole, "the checksum was partial");
    let rec = record(a, 1, DIR_INGRESS, &sent);
    scratch.put(0, &rec);
    r.begin(&fanout);
    fanout.lend_from(r.source(0));
    fanout.record(scratch.slice(0, rec.len()));
    space.read.set(rec.len() as u64);
    r.handed_over(&space, &mut fanout);
    eventually("the file output has sent", || finished(&fanout, FILE) == 1);
    let data: Vec<Vec<u8>> = crate::datapath::testing::written(&dir.path().join("file.pcapng"))
        .into_iter()
        .map(|w| w.data)
        .collect();
    assert_eq!(data, [whole]);
    drop(stuck);
}
