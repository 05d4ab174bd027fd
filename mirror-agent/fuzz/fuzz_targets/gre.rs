//! GRE: any bytes through the header parser and the GRE/TEB decoder, then
//! the collector's raw-socket path (the IPv4 header in front, and the
//! dispatch by GRE protocol to GRE/TEB or ERSPAN), which must keep the
//! invariants of `invariants.rs`; then the same bytes read as a tunnel's
//! key and sequence numbering and a few frames, which must come back as
//! they went, numbered from 0 (`decode(encode(x)) == x`).
#![no_main]

mod invariants;

use invariants::{FROM, RECEIVED_NS, check_decap, encode, meta};
use libfuzzer_sys::{arbitrary::Unstructured, fuzz_target};
use mirror_agent::{
    collect::datagram::{self, Names, Tunnel},
    export::encap::{
        ETH_HLEN,
        gre::{self, Decoded, Gre, GreError, GreKey, PROTO_TEB},
    },
};

/// Flags of the optional words: checksum, key, sequence number.
const OPTIONAL_WORDS: [u8; 3] = [0x80, 0x20, 0x10];

fuzz_target!(|data: &[u8]| {
    if let Ok((h, rest)) = gre::parse(data) {
        assert!(invariants::is_tail(data, rest));
        let words = OPTIONAL_WORDS.iter().filter(|&&f| data[0] & f != 0).count();
        assert_eq!(rest.len() + 4 + 4 * words, data.len());
        assert_eq!(h.key.is_some(), data[0] & 0x20 != 0);
        assert_eq!(h.seq.is_some(), data[0] & 0x10 != 0);
    }
    let codec = gre::decode(data);
    if let Ok(d) = &codec {
        assert!(invariants::is_tail(data, d.inner));
        assert!(d.inner.len() >= ETH_HLEN);
    }
    let mut names = Names::default();
    if let Ok(d) = datagram::decode(Tunnel::Gre, FROM, data, RECEIVED_NS, &mut names) {
        check_decap(FROM, data, &d);
        if gre::parse(data).is_ok_and(|(h, _)| h.proto == PROTO_TEB) {
            assert_eq!(Some(d.frame), codec.as_ref().ok().map(|c| c.inner));
            assert_eq!(d.orig_len as usize, d.frame.len());
            assert_eq!(
                (d.unix_ns, d.direction, d.truncated),
                (RECEIVED_NS, None, false)
            );
        }
    }
    if let Ok((from, payload)) = datagram::ipv4_payload(data) {
        // After a header of at least 20 bytes, within the bytes that came.
        assert!(invariants::is_within(
            data.get(20..).unwrap_or_default(),
            payload
        ));
        if let Ok(d) = datagram::decode(Tunnel::Gre, from, payload, RECEIVED_NS, &mut names) {
            check_decap(from, payload, &d);
        }
    }

    let mut u = Unstructured::new(data);
    let (Ok(key), Ok(numbered), Ok(count), Ok(meta)) = (
        u.arbitrary::<Option<u32>>(),
        u.arbitrary::<bool>(),
        u.int_in_range(1..=3u32),
        meta(&mut u),
    ) else {
        return;
    };
    let mut enc = Gre::new();
    if let Some(k) = key {
        enc = enc.with_key(GreKey(k));
    }
    if numbered {
        enc = enc.with_sequence();
    }
    let inner = u.take_rest();
    for n in 0..count {
        let bytes = encode(&mut enc, &meta, inner);
        if inner.len() < ETH_HLEN {
            assert_eq!(
                gre::decode(&bytes),
                Err(GreError::InnerTooShort(inner.len()))
            );
            continue;
        }
        let want = Decoded {
            key: key.map(GreKey),
            seq: numbered.then_some(n),
            inner,
        };
        assert_eq!(gre::decode(&bytes), Ok(want));
        let d = invariants::collected(Tunnel::Gre, &bytes, inner, RECEIVED_NS);
        let name = match key {
            Some(k) => format!("{FROM}/key-{k}"),
            None => format!("{FROM}/gre"),
        };
        assert_eq!(*d.interface, name);
    }
});
