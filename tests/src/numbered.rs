//! Numbered UDP datagrams sent at a steady 500 a second: restart and
//! sidecar tests count which sequence numbers a mirror missed, against
//! tcpdump's capture of the same stream.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};

use crate::{
    capture::Frame,
    netns::{Netns, join},
};

/// One datagram per this interval: a steady 500 per second.
pub const EVERY: Duration = Duration::from_millis(2);

/// Datagrams numbered from 0, from one namespace to a listener in another,
/// sent steadily until `finish`.
pub struct NumberedStream {
    stop: Arc<AtomicBool>,
    /// Datagrams sent so far.
    count: Arc<AtomicU32>,
    /// One past the highest number the listener has read.
    received: Arc<AtomicU32>,
    stop_receiving: Arc<AtomicBool>,
    sender: JoinHandle<Result<u32>>,
    receiver: JoinHandle<Result<()>>,
}

impl NumberedStream {
    /// Starts sending from `from` to `to`, where `to_ns` listens (so no ICMP
    /// port-unreachable joins the traffic).
    pub fn start(from: &Netns, to_ns: &Netns, to: SocketAddr) -> Result<Self> {
        Self::start_every(from, to_ns, to, EVERY)
    }

    /// As [`NumberedStream::start`], one datagram per `every`.
    pub fn start_every(
        from: &Netns,
        to_ns: &Netns,
        to: SocketAddr,
        every: Duration,
    ) -> Result<Self> {
        let socket = join(to_ns.spawn(move || Ok(UdpSocket::bind(to)?)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU32::new(0));
        let received = Arc::new(AtomicU32::new(0));
        let stop_receiving = Arc::new(AtomicBool::new(false));
        let (flag, upto) = (stop_receiving.clone(), received.clone());
        // Read as they come, so the socket's buffer never overflows and the
        // last number read says how far the stream has arrived.
        let receiver = thread::spawn(move || {
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            let mut buf = [0u8; 64];
            while !flag.load(Ordering::Relaxed) {
                if let Ok(4) = socket.recv(&mut buf) {
                    let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    upto.fetch_max(n.saturating_add(1), Ordering::Relaxed);
                }
            }
            Ok(())
        });
        let (flag, counter) = (stop.clone(), count.clone());
        let sender = from.spawn(move || {
            let sock = UdpSocket::bind(("0.0.0.0", 0))?;
            let mut n = 0u32;
            while !flag.load(Ordering::Relaxed) {
                sock.send_to(&n.to_be_bytes(), to)?;
                n += 1;
                counter.store(n, Ordering::Relaxed);
                thread::sleep(every);
            }
            Ok(n)
        });
        Ok(Self {
            stop,
            count,
            received,
            stop_receiving,
            sender,
            receiver,
        })
    }

    /// Waits until `more` datagrams have been sent from now on (a phase of
    /// a test lasts a number of packets, not a time a slow machine might
    /// fill with fewer).
    pub fn wait_for(&self, more: u32) {
        let target = self.count.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count.load(Ordering::Relaxed) < target {
            assert!(
                Instant::now() < deadline,
                "the stream did not send {more} datagrams within 30 s"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Datagrams sent so far: the next one is numbered this.
    pub fn sent(&self) -> u32 {
        self.count.load(Ordering::Relaxed)
    }

    /// Stops sending, and waits (at most 10 s) until the listener has read
    /// the last datagram: every one is then past the hooks on its way (the
    /// TC hooks run before the socket), and a mirror stopped after this has
    /// seen them all. How many were sent.
    pub fn finish(self) -> Result<u32> {
        self.stop.store(true, Ordering::Relaxed);
        let sent = join(self.sender);
        let received = self.received;
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Ok(n) = &sent
            && received.load(Ordering::Relaxed) < *n
            && Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(10));
        }
        self.stop_receiving.store(true, Ordering::Relaxed);
        join(self.receiver)?;
        let sent = sent?;
        let upto = received.load(Ordering::Relaxed);
        ensure!(
            upto >= sent,
            "the listener read up to datagram {upto} of {sent} within 10 s"
        );
        Ok(sent)
    }
}

/// How many times each sequence number sent to `port` is among `frames`.
pub fn sequence_numbers(frames: &[Frame], port: u16) -> BTreeMap<u32, u32> {
    let mut seen = BTreeMap::new();
    for f in frames {
        let Ok(p) = etherparse::SlicedPacket::from_ethernet(&f.data) else {
            continue;
        };
        let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
            continue;
        };
        if udp.destination_port() != port {
            continue;
        }
        if let Ok(n) = <[u8; 4]>::try_from(udp.payload()) {
            *seen.entry(u32::from_be_bytes(n)).or_insert(0) += 1;
        }
    }
    seen
}
