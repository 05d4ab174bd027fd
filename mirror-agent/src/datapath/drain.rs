//! Draining the BPF ring buffer: wait on its fd with epoll (tokio's
//! `AsyncFd`), then read every record that is ready, in place, as one batch.
//! Records stay in the ring until released (see [`hold`]), so a restarted
//! agent reads again whatever its predecessor had not yet sent.

use std::io;

use tokio::io::{Interest, unix::AsyncFd};

use crate::kernel::ring::Ring;

pub struct Drain {
    fd: AsyncFd<Ring>,
}

impl Drain {
    pub fn new(ring: Ring) -> io::Result<Self> {
        // SAFETY: the Ring owns the map's fd and keeps it open, unchanged, for
        // as long as it lives, which is as long as this AsyncFd.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// Waits until records are ready, then hands each to `f` until the ring is
    /// empty. Returns how many were read. Records are borrowed from the ring's
    /// memory; nothing is copied or allocated.
    pub async fn next_batch(&mut self, f: impl FnMut(&[u8])) -> io::Result<usize> {
        let mut guard = self.fd.readable_mut().await?;
        let n = guard.get_inner_mut().read(f);
        // Only clears the readiness seen when the guard was made; a wakeup that
        // came in meanwhile stays pending, so no record is left waiting.
        guard.clear_ready();
        Ok(n)
    }

    /// Reads whatever is in the ring now, without waiting (on a timer, after
    /// a release, and at shutdown).
    pub fn drain_now(&mut self, f: impl FnMut(&[u8])) -> usize {
        self.fd.get_mut().read(f)
    }

    pub fn ring(&self) -> &Ring {
        self.fd.get_ref()
    }
}
