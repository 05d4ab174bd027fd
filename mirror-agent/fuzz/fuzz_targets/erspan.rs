//! ERSPAN II and III: any bytes through the codec's decoder and the
//! collector's path (the original length of a cut IP frame recovered from
//! its header), which must keep the invariants of `invariants.rs`; then the
//! same bytes read as a session, a hardware id, a packet's metadata and a
//! frame, which must come back as they went, numbered from 0, with VLAN and
//! class of service as etherparse reads them from the frame and the
//! capture time to the stamp's 100 µs (`decode(encode(x)) == x`).
#![no_main]

mod invariants;

use etherparse::{LaxLinkExtSlice, LaxNetSlice, LaxSlicedPacket};
use invariants::{FROM, RECEIVED_NS, check_decap, check_inner_ip_len, encode, meta};
use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};
use mirror_agent::{
    collect::datagram::{self, Names, Tunnel},
    export::encap::{
        ETH_HLEN, Encapsulator,
        erspan::{
            self, Bso, Cos, Erspan2, Erspan3, ErspanError, FrameEncap, Granularity, HwId, Kind,
            SessionId, TIMESTAMP_UNIT_NS, Vlan,
        },
    },
};

fuzz_target!(|data: &[u8]| {
    check_inner_ip_len(data);
    let codec = erspan::decode(data);
    if let Ok(d) = &codec {
        assert!(invariants::is_tail(data, d.inner));
        assert!(d.inner.len() >= ETH_HLEN);
        check_inner_ip_len(d.inner);
    }
    if let Ok(d) = datagram::decode(Tunnel::Gre, FROM, data, RECEIVED_NS, &mut Names::default()) {
        check_decap(FROM, data, &d);
        if let Ok(c) = &codec {
            assert_eq!(d.frame, c.inner);
            assert_eq!(d.truncated, c.truncated);
            // Only a frame the sender says it cut can be longer than what came.
            if !c.truncated {
                assert_eq!(d.orig_len as usize, d.frame.len());
            }
        }
    }

    let mut u = Unstructured::new(data);
    let (Ok(type3), Ok(session), Ok(hw), Ok(count), Ok(meta)) = (
        u.arbitrary::<bool>(),
        u.arbitrary::<u16>(),
        u.arbitrary::<u8>(),
        u.int_in_range(1..=3u32),
        meta(&mut u),
    ) else {
        return;
    };
    let session = SessionId::new(session & SessionId::MAX).expect("masked to 10 bits");
    let hw = HwId::new(hw & HwId::MAX).expect("masked to 6 bits");
    let mut enc: Box<dyn Encapsulator> = if type3 {
        Box::new(Erspan3::new(session, hw))
    } else {
        Box::new(Erspan2::new(session))
    };
    let inner = u.take_rest();
    let truncated = u64::from(meta.orig_len) > inner.len() as u64;
    for seq in 0..count {
        let bytes = encode(enc.as_mut(), &meta, inner);
        let Ok(d) = erspan::decode(&bytes) else {
            assert!(inner.len() < ETH_HLEN);
            assert_eq!(
                erspan::decode(&bytes),
                Err(ErspanError::InnerTooShort(inner.len()))
            );
            continue;
        };
        assert_eq!(
            (d.seq, d.session, d.truncated, d.inner),
            (seq, session, truncated, inner)
        );
        let tagged = check_l2(inner, d.vlan, d.cos);
        match d.kind {
            Kind::TypeII { encap, index } => {
                assert!(!type3);
                let want = if tagged {
                    FrameEncap::TagInFrame
                } else {
                    FrameEncap::Untagged
                };
                assert_eq!((encap, index), (want, meta.ifindex.0 & 0xF_FFFF));
            }
            Kind::TypeIII {
                bso,
                timestamp,
                granularity,
                sgt,
                hw_id,
                direction,
            } => {
                assert!(type3);
                assert_eq!(
                    (bso, granularity, sgt),
                    (Bso::Good, Granularity::Micros100, 0)
                );
                assert_eq!((hw_id, direction), (hw, meta.direction));
                // Near the capture time, the wrapped stamp gives it back to 100 µs.
                let floor = meta.unix_ns / TIMESTAMP_UNIT_NS * TIMESTAMP_UNIT_NS;
                assert_eq!(
                    erspan::unix_ns_near(timestamp, granularity, meta.unix_ns),
                    Some(floor)
                );
            }
        }
        let c = invariants::collected(Tunnel::Gre, &bytes, inner, meta.unix_ns);
        assert_eq!(c.truncated, truncated);
        assert_eq!(*c.interface, format!("{FROM}/erspan-session-{session}"));
        if type3 {
            let floor = meta.unix_ns / TIMESTAMP_UNIT_NS * TIMESTAMP_UNIT_NS;
            assert_eq!((c.unix_ns, c.direction), (floor, Some(meta.direction)));
        } else {
            assert_eq!((c.unix_ns, c.direction), (meta.unix_ns, None));
        }
    }
});

/// VLAN and class of service of an encoded frame against etherparse's
/// reading of it, as the Linux ERSPAN device takes them: an 802.1Q or
/// 802.1ad tag's VID and PCP, else VLAN 0 and the IP precedence. Returns
/// whether the frame counts as tagged.
fn check_l2(frame: &[u8], vlan: Vlan, cos: Cos) -> bool {
    let tpid = frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
    let p = LaxSlicedPacket::from_ethernet(frame).expect("the frame has an Ethernet header");
    if matches!(tpid, Some(0x8100 | 0x88a8)) {
        if let Some(LaxLinkExtSlice::Vlan(tag)) = p.link_exts.first() {
            assert_eq!(vlan.get(), tag.vlan_identifier().value());
            assert_eq!(cos.get(), tag.priority_code_point().value());
        }
        return true;
    }
    assert_eq!(vlan.get(), 0);
    let precedence = match (&p.net, tpid) {
        (Some(LaxNetSlice::Ipv4(v4)), Some(0x0800)) if p.link_exts.is_empty() => {
            v4.header().dcp().value() >> 3
        }
        (Some(LaxNetSlice::Ipv6(v6)), Some(0x86dd)) if p.link_exts.is_empty() => {
            v6.header().traffic_class() >> 5
        }
        _ => return false,
    };
    assert_eq!(cos.get(), precedence);
    false
}
