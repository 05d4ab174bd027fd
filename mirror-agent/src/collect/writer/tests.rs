//! Tests of `writer.rs`, kept apart so the module reads at once.

use super::{file::MAX_INTERFACES_PER_FILE, *};
use pcap_file::pcapng::{
    Block, PcapNgReader,
    blocks::{
        enhanced_packet::EnhancedPacketOption, interface_description::InterfaceDescriptionOption,
    },
};
use std::time::UNIX_EPOCH;

#[test]
fn stamps() {
    let at = |s| utc_stamp(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(at(0), "19700101T000000Z");
    assert_eq!(at(1_700_000_000), "20231114T221320Z");
    assert_eq!(at(951_825_600), "20000229T120000Z");
}

fn packet(name: &str, len: usize, direction: Option<Direction>) -> Packet {
    Packet {
        interface: name.into(),
        source: [198, 18, 0, 1].into(),
        unix_ns: 1_700_000_000_000_000_123,
        orig_len: len as u32 + 10,
        direction,
        data: vec![0x5a; len],
    }
}

/// Reads every packet of a file with pcap-file, an independent parser:
/// (interface name, length, original length, epb_flags).
fn read(path: &Path) -> Vec<(String, usize, u32, Option<u32>)> {
    let bytes = fs::read(path).unwrap();
    let mut r = PcapNgReader::new(&bytes[..]).unwrap();
    let mut names = Vec::new();
    let mut out = Vec::new();
    while let Some(block) = r.next_block() {
        match block.unwrap() {
            Block::InterfaceDescription(idb) => names.push(
                idb.options
                    .iter()
                    .find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .unwrap(),
            ),
            Block::EnhancedPacket(epb) => {
                let flags = epb.options.iter().find_map(|o| match o {
                    EnhancedPacketOption::Flags(f) => Some(*f),
                    _ => None,
                });
                assert_eq!(epb.timestamp.as_nanos(), 1_700_000_000_000_000_123);
                let name = names[epb.interface_id as usize].clone();
                out.push((name, epb.data.len(), epb.original_len, flags));
            }
            _ => {}
        }
    }
    out
}

#[test]
fn files_rotate_by_size_and_the_oldest_go() {
    let dir = tempfile::tempdir().unwrap();
    // An old file of this sender's, one of an earlier version (no sender
    // in its name, so no sender's to delete), and someone else's file.
    fs::write(
        dir.path()
            .join("collect-198.18.0.1-19700101T000000Z-000001.pcapng"),
        b"",
    )
    .unwrap();
    fs::write(
        dir.path().join("collect-19700101T000000Z-000001.pcapng"),
        b"",
    )
    .unwrap();
    fs::write(dir.path().join("notes.txt"), b"").unwrap();
    let rotation = Rotation {
        size: NonZeroU64::new(1000),
        keep: Limits {
            max_files: NonZeroUsize::new(3),
            ..Limits::default()
        },
        ..Rotation::default()
    };
    let mut w = Writer::open(dir.path().into(), rotation).unwrap();
    for i in 0..20 {
        let dir = [None, Some(Direction::Ingress), Some(Direction::Egress)][i % 3];
        w.write(&packet(
            if i % 2 == 0 { "a/x" } else { "b/y" },
            100 + i,
            dir,
        ));
    }
    let s = w.finish();
    assert_eq!(s.packets, 20);
    assert!(s.files_written >= 4, "{s:?}");
    assert_eq!(s.files_deleted, s.files_written + 1 - 3);
    let mut names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(names[0], "collect-19700101T000000Z-000001.pcapng");
    assert_eq!(names[4], "notes.txt");
    let mut seen = Vec::new();
    for n in &names[1..4] {
        assert!(n.starts_with("collect-198.18.0.1-"), "{n}");
        let packets = read(&dir.path().join(n));
        assert!(!packets.is_empty());
        seen.extend(packets);
    }
    // The newest files hold the last packets, named and flagged right.
    let (name, len, orig, flags) = seen.last().unwrap().clone();
    assert_eq!(
        (name.as_str(), len, orig, flags),
        ("b/y", 119, 129, Some(1))
    );
    assert!(seen.iter().any(|p| p.3.is_none()));
    assert!(seen.iter().any(|p| p.3 == Some(2)));
}

/// A source inventing names gets its first MAX_INTERFACES_PER_FILE
/// interfaces, then one folded interface; nothing rotates, and another
/// source's interface keeps its name.
#[test]
fn churned_names_fold_instead_of_rotating() {
    let dir = tempfile::tempdir().unwrap();
    let rotation = Rotation {
        keep: Limits {
            max_files: NonZeroUsize::new(1),
            ..Limits::default()
        },
        ..Rotation::default()
    };
    let mut w = Writer::open(dir.path().into(), rotation).unwrap();
    let mut real = packet("198.18.0.9/eth0", 60, None);
    real.source = [198, 18, 0, 9].into();
    w.write(&real);
    let churn = 3 * MAX_INTERFACES_PER_FILE;
    for i in 0..churn {
        w.write(&packet(&format!("198.18.0.1/vni-{i}"), 60, None));
    }
    w.write(&real);
    let s = w.finish();
    // One file per sender.
    assert_eq!((s.files_written, s.files_deleted), (2, 0));
    assert_eq!(s.folded, (churn - MAX_INTERFACES_PER_FILE) as u64);
    let packets: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flat_map(|f| read(&f.unwrap().path()))
        .collect();
    assert_eq!(packets.len(), churn + 2);
    let named = |n: &str| packets.iter().filter(|p| p.0 == n).count();
    assert_eq!(named("198.18.0.9/eth0"), 2);
    assert_eq!(named("198.18.0.1/vni-0"), 1);
    assert_eq!(
        named("198.18.0.1/other-interfaces"),
        churn - MAX_INTERFACES_PER_FILE
    );
}

#[test]
fn age_rotation_skips_empty_files() {
    let dir = tempfile::tempdir().unwrap();
    let rotation = Rotation {
        age: Some(Duration::from_millis(1)),
        ..Rotation::default()
    };
    let mut w = Writer::open(dir.path().into(), rotation).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    w.tick();
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no file before a packet"
    );
    w.write(&packet("a", 60, None));
    std::thread::sleep(Duration::from_millis(5));
    w.tick();
    w.tick();
    w.write(&packet("a", 60, None));
    assert_eq!(w.finish().files_written, 2);
}

