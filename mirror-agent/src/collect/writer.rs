//! Rotating pcapng files, one series per sender: one writer thread takes
//! packets from every receiver and appends each to its sender's current
//! file in the output directory.
//!
//! Files are named `collect-SENDER-YYYYMMDDTHHMMSSZ-NNNNNN.pcapng` (the
//! sender's address, `-` for IPv6's colons; the UTC time the file was
//! opened; a sequence number), so one sender's names sort in the order
//! they were written. A sender is the source address of its datagrams or
//! its stream connection's peer. Each file is a complete capture: a
//! section header, and an interface description block before the first
//! packet of each interface (an agent's interface, named by the receiver).
//! A file is closed when it reaches `--rotate-size` bytes or
//! `--rotate-seconds` of age (an empty file is never rotated), and the
//! sender's next one opens with its next packet. What is kept, and why a
//! sender can only ever delete its own files, is in `retention.rs`.
//!
//! A sender that invents names (a new VNI or pod name per datagram, a
//! stream announcing ever new interfaces) gets at most
//! [`file::MAX_INTERFACES_PER_FILE`] interfaces in a file, and all open files at
//! most [`file::MAX_OPEN_INTERFACES`]; past them, packets are filed, and counted
//! as `folded`, under `SOURCE-IP/other-interfaces`. Interfaces never start
//! a new file.
//!
//! At most `--max-senders` senders are known at once, each with at most
//! one open file. A new sender past that takes the place of one silent for
//! [`SENDER_IDLE`], or has its packets dropped and counted
//! (`dropped_senders`): a sender with many addresses can hold new senders
//! off, but never close or delete an active sender's file.
//!
//! A full disk: blocks are buffered and written a whole buffer at a time
//! (`BlockFile`); a packet counts as written only once its write
//! succeeded. When one fails, its packets are counted in `write_errors`,
//! the file is cut back to its last whole block (or removed if that leaves
//! no packet in it), the failure is logged once, and writing resumes in a
//! new file once the disk takes it again (tried at most once a second;
//! packets meanwhile are counted lost too).

mod file;

use std::{
    collections::HashMap,
    fs, io,
    net::IpAddr,
    num::{NonZeroU64, NonZeroUsize},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc::RecvTimeoutError},
    time::{Duration, Instant, SystemTime},
};

use mirror_common::MAX_SNAPLEN;
use tracing::{info, warn};

use self::file::{SenderFile, utc_stamp};
use super::{
    queue::QueueRx,
    receive::now_ns,
    reorder::Reorder,
    retention::{self, Admit, Limits, PREFIX, Retention, SUFFIX},
};
use crate::{export::pcapng, model::direction::Direction};

/// How often the writer flushes to disk and checks the age of its files.
const TICK: Duration = Duration::from_secs(1);
/// Blocks are written once this many bytes are buffered, over all files
/// (and every tick).
const BUFFER_BYTES: usize = 256 << 10;
/// Interfaces of one file, that is of one sender (a node with hundreds of
/// pods stays well under it); see the module's comment.
/// A sender silent this long may give its place to a new one.
pub const SENDER_IDLE: Duration = Duration::from_secs(600);

/// One decapsulated packet on its way to the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The interface it is filed under (see `datagram.rs`, `tcp.rs`).
    pub interface: Arc<str>,
    /// The address it came from: its sender.
    pub source: IpAddr,
    pub unix_ns: u64,
    pub orig_len: u32,
    pub direction: Option<Direction>,
    pub data: Vec<u8>,
}

/// When to start a new file, and what to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub size: Option<NonZeroU64>,
    pub age: Option<Duration>,
    pub keep: Limits,
    /// Senders known at once (`None`: any number).
    pub max_senders: Option<NonZeroUsize>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriterError {
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// What the writer did, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterSummary {
    pub files_written: u64,
    pub files_deleted: u64,
    pub packets: u64,
    pub bytes: u64,
    /// Packets lost because a file could not be created or written.
    pub write_errors: u64,
    /// Packets filed under an `other-interfaces` interface.
    pub folded: u64,
    /// Packets written after one with a later time: they came later than
    /// the reorder window (see `reorder.rs`).
    pub late: u64,
    /// Packets dropped at `--max-total-bytes`: their sender had no closed
    /// file of its own left to delete.
    pub dropped_retention: u64,
    /// Packets of new senders dropped at `--max-senders`.
    pub dropped_senders: u64,
}

/// A sender the writer knows.
struct Slot {
    /// Its address as file names carry it.
    key: Arc<str>,
    file: Option<SenderFile>,
    /// When its last packet came.
    last: Instant,
}

