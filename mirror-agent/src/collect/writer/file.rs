//! One sender's open file: the blocks buffered for it and its interfaces.

use std::{
    collections::HashMap,
    fs::OpenOptions,
    io,
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tracing::info;

use super::Packet;
use crate::export::pcapng::{BlockFile, InterfaceId};

pub(super) struct SenderFile {
    pub path: PathBuf,
    out: BlockFile,
    /// Whole blocks not written yet, and how many packets they hold.
    pending: Vec<u8>,
    pending_packets: u64,
    /// Bytes written and pending.
    pub bytes: u64,
    /// Packets on disk.
    pub packets: u64,
    opened: Instant,
    pub ids: HashMap<Arc<str>, InterfaceId>,
}

/// Interfaces of one file, that is of one sender (a node with hundreds of
/// pods stays well under it); see the writer's comment.
pub const MAX_INTERFACES_PER_FILE: usize = 1024;
/// Interfaces of all open files together, bounding the tables' memory.
pub const MAX_OPEN_INTERFACES: usize = 16_384;
const FOLDED: &str = "other-interfaces";

/// What a buffer keeps between flushes: many senders' files may be open.
const KEEP_CAPACITY: usize = 16 << 10;

impl SenderFile {
    /// Creates `path` with `header` (the section header) written at once, so
    /// a disk too full for it leaves no empty file. `create_new`: never an
    /// existing file or a planted symlink; 0600: captures hold payloads.
    pub fn create(path: PathBuf, header: &[u8]) -> io::Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let written = BlockFile::new(file).and_then(|mut out| {
            out.write(&[header])?;
            Ok(out)
        });
        let out = match written {
            Ok(out) => out,
            Err(error) => {
                let _ = std::fs::remove_file(&path);
                return Err(error);
            }
        };
        info!(file = %path.display(), "file opened");
        Ok(Self {
            path,
            out,
            pending: Vec::new(),
            pending_packets: 0,
            bytes: header.len() as u64,
            packets: 0,
            opened: Instant::now(),
            ids: HashMap::new(),
        })
    }

    /// Old enough to close (an empty file is never rotated).
    pub fn due_by_age(&self, age: Option<Duration>) -> bool {
        age.is_some_and(|age| {
            self.packets + self.pending_packets > 0 && self.opened.elapsed() >= age
        })
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Buffers the blocks of one packet.
    pub fn push(&mut self, blocks: &[u8]) {
        self.pending.extend_from_slice(blocks);
        self.pending_packets += 1;
        self.bytes += blocks.len() as u64;
    }

    /// Writes the buffered blocks: the packets and bytes now on disk, or the
    /// error and the packets it lost.
    pub fn flush(&mut self) -> Result<(u64, u64), (io::Error, u64)> {
        let packets = self.pending_packets;
        let bytes = self.pending.len() as u64;
        if bytes == 0 {
            return Ok((0, 0));
        }
        let written = self.out.write(&[&self.pending]);
        self.pending.clear();
        self.pending.shrink_to(KEEP_CAPACITY);
        self.pending_packets = 0;
        match written {
            Ok(()) => {
                self.packets += packets;
                Ok((packets, bytes))
            }
            Err(error) => {
                self.bytes = self.out.len();
                Err((error, packets))
            }
        }
    }

    /// Bytes of whole blocks on disk.
    pub fn on_disk(&self) -> u64 {
        self.out.len()
    }

    pub fn log_closed(&self) {
        info!(
            file = %self.path.display(),
            packets = self.packets,
            bytes = self.out.len(),
            interfaces = self.ids.len(),
            "file closed"
        );
    }
}

/// The interface `p` is filed under in `file`: its id, its name if the
/// file has no block for it yet, and whether it is a folded one.
pub(super) fn interface(
    file: Option<&SenderFile>,
    p: &Packet,
    open_interfaces: usize,
) -> (InterfaceId, Option<Arc<str>>, bool) {
    let ids = file.map(|f| &f.ids);
    if let Some(&id) = ids.and_then(|m| m.get(&p.interface)) {
        return (id, None, false);
    }
    let count = ids.map_or(0, HashMap::len);
    let folded = count >= MAX_INTERFACES_PER_FILE || open_interfaces >= MAX_OPEN_INTERFACES;
    let name: Arc<str> = if folded {
        format!("{}/{FOLDED}", p.source).into()
    } else {
        p.interface.clone()
    };
    if let Some(&id) = ids.and_then(|m| m.get(&name)) {
        return (id, None, folded);
    }
    let id = InterfaceId(u32::try_from(count).unwrap_or(u32::MAX));
    (id, Some(name), folded)
}

/// `YYYYMMDDTHHMMSSZ` for a time, in UTC (civil-from-days, after
/// Howard Hinnant's public-domain algorithm).
pub(super) fn utc_stamp(t: SystemTime) -> String {
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
