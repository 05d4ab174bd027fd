use super::*;
use crate::{
    export::encap::{
        Encapsulator, MAX_HEADER_LEN, PacketMeta, Vni,
        erspan::{Erspan2, Erspan3, HwId, SessionId},
        geneve::Geneve,
        gre::{Gre, GreKey},
        vxlan::Vxlan,
    },
    model::record::IfIndex,
};

const FROM: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 1, 1));
/// When the sender's hook saw the packet, and when it came 3 ms later.
const CAPTURED: u64 = 1_700_000_000_123_456_789;
const RECEIVED: u64 = CAPTURED + 3_000_000;

/// An Ethernet/IPv4 frame whose IP header says `ip_len` bytes, cut to `have`.
fn frame(ip_len: u16, have: usize) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00, 0x45, 0];
    f.extend_from_slice(&ip_len.to_be_bytes());
    f.resize(have, 0xab);
    f
}

fn encode(enc: &mut dyn Encapsulator, pod: &str, direction: Direction, inner: &[u8]) -> Vec<u8> {
    let meta = PacketMeta {
        unix_ns: CAPTURED,
        ifindex: IfIndex(7),
        direction,
        orig_len: 1000,
        pod,
    };
    let mut buf = [0u8; MAX_HEADER_LEN];
    let n = enc.write_header(&meta, inner, &mut buf).unwrap();
    [&buf[..n], inner].concat()
}

fn run(tunnel: Tunnel, bytes: &[u8]) -> Result<Decap<'_>, DatagramError> {
    decode(tunnel, FROM, bytes, RECEIVED, &mut Names::default())
}

#[test]
fn names_and_metadata_per_tunnel() {
    let inner = frame(986, 200);
    let vni = Vni::new(42).unwrap();
    let vx = encode(&mut Vxlan::new(vni), "", Direction::Egress, &inner);
    let d = run(Tunnel::Vxlan, &vx).unwrap();
    assert_eq!(
        (&*d.interface, d.orig_len, d.direction),
        ("198.18.1.1/vni-42", 200, None)
    );
    assert_eq!(d.unix_ns, RECEIVED, "VXLAN carries no time");

    let gv = encode(
        &mut Geneve::new(vni, "node-a"),
        "ns/web",
        Direction::Egress,
        &inner,
    );
    let d = run(Tunnel::Geneve, &gv).unwrap();
    assert_eq!(&*d.interface, "198.18.1.1/node-a/ns/web");
    assert_eq!(d.unix_ns, CAPTURED, "GENEVE's capture-time option");
    assert_eq!(
        (d.orig_len, d.direction, d.truncated),
        (1000, Some(Direction::Egress), true)
    );
    let gv = encode(
        &mut Geneve::new(vni, "node-a"),
        "",
        Direction::Ingress,
        &inner,
    );
    assert_eq!(
        &*run(Tunnel::Geneve, &gv).unwrap().interface,
        "198.18.1.1/node-a/ifindex-7"
    );
    let gv = encode(
        &mut Geneve::new(vni, ""),
        "p\nq",
        Direction::Ingress,
        &inner,
    );
    assert_eq!(
        &*run(Tunnel::Geneve, &gv).unwrap().interface,
        "198.18.1.1/p?q"
    );

    let gre = encode(
        &mut Gre::new().with_key(GreKey(9)),
        "",
        Direction::Egress,
        &inner,
    );
    assert_eq!(
        &*run(Tunnel::Gre, &gre).unwrap().interface,
        "198.18.1.1/key-9"
    );
    let gre = encode(&mut Gre::new(), "", Direction::Egress, &inner);
    let d = run(Tunnel::Gre, &gre).unwrap();
    assert_eq!((&*d.interface, d.unix_ns), ("198.18.1.1/gre", RECEIVED));

    let session = SessionId::new(5).unwrap();
    let e2 = encode(&mut Erspan2::new(session), "", Direction::Egress, &inner);
    let d = run(Tunnel::Gre, &e2).unwrap();
    assert_eq!(&*d.interface, "198.18.1.1/erspan-session-5");
    // The T bit is set (orig 1000 > 200): the IP header gives 14 + 986.
    assert_eq!((d.orig_len, d.direction, d.truncated), (1000, None, true));
    assert_eq!(d.unix_ns, RECEIVED, "ERSPAN II carries no time");
    let e3 = encode(
        &mut Erspan3::new(session, HwId::new(1).unwrap()),
        "",
        Direction::Ingress,
        &inner,
    );
    let d = run(Tunnel::Gre, &e3).unwrap();
    assert_eq!((d.orig_len, d.direction), (1000, Some(Direction::Ingress)));
    assert_eq!(d.frame, &inner[..]);
    // ERSPAN III's own stamp, in its 100 µs units.
    assert_eq!(d.unix_ns, CAPTURED / 100_000 * 100_000);
}