pub struct Writer {
    dir: PathBuf,
    rotation: Rotation,
    slots: HashMap<IpAddr, Slot>,
    retention: Retention,
    seq: u64,
    /// The section header every file starts with.
    header: Vec<u8>,
    /// The encoded blocks of one packet, reused.
    block: Vec<u8>,
    /// Bytes buffered over all files.
    pending: usize,
    /// Interfaces of all open files.
    interfaces: usize,
    /// When opening or writing a file last failed: a new file is tried at
    /// most once a [`TICK`].
    open_failed: Option<Instant>,
    /// Packets lost since writing began to fail (`None`: it works).
    failing: Option<u64>,
    /// When a new sender last looked for an idle one's place.
    reclaim_tried: Option<Instant>,
    /// Whether each kind of drop has been logged (only the first is).
    logged_retention: bool,
    logged_senders: bool,
    summary: WriterSummary,
    /// Where `summary` is copied on each tick, for metrics scrapes.
    published: Option<Arc<Mutex<WriterSummary>>>,
}

impl Writer {
    /// Checks the directory (a file is created and removed in it), so an
    /// unusable `--output` is refused before anything runs, and takes
    /// stock of the files of ours already there.
    pub fn open(dir: PathBuf, rotation: Rotation) -> Result<Self, WriterError> {
        let io_err = |source| WriterError::Io {
            path: dir.clone(),
            source,
        };
        if !fs::metadata(&dir).map_err(io_err)?.is_dir() {
            return Err(WriterError::NotADirectory(dir));
        }
        let kept = Retention::scan(&dir, rotation.keep).map_err(io_err)?;
        let probe = dir.join(format!(".collect-probe-{}", std::process::id()));
        SenderFile::create(probe.clone(), &[])
            .and_then(|_| fs::remove_file(&probe))
            .map_err(|source| WriterError::Io {
                path: probe.clone(),
                source,
            })?;
        if let Some(max) = rotation.keep.max_total_bytes
            && kept.total() >= max.get()
        {
            warn!(
                dir = %dir.display(),
                bytes = kept.total(),
                max_total_bytes = max.get(),
                "the files already here reach --max-total-bytes: only senders with files of \
                 their own here can write (deleting their oldest)"
            );
        }
        let mut header = Vec::new();
        pcapng::section_header(
            &mut header,
            concat!("mirror-agent collect ", env!("CARGO_PKG_VERSION")),
        );
        Ok(Self {
            dir,
            rotation,
            slots: HashMap::new(),
            retention: kept,
            seq: 0,
            header,
            block: Vec::new(),
            pending: 0,
            interfaces: 0,
            open_failed: None,
            failing: None,
            reclaim_tried: None,
            logged_retention: false,
            logged_senders: false,
            summary: WriterSummary::default(),
            published: None,
        })
    }

    /// Copies the counters to `to` once a tick (not per packet), for metrics.
    pub fn publish_to(&mut self, to: Arc<Mutex<WriterSummary>>) {
        self.published = Some(to);
    }

