//! The soak's traffic: 64-byte UDP frames at a steady rate from a thread
//! of the client namespace, one the soak can stop at once, whatever happens.

use std::{
    net::UdpSocket,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use testbed::netns::{Netns, join};

use crate::bench::topology::{CLIENT_V4, SERVER_V4, UDP_SINK_PORT};

/// 64-byte Ethernet frames: 14 + 20 IPv4 + 8 UDP + 22, as the bench's trafgen.
const UDP_PAYLOAD: usize = 22;

/// 64-byte UDP frames client -> server's sink at a steady rate, from a
/// thread in the client namespace, until stopped (or dropped).
pub(super) struct UdpSender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<Result<()>>>,
}

impl UdpSender {
    pub(super) fn start(client: &Netns, pps: u64) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let (s, n, e) = (Arc::clone(&stop), Arc::clone(&sent), Arc::clone(&errors));
        let thread = client.spawn(move || {
            let sock = UdpSocket::bind((CLIENT_V4, 0)).context("binding the UDP sender")?;
            sock.connect((SERVER_V4, UDP_SINK_PORT))
                .context("connecting the UDP sender")?;
            let payload = [0x5au8; UDP_PAYLOAD];
            let rate = pps as f64;
            // Never more than 10 ms of traffic at once to catch up after a
            // scheduling hiccup: the rate stays steady, not bursty.
            let max_behind = (rate / 100.0).max(1.0) as u64;
            let start = Instant::now();
            let mut slots = 0u64;
            while !s.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                slots = slots.max(due.saturating_sub(max_behind));
                while slots < due {
                    slots += 1;
                    match sock.send(&payload) {
                        Ok(_) => n.fetch_add(1, Ordering::Relaxed),
                        Err(_) => e.fetch_add(1, Ordering::Relaxed),
                    };
                }
                thread::sleep(Duration::from_millis(1));
            }
            Ok(())
        });
        let mut sender = Self {
            stop,
            sent,
            errors,
            thread: Some(thread),
        };
        sender.check()?;
        Ok(sender)
    }

    pub(super) fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Fails if the sender thread ended: it only ends early on an error.
    pub(super) fn check(&mut self) -> Result<()> {
        if let Some(t) = self.thread.take_if(|t| t.is_finished()) {
            join(t).context("the UDP sender")?;
            bail!("the UDP sender stopped early");
        }
        Ok(())
    }

    /// Stops it; returns `(datagrams sent, send errors)`.
    pub(super) fn stop(mut self) -> Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            join(t).context("the UDP sender")?;
        }
        Ok((self.sent(), self.errors.load(Ordering::Relaxed)))
    }
}

impl Drop for UdpSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
