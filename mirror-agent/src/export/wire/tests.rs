//! The expected frames are built by etherparse, checksums included.

use std::num::NonZeroU16;

use etherparse::PacketBuilder;

use super::{Shaper, Wire, finish};

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

fn tcp4(seq: u32, id: u16, payload: &[u8], fin_psh: bool, cwr: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(MAC, MAC)
        .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        .tcp(40000, 80, seq, 500)
        .ack(7);
    if fin_psh {
        b = b.fin().psh();
    }
    if cwr {
        b = b.cwr();
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("builds");
    // etherparse writes id 0; the kernel counts.
    v[18..20].copy_from_slice(&id.to_be_bytes());
    v[24..26].fill(0);
    let ck = etherparse::Ipv4HeaderSlice::from_slice(&v[14..34])
        .expect("ipv4")
        .to_header()
        .calc_header_checksum();
    v[24..26].copy_from_slice(&ck.to_be_bytes());
    v
}

fn tcp6(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(MAC, MAC)
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .tcp(40000, 80, seq, 500)
        .ack(7);
    if psh {
        b = b.psh();
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("builds");
    v
}

/// The partial checksum the kernel leaves: the folded pseudo-header sum.
fn make_partial(frame: &mut [u8], l4: usize, at: usize) {
    let layout = super::Layout::of(frame).expect("ip");
    assert_eq!(layout.l4, l4);
    let pseudo = !etherparse::checksum::u64_16bit_word::ones_complement(layout.pseudo_sum(frame));
    frame[at..at + 2].copy_from_slice(&pseudo.to_ne_bytes());
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn partial_checksums_are_finished_and_others_left() {
    let good = tcp4(1, 9, b"hello", true, false);
    let mut partial = good.clone();
    make_partial(&mut partial, 34, 50);
    assert_ne!(partial, good);
    assert!(finish(&mut partial));
    assert_eq!(partial, good);
    // Already right: untouched.
    let mut same = good.clone();
    assert!(!finish(&mut same));
    // Wrong, but not partial: an IDS should see it as it was.
    let mut bad = good.clone();
    bad[50] ^= 0x55;
    let seen = bad.clone();
    assert!(!finish(&mut bad));
    assert_eq!(bad, seen);
    // IPv6.
    let good = tcp6(1, b"hi", true);
    let mut partial = good.clone();
    make_partial(&mut partial, 54, 70);
    assert!(finish(&mut partial));
    assert_eq!(partial, good);
    // Cut by a snaplen: cannot be finished.
    let mut cut = tcp4(1, 9, &payload(100), true, false);
    make_partial(&mut cut, 34, 50);
    let mut cut = cut[..60].to_vec();
    assert!(!finish(&mut cut));
}

fn shape(wire: Wire, snaplen: u32, data: &[u8], orig: usize, mss: u16) -> Vec<(Vec<u8>, u32)> {
    let mut out = Vec::new();
    let mut s = Shaper::new(wire, snaplen);
    s.shape(data, orig as u32, NonZeroU16::new(mss), |b, len| {
        out.push((b.to_vec(), len))
    });
    out
}

#[test]
fn tcp4_super_packet_becomes_the_kernels_segments() {
    let body = payload(2500);
    let mut sup = tcp4(1000, 77, &body, true, true);
    make_partial(&mut sup, 34, 50);
    let got = shape(Wire::WIRE, 262_144, &sup, sup.len(), 1000);
    let want = [
        tcp4(1000, 77, &body[..1000], false, true),
        tcp4(2000, 78, &body[1000..2000], false, false),
        tcp4(3000, 79, &body[2000..], true, false),
    ];
    assert_eq!(got.len(), 3);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(&g.0, w);
        assert_eq!(g.1 as usize, w.len());
    }
    // Kept: the super-packet as it was.
    let kept = shape(Wire::KEEP, 262_144, &sup, sup.len(), 1000);
    assert_eq!(kept, vec![(sup.clone(), sup.len() as u32)]);
}

#[test]
fn snaplen_keeps_every_segment_with_its_headers_and_length() {
    let body = payload(2500);
    let sup = tcp4(1000, 77, &body, false, false);
    let captured = &sup[..200];
    let got = shape(Wire::WIRE, 200, captured, sup.len(), 1000);
    assert_eq!(got.len(), 3);
    let want = tcp4(2000, 78, &body[1000..2000], false, false);
    // Headers exact up to the TCP checksum (its payload was not captured).
    assert_eq!(got[1].0[..50], want[..50]);
    assert_eq!(got[1].1 as usize, want.len());
    let first = tcp4(1000, 77, &body[..1000], false, false);
    assert_eq!(got[0].0.len(), 200);
    assert_eq!(got[0].0[..50], first[..50]);
}

#[test]
fn tcp6_super_packet_becomes_segments() {
    let body = payload(3000);
    let sup = tcp6(5, &body, true);
    let got = shape(Wire::WIRE, 262_144, &sup, sup.len(), 1440);
    let want = [
        tcp6(5, &body[..1440], false),
        tcp6(5 + 1440, &body[1440..2880], false),
        tcp6(5 + 2880, &body[2880..], true),
    ];
    assert_eq!(got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), want);
}

#[test]
fn udp_gso_becomes_datagrams() {
    let udp = |p: &[u8]| {
        let mut v = Vec::new();
        PacketBuilder::ethernet2(MAC, MAC)
            .ipv6([0xfd; 16], [0xfe; 16], 64)
            .udp(5000, 53)
            .write(&mut v, p)
            .expect("builds");
        v
    };
    let body = payload(300);
    let got = shape(Wire::WIRE, 262_144, &udp(&body), 14 + 40 + 8 + 300, 100);
    let want: Vec<Vec<u8>> = body.chunks(100).map(udp).collect();
    assert_eq!(got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), want);
}