    /// Takes packets until every receiver has hung up, then closes the
    /// files; `reorder` puts them in time order first.
    pub fn run(mut self, packets: &QueueRx, mut reorder: Reorder) -> WriterSummary {
        let mut last_tick = Instant::now();
        loop {
            let now = now_ns();
            while let Some(p) = reorder.pop_due(now) {
                self.write(&p);
            }
            let wait = reorder.wait(now).map_or(TICK, |w| w.min(TICK));
            match packets.recv_timeout(wait) {
                Ok(p) => reorder.push(p, now_ns()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= TICK {
                self.summary.late = reorder.late();
                self.tick();
                if let Some(to) = &self.published {
                    *to.lock().unwrap_or_else(|e| e.into_inner()) = self.summary;
                }
                last_tick = Instant::now();
            }
        }
        while let Some(p) = reorder.pop() {
            self.write(&p);
        }
        self.summary.late = reorder.late();
        self.finish()
    }

    pub fn write(&mut self, p: &Packet) {
        self.write_at(p, Instant::now());
    }

    /// [`Self::write`] at `now` (tests pass later times than the clock's).
    fn write_at(&mut self, p: &Packet, now: Instant) {
        let source = p.source.to_canonical();
        if !self.slots.contains_key(&source) && !self.make_room(now) {
            self.summary.dropped_senders += 1;
            if !self.logged_senders {
                self.logged_senders = true;
                warn!(
                    source = %source,
                    "--max-senders reached: packets of new senders are dropped and counted \
                     (dropped_senders) until a known sender has been silent for 10 minutes"
                );
            }
            return;
        }
        let age = self.rotation.age;
        let slot = self.slots.entry(source).or_insert_with(|| Slot {
            key: retention::sender_key(source).into(),
            file: None,
            last: now,
        });
        slot.last = now;
        if slot.file.as_ref().is_some_and(|f| f.due_by_age(age)) {
            self.close(source);
        }
        let Some(slot) = self.slots.get(&source) else {
            return;
        };
        let opening = slot.file.is_none();
        if opening && self.open_failed.is_some_and(|t| t.elapsed() < TICK) {
            self.lost(1);
            return;
        }
        let (id, new_name, folded) = file::interface(slot.file.as_ref(), p, self.interfaces);
        self.block.clear();
        if let Some(name) = &new_name {
            pcapng::interface_block(&mut self.block, name, MAX_SNAPLEN);
        }
        // At most MAX_SNAPLEN bytes, and never an original length below them.
        let data = p.data.get(..MAX_SNAPLEN as usize).unwrap_or(&p.data);
        pcapng::packet_block(
            &mut self.block,
            id,
            p.unix_ns,
            p.orig_len.max(data.len() as u32),
            p.direction,
            data,
        );
        let key = slot.key.clone();
        let bytes = self.block.len() + if opening { self.header.len() } else { 0 };
        match self.retention.admit(&key, bytes as u64, !opening) {
            Admit::Write { delete } => self.delete(&delete, "--max-total-bytes"),
            Admit::Drop => {
                self.summary.dropped_retention += 1;
                if !self.logged_retention {
                    self.logged_retention = true;
                    warn!(
                        source = %source,
                        "--max-total-bytes reached and this sender has no closed file of its \
                         own to delete: its packets are dropped and counted (dropped_retention); \
                         other senders' files are never deleted for it"
                    );
                }
                return;
            }
        }
        if opening && !self.open_next(source) {
            self.lost(1);
            return;
        }
        if folded {
            self.summary.folded += 1;
        }
        let Some(file) = self.slots.get_mut(&source).and_then(|s| s.file.as_mut()) else {
            return;
        };
        if let Some(name) = new_name {
            if folded {
                info!(
                    file = %file.path.display(),
                    source = %source,
                    interface = %name,
                    "too many interfaces; further new ones are filed under this one"
                );
            }
            file.ids.insert(name, id);
            self.interfaces += 1;
        }
        file.push(&self.block);
        self.retention.grew(&key, self.block.len() as u64);
        self.pending += self.block.len();
        let full = self
            .rotation
            .size
            .is_some_and(|max| file.bytes >= max.get());
        if full {
            self.close(source);
        } else if self.pending >= BUFFER_BYTES {
            self.flush_all();
        }
    }

    /// Whether a new sender may be known: below `--max-senders`, or in the
    /// place of the sender silent longest if that is [`SENDER_IDLE`] (looked
    /// for at most once a [`TICK`], so a flood of new addresses costs little).
    fn make_room(&mut self, now: Instant) -> bool {
        let Some(max) = self.rotation.max_senders else {
            return true;
        };
        if self.slots.len() < max.get() {
            return true;
        }
        if self
            .reclaim_tried
            .is_some_and(|t| now.saturating_duration_since(t) < TICK)
        {
            return false;
        }
        self.reclaim_tried = Some(now);
        let idle = self
            .slots
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.last) >= SENDER_IDLE)
            .min_by_key(|(_, s)| s.last)
            .map(|(a, _)| *a);
        let Some(idle) = idle else {
            return false;
        };
        self.close(idle);
        self.slots.remove(&idle);
        true
    }

    /// Writes what is buffered, and closes the files that are old enough.
    pub fn tick(&mut self) {
        let expired = self.retention.expire(SystemTime::now());
        self.delete(&expired, "--max-age");
        let age = self.rotation.age;
        let open: Vec<(IpAddr, bool)> = self
            .slots
            .iter()
            .filter_map(|(a, s)| s.file.as_ref().map(|f| (*a, f.due_by_age(age))))
            .collect();
        for (source, due) in open {
            if due {
                self.close(source);
            } else {
                self.flush(source);
            }
        }
    }

    fn flush_all(&mut self) {
        let buffered: Vec<IpAddr> = self
            .slots
            .iter()
            .filter(|(_, s)| s.file.as_ref().is_some_and(|f| f.pending() > 0))
            .map(|(a, _)| *a)
            .collect();
        for source in buffered {
            self.flush(source);
        }
    }

