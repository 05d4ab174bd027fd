//! What a NIC would have put on the wire, for comparing tcpdump's frames
//! (taken before checksum offload, as the hook sees them) with copies
//! whose checksums the agent finished: each whole TCP or UDP frame gets its
//! checksum as etherparse computes it.

use etherparse::{NetSlice, SlicedPacket, TransportSlice, UdpHeader};

use crate::capture::Frame;

/// The frames with every transport checksum set right (frames cut by a
/// snaplen, and IPv4 UDP without a checksum, as they were).
pub fn finished(frames: &[Frame]) -> Vec<Frame> {
    frames
        .iter()
        .map(|f| Frame {
            data: finish(&f.data).unwrap_or_else(|| f.data.clone()),
            ..f.clone()
        })
        .collect()
}

fn finish(frame: &[u8]) -> Option<Vec<u8>> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let l4 = match p.transport.as_ref()? {
        TransportSlice::Tcp(t) => t.slice(),
        TransportSlice::Udp(u) => u.slice(),
        _ => return None,
    };
    let at = l4.as_ptr() as usize - frame.as_ptr() as usize;
    let (value, offset) = match (p.net.as_ref()?, p.transport.as_ref()?) {
        (NetSlice::Ipv4(ip), TransportSlice::Tcp(t)) => (
            t.to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                .ok()?,
            16,
        ),
        (NetSlice::Ipv6(ip), TransportSlice::Tcp(t)) => (
            t.to_header()
                .calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                .ok()?,
            16,
        ),
        (NetSlice::Ipv4(ip), TransportSlice::Udp(u)) if u.checksum() != 0 => (
            UdpHeader::from_slice(u.slice())
                .ok()?
                .0
                .calc_checksum_ipv4(&ip.header().to_header(), u.payload())
                .ok()?,
            6,
        ),
        (NetSlice::Ipv6(ip), TransportSlice::Udp(u)) => (
            UdpHeader::from_slice(u.slice())
                .ok()?
                .0
                .calc_checksum_ipv6(&ip.header().to_header(), u.payload())
                .ok()?,
            6,
        ),
        _ => return None,
    };
    let mut out = frame.to_vec();
    out[at + offset..at + offset + 2].copy_from_slice(&value.to_be_bytes());
    Some(out)
}
