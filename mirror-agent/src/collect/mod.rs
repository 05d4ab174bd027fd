//! The collector (`mirror-agent collect`, wired in `cmd::collect`): receive mirrored packets from many agents at once
//! (VXLAN, GENEVE, GRE/TEB, ERSPAN II and III, pcapng streams over TCP),
//! decapsulate them and write rotating pcapng files, one series per sender,
//! one interface block per (agent, interface), named so a person sees the
//! node and the pod.
//!
//! Threads: one per listener decodes (a stream listener runs its
//! connections as tasks on its own single-threaded runtime, see `tcp.rs`),
//! one writer owns the files, and the main thread waits for SIGINT or
//! SIGTERM. Receivers hand packets to the writer over a queue bounded in
//! bytes (`queue.rs`): when the disk is slower than the network, UDP
//! receivers wait and the kernel's socket buffers absorb (then drop) the
//! excess, and TCP pushes back on the agents, whose queues count what they
//! drop.
//!
//! Foreign, short or garbled input is counted per listener and reason, the
//! first of each logged, and skipped; the decoders never panic (each has a
//! `cargo fuzz` target in `mirror-agent/fuzz`).

pub mod datagram;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod queue;
pub mod receive;
pub mod reorder;
pub mod retention;
pub mod stats;
pub mod stream;
pub mod tcp;
pub mod writer;

use std::{fmt, net::TcpListener, path::PathBuf, str::FromStr};

use self::{datagram::Tunnel, listen::Listen, receive::DatagramSocket};

/// `--output pcapng:DIR`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputDir(pub PathBuf);

impl FromStr for OutputDir {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("pcapng:") {
            Some("-") => Err("the collector writes rotating files: give a directory, not -".into()),
            Some(dir) if !dir.is_empty() => Ok(Self(PathBuf::from(dir))),
            _ => Err(format!(
                "expected pcapng:DIR, a directory for rotating pcapng files, not '{s}'"
            )),
        }
    }
}

impl fmt::Display for OutputDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pcapng:{}", self.0.display())
    }
}

/// A bound listener, before its thread starts.
pub enum Bound {
    Datagram(DatagramSocket),
    Stream(TcpListener, tcp::Wrap),
}

pub fn bind(listen: &Listen) -> std::io::Result<Bound> {
    Ok(match listen {
        Listen::Vxlan(a) => Bound::Datagram(receive::bind_udp(*a, Tunnel::Vxlan)?),
        Listen::Geneve(a) => Bound::Datagram(receive::bind_udp(*a, Tunnel::Geneve)?),
        Listen::Gre(a) => Bound::Datagram(receive::bind_gre(*a)?),
        Listen::Tcp(a) => Bound::Stream(tcp::bind(*a)?, tcp::Wrap::Plain),
        Listen::Tls(a, files) => {
            // Files first: a bad certificate is refused before anything listens.
            let config = crate::export::tls::server_config(&files.ca, &files.cert, &files.key)
                .map_err(std::io::Error::other)?;
            let wrap = tcp::Wrap::Tls(tokio_rustls::TlsAcceptor::from(config));
            Bound::Stream(tcp::bind(*a)?, wrap)
        }
    })
}