#[test]
fn errors_have_reasons() {
    assert_eq!(
        run(Tunnel::Vxlan, &[8, 0, 0]).unwrap_err().reason(),
        Reason::Short
    );
    assert_eq!(
        run(Tunnel::Vxlan, &[0; 30]).unwrap_err().reason(),
        Reason::Foreign
    );
    // GRE carrying IPv4 (0x0800) is not ours.
    let mut ip_in_gre = vec![0, 0, 0x08, 0];
    ip_in_gre.extend(frame(20, 40));
    assert_eq!(
        run(Tunnel::Gre, &ip_in_gre).unwrap_err().reason(),
        Reason::Foreign
    );
    let mut bad_version = vec![0, 0, 0x88, 0xBE, 0, 0, 0, 0];
    bad_version.extend(frame(20, 40));
    bad_version[0] = 0x10; // S bit, so it parses as ERSPAN with a sequence number
    bad_version.splice(8..8, [0x20, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        run(Tunnel::Gre, &bad_version).unwrap_err().reason(),
        Reason::Garbled
    );
    assert_eq!(
        run(Tunnel::Geneve, &[0x40; 40]).unwrap_err().reason(),
        Reason::Foreign
    );
}

#[test]
fn ipv4_payloads() {
    let mut p = vec![
        0x45, 0, 0, 28, 0, 0, 0, 0, 64, 47, 0, 0, 198, 18, 1, 1, 198, 18, 1, 2,
    ];
    p.extend([1, 2, 3, 4, 5, 6, 7, 8, 99]); // one byte past the total length
    assert_eq!(ipv4_payload(&p), Ok((FROM, &[1, 2, 3, 4, 5, 6, 7, 8][..])));
    assert_eq!(ipv4_payload(&p[..10]), Err(DatagramError::Ipv4Short(10)));
    p[9] = 17;
    assert_eq!(ipv4_payload(&p), Err(DatagramError::Ipv4Protocol(17)));
    p[0] = 0x65;
    assert_eq!(ipv4_payload(&p), Err(DatagramError::Ipv4Version(6)));
    // A header length past the end.
    p[0] = 0x4F;
    p[9] = 47;
    assert!(ipv4_payload(&p).is_err());
}

#[test]
fn inner_lengths() {
    assert_eq!(inner_ip_len(&frame(1500, 100)), Some(1514));
    assert_eq!(inner_ip_len(&frame(0, 100)), None);
    let mut tagged = frame(100, 60);
    tagged.splice(12..12, [0x81, 0x00, 0, 1]);
    assert_eq!(inner_ip_len(&tagged), Some(118));
    assert_eq!(inner_ip_len(&[0; 13]), None);
    let mut v6 = vec![0; 14 + 40];
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    v6[18..20].copy_from_slice(&[0, 8]);
    assert_eq!(inner_ip_len(&v6), Some(62));
}

/// Every VLAN tag protocol the kernel prefilter looks through (802.1Q,
/// 802.1ad, QinQ 0x9100), once and twice, over IPv4 and IPv6: a copy cut to
/// 64 bytes gets back the length etherparse built the whole frame with.
#[test]
fn inner_lengths_behind_every_vlan_tpid() {
    let payload = [0x5a; 300];
    let v4 = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        .udp(1000, 53);
    let v6 = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .udp(1000, 53);
    for build in [v4, v6] {
        let mut untagged = Vec::new();
        build.write(&mut untagged, &payload).expect("frame");
        let stacks: [&[u16]; 5] = [
            &[0x8100],
            &[0x88a8],
            &[0x9100],
            &[0x9100, 0x8100],
            &[0x88a8, 0x8100],
        ];
        for tpids in stacks {
            let mut whole = untagged.clone();
            // Each tag goes in front of the type it carries, outermost first.
            for (i, tpid) in tpids.iter().enumerate() {
                let at = 12 + 4 * i;
                let tag = [tpid.to_be_bytes(), (7 + i as u16).to_be_bytes()].concat();
                whole.splice(at..at, tag);
            }
            let sliced = etherparse::LaxSlicedPacket::from_ethernet(&whole).expect("parses");
            assert_eq!(
                sliced.link_exts.len(),
                tpids.len(),
                "etherparse sees the tags"
            );
            assert!(
                sliced.net.is_some(),
                "etherparse sees the IP header behind {tpids:x?}"
            );
            assert_eq!(
                inner_ip_len(&whole[..64]),
                Some(whole.len() as u32),
                "behind {tpids:x?}"
            );
        }
    }
}

#[test]
fn the_name_cache_is_bounded() {
    let mut names = Names::default();
    let a = names.get(format_args!("x/{}", 1));
    assert!(Arc::ptr_eq(&a, &names.get(format_args!("x/1"))));
    for i in 0..MAX_NAMES * 2 {
        names.get(format_args!("y/{i}"));
    }
    assert!(names.known.len() <= MAX_NAMES);
}

#[test]
fn gro_buffers_split_into_their_datagrams() {
    let split = |bytes: &[u8], segment| -> Vec<Vec<u8>> {
        split_coalesced(bytes, segment)
            .map(<[u8]>::to_vec)
            .collect()
    };
    // Three of 4 bytes and a shorter last one, in order.
    let joined: Vec<u8> = (0..14).collect();
    assert_eq!(
        split(&joined, Some(4)),
        vec![
            vec![0, 1, 2, 3],
            vec![4, 5, 6, 7],
            vec![8, 9, 10, 11],
            vec![12, 13]
        ]
    );
    // Exact multiples leave no empty tail.
    assert_eq!(split(&joined[..8], Some(4)).len(), 2);
    // No control message, or a segment as large as the buffer: one datagram.
    assert_eq!(split(&joined, None), vec![joined.clone()]);
    assert_eq!(split(&joined, Some(14)), vec![joined.clone()]);
    assert_eq!(split(&joined, Some(1500)), vec![joined.clone()]);
    // A nonsensical zero size does not loop or vanish.
    assert_eq!(split(&joined, Some(0)), vec![joined.clone()]);
    // An empty datagram is still one (to be counted and skipped as short).
    assert_eq!(split(&[], None), vec![Vec::<u8>::new()]);
    assert_eq!(split(&[], Some(4)), vec![Vec::<u8>::new()]);
}

#[test]
fn every_datagram_of_a_gro_buffer_decodes_on_its_own() {
    let mut enc = Vxlan::new(Vni::new(42).unwrap());
    let one = encode(&mut enc, "pod", Direction::Ingress, &frame(100, 114));
    let last = encode(&mut enc, "pod", Direction::Ingress, &frame(60, 74));
    let joined = [one.clone(), one.clone(), last.clone()].concat();
    let mut names = Names::default();
    let frames: Vec<usize> = split_coalesced(&joined, Some(one.len()))
        .map(|d| {
            decode(Tunnel::Vxlan, FROM, d, RECEIVED, &mut names)
                .unwrap()
                .frame
                .len()
        })
        .collect();
    assert_eq!(frames, vec![114, 114, 74]);
}
