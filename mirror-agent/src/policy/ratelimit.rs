//! A policy's `rateLimit`: packets and bytes per second, each with a burst,
//! enforced by the hook before a copy takes ring space (a
//! `mirror_common::Budget` per policy, which [`RateLimit::budget`] makes).
//! An administrator's ceiling (a `MirrorCollector`'s `maxRateLimit`) caps
//! it with [`RateLimit::within`].

use std::num::NonZeroU64;

use mirror_common::{BUDGET_UNIT_SHIFT, Bucket, Budget};

use super::{error::Problem, spec::RateLimitSpec};

/// Most packets per second a budget takes: one per nanosecond, the hook's
/// clock tick.
pub const MAX_PACKETS_PER_SECOND: u64 = 1_000_000_000;
/// Most bytes per second a budget takes (8 Tbit/s), so that the hook's
/// `cost * 10^9 + rate` never overflows.
pub const MAX_BYTES_PER_SECOND: u64 = 1_000_000_000_000;
/// A burst holds at most this many seconds' worth, so the bucket's depth in
/// nanoseconds stays far from overflowing.
pub const MAX_BURST_SECONDS: u64 = 3600;

/// One dimension's limit: a rate, and the burst the bucket holds (by
/// default one second's worth).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    pub per_second: NonZeroU64,
    pub burst: NonZeroU64,
}

impl Limit {
    fn bucket(self) -> Bucket {
        const NS_PER_SEC: u128 = 1_000_000_000;
        let rate = u128::from(self.per_second.get());
        let burst = self.burst.get();
        let ns_per_unit = (NS_PER_SEC << BUDGET_UNIT_SHIFT).div_ceil(rate);
        let ns_per_unit = u64::try_from(ns_per_unit).unwrap_or(u64::MAX);
        Bucket {
            ns_per_unit,
            // The hook multiplies a cost of at most `burst` by `ns_per_unit`:
            // MAX_BURST_SECONDS keeps that within 64 bits (about 2^62 at
            // most); should it not, the burst gives way, not the arithmetic.
            burst: burst.min(u64::MAX / ns_per_unit),
            // Bounded by MAX_BURST_SECONDS when parsed; saturate regardless.
            depth_ns: u64::try_from(u128::from(burst) * NS_PER_SEC / rate).unwrap_or(u64::MAX / 4),
            tat_ns: 0,
        }
    }

    /// The lower of the two, rate and burst each.
    fn min(self, other: Self) -> Self {
        Self {
            per_second: self.per_second.min(other.per_second),
            burst: self.burst.min(other.burst),
        }
    }
}

/// A rate limit; `None` in a dimension is no limit there (written as 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateLimit {
    pub packets: Option<Limit>,
    pub bytes: Option<Limit>,
}

/// A rate limit under a ceiling, and whether the ceiling lowered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capped {
    pub limit: RateLimit,
    pub capped: bool,
}

impl RateLimit {
    pub fn is_unlimited(&self) -> bool {
        self.packets.is_none() && self.bytes.is_none()
    }

    /// Validates a spec; the error names the field under `rateLimit`.
    pub fn from_spec(spec: &RateLimitSpec) -> Result<Self, (&'static str, Problem)> {
        Ok(Self {
            packets: dimension(
                spec.packets_per_second,
                spec.packets_burst,
                MAX_PACKETS_PER_SECOND,
                ("packetsPerSecond", "packetsBurst"),
            )?,
            bytes: dimension(
                spec.bytes_per_second,
                spec.bytes_burst,
                MAX_BYTES_PER_SECOND,
                ("bytesPerSecond", "bytesBurst"),
            )?,
        })
    }

    /// This limit under `ceiling`: in each dimension the ceiling limits,
    /// the lower rate and the lower burst; a dimension this one leaves
    /// unlimited gets the ceiling's.
    pub fn within(self, ceiling: &RateLimit) -> Capped {
        let cap = |mine: Option<Limit>, max: Option<Limit>| match (mine, max) {
            (m, None) => m,
            (None, Some(max)) => Some(max),
            (Some(m), Some(max)) => Some(m.min(max)),
        };
        let limit = Self {
            packets: cap(self.packets, ceiling.packets),
            bytes: cap(self.bytes, ceiling.bytes),
        };
        Capped {
            limit,
            capped: limit != self,
        }
    }

