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

use std::{
    collections::{HashMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    num::{NonZeroU64, NonZeroUsize},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, mpsc::RecvTimeoutError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use mirror_common::MAX_SNAPLEN;
use tracing::{info, warn};

use super::queue::QueueRx;
use crate::{
    export::pcapng::{self, InterfaceId},
    model::direction::Direction,
};

/// How often the writer flushes to disk and checks the age of its file.
const TICK: Duration = Duration::from_secs(1);
/// A file with this many interfaces is closed, so garbage that invents
/// ever new names cannot grow one file's interface table without end.
const MAX_INTERFACES_PER_FILE: usize = 10_000;
const PREFIX: &str = "collect-";
const SUFFIX: &str = ".pcapng";

/// One decapsulated packet on its way to the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The interface it is filed under (see `datagram.rs`, `tcp.rs`).
    pub interface: Arc<str>,
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
}

struct Current {
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    packets: u64,
    opened: Instant,
    ids: HashMap<Arc<str>, InterfaceId>,
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
    /// When opening a file last failed: retried at most once a [`TICK`].
    open_failed: Option<Instant>,
    logged_error: bool,
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
            logged_error: false,
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

    /// Takes packets until every receiver has hung up, then closes the file.
    pub fn run(mut self, packets: &QueueRx) -> WriterSummary {
        let mut last_tick = Instant::now();
        loop {
            match packets.recv_timeout(TICK) {
                Ok(p) => self.write(&p),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if last_tick.elapsed() >= TICK {
                self.tick();
                if let Some(to) = &self.published {
                    *to.lock().unwrap_or_else(|e| e.into_inner()) = self.summary;
                }
                last_tick = Instant::now();
            }
        }
        self.finish()
    }

    pub fn write(&mut self, p: &Packet) {
        if self.due_by_age() {
            self.close();
        }
        if self.current.is_none() && !self.reopen() {
            self.summary.write_errors += 1;
            return;
        }
        let Some(file) = self.current.as_mut() else {
            return;
        };
        self.block.clear();
        let id = match file.ids.get(&p.interface) {
            Some(&id) => id,
            None => {
                let id = InterfaceId(u32::try_from(file.ids.len()).unwrap_or(u32::MAX));
                pcapng::interface_block(&mut self.block, &p.interface, MAX_SNAPLEN);
                file.ids.insert(p.interface.clone(), id);
                id
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
        match file.out.write_all(&self.block) {
            Ok(()) => {
                let n = self.block.len() as u64;
                file.bytes += n;
                file.packets += 1;
                self.summary.packets += 1;
                self.summary.bytes += n;
                let full = self
                    .rotation
                    .size
                    .is_some_and(|max| file.bytes >= max.get());
                if full || file.ids.len() >= MAX_INTERFACES_PER_FILE {
                    self.close();
                }
            }
            Err(error) => {
                let path = file.path.clone();
                self.failed(&path, &error);
                self.summary.write_errors += 1;
                // The file may end in a partial block: leave it, start afresh.
                self.current = None;
            }
        }
    }

    /// Flushes, and closes a file that is old enough.
    pub fn tick(&mut self) {
        if self.due_by_age() {
            self.close();
        } else if let Some(file) = self.current.as_mut()
            && let Err(error) = file.out.flush()
        {
            let path = file.path.clone();
            self.failed(&path, &error);
            self.current = None;
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
        let Some(mut file) = self.current.take() else {
            return;
        };
        match file.out.flush() {
            Ok(()) => info!(
                file = %file.path.display(),
                packets = file.packets,
                bytes = file.bytes,
                interfaces = file.ids.len(),
                "file closed"
            ),
            Err(error) => self.failed(&file.path, &error),
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
        let mut out = BufWriter::with_capacity(1 << 20, file);
        self.block.clear();
        pcapng::section_header(
            &mut self.block,
            concat!("mirror-agent collect ", env!("CARGO_PKG_VERSION")),
        );
        out.write_all(&self.block)
            .map_err(|source| WriterError::Io {
                path: path.clone(),
                source,
            })?;
        info!(file = %path.display(), "file opened");
        self.summary.files_written += 1;
        self.summary.bytes += self.block.len() as u64;
        self.kept.push_back(path.clone());
        self.current = Some(Current {
            bytes: self.block.len() as u64,
            path,
            out,
            packets: 0,
            opened: Instant::now(),
            ids: HashMap::new(),
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

    /// Logs the first write failure (a full disk fails on every packet).
    fn failed(&mut self, path: &Path, error: &io::Error) {
        if !self.logged_error {
            warn!(file = %path.display(), %error, "writing failed; later failures are only counted");
            self.logged_error = true;
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
