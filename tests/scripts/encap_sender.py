"""An independent sender for `mirror-agent collect`: Ethernet frames in
GENEVE, GRE/TEB, ERSPAN Type II or Type III, every header built by scapy
(none by the project's own encoders).

Usage: encap_sender.py KIND DST EXPECTED [BASE_NS]
  KIND      geneve | gre | erspan2 | erspan3, or geneve-time | erspan3-time
            (with BASE_NS: each frame carries a capture time from BASE_NS on)
  DST       the collector's IPv4 address
  EXPECTED  file to write what was sent, one frame a line, tab-separated:
            interface name the collector must give it, frame as hex,
            original length, direction (in, out or -), and for the -time
            kinds the capture time carried, in Unix nanoseconds

Run inside the sender's network namespace; it uses a UDP socket (GENEVE)
or a raw IP socket of protocol 47 (GRE, ERSPAN), so the kernel adds only
the outer IP (and UDP) header.
"""

import socket
import struct
import sys
import time

from scapy.contrib.erspan import ERSPAN_II, ERSPAN_III
from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether, GRE

# The sender's own address, in the collector's names of plain tunnels.
SOURCE = "198.18.1.1"
A, B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
V4 = dict(src="198.18.0.10", dst="198.18.0.11")
V6 = dict(src="fd00:198:18::a", dst="fd00:198:18::b")


def payload(n, seed):
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def frames():
    """A varied set: ARP, UDP of several sizes, TCP, ICMP, 802.1Q, QinQ,
    IPv6 with extension headers and a fragment."""
    out = [Ether(src=A, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=V4["src"], pdst=V4["dst"])]
    for i, size in enumerate([0, 1, 100, 1000, 1472]):
        out.append(Ether(src=A, dst=B) / IP(**V4) / UDP(sport=4000 + i, dport=5000) / payload(size, i))
    out.append(Ether(src=B, dst=A) / IP(src=V4["dst"], dst=V4["src"]) / TCP(sport=80, dport=33000, flags="SA"))
    out.append(Ether(src=A, dst=B) / Dot1Q(vlan=10, prio=5) / IP(**V4) / ICMP() / payload(56, 9))
    out.append(Ether(src=A, dst=B) / Dot1AD(vlan=20) / Dot1Q(vlan=30) / IP(**V4) / UDP(sport=40000, dport=6000) / payload(40, 3))
    out.append(Ether(src=A, dst=B) / IPv6(**V6) / IPv6ExtHdrHopByHop() / UDP(sport=40000, dport=5001) / payload(300, 4))
    out.append(Ether(src=A, dst=B) / IPv6(**V6) / IPv6ExtHdrFragment(id=7, offset=0, m=1) / UDP(sport=40000, dport=5002) / payload(64, 5))
    return [bytes(f) for f in out]


def geneve(frames):
    """Half the frames with the mirror's options (class 0xFFF0: original
    length, direction, ifindex, node, pod), some with a foreign option
    before them, and the rest with no option at all."""
    sent = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def opt(kind, data):
        return GeneveOptions(classid=0xFFF0, type=kind, data=data)

    def padded(text):
        data = text.encode()
        return data + b"\0" * (-len(data) % 4)

    for i, frame in enumerate(frames):
        direction = i % 2
        # Every third frame claims it was cut: 200 bytes more on the wire.
        orig = len(frame) + (200 if i % 3 == 0 else 0)
        options = [
            opt(0x01, struct.pack(">I", orig)),
            opt(0x02, struct.pack(">I", direction)),
            opt(0x03, struct.pack(">I", 7)),
            opt(0x04, padded("node-x")),
            opt(0x05, padded("ns-a/pod-b")),
        ]
        if i % 4 == 1:
            # Not ours, not critical: a receiver must skip it.
            options.insert(0, GeneveOptions(classid=0x0101, type=0x01, data=b"\1\2\3\4"))
        pkt = GENEVE(vni=42, proto=0x6558, options=options) / frame
        sock.sendto(bytes(pkt), (DST, 6081))
        sent.append((f"{SOURCE}/node-x/ns-a/pod-b", frame, orig, "out" if direction else "in"))
        time.sleep(0.002)
    for frame in frames[:4]:
        sock.sendto(bytes(GENEVE(vni=43, proto=0x6558) / frame), (DST, 6081))
        sent.append((f"{SOURCE}/vni-43", frame, len(frame), "-"))
        time.sleep(0.002)
    return sent


