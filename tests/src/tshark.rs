//! tshark, Wireshark's dissectors, as an oracle we did not write: it judges
//! whether a capture of tunnel packets is well formed, reads header fields,
//! and finds where the innermost Ethernet frame starts.
//!
//! Everything read here comes from tshark's own output, never from the
//! agent's decoders, so a shared misreading of a format cannot hide a bug.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};

use crate::netns::run;

/// Per packet: for each field asked for, all its occurrences, outermost first.
pub type Row = HashMap<String, Vec<String>>;

/// The least severe expert info that makes a capture fail [`Tshark::assert_clean`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    /// The name in a display filter on `_ws.expert.severity`.
    fn filter_name(self) -> &'static str {
        match self {
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }

    /// The `-z expert,LEVEL` statistic listing items of this severity and worse.
    fn stat(self) -> &'static str {
        match self {
            Self::Warning => "expert,warn",
            Self::Error => "expert,error",
        }
    }
}

/// One packet as tshark dissected it: its bytes and where each Ethernet
/// header starts, outermost first.
#[derive(Clone, Debug)]
pub struct Dissected {
    pub frame: Vec<u8>,
    pub ethernet_at: Vec<usize>,
}

impl Dissected {
    /// The innermost Ethernet frame: its header and everything after it.
    pub fn inner(&self) -> &[u8] {
        &self.frame[self.ethernet_at.last().copied().unwrap_or(0)..]
    }
}

/// Packets of `file` whose IP, TCP or UDP checksum tshark, validating them,
/// finds wrong; among those the display filter `only` selects (`""`: all).
pub fn bad_checksums(file: impl AsRef<Path>, only: &str) -> Result<usize> {
    let bad = "(ip.checksum.status == 0 || tcp.checksum.status == 0 || udp.checksum.status == 0)";
    let filter = if only.is_empty() {
        bad.to_owned()
    } else {
        format!("{bad} && ({only})")
    };
    Ok(Tshark::new(file)
        .check_checksums(&["ip", "tcp", "udp"])
        .run(&["-Y", &filter])?
        .lines()
        .count())
}

/// A capture file read through tshark.
pub struct Tshark {
    file: PathBuf,
    prefs: Vec<String>,
}

/// Fails with a clear message unless tshark is installed: a test that needs
/// it must never pass by skipping.
pub fn require() {
    let found = Command::new("tshark").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "tshark is required for these tests and was not found: install it \
         (`cargo xtask setup`, or `apt-get install tshark`)"
    );
}

impl Tshark {
    pub fn new(file: impl AsRef<Path>) -> Self {
        require();
        Self {
            file: file.as_ref().to_path_buf(),
            prefs: Vec::new(),
        }
    }

    /// Turns on checksum validation for `protocols` (`ip`, `udp`, `tcp`):
    /// tshark leaves it off by default, and would then pass a bad checksum.
    pub fn check_checksums(mut self, protocols: &[&str]) -> Self {
        self.prefs
            .extend(protocols.iter().map(|p| format!("{p}.check_checksum:TRUE")));
        self
    }

