//! GENEVE: any bytes through the codec's decoder (options included) and the
//! collector's path, which names interfaces from the node and pod options;
//! then the same bytes read as a VNI, a node name, a packet's metadata and
//! a frame, which must come back as they went (`decode(encode(x)) == x`),
//! names cut where the encoder promises to cut them.
#![no_main]

mod invariants;

use invariants::{FROM, RECEIVED_NS, carried, check_decap, encode, meta};
use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};
use mirror_agent::{
    collect::datagram::{self, Names, Tunnel},
    export::encap::{
        ETH_HLEN, Vni,
        geneve::{self, Decoded, Geneve, GeneveError, MAX_NODE_LEN, MAX_POD_LEN, MirrorOptions},
    },
};

fuzz_target!(|data: &[u8]| {
    let codec = geneve::decode(data);
    if let Ok(d) = &codec {
        assert!(invariants::is_tail(data, d.inner));
        // The frame starts right after the options Opt Len counts.
        assert_eq!(
            d.inner.len() + 8 + usize::from(data[0] & 0x3F) * 4,
            data.len()
        );
    }
    let decap = datagram::decode(
        Tunnel::Geneve,
        FROM,
        data,
        RECEIVED_NS,
        &mut Names::default(),
    );
    assert_eq!(
        decap.as_ref().ok().map(|d| d.frame),
        codec.as_ref().ok().map(|d| d.inner)
    );
    if let (Ok(d), Ok(c)) = (&decap, &codec) {
        check_decap(FROM, data, d);
        // The original length option is a floor raised to what came.
        let caplen = d.frame.len() as u32;
        assert_eq!(d.orig_len, c.mirror.orig_len.unwrap_or(caplen).max(caplen));
        assert_eq!(d.truncated, d.orig_len > caplen);
        assert_eq!(d.truncated, c.truncated());
        assert_eq!(d.direction, c.mirror.direction);
        assert_eq!(d.unix_ns, c.mirror.captured_ns.unwrap_or(RECEIVED_NS));
    }

    let mut u = Unstructured::new(data);
    let (Ok(vni), Ok(node), Ok(meta)) = (u.arbitrary::<u32>(), u.arbitrary::<&str>(), meta(&mut u))
    else {
        return;
    };
    let vni = Vni::new(vni & Vni::MAX).expect("masked to 24 bits");
    let inner = u.take_rest();
    let bytes = encode(&mut Geneve::new(vni, node), &meta, inner);
    assert!(bytes.len() - inner.len() <= geneve::MAX_HEADER_LEN);
    if inner.len() < ETH_HLEN {
        assert_eq!(
            geneve::decode(&bytes),
            Err(GeneveError::InnerTooShort(inner.len()))
        );
        return;
    }
    let want = Decoded {
        vni,
        mirror: MirrorOptions {
            orig_len: Some(meta.orig_len),
            direction: Some(meta.direction),
            ifindex: Some(meta.ifindex),
            node: carried(node, MAX_NODE_LEN),
            pod: carried(meta.pod, MAX_POD_LEN),
            captured_ns: Some(meta.unix_ns),
        },
        inner,
    };
    assert_eq!(geneve::decode(&bytes), Ok(want));
    let d = invariants::collected(Tunnel::Geneve, &bytes, inner, RECEIVED_NS);
    let caplen = inner.len() as u64;
    assert_eq!(u64::from(d.orig_len), u64::from(meta.orig_len).max(caplen));
    assert_eq!(d.truncated, u64::from(meta.orig_len) > caplen);
    assert_eq!(
        (d.direction, d.unix_ns),
        (Some(meta.direction), meta.unix_ns)
    );
});
