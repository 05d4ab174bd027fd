//! Tests of `writer.rs`, kept apart so the module reads at once.

use super::*;
use pcap_file::pcapng::{
    Block, PcapNgReader,
    blocks::{
        enhanced_packet::EnhancedPacketOption, interface_description::InterfaceDescriptionOption,
    },
};

#[test]
fn stamps() {
    let at = |s| utc_stamp(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(at(0), "19700101T000000Z");
    assert_eq!(at(1_700_000_000), "20231114T221320Z");
    assert_eq!(at(951_825_600), "20000229T120000Z");
    assert!(is_ours(&format!("{PREFIX}{}-000001{SUFFIX}", at(0))));
    assert!(!is_ours("collect-x.pcapng"));
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
    // An old file of ours, and someone else's file, which stays.
    fs::write(
        dir.path().join("collect-19700101T000000Z-000001.pcapng"),
        b"",
    )
    .unwrap();
    fs::write(dir.path().join("notes.txt"), b"").unwrap();
    let rotation = Rotation {
        size: NonZeroU64::new(1000),
        age: None,
        max_files: NonZeroUsize::new(3),
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
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(names[3], "notes.txt");
    let mut seen = Vec::new();
    for n in &names[..3] {
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

/// A source inventing names gets its first MAX_INTERFACES_PER_SOURCE
/// interfaces, then one folded interface; nothing rotates, and another
/// source's interface keeps its name.
#[test]
fn churned_names_fold_instead_of_rotating() {
    let dir = tempfile::tempdir().unwrap();
    let rotation = Rotation {
        max_files: NonZeroUsize::new(1),
        ..Rotation::default()
    };
    let mut w = Writer::open(dir.path().into(), rotation).unwrap();
    let mut real = packet("198.18.0.9/eth0", 60, None);
    real.source = [198, 18, 0, 9].into();
    w.write(&real);
    let churn = 3 * MAX_INTERFACES_PER_SOURCE;
    for i in 0..churn {
        w.write(&packet(&format!("198.18.0.1/vni-{i}"), 60, None));
    }
    w.write(&real);
    let s = w.finish();
    assert_eq!((s.files_written, s.files_deleted), (1, 0));
    assert_eq!(s.folded, (churn - MAX_INTERFACES_PER_SOURCE) as u64);
    let file = fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap();
    let packets = read(&file.path());
    assert_eq!(packets.len(), churn + 2);
    let named = |n: &str| packets.iter().filter(|p| p.0 == n).count();
    assert_eq!(named("198.18.0.9/eth0"), 2);
    assert_eq!(named("198.18.0.1/vni-0"), 1);
    assert_eq!(
        named("198.18.0.1/other-interfaces"),
        churn - MAX_INTERFACES_PER_SOURCE
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
