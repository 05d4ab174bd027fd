//! Reading pcapng streams block by block from any `Read` (a socket, or a
//! TLS session standing in for one). Every length is checked against a
//! bound before anything is read or allocated, both byte orders are read, a
//! stream may hold several sections, and timestamps follow each interface's
//! `if_tsresol`. One buffer per stream, reused: a packet borrows its bytes
//! from it until the next call.

use std::io::{self, Read};

use super::{
    BYTE_ORDER_MAGIC, EPB, EPB_FLAGS, IDB, IF_NAME, IF_TSRESOL, LINKTYPE_ETHERNET, OPT_END, SHB,
    TSRESOL_DEFAULT, direction_of,
};
use crate::model::direction::Direction;

/// The largest block accepted: a packet of the agent's largest snaplen
/// with room for options. A larger length is garbage, not a packet.
pub const MAX_BLOCK: usize = mirror_common::MAX_SNAPLEN as usize + 64 * 1024;
/// Most interfaces one section may describe, so a stream cannot grow the
/// table without end.
const MAX_INTERFACES: usize = 4096;

/// Why a stream ended or a packet was skipped; how the collector counts
/// each is in `collect/stream.rs`.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the stream: {0}")]
    Io(#[from] io::Error),
    #[error("stream ended inside a block")]
    Truncated,
    #[error("not a pcapng stream: it starts with block type {0:#010x}, not a section header")]
    NotPcapng(u32),
    #[error("section header has byte-order magic {0:#010x}")]
    Magic(u32),
    #[error("pcapng version {0}.{1} is not 1.x")]
    Version(u16, u16),
    #[error("block type {kind:#010x} has length {len}, not a multiple of 4 from 12 to {MAX_BLOCK}")]
    Length { kind: u32, len: u32 },
    #[error("block type {kind:#010x}: trailing length {trailer} differs from {len}")]
    Trailer { kind: u32, len: u32, trailer: u32 },
    #[error("block type {kind:#010x} of {len} bytes is too short for its fields")]
    BlockShort { kind: u32, len: u32 },
    #[error("more than {MAX_INTERFACES} interfaces in one section")]
    TooManyInterfaces,
    #[error("packet on interface {0}, which the section does not describe")]
    UnknownInterface(u32),
    #[error("packet on interface {id} of link type {linktype}, not Ethernet")]
    LinkType { id: u32, linktype: u16 },
    #[error("packet of {caplen} bytes claims more than its block holds")]
    CapturedLength { caplen: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    Little,
    Big,
}

impl Order {
    fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            Self::Little => u16::from_le_bytes(b),
            Self::Big => u16::from_be_bytes(b),
        }
    }

    fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            Self::Little => u32::from_le_bytes(b),
            Self::Big => u32::from_be_bytes(b),
        }
    }
}

/// An interface as its description block gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: Option<String>,
    pub linktype: u16,
    /// `if_tsresol`: 10^-n seconds, or 2^-n with the top bit set. Default 6 (µs).
    tsresol: u8,
}

impl Interface {
    /// Converts a timestamp in this interface's units to nanoseconds.
    fn nanos(&self, units: u64) -> u64 {
        let exp = u32::from(self.tsresol & 0x7F);
        let ns = if self.tsresol & 0x80 != 0 {
            (u128::from(units) * 1_000_000_000)
                .checked_shr(exp)
                .unwrap_or(0)
        } else if exp <= 9 {
            u128::from(units) * 10u128.pow(9 - exp)
        } else {
            10u128
                .checked_pow(exp - 9)
                .map_or(0, |d| u128::from(units) / d)
        };
        u64::try_from(ns).unwrap_or(u64::MAX)
    }
}

/// One packet, borrowing its bytes from the reader.
#[derive(Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    pub interface: u32,
    pub unix_ns: u64,
    pub orig_len: u32,
    pub direction: Option<Direction>,
    pub data: &'a [u8],
}

