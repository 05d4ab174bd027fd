//! Reading captures (pcap from tcpdump, pcapng from the agent) with the
//! pcap-file crate, an independent parser, and comparing them as multisets.

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context, Result, bail};
use pcap_file::{
    TsResolution,
    pcap::{PcapHeader, PcapPacket, PcapReader, PcapWriter},
    pcapng::{Block, PcapNgReader, blocks::enhanced_packet::EnhancedPacketOption},
};

/// Direction from pcapng's `epb_flags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dir {
    In,
    Out,
}

/// One captured frame: its bytes and original length (and, from pcapng,
/// the interface name and direction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub data: Vec<u8>,
    pub orig_len: u32,
    pub interface: Option<String>,
    pub dir: Option<Dir>,
    /// Nanoseconds since the epoch.
    pub ts_ns: u128,
}

impl Frame {
    /// The UDP destination port of an Ethernet/IPv4 frame, however short
    /// the snaplen cut it (as long as the UDP header is there).
    pub fn udp_dst_port(&self) -> Option<u16> {
        let d = &self.data;
        if d.len() < 34 || d[12..14] != [0x08, 0x00] || d[23] != 17 {
            return None;
        }
        let l4 = 14 + usize::from(d[14] & 0x0f) * 4;
        Some(u16::from_be_bytes([*d.get(l4 + 2)?, *d.get(l4 + 3)?]))
    }
}

/// Reads a pcap or pcapng file, whichever it is.
pub fn read(path: &Path) -> Result<Vec<Frame>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&bytes).with_context(|| path.display().to_string())
}

/// Reads a pcap or pcapng capture held in memory (a received stream).
pub fn parse(bytes: &[u8]) -> Result<Vec<Frame>> {
    match bytes.get(..4) {
        Some([0x0a, 0x0d, 0x0d, 0x0a]) => read_pcapng(bytes),
        Some(_) => read_pcap(bytes),
        None => bail!("the capture is empty"),
    }
}

fn read_pcap(bytes: &[u8]) -> Result<Vec<Frame>> {
    let mut reader = PcapReader::new(bytes).context("pcap header")?;
    let frac_ns: u128 = match reader.header().ts_resolution {
        TsResolution::MicroSecond => 1000,
        TsResolution::NanoSecond => 1,
    };
    let mut out = Vec::new();
    // Raw packets: pcap-file's checked reader refuses orig_len > snaplen,
    // which every capture cut by `tcpdump -s` has.
    while let Some(packet) = reader.next_raw_packet() {
        let p = packet.context("pcap packet")?;
        out.push(Frame {
            data: p.data.into_owned(),
            orig_len: p.orig_len,
            interface: None,
            dir: None,
            ts_ns: u128::from(p.ts_sec) * 1_000_000_000 + u128::from(p.ts_frac) * frac_ns,
        });
    }
    Ok(out)
}

fn read_pcapng(bytes: &[u8]) -> Result<Vec<Frame>> {
    let mut reader = PcapNgReader::new(bytes).context("pcapng section header")?;
    let mut names: Vec<Option<String>> = Vec::new();
    let mut out = Vec::new();
    while let Some(block) = reader.next_block() {
        match block.context("pcapng block")? {
            Block::InterfaceDescription(idb) => names.push(idb.options.iter().find_map(|o| {
                match o {
                    pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption::IfName(n) => {
                        Some(n.to_string())
                    }
                    _ => None,
                }
            })),
            Block::EnhancedPacket(epb) => {
                let dir = epb.options.iter().find_map(|o| match o {
                    EnhancedPacketOption::Flags(f) => match f & 3 {
                        1 => Some(Dir::In),
                        2 => Some(Dir::Out),
                        _ => None,
                    },
                    _ => None,
                });
                out.push(Frame {
                    interface: names.get(epb.interface_id as usize).cloned().flatten(),
                    data: epb.data.into_owned(),
                    orig_len: epb.original_len,
                    dir,
                    ts_ns: epb.timestamp.as_nanos(),
                });
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Writes `frames` as a pcap file (nanosecond stamps, Ethernet, each
/// with its original length), for tshark to read frames that reached us
/// another way (decapsulated by tshark, or from a collector's file).
pub fn write(path: &Path, frames: &[Frame]) -> Result<()> {
    let file = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let header = PcapHeader {
        ts_resolution: TsResolution::NanoSecond,
        snaplen: 262_144,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(std::io::BufWriter::new(file), header)?;
    for f in frames {
        let ts = std::time::Duration::from_nanos(u64::try_from(f.ts_ns).unwrap_or(u64::MAX));
        writer.write_packet(&PcapPacket::new(ts, f.orig_len, &f.data))?;
    }
    std::io::Write::flush(&mut writer.into_writer())?;
    Ok(())
}

/// Frames in one capture and not the other, counting duplicates.
#[derive(Debug, Default)]
pub struct Difference {
    pub missing: Vec<(Vec<u8>, u32)>,
    pub extra: Vec<(Vec<u8>, u32)>,
}

impl Difference {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty()
    }
}

/// Compares a mirror's copies (`actual`) against tcpdump's frames
/// (`expected`) as a NIC would have sent them: the agent finishes offloaded
/// checksums by default, so tcpdump's are finished first
/// ([`crate::wire::finished`]). See [`difference_exact`].
pub fn difference(expected: &[Frame], actual: &[Frame]) -> Difference {
    difference_exact(&crate::wire::finished(expected), actual)
}

/// Compares `actual` against `expected` by (bytes, original length), ignoring
/// order and timestamps: the hook and the packet socket see a packet at
/// slightly different moments, and ingress and egress can interleave.
pub fn difference_exact(expected: &[Frame], actual: &[Frame]) -> Difference {
    let mut counts: BTreeMap<(&[u8], u32), i64> = BTreeMap::new();
    for f in expected {
        *counts.entry((&f.data, f.orig_len)).or_default() += 1;
    }
    for f in actual {
        *counts.entry((&f.data, f.orig_len)).or_default() -= 1;
    }
    let mut diff = Difference::default();
    for ((data, len), n) in counts {
        for _ in 0..n.abs() {
            if n > 0 {
                diff.missing.push((data.to_vec(), len));
            } else {
                diff.extra.push((data.to_vec(), len));
            }
        }
    }
    diff
}

/// A short human description of a frame for failure messages.
pub fn describe(data: &[u8], orig_len: u32) -> String {
    let ethertype = data.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
    format!(
        "{} of {orig_len} bytes, ethertype {:04x?}, first bytes {:02x?}",
        data.len(),
        ethertype,
        &data[..data.len().min(48)]
    )
}
