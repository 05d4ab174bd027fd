//! Bytes a file output writes straight from the memory they were read in
//! (a ring buffer's mapping), instead of a copy: a batch refers to them as
//! pieces lent from that memory, and the file's sender gathers its own
//! bytes (block headers, padding, options) and the lent ones into one
//! `writev`.
//!
//! The lender (the drain) may take its memory back before the sender has
//! written (its hold is bounded in time and bytes, so that a stuck output
//! cannot stall the ring). Before it does, [`Ledger::reclaim`] copies the
//! lent bytes of every batch not yet written into that batch's own buffer;
//! a batch whose sender is in a write at that moment cannot be copied, and
//! bounds what may be taken back until the write returns. Writes never
//! wait while they hold a batch (a FIFO is written without blocking, and
//! waited on between writes), so that bound lasts one system call.

use std::{
    collections::VecDeque,
    io::IoSlice,
    ptr::NonNull,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, TryLockError,
        atomic::{AtomicBool, Ordering},
    },
};

use super::pcapng::Gather;

/// Memory records are lent from.
pub struct Memory {
    /// Keeps the memory mapped.
    _keep: Arc<dyn Send + Sync>,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the memory is only read, and stays mapped as long as `_keep`,
// which is Send and Sync.
unsafe impl Send for Memory {}
// SAFETY: as above.
unsafe impl Sync for Memory {}

impl Memory {
    /// # Safety
    /// `len` bytes from `base` must stay mapped and readable as long as
    /// `keep` lives, and the lender must not change bytes it has lent
    /// (a record handed to an output while this memory was its source)
    /// until [`Ledger::reclaim`] has said it may.
    pub unsafe fn new(keep: Arc<dyn Send + Sync>, base: NonNull<u8>, len: usize) -> Self {
        Self {
            _keep: keep,
            base,
            len,
        }
    }

    /// Where `data` starts in this memory, if it lies in it.
    fn offset_of(&self, data: &[u8]) -> Option<usize> {
        let at = (data.as_ptr() as usize).checked_sub(self.base.as_ptr() as usize)?;
        (at.checked_add(data.len())? <= self.len).then_some(at)
    }

    /// # Safety
    /// `from..from + len` is within the memory (a piece made by
    /// [`Lending::lend`]) and not yet taken back by the lender.
    unsafe fn bytes(&self, from: usize, len: usize) -> &[u8] {
        // SAFETY: in bounds and mapped (the caller's contract and `new`'s).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(from), len) }
    }
}

/// Where an output may borrow from now: the memory, the lender's position
/// at or before every record it will hand over until the next source, and
/// the ledger of its loans.
#[derive(Clone)]
pub struct Source {
    pub memory: Arc<Memory>,
    pub position: u64,
    pub ledger: Arc<Ledger>,
}

/// `len` lent bytes from `from` in the memory, which the stream has at
/// `at` in the batch's own buffer (before the byte there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Piece {
    at: usize,
    from: usize,
    len: usize,
}

/// A batch's lent pieces, as the drain fills it.
#[derive(Default)]
pub struct Lending {
    pieces: Vec<Piece>,
    bytes: usize,
    source: Option<Source>,
}

impl Lending {
    /// Lends `data` from `source`, at `at` in the batch's buffer, if it
    /// lies in the source's memory; false if not (the caller copies it).
    pub fn lend(&mut self, source: &Source, data: &[u8], at: usize) -> bool {
        let Some(from) = source.memory.offset_of(data) else {
            return false;
        };
        if self.source.is_none() {
            self.source = Some(source.clone());
        }
        if !data.is_empty() {
            self.pieces.push(Piece {
                at,
                from,
                len: data.len(),
            });
            self.bytes += data.len();
        }
        true
    }

    /// Whether lent pieces are from another source than `source` (a batch
    /// must be handed over before it borrows from another).
    pub fn other_than(&self, source: Option<&Source>) -> bool {
        match (&self.source, source) {
            (Some(mine), Some(s)) => !Arc::ptr_eq(&mine.ledger, &s.ledger),
            (Some(_), None) => !self.pieces.is_empty(),
            _ => false,
        }
    }

    /// Bytes lent.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.pieces.clear();
        self.bytes = 0;
        self.source = None;
    }

    /// The loan of what was lent, entered in its source's ledger, or
    /// `None` if nothing was; leaves this empty.
    pub fn into_loan(&mut self) -> Option<Arc<Loan>> {
        let source = self.source.take()?;
        if self.pieces.is_empty() {
            return None;
        }
        let loan = Arc::new(Loan {
            memory: source.memory,
            start: source.position,
            lent: Mutex::new(Lent {
                pieces: std::mem::take(&mut self.pieces),
                copy: None,
            }),
            free: AtomicBool::new(false),
        });
        source.ledger.enter(loan.clone());
        Some(loan)
    }
}