#[test]
fn unusable_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    fs::write(&file, b"").unwrap();
    assert!(matches!(
        Writer::open(file, Rotation::default()),
        Err(WriterError::NotADirectory(_))
    ));
    assert!(matches!(
        Writer::open(dir.path().join("missing"), Rotation::default()),
        Err(WriterError::Io { .. })
    ));
}

fn from(source: [u8; 4], interface: &str, len: usize) -> Packet {
    Packet {
        source: source.into(),
        ..packet(interface, len, None)
    }
}

/// Files of each sender in the directory, by name.
fn files_of(dir: &Path, sender: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            retention::parse_name(&name) == Some(Some(sender))
        })
        .collect();
    files.sort();
    files
}

/// A flood from one sender rotates its own files out under --max-files,
/// never a quiet sender's; --max-total-bytes then drops what the flood
/// cannot make room for with its own files, and counts it.
#[test]
fn a_flood_rotates_out_only_its_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let rotation = Rotation {
        size: NonZeroU64::new(4000),
        keep: Limits {
            max_files: NonZeroUsize::new(2),
            max_total_bytes: NonZeroU64::new(20_000),
            max_age: None,
        },
        ..Rotation::default()
    };
    let mut w = Writer::open(dir.path().into(), rotation).unwrap();
    let quiet = [198, 18, 0, 9];
    for i in 0..3 {
        w.write(&from(quiet, "198.18.0.9/eth0", 1000 + i));
    }
    for i in 0..200 {
        w.write(&from([198, 18, 0, 1], &format!("198.18.0.1/vni-{i}"), 500));
    }
    let s = w.finish();
    let quiet_files = files_of(dir.path(), "198.18.0.9");
    assert_eq!(quiet_files.len(), 1);
    assert_eq!(read(&quiet_files[0]).len(), 3);
    assert_eq!(files_of(dir.path(), "198.18.0.1").len(), 2);
    assert!(s.files_deleted > 10, "{s:?}");
    assert_eq!(s.dropped_retention, 0, "its own files made room: {s:?}");

    // A new sender meets the cap the files already here reach: it has no
    // file of its own to give up, so it is dropped and counted, and every
    // file stays.
    let before: Vec<PathBuf> = {
        let mut v: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let rotation = Rotation {
        keep: Limits {
            max_total_bytes: NonZeroU64::new(9000),
            ..Limits::default()
        },
        ..rotation
    };
    let mut w = Writer::open(dir.path().into(), rotation).unwrap();
    for _ in 0..10 {
        w.write(&from([198, 18, 0, 7], "198.18.0.7/x", 1000));
    }
    let s = w.finish();
    assert_eq!(
        (s.packets, s.dropped_retention, s.files_deleted),
        (0, 10, 0),
        "{s:?}"
    );
    let mut after: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    after.sort();
    assert_eq!(before, after);
}

