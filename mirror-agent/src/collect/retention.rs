//! What the collector keeps, decided per sender so that no sender's
//! traffic can delete another sender's captures (issue 17).
//!
//! Each file holds one sender's packets and carries its address in its
//! name (`collect-SENDER-YYYYMMDDTHHMMSSZ-NNNNNN.pcapng`, see `writer.rs`).
//! `--max-files N` keeps each sender's newest N files: opening a sender's
//! next file deletes only that sender's oldest. `--max-total-bytes` caps
//! what all our files in the directory hold together; a packet that would
//! pass it first deletes its own sender's oldest closed files, and when
//! that sender has none left, the packet is dropped and counted. Another
//! sender's files are never deleted to make room. `--max-age` deletes
//! closed files last written that long ago, whoever sent them: time, not
//! any sender's traffic, decides it, and it frees what senders that went
//! away left behind.
//!
//! Why not one ring for everything, as `tcpdump -C -W`, netsniff-ng or
//! Arkime's free-space pruning do: there the busiest sender decides what
//! everyone keeps, which is what an unauthenticated listener cannot allow.
//! The decisions here are pure (the caller deletes the files; only `scan`
//! reads the directory), so they are tested without a disk.

use std::{
    collections::{HashMap, VecDeque},
    fs, io,
    net::IpAddr,
    num::{NonZeroU64, NonZeroUsize},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

pub const PREFIX: &str = "collect-";
pub const SUFFIX: &str = ".pcapng";
/// `YYYYMMDDTHHMMSSZ`.
const STAMP_LEN: usize = 16;

/// The limits of `--max-files` and `--max-total-bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Files kept per sender.
    pub max_files: Option<NonZeroUsize>,
    /// Bytes of all our files in the directory together.
    pub max_total_bytes: Option<NonZeroU64>,
    /// Closed files last written longer ago than this are deleted.
    pub max_age: Option<Duration>,
}

/// The part of a file name that names its sender: the address, with `-`
/// for the colons of IPv6 (file names stay portable).
pub fn sender_key(source: IpAddr) -> String {
    source.to_canonical().to_string().replace(':', "-")
}

/// A file name of ours: `Some(Some(sender))`, or `Some(None)` for the
/// names of earlier versions, which carried no sender.
pub fn parse_name(name: &str) -> Option<Option<&str>> {
    let body = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (rest, seq) = body.rsplit_once('-')?;
    if seq.len() < 6 || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (sender, stamp) = match rest.rsplit_once('-') {
        Some((sender, stamp)) if !sender.is_empty() => (Some(sender), stamp),
        Some(_) => return None,
        None => (None, rest),
    };
    let stamp_ok =
        stamp.len() == STAMP_LEN && stamp.as_bytes().get(8) == Some(&b'T') && stamp.ends_with('Z');
    stamp_ok.then_some(sender)
}

#[derive(Debug)]
struct Kept {
    path: PathBuf,
    bytes: u64,
    /// When it was last written (`None`: it is open, being written).
    closed: Option<SystemTime>,
}

/// The answer to "may this sender write these bytes?".
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Yes, once these files of the same sender are deleted (possibly none).
    Write { delete: Vec<PathBuf> },
    /// No: the total is reached and the sender has no closed file of its
    /// own to give up.
    Drop,
}

#[derive(Debug, Default)]
pub struct Retention {
    limits: Limits,
    /// Each sender's files, oldest first; the one being written, if any, last.
    senders: HashMap<String, VecDeque<Kept>>,
    /// Files of earlier versions, which name no sender, oldest first.
    unnamed: VecDeque<Kept>,
    /// Bytes of all our files, those of earlier versions included.
    total: u64,
}

impl Retention {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// A file of ours found in the directory at start, `bytes` long; the
    /// caller gives them in name order (oldest first for each sender).
    pub fn existing(
        &mut self,
        sender: Option<&str>,
        path: PathBuf,
        bytes: u64,
        written: SystemTime,
    ) {
        self.total += bytes;
        let kept = Kept {
            path,
            bytes,
            closed: Some(written),
        };
        match sender {
            Some(sender) => self
                .senders
                .entry(sender.to_owned())
                .or_default()
                .push_back(kept),
            None => self.unnamed.push_back(kept),
        }
    }

