//! pcap-filter expressions (`tcp port 443`, `vlan and udp`), compiled by
//! libpcap itself through the `pcap` crate, so they mean exactly what they
//! mean to tcpdump: no parser of our own.
//!
//! How it runs: libpcap compiles the expression for Ethernet (a dead capture
//! handle, as `tcpdump -r` on an Ethernet file) with optimisation on, and
//! libpcap's own BPF interpreter, `bpf_filter`, runs it on each record.
//!
//! Truncated records (snaplen): the program sees the captured bytes and the
//! original length, as tcpdump run with `-s SNAPLEN` does. Length tests
//! (`greater`, `less`, `len`) use the original length. A test that reads a
//! byte past the captured ones makes the whole expression false, even under
//! `not` (`not tcp port 80` drops a packet cut before its ports): that is
//! BPF's rule, and tcpdump's.
//!
//! Host and port names (`host example.org`, `port https`) are resolved once,
//! when the expression is compiled, as tcpdump does. `ip broadcast` and
//! `ip multicast`-style tests that need an interface netmask fail to compile,
//! as with `tcpdump -r`.

use std::ffi::{c_uchar, c_uint, c_void};

use pcap::{BpfProgram, Capture, Linktype};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PcapFilterError {
    /// libpcap's message, verbatim (`syntax error in filter expression: ...`).
    #[error("{0}")]
    Compile(String),
    #[error("the expression contains a NUL byte")]
    Nul,
    #[error("libpcap could not open a capture handle to compile with: {0}")]
    Handle(String),
}

/// A compiled expression. `Send`, not `Sync` (libpcap's program is plain
/// memory, but the binding does not promise more): each thread compiles its own.
pub struct PcapFilter {
    program: BpfProgram,
    expression: String,
}

impl std::fmt::Debug for PcapFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PcapFilter").field(&self.expression).finish()
    }
}

// `bpf_filter` is libpcap's public interpreter (pcap/bpf.h). The `pcap`
// crate's `BpfProgram::filter(&[u8])` calls it with the original length set
// to the captured length, which would make `greater 1000` false for every
// packet cut to 128 bytes; this passes both lengths.
#[link(name = "pcap")]
unsafe extern "C" {
    fn bpf_filter(
        pc: *const c_void,
        packet: *const c_uchar,
        wirelen: c_uint,
        buflen: c_uint,
    ) -> c_uint;
}

// The pointer handed to `bpf_filter` is the `pcap` crate's instruction slice:
// `BpfInstruction` is `#[repr(transparent)]` over libpcap's `struct bpf_insn`
// (u16 code, u8 jt, u8 jf, u32 k). Guard the size, so a layout change
// fails the build rather than the filter.
const _: () = assert!(std::mem::size_of::<pcap::BpfInstruction>() == 8);

impl PcapFilter {
    /// Compiles `expression` as tcpdump would for an Ethernet capture. The
    /// empty expression accepts everything.
    pub fn compile(expression: &str) -> Result<Self, PcapFilterError> {
        if expression.contains('\0') {
            return Err(PcapFilterError::Nul);
        }
        // The `pcap` crate opens dead handles with snaplen 65535, not 262144:
        // the snaplen only sets the "accept" return value, never which
        // packets match, and `bpf_filter` below is given the real lengths.
        let capture = Capture::dead(Linktype::ETHERNET)
            .map_err(|e| PcapFilterError::Handle(e.to_string()))?;
        let program = capture.compile(expression, true).map_err(|e| match e {
            pcap::Error::PcapError(message) => PcapFilterError::Compile(message),
            pcap::Error::InvalidInputString => PcapFilterError::Nul,
            other => PcapFilterError::Compile(other.to_string()),
        })?;
        Ok(Self {
            program,
            expression: expression.to_owned(),
        })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Whether the expression accepts a frame: `frame` is the captured
    /// bytes, `orig_len` the length on the wire (at least `frame.len()`).
    pub fn matches(&self, frame: &[u8], orig_len: u32) -> bool {
        let program = self.program.get_instructions();
        if program.is_empty() {
            return false;
        }
        let caplen = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        // SAFETY: `program` is a non-empty, valid program from pcap_compile,
        // laid out as `struct bpf_insn` (see the assertion above) and alive
        // for the call. `bpf_filter` reads at most `caplen` bytes of `frame`,
        // which has that many, and checks every load against it.
        let result = unsafe {
            bpf_filter(
                program.as_ptr().cast(),
                frame.as_ptr(),
                orig_len.max(caplen),
                caplen,
            )
        };
        result != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 + TCP SYN from 198.18.0.1:40000 to 198.18.0.2:443,
    /// claiming a 1500-byte packet.
    fn syn_443() -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45, 0, 0x05, 0xc8, 0, 0, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        f.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0]);
        f.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    #[test]
    fn compiles_and_matches() {
        let f = PcapFilter::compile("tcp dst port 443 and tcp[tcpflags] & tcp-syn != 0")
            .expect("valid");
        let frame = syn_443();
        assert!(f.matches(&frame, frame.len() as u32));
        assert!(
            !PcapFilter::compile("udp")
                .expect("valid")
                .matches(&frame, 54)
        );
        assert!(PcapFilter::compile("").expect("empty").matches(&frame, 54));
        assert_eq!(
            f.expression(),
            "tcp dst port 443 and tcp[tcpflags] & tcp-syn != 0"
        );
    }

    #[test]
    fn length_tests_use_the_original_length() {
        let f = PcapFilter::compile("greater 1000").expect("valid");
        let frame = syn_443();
        assert!(
            f.matches(&frame, 1514),
            "a cut 1514-byte frame is greater than 1000"
        );
        assert!(!f.matches(&frame, frame.len() as u32));
    }

    #[test]
    fn loads_past_the_capture_reject_even_under_not() {
        let f = PcapFilter::compile("not tcp port 80").expect("valid");
        let frame = syn_443();
        assert!(f.matches(&frame, 1514));
        assert!(!f.matches(&frame[..36], 1514), "ports not captured");
    }

    #[test]
    fn errors_are_libpcap_messages() {
        // libpcap 1.10 says "can't parse filter expression: syntax error",
        // older ones "syntax error in filter expression: ...".
        let e = PcapFilter::compile("tcp port").expect_err("incomplete");
        assert!(e.to_string().contains("syntax error"), "{e}");
        let e = PcapFilter::compile("tcp port 70000").expect_err("bad port");
        assert!(e.to_string().contains("70000"), "{e}");
        assert_eq!(
            PcapFilter::compile("tcp\0").map(|_| ()),
            Err(PcapFilterError::Nul)
        );
    }
}