/// What one block brought.
#[derive(Debug)]
pub enum Event<'a> {
    /// A new section began: forget every interface.
    Section,
    /// The next interface was described; its id is `interfaces().len() - 1`.
    Interface,
    Packet(Packet<'a>),
    /// A packet block that cannot be used; the stream goes on.
    Skipped(ReadError),
    /// Another kind of block (statistics, name resolution, ...), ignored.
    Other,
}

pub struct StreamReader<R> {
    inner: R,
    order: Option<Order>,
    interfaces: Vec<Interface>,
    /// The current block's body, reused.
    body: Vec<u8>,
}

impl<R: Read> StreamReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            order: None,
            interfaces: Vec::new(),
            body: Vec::new(),
        }
    }

    /// The source, for a caller that fills it between blocks (the
    /// collector's stream tasks feed whole blocks from memory).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// The next block, `Ok(None)` at a clean end of stream (between blocks).
    /// An error is final: after it the framing is lost.
    pub fn next_event(&mut self) -> Result<Option<Event<'_>>, ReadError> {
        let mut head = [0u8; 8];
        if !read_exact_or_eof(&mut self.inner, &mut head)? {
            return Ok(None);
        }
        let [t0, t1, t2, t3, l0, l1, l2, l3] = head;
        let kind_bytes = [t0, t1, t2, t3];
        let len_bytes = [l0, l1, l2, l3];
        // The section header's type reads the same in both orders; its magic,
        // next, says which order this section is in.
        let order = if u32::from_le_bytes(kind_bytes) == SHB {
            let mut magic = [0u8; 4];
            read_all(&mut self.inner, &mut magic)?;
            let order = match u32::from_le_bytes(magic) {
                BYTE_ORDER_MAGIC => Order::Little,
                m if m.swap_bytes() == BYTE_ORDER_MAGIC => Order::Big,
                m => return Err(ReadError::Magic(m)),
            };
            self.order = Some(order);
            self.body.clear();
            self.body.extend_from_slice(&magic);
            order
        } else {
            self.body.clear();
            match self.order {
                Some(o) => o,
                None => return Err(ReadError::NotPcapng(u32::from_le_bytes(kind_bytes))),
            }
        };
        let kind = order.u32(kind_bytes);
        let len = order.u32(len_bytes);
        let len_usize = usize::try_from(len).unwrap_or(usize::MAX);
        if !len.is_multiple_of(4) || !(12..=MAX_BLOCK).contains(&len_usize) {
            return Err(ReadError::Length { kind, len });
        }
        // The body, less what was already read (the SHB magic), then the trailer.
        let already = self.body.len();
        let body_len = (len_usize - 12).max(already);
        self.body.resize(body_len + 4, 0);
        let rest = self.body.get_mut(already..).unwrap_or_default();
        read_all(&mut self.inner, rest)?;
        let trailer = self
            .body
            .get(body_len..)
            .and_then(|t| <[u8; 4]>::try_from(t).ok())
            .map_or(0, |t| order.u32(t));
        self.body.truncate(body_len);
        if trailer != len || len_usize - 12 < already {
            return Err(ReadError::Trailer { kind, len, trailer });
        }
        let short = ReadError::BlockShort { kind, len };
        match kind {
            SHB => {
                let (&[_, _, _, _, a, b, c, d], _) =
                    self.body.split_first_chunk::<8>().ok_or(short)?;
                let (major, minor) = (order.u16([a, b]), order.u16([c, d]));
                if major != 1 {
                    return Err(ReadError::Version(major, minor));
                }
                self.interfaces.clear();
                Ok(Some(Event::Section))
            }
            IDB => {
                let iface = parse_idb(order, &self.body).ok_or(short)?;
                if self.interfaces.len() >= MAX_INTERFACES {
                    return Err(ReadError::TooManyInterfaces);
                }
                self.interfaces.push(iface);
                Ok(Some(Event::Interface))
            }
            EPB => Ok(Some(
                match parse_epb(order, &self.body, &self.interfaces, kind, len) {
                    Ok(p) => Event::Packet(p),
                    Err(e) => Event::Skipped(e),
                },
            )),
            _ => Ok(Some(Event::Other)),
        }
    }
}

