//! VXLAN: any bytes through the codec's decoder and the collector's whole
//! path (decapsulation and interface naming), which must agree and keep
//! the invariants of `invariants.rs`; then the same bytes read as a VNI
//! and a frame, which must come back as they went (`decode(encode(x)) == x`).
#![no_main]

mod invariants;

use invariants::{FROM, RECEIVED_NS, check_decap, encode, meta};
use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};
use mirror_agent::{
    collect::datagram::{self, Names, Tunnel},
    export::encap::{
        ETH_HLEN, Vni,
        vxlan::{self, Decoded, HEADER_LEN, Vxlan, VxlanError},
    },
};

fuzz_target!(|data: &[u8]| {
    let codec = vxlan::decode(data);
    if let Ok(d) = &codec {
        assert!(invariants::is_tail(data, d.inner));
        assert_eq!(d.inner.len() + HEADER_LEN, data.len());
    }
    let decap = datagram::decode(
        Tunnel::Vxlan,
        FROM,
        data,
        RECEIVED_NS,
        &mut Names::default(),
    );
    assert_eq!(
        decap.as_ref().ok().map(|d| d.frame),
        codec.ok().map(|d| d.inner)
    );
    if let Ok(d) = &decap {
        check_decap(FROM, data, d);
        // VXLAN carries neither time, nor direction, nor a cut.
        assert_eq!(d.orig_len as usize, d.frame.len());
        assert_eq!(
            (d.unix_ns, d.direction, d.truncated),
            (RECEIVED_NS, None, false)
        );
    }

    let mut u = Unstructured::new(data);
    let (Ok(vni), Ok(meta)) = (u.arbitrary::<u32>(), meta(&mut u)) else {
        return;
    };
    let vni = Vni::new(vni & Vni::MAX).expect("masked to 24 bits");
    let inner = u.take_rest();
    let bytes = encode(&mut Vxlan::new(vni), &meta, inner);
    if inner.len() < ETH_HLEN {
        assert_eq!(
            vxlan::decode(&bytes),
            Err(VxlanError::InnerTooShort(inner.len()))
        );
        return;
    }
    assert_eq!(vxlan::decode(&bytes), Ok(Decoded { vni, inner }));
    let d = invariants::collected(Tunnel::Vxlan, &bytes, inner, RECEIVED_NS);
    assert_eq!(&*d.interface, format!("{FROM}/vni-{vni}"));
});
