use std::time::Duration;

use super::*;
use crate::{
    collect::queue::{QueueRx, queue},
    export::pcapng::read::tests::{agent_stream, collect},
};

/// Hands out its bytes `step` at a time, then ends.
struct Trickle {
    bytes: Vec<u8>,
    at: usize,
    step: usize,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let end = (self.at + self.step).min(self.bytes.len());
        let n = (end - self.at).min(buf.remaining());
        let at = self.at;
        buf.put_slice(&self.bytes[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(()))
    }
}

fn shared(limits: StreamLimits) -> (Shared, QueueRx) {
    let (tx, rx) = queue(1 << 20);
    let shared = Shared {
        wrap: Wrap::Plain,
        limits,
        stats: Arc::new(ListenerStats::new("tcp://127.0.0.1:1".into())),
        packets: tx,
    };
    (shared, rx)
}

fn run_serve(bytes: Vec<u8>, step: usize) -> (u64, Shared, Vec<Packet>) {
    let (shared, rx) = shared(StreamLimits::default());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let peer: SocketAddr = "198.18.0.7:4000".parse().unwrap();
    let io = Trickle { bytes, at: 0, step };
    let n = rt.block_on(serve(io, peer, &shared));
    let mut got = Vec::new();
    while let Ok(p) = rx.recv_timeout(Duration::from_millis(10)) {
        got.push(p);
    }
    (n, shared, got)
}

#[test]
fn any_split_of_the_stream_decodes_as_the_blocking_reader_does() {
    let stream = agent_stream();
    let (seen, end) = collect(&stream);
    end.unwrap();
    // The packets, as "interface unix_ns orig_len direction caplen".
    let expected: Vec<&String> = seen
        .iter()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(expected.len(), 2);
    for step in [1, 3, 7, 64, stream.len()] {
        let (n, shared, got) = run_serve(stream.clone(), step);
        assert_eq!(n as usize, expected.len(), "step {step}");
        assert_eq!(got.len(), expected.len());
        assert_eq!(&*got[0].interface, "198.18.0.7/veth-b");
        for (p, line) in got.iter().zip(&expected) {
            assert!(line.ends_with(&format!(" {}", p.data.len())), "{line}");
        }
        assert_eq!(shared.stats.errors(Reason::Short), 0);
    }
}

#[test]
fn a_stream_cut_inside_a_block_is_short_and_a_bad_length_is_garbled() {
    let stream = agent_stream();
    let (_, shared, _) = run_serve(stream[..stream.len() - 3].to_vec(), 5);
    assert_eq!(shared.stats.errors(Reason::Short), 1);
    let mut bad = agent_stream();
    bad[4] = 13;
    let (n, shared, _) = run_serve(bad, 2);
    assert_eq!(n, 0);
    assert_eq!(shared.stats.errors(Reason::Garbled), 1);
}
