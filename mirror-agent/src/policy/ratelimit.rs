//! A policy's `rateLimit`: token buckets for packets and bytes per second,
//! each holding at most one second's worth, clocked by the records' own
//! kernel timestamps (no clock read per packet, and exact under replay).

use std::num::NonZeroU64;

use crate::policy::RateLimit;

const NS_PER_SEC: u128 = 1_000_000_000;

#[derive(Debug)]
struct Bucket {
    per_sec: u64,
    /// Tokens scaled by 10^9, so refills need no floating point.
    nano_tokens: u128,
    last_ns: u64,
}

impl Bucket {
    fn new(per_sec: NonZeroU64) -> Self {
        let per_sec = per_sec.get();
        Self {
            per_sec,
            nano_tokens: u128::from(per_sec) * NS_PER_SEC,
            last_ns: 0,
        }
    }

    fn refill(&mut self, now_ns: u64) {
        let full = u128::from(self.per_sec) * NS_PER_SEC;
        if self.last_ns == 0 {
            self.last_ns = now_ns;
        }
        let elapsed = u128::from(now_ns.saturating_sub(self.last_ns));
        self.nano_tokens = (self.nano_tokens + elapsed * u128::from(self.per_sec)).min(full);
        self.last_ns = self.last_ns.max(now_ns);
    }

    fn has(&self, cost: u64) -> bool {
        self.nano_tokens >= u128::from(cost) * NS_PER_SEC
    }

    fn take(&mut self, cost: u64) {
        self.nano_tokens -= u128::from(cost) * NS_PER_SEC;
    }
}

/// Packets and bytes buckets; a packet passes only if both have room.
#[derive(Debug)]
pub struct RateLimiter {
    packets: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl RateLimiter {
    /// `None` when the limit is unlimited in both dimensions.
    pub fn new(limit: &RateLimit) -> Option<Self> {
        let packets = limit.packets_per_second.map(Bucket::new);
        let bytes = limit.bytes_per_second.map(Bucket::new);
        (packets.is_some() || bytes.is_some()).then_some(Self { packets, bytes })
    }

    /// Whether a packet of `len` original bytes seen at `now_ns` may pass.
    pub fn allow(&mut self, now_ns: u64, len: u32) -> bool {
        let len = u64::from(len);
        for (bucket, _) in [(&mut self.packets, 1), (&mut self.bytes, len)] {
            if let Some(b) = bucket {
                b.refill(now_ns);
            }
        }
        let ok = self.packets.as_ref().is_none_or(|b| b.has(1))
            && self.bytes.as_ref().is_none_or(|b| b.has(len));
        if ok {
            if let Some(b) = &mut self.packets {
                b.take(1);
            }
            if let Some(b) = &mut self.bytes {
                b.take(len);
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(pps: u64, bps: u64) -> RateLimit {
        RateLimit {
            packets_per_second: NonZeroU64::new(pps),
            bytes_per_second: NonZeroU64::new(bps),
        }
    }

    #[test]
    fn unlimited_is_none() {
        assert!(RateLimiter::new(&limit(0, 0)).is_none());
    }

    #[test]
    fn packets_per_second_over_three_seconds() {
        let mut r = RateLimiter::new(&limit(100, 0)).expect("limited");
        // 10 000 packets evenly over 3 s: a burst of 100, then 100 per second.
        let passed = (0..10_000u64)
            .filter(|i| r.allow(1 + i * 300_000, 64))
            .count();
        assert!((399..=401).contains(&passed), "{passed}");
    }

    #[test]
    fn bytes_bound_large_packets() {
        let mut r = RateLimiter::new(&limit(0, 10_000)).expect("limited");
        // 1000-byte packets every millisecond for 2 s: 10 kB burst + 10 kB/s.
        let passed = (0..2000u64)
            .filter(|i| r.allow(1 + i * 1_000_000, 1000))
            .count();
        assert!((29..=31).contains(&passed), "{passed}");
    }
}