    /// Writes the buffered blocks of `source`'s file. False if that failed:
    /// then they are counted lost and the file is given up (see the
    /// module's comment).
    fn flush(&mut self, source: IpAddr) -> bool {
        let Some(file) = self.slots.get_mut(&source).and_then(|s| s.file.as_mut()) else {
            return true;
        };
        self.pending = self.pending.saturating_sub(file.pending());
        match file.flush() {
            Ok((packets, bytes)) => {
                self.summary.packets += packets;
                self.summary.bytes += bytes;
                if packets > 0
                    && let Some(lost) = self.failing.take()
                {
                    info!(file = %file.path.display(), lost, "writing works again");
                }
                true
            }
            Err((error, packets)) => {
                let path = file.path.clone();
                self.failed(&path, &error);
                self.lost(packets);
                self.give_up(source);
                false
            }
        }
    }

    /// Drops `source`'s file after a failed write: it holds only whole
    /// blocks; one without a packet is removed. The next file is tried a
    /// [`TICK`] later.
    fn give_up(&mut self, source: IpAddr) {
        let Some(slot) = self.slots.get_mut(&source) else {
            return;
        };
        let Some(file) = slot.file.take() else {
            return;
        };
        self.interfaces = self.interfaces.saturating_sub(file.ids.len());
        self.open_failed = Some(Instant::now());
        if file.packets == 0 {
            let path = file.path.clone();
            drop(file);
            if fs::remove_file(&path).is_ok() {
                self.retention.settle(&slot.key, None);
                self.summary.files_written = self.summary.files_written.saturating_sub(1);
            }
        } else {
            self.retention.settle(&slot.key, Some(file.on_disk()));
            self.retention.closed(&slot.key, SystemTime::now());
            file.log_closed();
        }
    }

    fn lost(&mut self, packets: u64) {
        self.summary.write_errors += packets;
        if let Some(lost) = self.failing.as_mut() {
            *lost += packets;
        }
    }

    pub fn finish(mut self) -> WriterSummary {
        let open: Vec<IpAddr> = self.slots.keys().copied().collect();
        for source in open {
            self.close(source);
        }
        self.summary
    }

    fn close(&mut self, source: IpAddr) {
        if !self.flush(source) {
            return;
        }
        if let Some(slot) = self.slots.get_mut(&source)
            && let Some(file) = slot.file.take()
        {
            self.interfaces = self.interfaces.saturating_sub(file.ids.len());
            self.retention.closed(&slot.key, SystemTime::now());
            file.log_closed();
        }
    }

    /// Opens `source`'s next file, unless that fails (then it is tried
    /// again a [`TICK`] later). Deletes its files past `--max-files`.
    fn open_next(&mut self, source: IpAddr) -> bool {
        let Some(key) = self.slots.get(&source).map(|s| s.key.clone()) else {
            return false;
        };
        let stamp = utc_stamp(SystemTime::now());
        let file = loop {
            self.seq += 1;
            let path = self
                .dir
                .join(format!("{PREFIX}{key}-{stamp}-{:06}{SUFFIX}", self.seq));
            match SenderFile::create(path.clone(), &self.header) {
                Ok(file) => break file,
                // A file of an earlier run in the same second stays.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(error) => {
                    self.failed(&path, &error);
                    self.open_failed = Some(Instant::now());
                    return false;
                }
            }
        };
        self.summary.files_written += 1;
        self.summary.bytes += self.header.len() as u64;
        let past = self
            .retention
            .opened(&key, file.path.clone(), self.header.len() as u64);
        if let Some(slot) = self.slots.get_mut(&source) {
            slot.file = Some(file);
        }
        self.delete(&past, "--max-files");
        true
    }

    /// Deletes files that retention gave up.
    fn delete(&mut self, files: &[PathBuf], why: &str) {
        for old in files {
            match fs::remove_file(old) {
                Ok(()) => {
                    info!(file = %old.display(), "deleted an old file ({why})");
                    self.summary.files_deleted += 1;
                }
                Err(error) => warn!(file = %old.display(), %error, "cannot delete an old file"),
            }
        }
    }

    /// Logs the first failure of an outage (a full disk fails on every
    /// try); the recovery is logged with the count of packets lost.
    fn failed(&mut self, path: &Path, error: &io::Error) {
        if self.failing.is_none() {
            warn!(
                file = %path.display(),
                %error,
                "writing failed; packets are counted lost (write_errors) until it works again"
            );
            self.failing = Some(0);
        }
    }
}

#[cfg(test)]
mod tests;
