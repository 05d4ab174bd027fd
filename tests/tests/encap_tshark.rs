//! tshark, not our code, judges the tunnel encoders: each encapsulation is
//! put in complete synthetic packets (outer Ethernet, IPv4, UDP or GRE, our
//! header, then a real inner Ethernet/IPv4/UDP or TCP frame), written to a
//! pcap, and dissected. tshark must find nothing malformed and no error- or
//! warning-level expert info (with IP, UDP and TCP checksum checks on), must
//! show the header fields we encoded, and must dissect the inner frame at
//! exactly the offset where we put it, with the MAC, addresses, length and
//! ports it carries.
//!
//! Frames are built with etherparse, which computes the IPv4 header and
//! UDP/TCP checksums; every address is in 198.18.0.0/15. No root needed.

use std::{fs::File, time::Duration};

use etherparse::{IpNumber, PacketBuilder, VlanId};
use mirror_agent::{
    export::encap::{
        Encapsulator, MAX_HEADER_LEN, PacketMeta, Vni,
        erspan::{Erspan2, Erspan3, HwId, SessionId, TIMESTAMP_UNIT_NS},
        geneve::{self, Geneve},
        gre::{Gre, GreKey},
        vxlan::{self, Vxlan},
    },
    model::{direction::Direction, record::IfIndex},
};
use pcap_file::pcap::{PcapPacket, PcapWriter};
use testbed::tshark::{Row, Severity, Tshark};

const OUTER_SRC: [u8; 4] = [198, 19, 0, 1];
const OUTER_DST: [u8; 4] = [198, 19, 0, 2];
const OUTER_MACS: ([u8; 6], [u8; 6]) = ([2, 0, 0, 0, 0xa, 1], [2, 0, 0, 0, 0xa, 2]);
const UNIX_NS: u64 = 1_700_000_000_987_654_321;

/// One inner frame and what tshark should read in it.
struct Inner {
    frame: Vec<u8>,
    src: &'static str,
    dst: &'static str,
    ip_len: usize,
    /// `(tcp|udp, source port, destination port)`.
    l4: (&'static str, u16, u16),
}

fn inner_udp() -> Inner {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 1, 1], [2, 0, 0, 0, 1, 2])
        .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
        .udp(40000, 5001)
        .write(&mut frame, &[0x5a; 300])
        .expect("build inner UDP");
    Inner {
        frame,
        src: "198.18.0.1",
        dst: "198.18.0.2",
        ip_len: 20 + 8 + 300,
        l4: ("udp", 40000, 5001),
    }
}

/// An 802.1Q-tagged UDP frame: VID 291 (0x123), PCP 5.
fn inner_tagged() -> Inner {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 3, 1], [2, 0, 0, 0, 3, 2])
        .single_vlan(VlanId::try_new(0x123).expect("vid"))
        .ipv4([198, 18, 2, 1], [198, 18, 2, 2], 64)
        .udp(40002, 5002)
        .write(&mut frame, &[0x11; 40])
        .expect("build tagged UDP");
    frame[14] |= 5 << 5;
    Inner {
        frame,
        src: "198.18.2.1",
        dst: "198.18.2.2",
        ip_len: 20 + 8 + 40,
        l4: ("udp", 40002, 5002),
    }
}

fn inner_tcp() -> Inner {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 2, 1], [2, 0, 0, 0, 2, 2])
        .ipv4([198, 18, 1, 1], [198, 18, 1, 2], 64)
        .tcp(40001, 443, 1000, 64240)
        .ack(77)
        .psh()
        .write(&mut frame, b"mirrored over a tunnel")
        .expect("build inner TCP");
    Inner {
        frame,
        src: "198.18.1.1",
        dst: "198.18.1.2",
        ip_len: 20 + 20 + 22,
        l4: ("tcp", 40001, 443),
    }
}

fn meta(direction: Direction, pod: &str) -> PacketMeta<'_> {
    PacketMeta {
        unix_ns: UNIX_NS,
        ifindex: IfIndex(7),
        direction,
        orig_len: 0,
        pod,
    }
}

/// Our header followed by the inner frame: the UDP payload, or what follows IP.
fn encapsulate(enc: &mut dyn Encapsulator, meta: &PacketMeta<'_>, inner: &[u8]) -> Vec<u8> {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = enc.write_header(meta, inner, &mut header).expect("encode");
    [&header[..n], inner].concat()
}

enum Outer {
    Udp(u16),
    Gre,
}