/// Past --max-senders a new sender is dropped and counted, unless a known
/// one has been silent for SENDER_IDLE: then it takes that one's place
/// (its file closed, not deleted).
#[test]
fn new_senders_past_the_limit_wait_for_an_idle_one() {
    let dir = tempfile::tempdir().unwrap();
    let rotation = Rotation {
        max_senders: NonZeroUsize::new(2),
        ..Rotation::default()
    };
    let mut w = Writer::open(dir.path().into(), rotation).unwrap();
    let t0 = Instant::now();
    w.write_at(&from([198, 18, 0, 1], "a", 60), t0);
    w.write_at(&from([198, 18, 0, 2], "b", 60), t0);
    w.write_at(&from([198, 18, 0, 3], "c", 60), t0);
    w.write_at(&from([198, 18, 0, 3], "c", 60), t0 + TICK);
    assert_eq!(w.summary.dropped_senders, 2);
    // The first sender keeps sending; the second falls silent.
    let later = t0 + SENDER_IDLE;
    w.write_at(&from([198, 18, 0, 1], "a", 60), later);
    w.write_at(&from([198, 18, 0, 3], "c", 60), later + TICK);
    w.write_at(&from([198, 18, 0, 2], "b", 60), later + TICK);
    let s = w.finish();
    assert_eq!(
        (s.packets, s.dropped_senders, s.files_deleted),
        (4, 3, 0),
        "{s:?}"
    );
    for (sender, packets) in [("198.18.0.1", 2), ("198.18.0.2", 1), ("198.18.0.3", 1)] {
        let n: usize = files_of(dir.path(), sender)
            .iter()
            .map(|f| read(f).len())
            .sum();
        assert_eq!(n, packets, "{sender}");
    }
}

/// --max-age deletes a closed file once it is that old, whoever sent it;
/// an open one stays.
#[test]
fn max_age_deletes_closed_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let rotation = Rotation {
        size: NonZeroU64::new(1000),
        keep: Limits {
            max_age: Some(Duration::from_millis(20)),
            ..Limits::default()
        },
        ..Rotation::default()
    };
    let mut w = Writer::open(dir.path().into(), rotation).unwrap();
    // Past the size at once: closed.
    w.write(&from([198, 18, 0, 1], "a", 1200));
    w.tick();
    assert_eq!(files_of(dir.path(), "198.18.0.1").len(), 1);
    std::thread::sleep(Duration::from_millis(30));
    // Open, below the size.
    w.write(&from([198, 18, 0, 2], "b", 10));
    std::thread::sleep(Duration::from_millis(30));
    w.tick();
    assert!(files_of(dir.path(), "198.18.0.1").is_empty());
    assert_eq!(files_of(dir.path(), "198.18.0.2").len(), 1);
    let s = w.finish();
    assert_eq!((s.files_deleted, s.packets), (1, 2), "{s:?}");
}
