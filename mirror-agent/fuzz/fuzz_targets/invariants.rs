//! What every target asserts of a decoder's answer, and the inputs of the
//! round trips (`decode(encode(x)) == x`), drawn from the fuzzer's bytes.
//! Each target uses part of it.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use etherparse::{LaxLinkExtSlice, LaxNetSlice, LaxSlicedPacket};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use mirror_agent::{
    collect::datagram::{self, Decap, Names, Tunnel},
    export::encap::{ETH_HLEN, Encapsulator, MAX_HEADER_LEN, PacketMeta},
    model::{direction::Direction, record::IfIndex},
};

/// Where the datagrams come from.
pub const FROM: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
/// A receive time near the present, so ERSPAN III stamps are unwrapped around it.
pub const RECEIVED_NS: u64 = 1_796_000_000_000_000_000;

/// Whether `inner` is the end of `outer`, in place: a decoder's frame is
/// the bytes after its headers, never a copy and never bytes outside them.
pub fn is_tail(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    o.start <= i.start && i.end == o.end
}

/// Whether `inner` lies within `outer`, in place.
pub fn is_within(outer: &[u8], inner: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr_range(), inner.as_ptr_range());
    o.start <= i.start && i.end <= o.end
}

/// What holds of any packet the collector decodes: the frame is the tail
/// of the datagram and long enough to be Ethernet, the original length is
/// never below what came and exceeds it only for a cut frame, and the
/// interface name starts with the sender's address and is one clean line.
pub fn check_decap(from: IpAddr, payload: &[u8], d: &Decap<'_>) {
    assert!(
        is_tail(payload, d.frame),
        "the frame lies outside the datagram"
    );
    assert!(d.frame.len() >= ETH_HLEN);
    let caplen = d.frame.len() as u64;
    assert!(
        u64::from(d.orig_len) >= caplen,
        "orig_len below the captured length"
    );
    if u64::from(d.orig_len) > caplen {
        assert!(d.truncated, "a longer original length for a frame not cut");
    }
    assert!(
        d.interface.starts_with(&format!("{from}/")),
        "{}",
        d.interface
    );
    assert!(
        !d.interface.chars().any(char::is_control),
        "{:?}",
        d.interface
    );
    check_inner_ip_len(d.frame);
}

/// The collector's reading of a datagram the exporter made around
/// `inner`, received at `received_ns`: it must take it, keep the
/// invariants of [`check_decap`], and file `inner` itself.
pub fn collected<'b>(tunnel: Tunnel, bytes: &'b [u8], inner: &[u8], received_ns: u64) -> Decap<'b> {
    let d = datagram::decode(tunnel, FROM, bytes, received_ns, &mut Names::default())
        .expect("the collector takes what the exporter sends");
    check_decap(FROM, bytes, &d);
    assert_eq!(d.frame, inner);
    d
}

/// `datagram::inner_ip_len` against etherparse, an independent parser:
/// wherever etherparse finds an IP header behind at most two VLAN tags
/// (under a type field naming that IP version), the length it gives is the
/// IP header's offset plus its length field (`None` for a zero field).
pub fn check_inner_ip_len(frame: &[u8]) {
    let got = datagram::inner_ip_len(frame);
    let Ok(p) = LaxSlicedPacket::from_ethernet(frame) else {
        assert_eq!(got, None, "a length for a frame shorter than Ethernet");
        return;
    };
    if p.link_exts.len() > 2
        || p.link_exts
            .iter()
            .any(|e| !matches!(e, LaxLinkExtSlice::Vlan(_)))
    {
        return;
    }
    let offset = |s: &[u8]| s.as_ptr() as usize - frame.as_ptr() as usize;
    let (l3, len, ethertype) = match &p.net {
        Some(LaxNetSlice::Ipv4(v4)) => {
            let h = v4.header();
            (offset(h.slice()), u32::from(h.total_len()), 0x0800)
        }
        Some(LaxNetSlice::Ipv6(v6)) => {
            let h = v6.header();
            let len = match h.payload_length() {
                0 => 0,
                n => 40 + u32::from(n),
            };
            (offset(h.slice()), len, 0x86dd)
        }
        _ => return,
    };
    // etherparse picks the IP version by the header's first nibble; the
    // frame's type field is what the collector goes by.
    if frame.get(l3 - 2..l3) != Some(&u16::to_be_bytes(ethertype)[..]) {
        return;
    }
    let want = (len != 0).then(|| l3 as u32 + len);
    assert_eq!(got, want, "inner_ip_len disagrees with etherparse");
}

/// One packet's metadata, from the fuzzer's bytes.
pub fn meta<'a>(u: &mut Unstructured<'a>) -> Result<PacketMeta<'a>> {
    Ok(PacketMeta {
        unix_ns: u.arbitrary()?,
        ifindex: IfIndex(u.arbitrary()?),
        direction: direction(u)?,
        orig_len: u.arbitrary()?,
        pod: u.arbitrary()?,
    })
}

pub fn direction(u: &mut Unstructured<'_>) -> Result<Direction> {
    Ok(if u.arbitrary()? {
        Direction::Egress
    } else {
        Direction::Ingress
    })
}

/// `enc`'s header for `inner`, then `inner`: a datagram as the exporter
/// sends it (the kernel adds what lies outside).
pub fn encode(enc: &mut dyn Encapsulator, meta: &PacketMeta<'_>, inner: &[u8]) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = enc
        .write_header(meta, inner, &mut header)
        .expect("the largest header fits MAX_HEADER_LEN");
    assert_eq!(
        n,
        enc.header_len(meta),
        "header_len is what write_header wrote"
    );
    [&header[..n], inner].concat()
}

/// The longest prefix of `s` of at most `max` bytes that is UTF-8, as the
/// GENEVE encoder cuts names, with the NUL padding a receiver cannot tell
/// from the text taken off; `None` where the option is left out.
pub fn carried(s: &str, max: usize) -> Option<&str> {
    let cut = &s[..s.floor_char_boundary(max)];
    (!cut.is_empty()).then(|| cut.trim_end_matches('\0'))
}
