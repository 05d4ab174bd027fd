use super::super::testutil::{encode, frame, meta};
use super::*;
use crate::model::record::IfIndex;

fn session() -> SessionId {
    SessionId::new(0x2A5).unwrap()
}

#[test]
fn type2_round_trip() {
    let mut enc = Erspan2::new(session());
    let inner = frame(200);
    let mut m = meta("");
    m.ifindex = IfIndex(0x12_3456);
    for seq in 0..3 {
        let bytes = encode(&mut enc, &m, &inner);
        assert_eq!(bytes.len(), TYPE2_HEADER_LEN + 200);
        let d = decode(&bytes).unwrap();
        assert_eq!(
            d,
            Decoded {
                seq,
                session: session(),
                vlan: Vlan::new(0).unwrap(),
                // The test frame's TOS is 0xb8 (EF): precedence 5.
                cos: Cos::new(5).unwrap(),
                truncated: true,
                kind: Kind::TypeII {
                    encap: FrameEncap::Untagged,
                    index: 0x2_3456,
                },
                inner: &inner,
            }
        );
    }
}

#[test]
fn type3_round_trip() {
    let hw = HwId::new(0x3F).unwrap();
    let mut enc = Erspan3::new(session(), hw);
    let inner = frame(300);
    let mut m = meta("");
    m.orig_len = 300;
    for direction in [Direction::Ingress, Direction::Egress] {
        m.direction = direction;
        let bytes = encode(&mut enc, &m, &inner);
        let d = decode(&bytes).unwrap();
        assert!(!d.truncated);
        assert_eq!(d.inner, &inner[..]);
        assert_eq!(
            d.kind,
            Kind::TypeIII {
                bso: Bso::Good,
                timestamp: (m.unix_ns / TIMESTAMP_UNIT_NS) as u32,
                granularity: Granularity::Micros100,
                sgt: 0,
                hw_id: hw,
                direction,
            }
        );
    }
}

#[test]
fn wire_format() {
    let mut tagged = frame(64);
    // An 802.1Q tag with PCP 6, VID 0x123 before the IPv4 ethertype.
    tagged.splice(12..12, [0x81, 0x00, 0xC1, 0x23]);
    let m = meta("");
    let b2 = encode(&mut Erspan2::new(session()), &m, &tagged);
    assert_eq!(&b2[..4], &[0x10, 0x00, 0x88, 0xBE]);
    // Ver 1, VLAN 0x123, COS 6, En 3, T 1, session 0x2A5.
    assert_eq!(&b2[8..16], &[0x11, 0x23, 0xDE, 0xA5, 0, 0, 0, 42]);
    let b3 = encode(
        &mut Erspan3::new(session(), HwId::new(5).unwrap()),
        &m,
        &tagged,
    );
    assert_eq!(&b3[..4], &[0x10, 0x00, 0x22, 0xEB]);
    // Ver 2, BSO 0; then SGT 0, P 1, FT 0, HW 5, D 1 (egress), Gra 0, O 0.
    assert_eq!(&b3[8..12], &[0x21, 0x23, 0xC6, 0xA5]);
    assert_eq!(&b3[16..20], &[0, 0, 0x80, 0x58]);
}

#[test]
fn vlan_and_cos_come_from_the_frame() {
    let cos = |frame: &[u8]| L2::of(frame).cos.get();
    let mut v6 = frame(60);
    v6.splice(12..16, [0x86, 0xdd, 0x6b, 0x80]); // traffic class 0xb8
    assert_eq!(cos(&v6), 5);
    assert_eq!(cos(&frame(60)), 5);
    let arp = [&frame(60)[..12], &[0x08, 0x06, 0xff, 0xff]].concat();
    assert_eq!(cos(&arp), 0);
    assert_eq!(L2::of(&[0x81; 13]), L2::of(&[]));
    assert!(!L2::of(&[]).tagged);
}

#[test]
fn platform_subheader_is_skipped() {
    let inner = frame(60);
    let mut bytes = encode(
        &mut Erspan3::new(session(), HwId::new(1).unwrap()),
        &meta(""),
        &inner,
    );
    bytes[19] |= 1;
    bytes.splice(20..20, [0x0C, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(decode(&bytes).map(|d| d.inner), Ok(&inner[..]));
    assert_eq!(
        decode(&bytes[..26]),
        Err(ErspanError::Short { need: 20, have: 18 })
    );
}

#[test]
fn rejects_foreign_headers() {
    let ok = encode(&mut Erspan2::new(session()), &meta(""), &frame(40));
    let mut v = ok.clone();
    v[2..4].copy_from_slice(&PROTO_TYPE3.to_be_bytes());
    assert_eq!(
        decode(&v),
        Err(ErspanError::Version {
            proto: PROTO_TYPE3,
            version: 1
        })
    );
    // Type I: the same protocol without a sequence number.
    let type1 = [&[0u8, 0, 0x88, 0xBE][..], &frame(40)].concat();
    assert_eq!(decode(&type1), Err(ErspanError::TypeI));
    let teb = encode(&mut gre::Gre::new().with_sequence(), &meta(""), &frame(40));
    assert_eq!(decode(&teb), Err(ErspanError::Protocol(0x6558)));
    assert_eq!(
        decode(&ok[..13]),
        Err(ErspanError::Short { need: 8, have: 5 })
    );
    let mut ft = encode(
        &mut Erspan3::new(session(), HwId::new(1).unwrap()),
        &meta(""),
        &frame(40),
    );
    ft[18] |= 0x04;
    assert_eq!(decode(&ft), Err(ErspanError::FrameType(1)));
    assert!(matches!(decode(&ok[..3]), Err(ErspanError::Gre(_))));
}

#[test]
fn out_of_range_ids_name_the_field() {
    assert_eq!(SessionId::new(1024).unwrap_err().field, "ERSPAN session id");
    assert_eq!(HwId::new(64).unwrap_err().field, "ERSPAN hardware id");
    assert_eq!(SessionId::new(1023).map(SessionId::get), Ok(1023));
}

#[test]
fn type3_stamps_unwrap_near_the_receivers_clock() {
    let unit = TIMESTAMP_UNIT_NS;
    let sent_ns: u64 = 1_700_000_000_123_400_000;
    let stamp = (sent_ns / unit) as u32;
    let g = Granularity::Micros100;
    // Received a little later, or with the clocks a day apart either way.
    for near in [
        sent_ns,
        sent_ns + 5_000_000,
        sent_ns + 86_400 * 1_000_000_000,
    ] {
        assert_eq!(unix_ns_near(stamp, g, near), Some(sent_ns));
        assert_eq!(
            unix_ns_near(stamp, g, near - 172_800_000_000_000),
            Some(sent_ns)
        );
    }
    // Just before a wrap, received just after it.
    let wrap_ns = ((sent_ns / unit) | 0xFFFF_FFFF) * unit;
    assert_eq!(unix_ns_near(u32::MAX, g, wrap_ns + 3 * unit), Some(wrap_ns));
    // 100 ns units wrap every 7 minutes.
    let fine = (sent_ns / 100) as u32;
    assert_eq!(
        unix_ns_near(fine, Granularity::Nanos100, sent_ns + 60_000_000_000),
        Some(sent_ns)
    );
    assert_eq!(unix_ns_near(stamp, Granularity::Ieee1588, sent_ns), None);
    assert_eq!(unix_ns_near(stamp, Granularity::Custom, sent_ns), None);
    // Near the epoch, no wrap before it.
    assert_eq!(unix_ns_near(7, g, 0), Some(7 * unit));
}
