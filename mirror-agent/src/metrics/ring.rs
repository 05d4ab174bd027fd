//! Ring-buffer fill, read from the ring's own position pages. aya's
//! `RingBuf` has no fill query, but the kernel maps the consumer and the
//! producer position (one page each, at offsets 0 and one page) for any
//! reader; we map both read-only, beside aya's own mapping, and subtract.

use std::{
    ffi::c_void,
    num::NonZeroUsize,
    os::fd::AsFd,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use tracing::warn;

/// Read-only views of a ring buffer's consumer and producer positions.
pub struct RingFill {
    consumer: NonNull<c_void>,
    producer: NonNull<c_void>,
    page: NonZeroUsize,
}

// SAFETY: the pages are only read, with atomic loads; the mapping lives
// until Drop, whichever thread holds the value.
unsafe impl Send for RingFill {}
unsafe impl Sync for RingFill {}

impl RingFill {
    /// Maps the position pages of the ring behind `fd`; None (logged) if the
    /// kernel refuses, and the gauge is left out.
    pub fn of(fd: impl AsFd) -> Option<Self> {
        match Self::map(fd) {
            Ok(fill) => Some(fill),
            Err(error) => {
                warn!(%error, "ring-buffer fill will not be reported");
                None
            }
        }
    }

    fn map(fd: impl AsFd) -> nix::Result<Self> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?
            .and_then(|p| usize::try_from(p).ok())
            .and_then(NonZeroUsize::new)
            .ok_or(nix::errno::Errno::EINVAL)?;
        let offset = i64::try_from(page.get()).map_err(|_| nix::errno::Errno::EINVAL)?;
        let map = |offset| {
            // SAFETY: a fresh read-only shared mapping of the map's fd, at an
            // address the kernel picks; nothing else refers to it.
            unsafe {
                mmap(
                    None,
                    page,
                    ProtFlags::PROT_READ,
                    MapFlags::MAP_SHARED,
                    fd.as_fd(),
                    offset,
                )
            }
        };
        let consumer = map(0)?;
        let producer = match map(offset) {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above with this length, not used since.
                let _ = unsafe { munmap(consumer, page.get()) };
                return Err(e);
            }
        };
        Ok(Self {
            consumer,
            producer,
            page,
        })
    }

    /// Bytes the hooks have reserved and the agent not yet released
    /// (record headers included).
    pub fn pending(&self) -> u64 {
        // SAFETY: both pages are mapped for as long as self lives, are
        // page-aligned, and start with the kernel's u64 position, which the
        // kernel and aya update atomically.
        let (consumer, producer) = unsafe {
            (
                (*self.consumer.cast::<AtomicU64>().as_ptr()).load(Ordering::Acquire),
                (*self.producer.cast::<AtomicU64>().as_ptr()).load(Ordering::Acquire),
            )
        };
        producer.saturating_sub(consumer)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        for page in [self.consumer, self.producer] {
            // SAFETY: mapped in `map` with this length; never used after.
            let _ = unsafe { munmap(page, self.page.get()) };
        }
    }
}