def gre_kinds(kind, frames):
    sent = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
    for i, frame in enumerate(frames):
        if kind == "gre":
            if i % 2:
                outer = GRE(key_present=1, key=7, seqnum_present=1, sequence_number=i, proto=0x6558)
                name = f"{SOURCE}/key-7"
            else:
                outer = GRE(proto=0x6558)
                name = f"{SOURCE}/gre"
            pkt, orig, direction = outer / frame, len(frame), "-"
        elif kind == "erspan2":
            outer = GRE(seqnum_present=1, sequence_number=i, proto=0x88BE)
            pkt = outer / ERSPAN_II(session_id=5, index=7) / frame
            name, orig, direction = f"{SOURCE}/erspan-session-5", len(frame), "-"
        else:
            d = i % 2
            outer = GRE(seqnum_present=1, sequence_number=i, proto=0x22EB)
            pkt = outer / ERSPAN_III(session_id=6, hw=3, p=1, d=d, timestamp=i) / frame
            name, orig, direction = f"{SOURCE}/erspan-session-6", len(frame), "out" if d else "in"
        sock.sendto(bytes(pkt), (DST, 0))
        sent.append((name, frame, orig, direction))
        time.sleep(0.002)
    if kind == "erspan3":
        # (Its timestamp follows the others': the collector files by it.)
        # A frame cut to 200 bytes with the T bit set: the collector finds
        # the original length in the inner IPv4 header (14 + 1028).
        whole = bytes(Ether(src=A, dst=B) / IP(**V4) / UDP(sport=40000, dport=5003) / payload(1000, 8))
        pkt = GRE(seqnum_present=1, sequence_number=99, proto=0x22EB) / ERSPAN_III(
            session_id=6, hw=3, p=1, d=1, t=1, timestamp=len(frames)
        ) / whole[:200]
        sock.sendto(bytes(pkt), (DST, 0))
        sent.append((f"{SOURCE}/erspan-session-6", whole[:200], len(whole), "out"))
    return sent


def timed(kind, frames, base_ns):
    """Frames carrying capture times 1 ms apart from BASE_NS: GENEVE in the
    mirror's capture-time option (class 0xFFF0, type 6, u64 nanoseconds),
    ERSPAN III in its timestamp, alternately in 100 µs units (Gra 0) and
    100 ns units (Gra 1), both cut to their low 32 bits as the field is."""
    sent = []
    if kind == "geneve-time":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
    for i, frame in enumerate(frames):
        t = base_ns + i * 1_000_000
        if kind == "geneve-time":
            options = [
                GeneveOptions(classid=0xFFF0, type=0x06, data=struct.pack(">Q", t)),
                GeneveOptions(classid=0xFFF0, type=0x04, data=b"node-t\0\0"),
            ]
            pkt = GENEVE(vni=42, proto=0x6558, options=options) / frame
            sock.sendto(bytes(pkt), (DST, 6081))
            sent.append((f"{SOURCE}/node-t/vni-42", frame, len(frame), "-", t))
        else:
            gra = i % 2
            unit = 100_000 if gra == 0 else 100
            stamp = (t // unit) & 0xFFFFFFFF
            pkt = GRE(seqnum_present=1, sequence_number=i, proto=0x22EB) / ERSPAN_III(
                session_id=6, hw=3, p=1, d=1, gra=gra, timestamp=stamp
            ) / frame
            sock.sendto(bytes(pkt), (DST, 0))
            sent.append((f"{SOURCE}/erspan-session-6", frame, len(frame), "out", t))
        time.sleep(0.002)
    return sent


KIND, DST, EXPECTED = sys.argv[1], sys.argv[2], sys.argv[3]
all_frames = frames()
if KIND == "geneve":
    result = geneve(all_frames)
elif KIND in ("gre", "erspan2", "erspan3"):
    result = gre_kinds(KIND, all_frames)
elif KIND in ("geneve-time", "erspan3-time"):
    result = timed(KIND, all_frames, int(sys.argv[4]))
else:
    sys.exit(f"unknown kind {KIND!r}: geneve, gre, erspan2, erspan3, geneve-time or erspan3-time")
with open(EXPECTED, "w") as f:
    for name, frame, orig, direction, *t in result:
        f.write("\t".join([name, frame.hex(), str(orig), direction] + [str(x) for x in t]) + "\n")
