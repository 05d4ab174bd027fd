//! Rotating pcapng files: one writer thread takes packets from every
//! receiver and appends them to the current file in the output directory.
//!
//! Files are named `collect-YYYYMMDDTHHMMSSZ-NNNNNN.pcapng` (UTC time the
//! file was opened, then a sequence number), so names sort in the order the
//! files were written. Each file is a complete capture: a section header,
//! and an interface description block before the first packet of each
//! interface (an agent's interface, named by the receiver). A file is
//! closed when it reaches `--rotate-size` bytes or `--rotate-seconds` of
//! age (an empty file is never rotated), and the next one opens with the
//! next packet. With `--max-files N` the oldest of the files in the
//! directory that carry this name pattern (earlier runs' too) are deleted
//! so that at most N remain.
//!
//! Interfaces never start a new file, so a sender that invents names (a new
//! VNI or pod name per datagram, a stream announcing ever new interfaces)
//! cannot push real captures out under `--max-files`: one source gets at
//! most [`MAX_INTERFACES_PER_SOURCE`] interfaces in a file, and a file at
//! most [`MAX_INTERFACES_PER_FILE`]; past them, packets are filed, and
//! counted as `folded`, under `SOURCE-IP/other-interfaces`, or
//! `other-interfaces` when the file is full. Only bytes and age rotate.
//!
//! A full disk: blocks are buffered and written a whole buffer at a time
//! ([`BlockFile`]); a packet counts as written only once its write
//! succeeded. When one fails, its packets are counted in `write_errors`,
//! the file is cut back to its last whole block (or removed if that leaves
//! no packet in it), the failure is logged once, and writing resumes in a
//! new file once the disk takes it again (tried at most once a second;
//! packets meanwhile are counted lost too).

use std::{
    collections::{HashMap, VecDeque},
    fs::{self, OpenOptions},
    io,
    net::IpAddr,
    num::{NonZeroU64, NonZeroUsize},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc::RecvTimeoutError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use mirror_common::MAX_SNAPLEN;
use tracing::{info, warn};

use super::{queue::QueueRx, receive::now_ns, reorder::Reorder};
use crate::{
    export::pcapng::{self, BlockFile, InterfaceId},
    model::direction::Direction,
};

/// How often the writer flushes to disk and checks the age of its file.
const TICK: Duration = Duration::from_secs(1);
/// Blocks are written once this many bytes are buffered (and every tick).
const BUFFER_BYTES: usize = 256 << 10;
/// Interfaces one source address may add to a file (a node with hundreds
/// of pods stays well under it); see the module's comment.
const MAX_INTERFACES_PER_SOURCE: usize = 1024;
/// Interfaces of a file, bounding its interface table.
const MAX_INTERFACES_PER_FILE: usize = 10_000;
const FOLDED: &str = "other-interfaces";
const PREFIX: &str = "collect-";
const SUFFIX: &str = ".pcapng";

/// One decapsulated packet on its way to the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The interface it is filed under (see `datagram.rs`, `tcp.rs`).
    pub interface: Arc<str>,
    /// The address it came from.
    pub source: IpAddr,
    pub unix_ns: u64,
    pub orig_len: u32,
    pub direction: Option<Direction>,
    pub data: Vec<u8>,
}

/// When to start a new file, and how many to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    pub size: Option<NonZeroU64>,
    pub age: Option<Duration>,
    pub max_files: Option<NonZeroUsize>,
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
}

struct Current {
    path: PathBuf,
    out: BlockFile,
    /// Whole blocks not written yet, and how many packets they hold.
    pending: Vec<u8>,
    pending_packets: u64,
    /// Bytes written and pending.
    bytes: u64,
    /// Packets on disk.
    packets: u64,
    opened: Instant,
    ids: HashMap<Arc<str>, InterfaceId>,
    /// Interfaces each source added to this file.
    per_source: HashMap<IpAddr, usize>,
}

pub struct Writer {
    dir: PathBuf,
    rotation: Rotation,
    current: Option<Current>,
    /// Files of our pattern in the directory, oldest first, the current last.
    kept: VecDeque<PathBuf>,
    seq: u64,
    /// The encoded blocks of one packet, reused.
    block: Vec<u8>,
    /// When opening or writing a file last failed: a new file is tried at
    /// most once a [`TICK`].
    open_failed: Option<Instant>,
    /// Packets lost since writing began to fail (`None`: it works).
    failing: Option<u64>,
    summary: WriterSummary,
    /// Where `summary` is copied on each tick, for metrics scrapes.
    published: Option<Arc<Mutex<WriterSummary>>>,
}

