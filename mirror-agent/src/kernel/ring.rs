//! A BPF ring-buffer consumer over the ring's own memory mappings.
//!
//! Written by hand because aya's `RingBuf` releases each record as soon as it
//! is read, and the agent must release records only once its outputs have
//! sent them: a record that has been read but not yet sent stays in the ring,
//! so an agent killed at any moment loses nothing a restarted agent cannot
//! read again. The layout is the kernel's (kernel/bpf/ringbuf.c), as libbpf
//! reads it: the consumer position page (read-write) at offset 0, then the
//! producer position page and the data pages, mapped twice in a row so that
//! a record that wraps around is contiguous.

use std::{
    ffi::c_void,
    num::NonZeroUsize,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use aya::maps::MapData;
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};

/// The kernel's record header: length with two flag bits, then a page offset.
const HEADER: u64 = 8;
const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum RingError {
    #[error("reading the ring buffer's size: {0}")]
    Info(#[from] aya::maps::MapError),
    #[error("the ring buffer's size {0} is not a power of two")]
    Size(u32),
    #[error("mapping the ring buffer: {0}")]
    Map(#[from] nix::Error),
}

pub struct Ring {
    map: MapData,
    consumer: NonNull<c_void>,
    /// Shared, so that what refers to records (an output writing them
    /// from here, see [`Ring::records`]) keeps them mapped after the ring
    /// itself is gone.
    producer: Arc<Mapping>,
    page: NonZeroUsize,
    data_len: usize,
    mask: u64,
    /// Where the next unread record starts; the kernel's consumer position
    /// (what is released) trails it until [`Ring::release`].
    read: u64,
}

// SAFETY: the consumer page belongs to this value alone and lives until
// Drop, the producer mapping as long as its Arc; the shared words in them
// are only accessed atomically.
unsafe impl Send for Ring {}

/// The producer page and the data pages (mapped twice), read-only,
/// unmapped when the last holder lets go.
pub struct Mapping {
    ptr: NonNull<c_void>,
    len: usize,
}

// SAFETY: a read-only shared mapping that stays mapped until Drop; the
// kernel writes in it only where no record is unreleased, and the shared
// words are read atomically.
unsafe impl Send for Mapping {}
// SAFETY: as above: through `&Mapping` nothing is written.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `Ring::new` with this length; no holder is left.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

/// Where the records lie: `len` bytes from `base`, mapped as long as
/// `keep` is held. A record's bytes do not change until the ring's space
/// is released past it ([`Ring::release`]).
pub struct Records {
    pub keep: Arc<Mapping>,
    pub base: NonNull<u8>,
    pub len: usize,
}

impl Ring {
    pub fn new(map: MapData) -> Result<Self, RingError> {
        let size = map.info()?.max_entries();
        if !size.is_power_of_two() {
            return Err(RingError::Size(size));
        }
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?
            .and_then(|p| usize::try_from(p).ok())
            .and_then(NonZeroUsize::new)
            .ok_or(nix::Error::EINVAL)?;
        let data_len = size as usize;
        let page_offset = i64::try_from(page.get()).map_err(|_| nix::Error::EINVAL)?;
        let fd = map.fd().as_fd();
        // SAFETY: fresh shared mappings of the map's fd at addresses the kernel
        // picks; nothing else refers to them.
        let consumer = unsafe {
            mmap(
                None,
                page,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                0,
            )
        }?;
        let producer_len = page
            .checked_add(2 * data_len)
            .ok_or(nix::Error::EOVERFLOW)?;
        // SAFETY: as above.
        let producer = match unsafe {
            mmap(
                None,
                producer_len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_SHARED,
                fd,
                page_offset,
            )
        } {
            Ok(p) => p,
            Err(e) => {
                // SAFETY: mapped just above with this length, not used since.
                let _ = unsafe { munmap(consumer, page.get()) };
                return Err(e.into());
            }
        };
        let mut ring = Self {
            map,
            consumer,
            producer: Arc::new(Mapping {
                ptr: producer,
                len: producer_len.get(),
            }),
            page,
            data_len,
            mask: u64::from(size) - 1,
            read: 0,
        };
        // Records a previous agent read but never released are read again.
        ring.read = ring.consumer_pos().load(Ordering::Acquire);
        Ok(ring)
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the page is mapped while self lives, page-aligned, and starts
        // with the kernel's u64 consumer position.
        unsafe { &*self.consumer.cast::<AtomicU64>().as_ptr() }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: as consumer_pos, for the producer page.
        unsafe { &*self.producer.ptr.cast::<AtomicU64>().as_ptr() }
    }

    /// The memory every record read from this ring lies in: the data
    /// pages, both mappings of them.
    pub fn records(&self) -> Records {
        Records {
            keep: self.producer.clone(),
            base: self.data(),
            len: 2 * self.data_len,
        }
    }

    fn data(&self) -> NonNull<u8> {
        // SAFETY: the data pages follow the producer page in the mapping.
        unsafe { self.producer.ptr.cast::<u8>().add(self.page.get()) }
    }

    /// Hands every complete record after the read position to `f`, in order,
    /// and moves the read position past them. Stops at a record the kernel is
    /// still writing. Nothing is released; returns how many were read.
    pub fn read(&mut self, f: impl FnMut(&[u8])) -> usize {
        self.read_some(usize::MAX, f)
    }

    /// As [`Ring::read`], but at most `limit` records: a reader of many
    /// rings takes a share of each in turn.
    pub fn read_some(&mut self, limit: usize, mut f: impl FnMut(&[u8])) -> usize {
        let producer = self.producer_pos().load(Ordering::Acquire);
        let data = self.data().as_ptr();
        let mut n = 0;
        while self.read < producer && n < limit {
            let offset = (self.read & self.mask) as usize;
            // SAFETY: offset < data_len, and the header is 8-byte aligned inside
            // the data pages, which are mapped while self lives.
            let header = unsafe { &*data.add(offset).cast::<AtomicU32>() };
            let len = header.load(Ordering::Acquire);
            if len & BUSY != 0 {
                break;
            }
            let body = u64::from(len & !(BUSY | DISCARD));
            if body > self.mask {
                // A length no record can have: the mapping is not what we
                // think; stop rather than read out of bounds.
                break;
            }
            self.read += (body + HEADER).next_multiple_of(8);
            if len & DISCARD == 0 {
                // SAFETY: the record's body follows its header and, with the
                // data mapped twice in a row, is contiguous even where it wraps:
                // offset + 8 + body < 2 * data_len.
                let bytes = unsafe {
                    std::slice::from_raw_parts(data.add(offset + HEADER as usize), body as usize)
                };
                f(bytes);
                n += 1;
            }
        }
        n
    }

    /// Where reading has got to; pass it to [`Ring::release`] once what was
    /// read before it has been sent.
    pub fn position(&self) -> u64 {
        self.read
    }

    /// Gives the space of every record before `position` back to the kernel.
    pub fn release(&self, position: u64) {
        let position = position.min(self.read);
        if position > self.consumer_pos().load(Ordering::Relaxed) {
            self.consumer_pos().store(position, Ordering::Release);
        }
    }

    /// Bytes the hooks have written and the agent not yet released.
    pub fn pending(&self) -> u64 {
        let consumer = self.consumer_pos().load(Ordering::Acquire);
        self.producer_pos()
            .load(Ordering::Acquire)
            .saturating_sub(consumer)
    }

    /// Bytes read but not yet released.
    pub fn held(&self) -> u64 {
        self.read
            .saturating_sub(self.consumer_pos().load(Ordering::Relaxed))
    }

    pub fn size(&self) -> u64 {
        self.data_len as u64
    }
}

/// Of rings of these sizes, those tenants use: the largest. The agent
/// sizes every slot's ring alike and leaves the others a page (rings
/// adopted from pins keep the sizes the agent that made them chose).
pub fn largest(sizes: &[u64]) -> impl Iterator<Item = usize> + '_ {
    let max = sizes.iter().copied().max().unwrap_or(0);
    sizes
        .iter()
        .enumerate()
        .filter(move |(_, s)| **s == max)
        .map(|(i, _)| i)
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

impl AsFd for Ring {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length; never used after. The
        // producer mapping goes with its last holder.
        let _ = unsafe { munmap(self.consumer, self.page.get()) };
    }
}

#[cfg(test)]
mod tests {
    use super::largest;

    #[test]
    fn the_tenants_rings_are_the_largest() {
        let sizes = [1 << 20, 1 << 20, 4096, 4096];
        assert_eq!(largest(&sizes).collect::<Vec<_>>(), [0, 1]);
        // All alike (one slot per ring, or every ring a page): all of them.
        assert_eq!(largest(&[4096; 3]).count(), 3);
        assert_eq!(largest(&[]).count(), 0);
    }
}
