//! GSO/GRO super-packets cut into the segments the kernel would put on a
//! wire (`tcp_gso_segment`, `__udp_gso_segment`, `inet_gso_segment`,
//! `ipv6_gso_segment`): each segment gets the headers of the super-packet
//! with its own IP length, IPv4 id (consecutive), TCP sequence number,
//! flags (CWR on the first only, FIN and PSH on the last only) or UDP
//! length, and its own checksums.

use std::num::NonZeroU16;

use etherparse::checksum::u64_16bit_word as sum;

use super::{Layout, Shaped, TCP, UDP, write_checksum};

const TCP_CWR: u8 = 0x80;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;

/// Calls `each` with every segment of the super-packet `data` (captured
/// from a packet of `orig_len` bytes) and that segment's own original
/// length, each cut to `snaplen`. `None` when it is not a TCP or UDP
/// super-packet of more than one segment, or its headers were not
/// captured: the caller sends it as it is. Segments past the captured
/// bytes still appear, with exact headers, their original length and the
/// payload that was captured (none); their transport checksum cannot be
/// computed and is left as the super-packet had it.
pub fn segment(
    data: &[u8],
    orig_len: u32,
    mss: NonZeroU16,
    snaplen: usize,
    finish: bool,
    scratch: &mut Vec<u8>,
    each: &mut impl FnMut(&[u8], u32),
) -> Option<Shaped> {
    let layout = Layout::of(data)?;
    let header_len = match layout.protocol {
        TCP => layout.l4 + usize::from(data.get(layout.l4 + 12)? >> 4) * 4,
        UDP => layout.l4 + 8,
        _ => return None,
    };
    if header_len > data.len() {
        return None;
    }
    let mss = usize::from(mss.get());
    // The IP header's length, not the skb's: the frame may carry padding.
    let payload = (layout.l4 + layout.l4_len).checked_sub(header_len)?;
    let count = payload.div_ceil(mss);
    if count < 2 || layout.l4 + layout.l4_len > orig_len as usize {
        return None;
    }
    let seq = data
        .get(layout.l4 + 4..layout.l4 + 8)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]));
    let ip_id = u16::from_be_bytes([data[layout.l3 + 4], data[layout.l3 + 5]]);
    let mut finished = 0;
    for i in 0..count {
        let from = header_len + i * mss;
        let size = mss.min(payload - i * mss);
        let seg_len = header_len + size;
        scratch.clear();
        scratch.extend_from_slice(&data[..header_len]);
        let captured = data.get(from..(from + size).min(data.len())).unwrap_or(&[]);
        scratch.extend_from_slice(captured);
        let whole = captured.len() == size;
        let l3_len = seg_len - layout.l3;
        if layout.ipv6 {
            put16(scratch, layout.l3 + 4, (l3_len - 40) as u16);
        } else {
            put16(scratch, layout.l3 + 2, l3_len as u16);
            put16(scratch, layout.l3 + 4, ip_id.wrapping_add(i as u16));
            ipv4_checksum(scratch, layout.l3);
        }
        let seg = Layout {
            l4_len: seg_len - layout.l4,
            ..layout
        };
        let at = if layout.protocol == TCP {
            let s = seq.unwrap_or(0).wrapping_add((i * mss) as u32);
            scratch[layout.l4 + 4..layout.l4 + 8].copy_from_slice(&s.to_be_bytes());
            let flags = &mut scratch[layout.l4 + 13];
            if i > 0 {
                *flags &= !TCP_CWR;
            }
            if i + 1 < count {
                *flags &= !(TCP_FIN | TCP_PSH);
            }
            layout.l4 + 16
        } else {
            put16(scratch, layout.l4 + 4, seg.l4_len as u16);
            layout.l4 + 6
        };
        // A UDP checksum of zero means none (IPv4): it stays none.
        let none = layout.protocol == UDP && !layout.ipv6 && data[at..at + 2] == [0, 0];
        if whole && finish && !none {
            write_checksum(scratch, &seg, at);
            finished += 1;
        }
        scratch.truncate(snaplen);
        each(scratch, seg_len as u32);
    }
    Some(Shaped {
        copies: count,
        segments: count,
        finished,
    })
}

fn put16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// Recomputes an IPv4 header's checksum, in place: etherparse computes
/// one only from a parsed `Ipv4Header`, which would mean parsing and
/// writing the header again for every segment.
fn ipv4_checksum(buf: &mut [u8], l3: usize) {
    let ihl = usize::from(buf[l3] & 0x0f) * 4;
    buf[l3 + 10..l3 + 12].fill(0);
    let value = sum::ones_complement(sum::add_slice(0, &buf[l3..l3 + ihl]));
    buf[l3 + 10..l3 + 12].copy_from_slice(&value.to_ne_bytes());
}