impl Writer {
    /// Checks the directory and opens the first file in it, so an unusable
    /// `--output` is refused before anything runs.
    pub fn open(dir: PathBuf, rotation: Rotation) -> Result<Self, WriterError> {
        let io_err = |source| WriterError::Io {
            path: dir.clone(),
            source,
        };
        if !fs::metadata(&dir).map_err(io_err)?.is_dir() {
            return Err(WriterError::NotADirectory(dir));
        }
        let mut existing: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(io_err)?
            .filter_map(|e| e.ok())
            .filter(|e| is_ours(&e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        existing.sort();
        let mut writer = Self {
            dir,
            rotation,
            current: None,
            kept: existing.into(),
            seq: 0,
            block: Vec::new(),
            open_failed: None,
            failing: None,
            summary: WriterSummary::default(),
            published: None,
        };
        writer.open_next()?;
        Ok(writer)
    }

    /// Copies the counters to `to` once a tick (not per packet), for metrics.
    pub fn publish_to(&mut self, to: Arc<Mutex<WriterSummary>>) {
        self.published = Some(to);
    }

    /// Takes packets until every receiver has hung up, then closes the file;
    /// `reorder` puts them in time order first.
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
        if self.due_by_age() {
            self.close();
        }
        if self.current.is_none() && !self.reopen() {
            self.lost(1);
            return;
        }
        let Some(file) = self.current.as_mut() else {
            return;
        };
        self.block.clear();
        let id = match file.ids.get(&p.interface) {
            Some(&id) => id,
            None => {
                let added = file.per_source.entry(p.source).or_default();
                let name: Arc<str> = if file.ids.len() >= MAX_INTERFACES_PER_FILE {
                    FOLDED.into()
                } else if *added >= MAX_INTERFACES_PER_SOURCE {
                    format!("{}/{FOLDED}", p.source).into()
                } else {
                    *added += 1;
                    p.interface.clone()
                };
                let folded = !Arc::ptr_eq(&name, &p.interface);
                if folded {
                    self.summary.folded += 1;
                }
                match file.ids.get(&name) {
                    Some(&id) => id,
                    None => {
                        if folded {
                            info!(
                                file = %file.path.display(),
                                source = %p.source,
                                interface = %name,
                                "too many interfaces; further new ones are filed under this one"
                            );
                        }
                        let id = InterfaceId(u32::try_from(file.ids.len()).unwrap_or(u32::MAX));
                        pcapng::interface_block(&mut self.block, &name, MAX_SNAPLEN);
                        file.ids.insert(name, id);
                        id
                    }
                }
            }
        };
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
        file.pending.extend_from_slice(&self.block);
        file.pending_packets += 1;
        file.bytes += self.block.len() as u64;
        let full = self
            .rotation
            .size
            .is_some_and(|max| file.bytes >= max.get());
        if full {
            self.close();
        } else if file.pending.len() >= BUFFER_BYTES {
            self.flush();
        }
    }

    /// Writes what is buffered, and closes a file that is old enough.
    pub fn tick(&mut self) {
        if self.due_by_age() {
            self.close();
        } else {
            self.flush();
        }
    }

    /// Writes the buffered blocks. False if that failed: then they are
    /// counted lost and the file is given up (see the module's comment).
    fn flush(&mut self) -> bool {
        let Some(file) = self.current.as_mut() else {
            return true;
        };
        if file.pending.is_empty() {
            return true;
        }
        let packets = file.pending_packets;
        let bytes = file.pending.len() as u64;
        let written = file.out.write(&[&file.pending]);
        file.pending.clear();
        file.pending_packets = 0;
        match written {
            Ok(()) => {
                file.packets += packets;
                self.summary.packets += packets;
                self.summary.bytes += bytes;
                if let Some(lost) = self.failing.take() {
                    info!(file = %file.path.display(), lost, "writing works again");
                }
                true
            }
            Err(error) => {
                let path = file.path.clone();
                self.failed(&path, &error);
                self.lost(packets);
                self.give_up();
                false
            }
        }
    }

    /// Drops the current file after a failed write: it holds only whole
    /// blocks; one without a packet is removed. The next file is tried a
    /// [`TICK`] later.
    fn give_up(&mut self) {
        let Some(file) = self.current.take() else {
            return;
        };
        self.open_failed = Some(Instant::now());
        if file.packets == 0 {
            drop(file.out);
            if fs::remove_file(&file.path).is_ok() {
                self.kept.retain(|p| *p != file.path);
                self.summary.files_written = self.summary.files_written.saturating_sub(1);
            }
        } else {
            info!(
                file = %file.path.display(),
                packets = file.packets,
                bytes = file.out.len(),
                interfaces = file.ids.len(),
                "file closed"
            );
        }
    }

    fn lost(&mut self, packets: u64) {
        self.summary.write_errors += packets;
        if let Some(lost) = self.failing.as_mut() {
            *lost += packets;
        }
    }

    pub fn finish(mut self) -> WriterSummary {
        self.close();
        self.summary
    }

    fn due_by_age(&self) -> bool {
        match (&self.current, self.rotation.age) {
            (Some(file), Some(age)) => file.packets > 0 && file.opened.elapsed() >= age,
            _ => false,
        }
    }

    fn close(&mut self) {
        if !self.flush() {
            return;
        }
        if let Some(file) = self.current.take() {
            info!(
                file = %file.path.display(),
                packets = file.packets,
                bytes = file.bytes,
                interfaces = file.ids.len(),
                "file closed"
            );
        }
    }

    /// Opens the next file unless that failed within the last tick.
    fn reopen(&mut self) -> bool {
        if self.open_failed.is_some_and(|t| t.elapsed() < TICK) {
            return false;
        }
        match self.open_next() {
            Ok(()) => true,
            Err(WriterError::Io { path, source }) => {
                self.failed(&path, &source);
                self.open_failed = Some(Instant::now());
                false
            }
            Err(error) => {
                warn!(%error, "cannot open the next file");
                self.open_failed = Some(Instant::now());
                false
            }
        }
    }

    fn open_next(&mut self) -> Result<(), WriterError> {
        let stamp = utc_stamp(SystemTime::now());
        let (path, file) = loop {
            self.seq += 1;
            let path = self
                .dir
                .join(format!("{PREFIX}{stamp}-{:06}{SUFFIX}", self.seq));
            // create_new: a file of an earlier run in the same second stays.
            // 0600: captures hold whole payloads.
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(WriterError::Io { path, source }),
            }
        };
        self.block.clear();
        pcapng::section_header(
            &mut self.block,
            concat!("mirror-agent collect ", env!("CARGO_PKG_VERSION")),
        );
        // Written at once: a disk too full for it leaves no empty file.
        let written = BlockFile::new(file).and_then(|mut out| {
            out.write(&[&self.block])?;
            Ok(out)
        });
        let out = match written {
            Ok(out) => out,
            Err(source) => {
                let _ = fs::remove_file(&path);
                return Err(WriterError::Io { path, source });
            }
        };
        info!(file = %path.display(), "file opened");
        self.summary.files_written += 1;
        self.summary.bytes += self.block.len() as u64;
        self.kept.push_back(path.clone());
        self.current = Some(Current {
            bytes: self.block.len() as u64,
            path,
            out,
            pending: Vec::with_capacity(BUFFER_BYTES),
            pending_packets: 0,
            packets: 0,
            opened: Instant::now(),
            ids: HashMap::new(),
            per_source: HashMap::new(),
        });
        self.delete_oldest();
        Ok(())
    }

    fn delete_oldest(&mut self) {
        let Some(max) = self.rotation.max_files else {
            return;
        };
        while self.kept.len() > max.get() {
            let Some(old) = self.kept.pop_front() else {
                break;
            };
            match fs::remove_file(&old) {
                Ok(()) => {
                    info!(file = %old.display(), "deleted the oldest file (--max-files)");
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

fn is_ours(name: &str) -> bool {
    name.len() >= PREFIX.len() + 16 + 1 + 6 + SUFFIX.len()
        && name.starts_with(PREFIX)
        && name.ends_with(SUFFIX)
}

/// `YYYYMMDDTHHMMSSZ` for a time, in UTC (civil-from-days, after
/// Howard Hinnant's public-domain algorithm).
fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests;