fn outer(kind: &Outer, payload: &[u8]) -> Vec<u8> {
    let ip = PacketBuilder::ethernet2(OUTER_MACS.0, OUTER_MACS.1).ipv4(OUTER_SRC, OUTER_DST, 64);
    let mut out = Vec::new();
    match *kind {
        Outer::Udp(port) => ip.udp(49152, port).write(&mut out, payload),
        Outer::Gre => ip.write(&mut out, IpNumber::GRE, payload),
    }
    .expect("build outer packet");
    out
}

/// One pcap of tunnel packets, and for each the inner frame and its offset.
struct Capture {
    _dir: tempfile::TempDir,
    path: String,
    packets: Vec<(usize, Inner)>,
}

fn capture(packets: Vec<(Vec<u8>, Inner)>) -> Capture {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tunnel.pcap");
    let mut w = PcapWriter::new(File::create(&path).expect("create pcap")).expect("pcap header");
    let mut offsets = Vec::new();
    for (i, (frame, inner)) in packets.into_iter().enumerate() {
        let ts = Duration::from_secs(1_700_000_000 + i as u64);
        w.write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame))
            .expect("write pcap packet");
        offsets.push((frame.len() - inner.frame.len(), inner));
    }
    drop(w);
    Capture {
        path: path.to_string_lossy().into_owned(),
        _dir: dir,
        packets: offsets,
    }
}

/// The clean-dissection checks every encapsulation gets, then the inner
/// frame checks; returns the per-packet values of `extra` fields.
fn dissect(c: &Capture, extra: &[&str]) -> Vec<Row> {
    // The frames are complete and their checksums right, so tshark checks
    // them, and finds neither errors nor warnings.
    let ts = Tshark::new(&c.path).check_checksums(&["ip", "udp", "tcp"]);
    ts.assert_clean(Severity::Warning);

    let layers = ts.ethernet_layers().expect("tshark JSON");
    let mut names = vec!["eth.src", "ip.src", "ip.dst", "ip.len"];
    names.extend(["udp.srcport", "udp.dstport", "tcp.srcport", "tcp.dstport"]);
    names.extend(extra);
    let rows = ts.fields(&names).expect("tshark fields");
    assert_eq!(
        rows.len(),
        c.packets.len(),
        "tshark read a different packet count"
    );
    assert_eq!(layers.len(), c.packets.len());
    for (i, (row, (offset, inner))) in rows.iter().zip(&c.packets).enumerate() {
        let ctx = format!("packet {i}: {row:?}");
        assert_eq!(
            layers[i].ethernet_at,
            [0, *offset],
            "outer and inner Ethernet, the inner at our offset, {ctx}"
        );
        assert_eq!(layers[i].inner(), inner.frame, "inner frame bytes, {ctx}");
        let last = |f: &str| row[f].last().cloned().unwrap_or_default();
        assert_eq!(row["eth.src"].len(), 2, "outer and inner Ethernet, {ctx}");
        let mac: Vec<String> = inner.frame[6..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(last("eth.src"), mac.join(":"), "{ctx}");
        assert_eq!(last("ip.src"), inner.src, "{ctx}");
        assert_eq!(last("ip.dst"), inner.dst, "{ctx}");
        assert_eq!(last("ip.len"), inner.ip_len.to_string(), "{ctx}");
        let (proto, sport, dport) = inner.l4;
        assert_eq!(
            last(&format!("{proto}.srcport")),
            sport.to_string(),
            "{ctx}"
        );
        assert_eq!(
            last(&format!("{proto}.dstport")),
            dport.to_string(),
            "{ctx}"
        );
    }
    rows
}

fn field<'a>(row: &'a Row, name: &str) -> &'a [String] {
    &row[name]
}

#[test]
fn vxlan_dissects_cleanly_with_our_vni() {
    let vni = Vni::new(0xA1B2C3).expect("vni");
    let mut enc = Vxlan::new(vni);
    let packets = [inner_udp(), inner_tcp()]
        .into_iter()
        .map(|inner| {
            let payload = encapsulate(&mut enc, &meta(Direction::Ingress, ""), &inner.frame);
            (outer(&Outer::Udp(vxlan::UDP_PORT), &payload), inner)
        })
        .collect();
    let c = capture(packets);
    for row in dissect(&c, &["vxlan.vni", "vxlan.flag_i"]) {
        assert_eq!(field(&row, "vxlan.vni"), [vni.get().to_string()]);
        assert_eq!(field(&row, "vxlan.flag_i"), ["1"]);
    }
}