/// Fills `buf`, or returns `Ok(false)` if the stream ended before its first byte.
fn read_exact_or_eof(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, ReadError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(buf.get_mut(got..).unwrap_or_default()) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(ReadError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

fn read_all(r: &mut impl Read, buf: &mut [u8]) -> Result<(), ReadError> {
    if buf.is_empty() || read_exact_or_eof(r, buf)? {
        Ok(())
    } else {
        Err(ReadError::Truncated)
    }
}

/// Options `(code, value)` of a block, until `opt_endofopt` or the end.
/// Stops quietly at an option that runs past the block: what came before it
/// is still good.
fn options(order: Order, mut opts: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let (&[c0, c1, l0, l1], rest) = opts.split_first_chunk::<4>()?;
        let code = order.u16([c0, c1]);
        let len = usize::from(order.u16([l0, l1]));
        if code == OPT_END {
            return None;
        }
        let value = rest.get(..len)?;
        opts = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((code, value))
    })
}

fn parse_idb(order: Order, body: &[u8]) -> Option<Interface> {
    let (&[a, b, _, _, _, _, _, _], opts) = body.split_first_chunk::<8>()?;
    let mut iface = Interface {
        name: None,
        linktype: order.u16([a, b]),
        tsresol: TSRESOL_DEFAULT,
    };
    for (code, value) in options(order, opts) {
        match (code, value) {
            (IF_NAME, v) => {
                let text = String::from_utf8_lossy(v);
                iface.name = Some(text.trim_end_matches('\0').to_owned());
            }
            (IF_TSRESOL, &[r, ..]) => iface.tsresol = r,
            _ => {}
        }
    }
    Some(iface)
}

fn parse_epb<'a>(
    order: Order,
    body: &'a [u8],
    interfaces: &[Interface],
    kind: u32,
    len: u32,
) -> Result<Packet<'a>, ReadError> {
    let (
        &[
            i0,
            i1,
            i2,
            i3,
            h0,
            h1,
            h2,
            h3,
            w0,
            w1,
            w2,
            w3,
            c0,
            c1,
            c2,
            c3,
            o0,
            o1,
            o2,
            o3,
        ],
        rest,
    ) = body
        .split_first_chunk::<20>()
        .ok_or(ReadError::BlockShort { kind, len })?;
    let id = order.u32([i0, i1, i2, i3]);
    let iface = interfaces
        .get(usize::try_from(id).unwrap_or(usize::MAX))
        .ok_or(ReadError::UnknownInterface(id))?;
    if iface.linktype != LINKTYPE_ETHERNET {
        return Err(ReadError::LinkType {
            id,
            linktype: iface.linktype,
        });
    }
    let units =
        u64::from(order.u32([h0, h1, h2, h3])) << 32 | u64::from(order.u32([w0, w1, w2, w3]));
    let caplen = order.u32([c0, c1, c2, c3]);
    let cap = usize::try_from(caplen).unwrap_or(usize::MAX);
    let data = rest
        .get(..cap)
        .ok_or(ReadError::CapturedLength { caplen })?;
    let opts = rest.get(cap.next_multiple_of(4)..).unwrap_or_default();
    let direction = options(order, opts)
        .find_map(|(code, v)| match (code, v) {
            (EPB_FLAGS, &[a, b, c, d]) => Some(order.u32([a, b, c, d])),
            _ => None,
        })
        .and_then(direction_of);
    Ok(Packet {
        interface: id,
        unix_ns: iface.nanos(units),
        orig_len: order.u32([o0, o1, o2, o3]).max(caplen),
        direction,
        data,
    })
}

#[cfg(test)]
pub(crate) mod tests;
