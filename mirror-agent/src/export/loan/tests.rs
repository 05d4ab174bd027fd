use std::cell::UnsafeCell;

use super::*;

/// Memory to lend from, which a test writes as the kernel writes a ring:
/// only where nothing is lent (or once the ledger has said so).
pub struct Scratch(Box<[UnsafeCell<u8>]>);

// SAFETY: for tests: written (through `put`) only where no loan refers,
// which is what the tests check the ledger guarantees.
unsafe impl Sync for Scratch {}

impl Scratch {
    pub fn new(len: usize) -> Arc<Self> {
        Arc::new(Self((0..len).map(|_| UnsafeCell::new(0)).collect()))
    }

    pub fn put(&self, at: usize, bytes: &[u8]) {
        for (cell, b) in self.0[at..at + bytes.len()].iter().zip(bytes) {
            // SAFETY: see the Sync impl.
            unsafe { *cell.get() = *b };
        }
    }

    pub fn slice(&self, at: usize, len: usize) -> &[u8] {
        assert!(at + len <= self.0.len());
        // SAFETY: in bounds; UnsafeCell<u8> has u8's layout.
        unsafe { std::slice::from_raw_parts(self.0[at].get().cast_const(), len) }
    }

    pub fn memory(self: &Arc<Self>) -> Memory {
        let base = NonNull::new(self.0[0].get()).expect("not null");
        // SAFETY: the Arc keeps the cells; the tests write only as above.
        unsafe { Memory::new(self.clone(), base, self.0.len()) }
    }
}

fn source(scratch: &Arc<Scratch>, position: u64, ledger: &Arc<Ledger>) -> Source {
    Source {
        memory: Arc::new(scratch.memory()),
        position,
        ledger: ledger.clone(),
    }
}

/// The bytes `gather` gives from `skip` on, one slice-full at a time.
fn stream(head: &[u8], buf: &[u8], loan: Option<&Arc<Loan>>, mut skip: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let held = loan.map(|l| l.hold());
        let mut slices = Vec::new();
        gather(head, buf, held.as_ref(), skip, &mut slices);
        if slices.is_empty() {
            return out;
        }
        // As a short write would: take only the first slice.
        out.extend_from_slice(&slices[0]);
        skip += slices[0].len();
    }
}

/// A batch's own bytes around two lent pieces: `[h1] lent(2..5) [h2] lent(8..9) [t]`.
fn lent_batch(scratch: &Arc<Scratch>, ledger: &Arc<Ledger>) -> (Vec<u8>, Arc<Loan>) {
    let src = source(scratch, 100, ledger);
    let mut lending = Lending::default();
    let mut buf = b"h1".to_vec();
    assert!(lending.lend(&src, scratch.slice(2, 3), buf.len()));
    buf.extend_from_slice(b"h2");
    assert!(lending.lend(&src, scratch.slice(8, 1), buf.len()));
    buf.extend_from_slice(b"t");
    assert!(!lending.lend(&src, b"elsewhere", buf.len()));
    assert_eq!(lending.bytes(), 4);
    let loan = lending.into_loan().expect("something was lent");
    (buf, loan)
}

#[test]
fn the_stream_interleaves_own_and_lent_bytes_from_any_byte_on() {
    let scratch = Scratch::new(16);
    scratch.put(0, b"0123456789");
    let ledger = Arc::default();
    let (buf, loan) = lent_batch(&scratch, &ledger);
    let whole = b"HEADh1234h28t".to_vec();
    assert_eq!(stream(b"HEAD", &buf, Some(&loan), 0), whole);
    for skip in 0..whole.len() {
        assert_eq!(stream(b"HEAD", &buf, Some(&loan), skip), whole[skip..]);
    }
    assert_eq!(ledger.outstanding(), 1);
    loan.finished();
    assert_eq!(ledger.outstanding(), 0);
}

#[test]
fn reclaiming_copies_what_is_lent_so_the_memory_can_change() {
    let scratch = Scratch::new(16);
    scratch.put(0, b"0123456789");
    let ledger = Arc::default();
    let (buf, loan) = lent_batch(&scratch, &ledger);
    // Loans from position 100 on are not in the way of taking back less.
    assert_eq!(ledger.reclaim(100), 100);
    assert_eq!(ledger.outstanding(), 1);
    assert_eq!(ledger.reclaim(101), 101);
    assert_eq!(ledger.outstanding(), 0);
    // The kernel reuses the space: the batch still has what was lent.
    scratch.put(0, b"xxxxxxxxxx");
    assert_eq!(stream(b"", &buf, Some(&loan), 0), b"h1234h28t");
    assert_eq!(stream(b"", &buf, Some(&loan), 5), b"h28t");
}

#[test]
fn a_loan_being_written_bounds_what_may_be_taken_back() {
    let scratch = Scratch::new(16);
    let ledger = Arc::default();
    let (_, first) = lent_batch(&scratch, &ledger);
    let held = first.hold();
    let (ledger2, scratch2) = (ledger.clone(), scratch.clone());
    // Another thread: the lock is the sender's.
    let upto = std::thread::spawn(move || {
        let _keep = scratch2;
        ledger2.reclaim(500)
    })
    .join()
    .expect("reclaim");
    assert_eq!(upto, 100, "up to the loan being written");
    drop(held);
    assert_eq!(ledger.reclaim(500), 500);
    assert_eq!(ledger.outstanding(), 0);
}

#[test]
fn written_loans_are_not_copied_and_leave_the_ledger() {
    let scratch = Scratch::new(16);
    let ledger = Arc::default();
    let (_, loan) = lent_batch(&scratch, &ledger);
    loan.finished();
    assert_eq!(ledger.reclaim(500), 500);
    assert!(loan.hold().lent.copy.is_none());
    let (_, next) = lent_batch(&scratch, &ledger);
    assert_eq!(ledger.loans.lock().expect("ledger").len(), 1);
    drop(next);
}

#[test]
fn lending_from_another_source_needs_a_new_batch() {
    let scratch = Scratch::new(16);
    let (a, b) = (Arc::default(), Arc::default());
    let mut lending = Lending::default();
    assert!(!lending.other_than(None));
    assert!(lending.lend(&source(&scratch, 0, &a), scratch.slice(0, 4), 0));
    assert!(!lending.other_than(Some(&source(&scratch, 8, &a))));
    assert!(lending.other_than(Some(&source(&scratch, 8, &b))));
    assert!(lending.other_than(None));
}