#[test]
fn geneve_dissects_cleanly_with_our_options() {
    let vni = Vni::new(4242).expect("vni");
    let mut enc = Geneve::new(vni, "node-198-18");
    let pod = "shop/cart-7d9f";
    let packets = [
        (inner_udp(), Direction::Ingress),
        (inner_tcp(), Direction::Egress),
    ]
    .into_iter()
    .map(|(inner, direction)| {
        let mut m = meta(direction, pod);
        m.orig_len = inner.frame.len() as u32 + 1000;
        let payload = encapsulate(&mut enc, &m, &inner.frame);
        (outer(&Outer::Udp(geneve::UDP_PORT), &payload), inner)
    })
    .collect();
    let c = capture(packets);
    let names = [
        "geneve.vni",
        "geneve.proto_type",
        "geneve.flags.critical",
        "geneve.flags.oam",
        "geneve.option.class",
        "geneve.option.type",
        "geneve.option.type.critical",
        "geneve.option.length",
        "geneve.option.unknown.data",
        "geneve.option.length.invalid",
    ];
    let rows = dissect(&c, &names);
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for ((row, (_, inner)), direction) in rows.iter().zip(&c.packets).zip(["0", "1"]) {
        assert_eq!(field(row, "geneve.vni"), [format!("{:#08x}", vni.get())]);
        assert_eq!(field(row, "geneve.proto_type"), ["0x6558"]);
        assert_eq!(field(row, "geneve.flags.critical"), ["0"]);
        assert_eq!(field(row, "geneve.flags.oam"), ["0"]);
        // Our six options, all of class 0xfff0, none critical, none invalid.
        assert_eq!(field(row, "geneve.option.class"), ["0xfff0"; 6]);
        assert_eq!(
            field(row, "geneve.option.type"),
            ["0x01", "0x02", "0x03", "0x06", "0x04", "0x05"]
        );
        assert_eq!(field(row, "geneve.option.type.critical"), ["0"; 6]);
        assert!(field(row, "geneve.option.length.invalid").is_empty());
        // The header's Opt Len in bytes, then each option's length with its 4-byte header.
        assert_eq!(
            field(row, "geneve.option.length"),
            ["72", "8", "8", "8", "12", "16", "20"]
        );
        let orig_len = format!("{:08x}", inner.frame.len() + 1000);
        let data = [
            orig_len,
            format!("0000000{direction}"),
            "00000007".to_string(),
            format!("{UNIX_NS:016x}"),
            hex(b"node-198-18\0"),
            hex(b"shop/cart-7d9f\0\0"),
        ];
        assert_eq!(field(row, "geneve.option.unknown.data"), data);
    }
}

#[test]
fn gre_dissects_cleanly_with_our_key_and_sequence() {
    let key = GreKey(0xC0FFEE);
    let mut keyed = Gre::new().with_key(key).with_sequence();
    let mut plain = Gre::new();
    let m = meta(Direction::Ingress, "");
    let packets = vec![
        (
            outer(
                &Outer::Gre,
                &encapsulate(&mut keyed, &m, &inner_udp().frame),
            ),
            inner_udp(),
        ),
        (
            outer(
                &Outer::Gre,
                &encapsulate(&mut keyed, &m, &inner_tcp().frame),
            ),
            inner_tcp(),
        ),
        (
            outer(
                &Outer::Gre,
                &encapsulate(&mut plain, &m, &inner_tcp().frame),
            ),
            inner_tcp(),
        ),
    ];
    let c = capture(packets);
    let names = [
        "gre.proto",
        "gre.key",
        "gre.sequence_number",
        "gre.flags.checksum",
    ];
    let rows = dissect(&c, &names);
    let expected: [(&[&str], &[&str]); 3] = [
        (&["0x00c0ffee"], &["0"]),
        (&["0x00c0ffee"], &["1"]),
        (&[], &[]),
    ];
    for (row, (key, seq)) in rows.iter().zip(expected) {
        assert_eq!(field(row, "gre.proto"), ["0x6558"]);
        assert_eq!(field(row, "gre.flags.checksum"), ["0"]);
        assert_eq!(field(row, "gre.key"), key);
        assert_eq!(field(row, "gre.sequence_number"), seq);
    }
}