/// One batch's lent pieces, shared by its sender and the lender's ledger.
pub struct Loan {
    memory: Arc<Memory>,
    /// The lender's position at or before every lent byte.
    start: u64,
    lent: Mutex<Lent>,
    /// Written, or copied: the loan no longer refers to the memory.
    free: AtomicBool,
}

struct Lent {
    pieces: Vec<Piece>,
    /// Every piece's bytes in turn, once the ledger has copied them.
    copy: Option<Vec<u8>>,
}

impl Loan {
    /// The pieces, held until the guard goes: the lender cannot take them
    /// back meanwhile.
    pub fn hold(&self) -> Held<'_> {
        Held {
            memory: &self.memory,
            lent: self.lent.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Its batch was written (or given up on): the loan is over.
    pub fn finished(&self) {
        self.free.store(true, Ordering::Release);
    }

    fn is_free(&self) -> bool {
        self.free.load(Ordering::Acquire)
    }
}

/// A loan's pieces, as a sender holds them for one write.
pub struct Held<'a> {
    memory: &'a Memory,
    lent: MutexGuard<'a, Lent>,
}

/// Gathers the stream of `head`, then `buf` with `held`'s pieces in it,
/// from byte `skip` on, into `out` (at most [`MAX_SLICES`](super::pcapng::MAX_SLICES)).
pub fn gather<'a>(
    head: &'a [u8],
    buf: &'a [u8],
    held: Option<&'a Held<'a>>,
    skip: usize,
    out: &mut Vec<IoSlice<'a>>,
) {
    let mut gather = Gather::new(skip, out);
    if !gather.push(head) {
        return;
    }
    let mut done = 0;
    if let Some(held) = held {
        let mut copied = 0;
        for p in &held.lent.pieces {
            if !gather.push(&buf[done..p.at]) {
                return;
            }
            done = p.at;
            let bytes = match &held.lent.copy {
                Some(copy) => &copy[copied..copied + p.len],
                // SAFETY: a piece of this loan, which is not free (its
                // batch is being written) and not copied: the lender takes
                // its bytes back only after copying them, which the held
                // lock keeps it from doing until this write is over.
                None => unsafe { held.memory.bytes(p.from, p.len) },
            };
            copied += p.len;
            if !gather.push(bytes) {
                return;
            }
        }
    }
    gather.push(&buf[done..]);
}

/// The loans of one lender's memory, in the order they were made, so that
/// it knows what it must copy before it may take bytes back.
#[derive(Default)]
pub struct Ledger {
    loans: Mutex<VecDeque<Arc<Loan>>>,
}

impl Ledger {
    fn enter(&self, loan: Arc<Loan>) {
        let mut loans = self.loans.lock().unwrap_or_else(PoisonError::into_inner);
        while loans.front().is_some_and(|l| l.is_free()) {
            loans.pop_front();
        }
        loans.push_back(loan);
    }

    /// The lender wants every byte before `position` back: copies what
    /// loans of them still lend into the loans' own buffers, and returns
    /// how far it may take back now, `position` or, if a sender is in the
    /// middle of writing a loan, that loan's start (ask again later).
    pub fn reclaim(&self, position: u64) -> u64 {
        let mut loans = self.loans.lock().unwrap_or_else(PoisonError::into_inner);
        let mut upto = position;
        for loan in loans.iter().take_while(|l| l.start < position) {
            if loan.is_free() {
                continue;
            }
            let mut lent = match loan.lent.try_lock() {
                Ok(lent) => lent,
                Err(TryLockError::Poisoned(p)) => p.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    upto = loan.start;
                    break;
                }
            };
            if lent.copy.is_none() {
                let mut copy = Vec::with_capacity(lent.pieces.iter().map(|p| p.len).sum());
                for p in &lent.pieces {
                    // SAFETY: a piece of a loan not yet free: the lender
                    // has not taken it back (it does so only after this).
                    copy.extend_from_slice(unsafe { loan.memory.bytes(p.from, p.len) });
                }
                lent.copy = Some(copy);
            }
            loan.free.store(true, Ordering::Release);
        }
        loans.retain(|l| !l.is_free());
        upto
    }

    /// Loans that still refer to the memory.
    pub fn outstanding(&self) -> usize {
        let loans = self.loans.lock().unwrap_or_else(PoisonError::into_inner);
        loans.iter().filter(|l| !l.is_free()).count()
    }
}

#[cfg(test)]
pub(crate) mod tests;