    /// Takes stock of the files of ours in `dir`.
    pub fn scan(dir: &Path, limits: Limits) -> io::Result<Self> {
        let mut existing: Vec<(String, PathBuf, u64, SystemTime)> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                parse_name(&name)?;
                let meta = e.metadata().ok()?;
                let written = meta.modified().unwrap_or_else(|_| SystemTime::now());
                Some((name, e.path(), meta.len(), written))
            })
            .collect();
        // Name order: each sender's oldest first.
        existing.sort();
        let mut kept = Self::new(limits);
        for (name, path, bytes, written) in existing {
            kept.existing(parse_name(&name).flatten(), path, bytes, written);
        }
        Ok(kept)
    }

    /// Bytes of all our files.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether `sender` may add `bytes` to its newest file (`open`: it has
    /// one open) or to a new one. Files it names are already forgotten.
    pub fn admit(&mut self, sender: &str, bytes: u64, open: bool) -> Admit {
        let Some(max) = self.limits.max_total_bytes else {
            return Admit::Write { delete: Vec::new() };
        };
        let fits = |total: u64| total.saturating_add(bytes) <= max.get();
        if fits(self.total) {
            return Admit::Write { delete: Vec::new() };
        }
        let Some(files) = self.senders.get_mut(sender) else {
            return Admit::Drop;
        };
        // Its closed files: all of them but the open one.
        let closed = files.len().saturating_sub(usize::from(open));
        let freeable: u64 = files.iter().take(closed).map(|k| k.bytes).sum();
        if !fits(self.total.saturating_sub(freeable)) {
            return Admit::Drop;
        }
        let mut delete = Vec::new();
        while !fits(self.total) {
            let Some(old) = files.pop_front() else {
                break;
            };
            self.total = self.total.saturating_sub(old.bytes);
            delete.push(old.path);
        }
        Admit::Write { delete }
    }

    /// `sender` opened `path`, `bytes` long: returns its files past
    /// `--max-files`, oldest first, for the caller to delete.
    pub fn opened(&mut self, sender: &str, path: PathBuf, bytes: u64) -> Vec<PathBuf> {
        self.total += bytes;
        let files = self.senders.entry(sender.to_owned()).or_default();
        files.push_back(Kept {
            path,
            bytes,
            closed: None,
        });
        let mut delete = Vec::new();
        if let Some(max) = self.limits.max_files {
            while files.len() > max.get() {
                let Some(old) = files.pop_front() else {
                    break;
                };
                self.total = self.total.saturating_sub(old.bytes);
                delete.push(old.path);
            }
        }
        delete
    }

    /// `sender`'s newest file grew by `bytes`.
    pub fn grew(&mut self, sender: &str, bytes: u64) {
        if let Some(newest) = self.senders.get_mut(sender).and_then(VecDeque::back_mut) {
            newest.bytes += bytes;
            self.total += bytes;
        }
    }

    /// `sender`'s newest file was closed at `now`.
    pub fn closed(&mut self, sender: &str, now: SystemTime) {
        if let Some(newest) = self.senders.get_mut(sender).and_then(VecDeque::back_mut) {
            newest.closed = Some(now);
        }
    }

    /// Closed files last written `--max-age` ago or longer, forgotten here
    /// for the caller to delete.
    pub fn expire(&mut self, now: SystemTime) -> Vec<PathBuf> {
        let Some(max_age) = self.limits.max_age else {
            return Vec::new();
        };
        let old = |k: &Kept| {
            k.closed
                .is_some_and(|t| now.duration_since(t).is_ok_and(|age| age >= max_age))
        };
        let mut expired = Vec::new();
        // Oldest first in each list: stop at the first one that stays.
        for files in self.senders.values_mut().chain([&mut self.unnamed]) {
            while files.front().is_some_and(old) {
                if let Some(k) = files.pop_front() {
                    self.total = self.total.saturating_sub(k.bytes);
                    expired.push(k.path);
                }
            }
        }
        self.senders.retain(|_, files| !files.is_empty());
        expired
    }

    /// `sender`'s newest file holds `bytes` after all (a failed write cut it
    /// back), or is gone (`None`).
    pub fn settle(&mut self, sender: &str, bytes: Option<u64>) {
        let Some(files) = self.senders.get_mut(sender) else {
            return;
        };
        let Some(newest) = files.back_mut() else {
            return;
        };
        self.total = self.total.saturating_sub(newest.bytes);
        match bytes {
            Some(b) => {
                newest.bytes = b;
                self.total += b;
            }
            None => {
                files.pop_back();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_files: usize, max_total: u64) -> Limits {
        Limits {
            max_files: NonZeroUsize::new(max_files),
            max_total_bytes: NonZeroU64::new(max_total),
            max_age: None,
        }
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn names() {
        let v6: IpAddr = "fd00:198:18::1".parse().unwrap();
        assert_eq!(sender_key(v6), "fd00-198-18--1");
        let mapped: IpAddr = "::ffff:198.18.1.1".parse().unwrap();
        assert_eq!(sender_key(mapped), "198.18.1.1");
        let stamp = "20261203T040000Z";
        assert_eq!(
            parse_name(&format!("collect-198.18.1.1-{stamp}-000001.pcapng")),
            Some(Some("198.18.1.1"))
        );
        assert_eq!(
            parse_name(&format!("collect-fd00-198-18--1-{stamp}-1234567.pcapng")),
            Some(Some("fd00-198-18--1"))
        );
        assert_eq!(
            parse_name(&format!("collect-{stamp}-000001.pcapng")),
            Some(None)
        );
        for bad in [
            "collect-x.pcapng",
            "collect-1.2.3.4-20261203T040000Z-00001.pcapng",
            "collect-1.2.3.4-20261203T040000Z-000001.pcap",
            "collect--20261203T040000Z-000001.pcapng",
            "notes.txt",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    /// A flooding sender's rotation deletes only its own files.
    #[test]
    fn max_files_counts_per_sender() {
        let mut r = Retention::new(limits(2, 0));
        r.existing(Some("a"), p("a0"), 10, SystemTime::now());
        assert!(r.opened("a", p("a1"), 10).is_empty());
        for i in 0..5 {
            let deleted = r.opened("flood", p(&format!("f{i}")), 10);
            let want: Vec<PathBuf> = if i >= 2 {
                vec![p(&format!("f{}", i - 2))]
            } else {
                vec![]
            };
            assert_eq!(deleted, want);
        }
        assert_eq!(r.opened("a", p("a2"), 10), vec![p("a0")]);
        assert_eq!(r.total(), 40);
    }

    #[test]
    fn the_total_frees_only_the_senders_own_closed_files() {
        let mut r = Retention::new(limits(0, 100));
        r.existing(None, p("legacy"), 20, SystemTime::now());
        r.opened("a", p("a1"), 10);
        r.grew("a", 30);
        r.opened("flood", p("f1"), 10);
        r.grew("flood", 20);
        assert_eq!(r.total(), 90);
        assert_eq!(r.admit("flood", 10, true), Admit::Write { delete: vec![] });
        r.grew("flood", 10);
        // Full: its only file is the open one, and a's are not its own.
        assert_eq!(r.admit("flood", 1, true), Admit::Drop);
        assert_eq!(r.admit("new", 1, false), Admit::Drop);
        // Opening a new file, all its files are closed: the oldest go.
        assert_eq!(
            r.admit("flood", 25, false),
            Admit::Write {
                delete: vec![p("f1")]
            }
        );
        assert_eq!(r.total(), 60);
        r.opened("flood", p("f2"), 25);
        // More than its closed files free: dropped, nothing deleted.
        assert_eq!(r.admit("a", 60, false), Admit::Drop);
        assert_eq!(r.total(), 85);
        assert_eq!(
            r.admit("a", 40, false),
            Admit::Write {
                delete: vec![p("a1")]
            }
        );
        assert_eq!(r.total(), 45);
    }

    #[test]
    fn unlimited_admits_and_settles() {
        let mut r = Retention::new(Limits::default());
        r.opened("a", p("a1"), 10);
        r.grew("a", 100);
        assert_eq!(
            r.admit("a", u64::MAX, true),
            Admit::Write { delete: vec![] }
        );
        r.settle("a", Some(50));
        assert_eq!(r.total(), 50);
        r.settle("a", None);
        assert_eq!(r.total(), 0);
        assert!(r.opened("a", p("a2"), 10).is_empty());
    }

    /// Age deletes closed files of anyone, earlier versions' too, never an
    /// open one.
    #[test]
    fn max_age_expires_closed_files_only() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        let mut r = Retention::new(Limits {
            max_age: Some(hour),
            ..Limits::default()
        });
        r.existing(None, p("legacy"), 5, t0);
        r.existing(Some("gone"), p("g1"), 10, t0);
        r.existing(Some("gone"), p("g2"), 10, t0 + hour);
        r.opened("a", p("a1"), 10);
        r.closed("a", t0);
        r.opened("a", p("a2"), 10);
        assert!(r.expire(t0 + hour / 2).is_empty());
        let mut old = r.expire(t0 + hour);
        old.sort();
        assert_eq!(old, vec![p("a1"), p("g1"), p("legacy")]);
        assert_eq!(r.total(), 20);
        // a2 is open: never expired, however old.
        assert_eq!(r.expire(t0 + 100 * hour), vec![p("g2")]);
        assert_eq!(r.total(), 10);
    }
}