/// The inner frames are whole IP packets even where the T bit is set, as
/// when a cut removed only Ethernet padding: a cut inside IP would rightly
/// make tshark report the inner packet's length as bad, and that is not the
/// encoder's doing.
fn erspan_packets(enc: &mut dyn Encapsulator) -> Vec<(Vec<u8>, Inner)> {
    [
        (inner_udp(), Direction::Ingress, false),
        (inner_tcp(), Direction::Egress, true),
        (inner_tagged(), Direction::Egress, false),
    ]
    .into_iter()
    .map(|(inner, direction, cut)| {
        let mut m = meta(direction, "");
        m.orig_len = inner.frame.len() as u32 + if cut { 6 } else { 0 };
        (
            outer(&Outer::Gre, &encapsulate(enc, &m, &inner.frame)),
            inner,
        )
    })
    .collect()
}

#[test]
fn erspan2_dissects_cleanly_with_our_session_and_t_bit() {
    let session = SessionId::new(1000).expect("session");
    let c = capture(erspan_packets(&mut Erspan2::new(session)));
    let names = [
        "gre.proto",
        "gre.sequence_number",
        "erspan.version",
        "erspan.spanid",
        "erspan.truncated",
        "erspan.index",
        "erspan.encap",
        "erspan.vlan",
        "erspan.cos",
        "vlan.id",
    ];
    let rows = dissect(&c, &names);
    // (sequence, T bit, En, VLAN, COS); the tagged frame keeps its tag (En 3).
    let expected = [
        ("0", "0", "0", "0", "0"),
        ("1", "1", "0", "0", "0"),
        ("2", "0", "3", "291", "5"),
    ];
    for (row, (seq, t, en, vlan, cos)) in rows.iter().zip(expected) {
        assert_eq!(field(row, "gre.proto"), ["0x88be"]);
        assert_eq!(field(row, "gre.sequence_number"), [seq]);
        assert_eq!(field(row, "erspan.version"), ["1"]);
        assert_eq!(field(row, "erspan.spanid"), ["1000"]);
        assert_eq!(field(row, "erspan.truncated"), [t]);
        assert_eq!(field(row, "erspan.index"), ["7"]);
        assert_eq!(field(row, "erspan.encap"), [en]);
        assert_eq!(field(row, "erspan.vlan"), [vlan]);
        assert_eq!(field(row, "erspan.cos"), [cos]);
    }
    assert_eq!(
        field(&rows[2], "vlan.id"),
        ["291"],
        "tshark sees the inner tag"
    );
}

#[test]
fn erspan3_dissects_cleanly_with_our_timestamp_direction_and_hw_id() {
    let session = SessionId::new(0x3FF).expect("session");
    let hw = HwId::new(42).expect("hw id");
    let c = capture(erspan_packets(&mut Erspan3::new(session, hw)));
    let names = [
        "gre.proto",
        "gre.sequence_number",
        "erspan.version",
        "erspan.spanid",
        "erspan.truncated",
        "erspan.bso",
        "erspan.timestamp",
        "erspan.gra",
        "erspan.hw",
        "erspan.direction",
        "erspan.o",
        "erspan.p",
        "erspan.ft",
        "erspan.sgt",
        "erspan.vlan",
    ];
    let rows = dissect(&c, &names);
    let stamp = ((UNIX_NS / TIMESTAMP_UNIT_NS) as u32).to_string();
    let expected = [
        ("0", "0", "0", "0"),
        ("1", "1", "1", "0"),
        ("2", "0", "1", "291"),
    ];
    for (row, (seq, t, d, vlan)) in rows.iter().zip(expected) {
        assert_eq!(field(row, "gre.proto"), ["0x22eb"]);
        assert_eq!(field(row, "gre.sequence_number"), [seq]);
        assert_eq!(field(row, "erspan.version"), ["2"]);
        assert_eq!(field(row, "erspan.spanid"), ["1023"]);
        assert_eq!(field(row, "erspan.truncated"), [t]);
        assert_eq!(field(row, "erspan.bso"), ["0"]);
        assert_eq!(field(row, "erspan.timestamp"), [stamp.as_str()]);
        assert_eq!(field(row, "erspan.gra"), ["0"], "100 µs granularity");
        assert_eq!(field(row, "erspan.hw"), ["42"]);
        assert_eq!(field(row, "erspan.direction"), [d]);
        assert_eq!(field(row, "erspan.o"), ["0"]);
        assert_eq!(field(row, "erspan.p"), ["1"]);
        assert_eq!(field(row, "erspan.ft"), ["0"]);
        assert_eq!(field(row, "erspan.sgt"), ["0"]);
        assert_eq!(field(row, "erspan.vlan"), [vlan]);
    }
}
