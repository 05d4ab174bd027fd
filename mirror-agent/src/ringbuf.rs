//! Draining the BPF ring buffer: wait on its fd with epoll (tokio's
//! `AsyncFd`), then read every record that is ready, in place, as one batch.

use std::io;

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};

pub struct Drain {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl Drain {
    pub fn new(ring: RingBuf<MapData>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd and keeps it open, unchanged, for
        // as long as it lives, which is as long as this AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// Waits until records are ready, then hands each to `f` until the ring is
    /// empty. Returns how many were read. Records are borrowed from the ring's
    /// memory and released as soon as `f` returns; nothing is copied or allocated.
    pub async fn next_batch(&mut self, f: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut guard = self.fd.readable_mut().await?;
        let n = read_all(guard.get_inner_mut(), f);
        // Only clears the readiness seen when the guard was made; a wakeup that
        // came in meanwhile stays pending, so no record is left waiting.
        guard.clear_ready();
        Ok(n)
    }

    /// Reads whatever is in the ring now, without waiting (on a timer and at shutdown).
    pub fn drain_now(&mut self, f: impl FnMut(&[u8])) -> usize {
        read_all(self.fd.get_mut(), f)
    }
}

fn read_all(ring: &mut RingBuf<MapData>, mut f: impl FnMut(&[u8])) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        f(&item);
        n += 1;
    }
    n
}