    /// The spec that reads back as this limit.
    pub fn to_spec(&self) -> RateLimitSpec {
        let rate = |l: Option<Limit>| l.map_or(0, |l| l.per_second.get());
        let burst = |l: Option<Limit>| l.map_or(0, |l| l.burst.get());
        RateLimitSpec {
            packets_per_second: rate(self.packets),
            packets_burst: burst(self.packets),
            bytes_per_second: rate(self.bytes),
            bytes_burst: burst(self.bytes),
        }
    }

    /// The hook's budget: its buckets full.
    pub fn budget(&self) -> Budget {
        let bucket = |l: Option<Limit>| l.map(Limit::bucket).unwrap_or_default();
        Budget {
            limited: u32::from(!self.is_unlimited()),
            _pad: 0,
            packets: bucket(self.packets),
            bytes: bucket(self.bytes),
        }
    }
}

impl std::fmt::Display for RateLimit {
    /// As the spec writes it: `packetsPerSecond 1000 (burst 1000)`, ...
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (name, l) in [("packets", self.packets), ("bytes", self.bytes)] {
            if let Some(l) = l {
                parts.push(format!(
                    "{name}PerSecond {} ({name}Burst {})",
                    l.per_second, l.burst
                ));
            }
        }
        if parts.is_empty() {
            f.write_str("no limit")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

fn dimension(
    rate: u64,
    burst: u64,
    max: u64,
    (rate_field, burst_field): (&'static str, &'static str),
) -> Result<Option<Limit>, (&'static str, Problem)> {
    let Some(per_second) = NonZeroU64::new(rate) else {
        if burst != 0 {
            return Err((burst_field, Problem::BurstWithoutRate(rate_field)));
        }
        return Ok(None);
    };
    if rate > max {
        return Err((rate_field, Problem::RateTooHigh { value: rate, max }));
    }
    let burst = NonZeroU64::new(burst).unwrap_or(per_second);
    let most = rate.saturating_mul(MAX_BURST_SECONDS);
    if burst.get() > most {
        return Err((
            burst_field,
            Problem::BurstTooLarge {
                value: burst.get(),
                rate_field,
                most,
            },
        ));
    }
    Ok(Some(Limit { per_second, burst }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pps: u64, pb: u64, bps: u64, bb: u64) -> RateLimitSpec {
        RateLimitSpec {
            packets_per_second: pps,
            packets_burst: pb,
            bytes_per_second: bps,
            bytes_burst: bb,
        }
    }

    fn limit(rate: u64, burst: u64) -> Option<Limit> {
        Some(Limit {
            per_second: NonZeroU64::new(rate)?,
            burst: NonZeroU64::new(burst)?,
        })
    }

    #[test]
    fn bursts_default_to_one_seconds_worth() {
        let l = RateLimit::from_spec(&spec(100, 0, 5000, 20_000)).expect("valid");
        assert_eq!(l.packets, limit(100, 100));
        assert_eq!(l.bytes, limit(5000, 20_000));
        assert_eq!(RateLimit::from_spec(&l.to_spec()), Ok(l));
        assert!(
            RateLimit::from_spec(&RateLimitSpec::default())
                .expect("valid")
                .is_unlimited()
        );
    }

    #[test]
    fn a_burst_without_a_rate_or_too_large_is_refused() {
        let err = |s| RateLimit::from_spec(&s).expect_err("refused");
        let (field, problem) = err(spec(0, 10, 0, 0));
        assert_eq!(
            format!("{field}: {problem}"),
            "packetsBurst: a burst needs packetsPerSecond (0 or absent is no limit, which has no \
             burst)"
        );
        let (field, problem) = err(spec(0, 0, 0, 1500));
        assert_eq!(field, "bytesBurst");
        assert!(problem.to_string().contains("bytesPerSecond"), "{problem}");
        let (field, problem) = err(spec(10, 36_001, 0, 0));
        assert_eq!(
            format!("{field}: {problem}"),
            "packetsBurst: 36001 is more than an hour's worth at packetsPerSecond (36000)"
        );
        let (field, problem) = err(spec(0, 0, MAX_BYTES_PER_SECOND + 1, 0));
        assert_eq!(
            format!("{field}: {problem}"),
            "bytesPerSecond: 1000000000001 is more than a budget takes (1000000000000)"
        );
    }

    #[test]
    fn a_ceiling_lowers_each_dimension_and_fills_the_unlimited_ones() {
        let ceiling = RateLimit {
            packets: limit(1000, 2000),
            bytes: None,
        };
        // Asking for nothing gets the ceiling.
        let got = RateLimit::default().within(&ceiling);
        assert_eq!((got.limit, got.capped), (ceiling, true));
        // Asking for more gets the ceiling's rate, and the lower burst.
        let asked = RateLimit {
            packets: limit(5000, 1500),
            bytes: limit(1_000_000, 1_000_000),
        };
        let got = asked.within(&ceiling);
        assert!(got.capped);
        assert_eq!(got.limit.packets, limit(1000, 1500));
        assert_eq!(
            got.limit.bytes, asked.bytes,
            "the ceiling sets no bytes limit"
        );
        // Asking for less is left alone.
        let asked = RateLimit {
            packets: limit(10, 10),
            bytes: None,
        };
        assert_eq!(
            asked.within(&ceiling),
            Capped {
                limit: asked,
                capped: false
            }
        );
        // No ceiling changes nothing.
        assert!(!asked.within(&RateLimit::default()).capped);
    }

    #[test]
    fn the_budget_holds_the_burst_as_time() {
        let b = RateLimit {
            packets: limit(1000, 250),
            bytes: None,
        }
        .budget();
        assert_eq!(b.limited, 1);
        // 250 packets at 1 ms each.
        assert_eq!(
            (b.packets.ns_per_unit, b.packets.burst, b.packets.depth_ns),
            (1_000_000 << BUDGET_UNIT_SHIFT, 250, 250_000_000)
        );
        assert_eq!(b.bytes, Bucket::default());
        assert_eq!(RateLimit::default().budget(), Budget::default());
    }

    /// The hook's cost of `units`, as mirror-ebpf/src/budget.rs computes it.
    fn hook_ns(b: &Bucket, units: u64) -> Option<u64> {
        let product = units.checked_mul(b.ns_per_unit)?;
        Some(product.div_ceil(1 << BUDGET_UNIT_SHIFT))
    }

    #[test]
    fn the_hooks_multiplication_never_passes_more_than_the_rate_nor_overflows() {
        for (rate, most) in [
            (1, MAX_PACKETS_PER_SECOND),
            (7, MAX_PACKETS_PER_SECOND),
            (1000, MAX_PACKETS_PER_SECOND),
            (MAX_PACKETS_PER_SECOND, MAX_PACKETS_PER_SECOND),
            (1_250_000_000, MAX_BYTES_PER_SECOND),
            (MAX_BYTES_PER_SECOND, MAX_BYTES_PER_SECOND),
        ] {
            assert!(rate <= most);
            let burst = rate * MAX_BURST_SECONDS;
            let b = limit(rate, burst).expect("a limit").bucket();
            assert_eq!(b.burst, burst, "rate {rate}: the burst is kept");
            // The largest cost the hook multiplies stays within 64 bits.
            let whole = hook_ns(&b, burst).expect("no overflow");
            // Never cheaper than exact (never more than the rate), and
            // dearer by less than 0.1%.
            let exact = u128::from(burst) * 1_000_000_000 / u128::from(rate);
            assert!(u128::from(whole) >= exact, "rate {rate}");
            assert!(u128::from(whole) <= exact + exact / 1000 + 1, "rate {rate}");
            assert_eq!(u128::from(b.depth_ns), exact, "rate {rate}");
        }
    }
}
