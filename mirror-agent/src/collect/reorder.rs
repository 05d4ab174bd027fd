//! Puts packets back in capture-time order before the writer files them.
//!
//! Copies reach the collector out of the order they were captured in: each
//! listener has its own thread, an agent spreads flows over UDP lanes, and
//! several agents send at once. Where the tunnel carries the capture time
//! (GENEVE, ERSPAN III, pcapng streams) the packet's time is the sender's,
//! so writing in arrival order would leave a file whose times go backwards.
//! This buffer holds each packet for at most `window` (the longest a copy is
//! expected to take from hook to collector) and hands them out oldest
//! capture first, so a file is in time order as long as no copy is later
//! than that. A copy later than the window is still written, at once, and
//! counted (`late`).
//!
//! A packet is due once `window` has passed since the earlier of its time and
//! its arrival, so a sender whose clock runs ahead cannot hold packets back
//! for longer than one window. The buffer is bounded in bytes: past the
//! bound the oldest packets are handed out early.

use std::{cmp::Reverse, collections::BinaryHeap, time::Duration};

use super::writer::Packet;

struct Held {
    packet: Packet,
    /// Arrival order, so packets of one time keep the order they came in.
    seq: u64,
    due_ns: u64,
}

impl Held {
    fn key(&self) -> (u64, u64) {
        (self.packet.unix_ns, self.seq)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// The packets waiting for their turn, oldest capture time on top.
pub struct Reorder {
    window_ns: u64,
    max_bytes: usize,
    held: BinaryHeap<Reverse<Held>>,
    held_bytes: usize,
    seq: u64,
    /// Time of the last packet handed out, to count late ones.
    last_out_ns: u64,
    late: u64,
}

impl Reorder {
    /// `window` zero hands every packet out as it comes (arrival order).
    pub fn new(window: Duration, max_bytes: usize) -> Self {
        Self {
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            max_bytes,
            held: BinaryHeap::new(),
            held_bytes: 0,
            seq: 0,
            last_out_ns: 0,
            late: 0,
        }
    }

    /// Takes a packet that arrived at `now_ns` (Unix nanoseconds).
    pub fn push(&mut self, packet: Packet, now_ns: u64) {
        let due_ns = packet.unix_ns.min(now_ns).saturating_add(self.window_ns);
        self.held_bytes += packet.data.len();
        self.seq += 1;
        self.held.push(Reverse(Held {
            packet,
            seq: self.seq,
            due_ns,
        }));
    }

    /// The next packet due at `now_ns`, if any: the oldest one held, once its
    /// window has passed or the buffer is over its bound.
    pub fn pop_due(&mut self, now_ns: u64) -> Option<Packet> {
        let Reverse(top) = self.held.peek()?;
        if top.due_ns > now_ns && self.held_bytes <= self.max_bytes {
            return None;
        }
        self.pop()
    }

    /// How long until the oldest packet held is due, if one is held.
    pub fn wait(&self, now_ns: u64) -> Option<Duration> {
        let Reverse(top) = self.held.peek()?;
        Some(Duration::from_nanos(top.due_ns.saturating_sub(now_ns)))
    }

    /// Every packet held, oldest first, for when the receivers are gone.
    pub fn pop(&mut self) -> Option<Packet> {
        let Reverse(held) = self.held.pop()?;
        self.held_bytes -= held.packet.data.len();
        if held.packet.unix_ns < self.last_out_ns {
            self.late += 1;
        }
        self.last_out_ns = self.last_out_ns.max(held.packet.unix_ns);
        Some(held.packet)
    }

    /// Packets handed out with a time before one already handed out.
    pub fn late(&self) -> u64 {
        self.late
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const MS: u64 = 1_000_000;

    fn packet(unix_ns: u64, tag: u8) -> Packet {
        Packet {
            interface: Arc::from("x"),
            source: std::net::Ipv4Addr::LOCALHOST.into(),
            unix_ns,
            orig_len: 1,
            direction: None,
            data: vec![tag],
        }
    }

    fn tags(r: &mut Reorder, now_ns: u64) -> Vec<u8> {
        std::iter::from_fn(|| r.pop_due(now_ns))
            .map(|p| p.data[0])
            .collect()
    }

    #[test]
    fn hands_out_in_time_order_after_the_window() {
        let t = 1_000 * MS;
        let mut r = Reorder::new(Duration::from_millis(50), 1 << 20);
        r.push(packet(t + 2 * MS, 2), t + 3 * MS);
        r.push(packet(t, 0), t + 4 * MS);
        r.push(packet(t + 2 * MS, 3), t + 4 * MS);
        r.push(packet(t + MS, 1), t + 5 * MS);
        assert_eq!(tags(&mut r, t + 49 * MS), Vec::<u8>::new());
        assert_eq!(r.wait(t + 49 * MS), Some(Duration::from_millis(1)));
        assert_eq!(tags(&mut r, t + 51 * MS), vec![0, 1]);
        assert_eq!(tags(&mut r, t + 52 * MS), vec![2, 3]);
        assert_eq!(r.wait(t), None);
        // Later than the window: out at once, and counted.
        r.push(packet(t + MS / 2, 4), t + 60 * MS);
        assert_eq!(tags(&mut r, t + 60 * MS), vec![4]);
        assert_eq!(r.late(), 1);
    }

    #[test]
    fn a_clock_ahead_holds_one_window_at_most() {
        let now = 1_000 * MS;
        let mut r = Reorder::new(Duration::from_millis(50), 1 << 20);
        r.push(packet(now + 3_600_000 * MS, 9), now);
        assert_eq!(tags(&mut r, now + 49 * MS), Vec::<u8>::new());
        assert_eq!(tags(&mut r, now + 50 * MS), vec![9]);
    }

    #[test]
    fn over_its_bound_it_hands_out_early() {
        let now = 1_000 * MS;
        let mut r = Reorder::new(Duration::from_secs(10), 2);
        for i in 0..3 {
            r.push(packet(now + u64::from(i), i), now);
        }
        assert_eq!(tags(&mut r, now), vec![0]);
        assert_eq!(std::iter::from_fn(|| r.pop()).count(), 2);
    }

    #[test]
    fn no_window_keeps_arrival_order_of_equal_times() {
        let mut r = Reorder::new(Duration::ZERO, 1 << 20);
        for i in 0..4 {
            r.push(packet(7, i), 7);
        }
        assert_eq!(tags(&mut r, 7), vec![0, 1, 2, 3]);
    }
}