    /// `tshark -n -r FILE` with the preferences and `args`; its standard output.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new("tshark");
        cmd.arg("-n").arg("-r").arg(&self.file);
        // The test traffic's payloads are arbitrary bytes: a dissector that
        // claims a port our sockets may get by chance would call them
        // malformed (Hotline's HCrt owns UDP 47000, in the ephemeral range).
        cmd.args(["--disable-protocol", "hcrt"]);
        for p in &self.prefs {
            cmd.args(["-o", p]);
        }
        run(cmd.args(args))
    }

    /// Field values per packet, every packet of the file in order.
    pub fn fields(&self, names: &[&str]) -> Result<Vec<Row>> {
        let mut args = vec!["-T", "fields", "-E", "separator=\t", "-E", "occurrence=a"];
        args.extend(["-E", "aggregator=|"]);
        for n in names {
            args.extend(["-e", n]);
        }
        Ok(self
            .run(&args)?
            .lines()
            .map(|line| {
                names
                    .iter()
                    .zip(line.split('\t'))
                    .map(|(n, v)| {
                        let vals = v.split('|').filter(|s| !s.is_empty()).map(String::from);
                        (n.to_string(), vals.collect())
                    })
                    .collect()
            })
            .collect())
    }

    /// Fails, showing what tshark said, if any packet is malformed or carries
    /// expert info of severity `worst_allowed_below` or worse.
    pub fn assert_clean(&self, worst_allowed_below: Severity) {
        // `-z expert,LEVEL` lists items ("Errors (n)", "Warns (n)") after the
        // packets. It needs `-V` beside it: with `-q` alone tshark 4.0 builds
        // no protocol tree and misses the expert items dissectors add only to
        // a tree, such as a GENEVE option running past Opt Len.
        let verbose = self
            .run(&["-V", "-z", worst_allowed_below.stat()])
            .expect("tshark -V runs");
        // On failure, show only the packets at fault, dissected in full: a
        // whole file's dissection is cut short in CI's log before them.
        let filter = format!(
            "_ws.malformed || _ws.expert.severity >= {}",
            worst_allowed_below.filter_name()
        );
        let at_fault = || {
            self.run(&["-V", "-Y", &filter])
                .unwrap_or_else(|e| format!("(tshark -Y failed: {e:#})"))
        };
        if verbose.contains("Malformed") {
            panic!("tshark reports a malformed packet:\n{}", at_fault());
        }
        let listed = match worst_allowed_below {
            Severity::Warning => ["Errors (", "Warns ("].as_slice(),
            Severity::Error => ["Errors ("].as_slice(),
        };
        if let Some(l) = listed.iter().find(|l| verbose.contains(**l)) {
            let summary = verbose.rfind(l).map_or("", |at| &verbose[at..]);
            panic!(
                "tshark reports expert info at {worst_allowed_below:?} level or worse:\n{summary}\n{}",
                at_fault()
            );
        }
        // The same through a display filter, which always builds the tree.
        let flagged = self.run(&["-Y", &filter]).expect("tshark -Y runs");
        assert!(
            flagged.trim().is_empty(),
            "tshark flags packets ({filter}):\n{}",
            at_fault()
        );
    }

    /// Every packet's bytes and the positions of its Ethernet headers, from
    /// tshark's JSON with raw bytes (`-x`): `frame_raw` holds the whole
    /// frame, and each `eth_raw` the header's bytes and position.
    pub fn ethernet_layers(&self) -> Result<Vec<Dissected>> {
        let json = self.run(&["-T", "json", "-x", "-j", "eth"])?;
        parse_ethernet_layers(&json)
    }
}

/// Reads tshark's pretty-printed JSON line by line (the tests have no JSON
/// parser, and its layers repeat keys such as `eth_raw` anyway): a raw
/// field is its key's line, then the hex string, then the position.
fn parse_ethernet_layers(json: &str) -> Result<Vec<Dissected>> {
    let mut packets: Vec<Dissected> = Vec::new();
    let mut lines = json.lines().map(str::trim);
    let hex = |line: Option<&str>| -> Result<Vec<u8>> {
        let s = line
            .context("JSON ends inside a raw field")?
            .trim_end_matches(',')
            .trim_matches('"');
        ensure!(s.len() % 2 == 0, "odd hex string {s}");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("hex digit"))
            .collect()
    };
    while let Some(line) = lines.next() {
        match line {
            r#""frame_raw": ["# => packets.push(Dissected {
                frame: hex(lines.next())?,
                ethernet_at: Vec::new(),
            }),
            r#""eth_raw": ["# => {
                let header = hex(lines.next())?;
                let pos: usize = lines
                    .next()
                    .context("JSON ends inside eth_raw")?
                    .trim_end_matches(',')
                    .parse()
                    .context("eth_raw position")?;
                let Some(packet) = packets.last_mut() else {
                    bail!("eth_raw before any frame_raw");
                };
                // The position must index the frame itself, not some
                // reassembled buffer: the header bytes must be there.
                ensure!(
                    packet.frame.get(pos..pos + header.len()) == Some(&header[..]),
                    "eth_raw at {pos} is not in frame {}",
                    packets.len()
                );
                packet.ethernet_at.push(pos);
            }
            _ => {}
        }
    }
    Ok(packets)
}
