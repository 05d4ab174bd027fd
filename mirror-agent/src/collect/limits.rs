//! What a stream listener allows its peers: how many connections in all and
//! per source address, how long a connection may stay silent, and how long
//! one block may take to arrive. Memory per connection is bounded by the
//! largest block (`export::pcapng::read::MAX_BLOCK`) plus one read, so the
//! total is bounded by `max_connections` times that.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Limits of one stream listener (`collect --max-connections` and friends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamLimits {
    /// Connections open at once, all sources together.
    pub max_connections: usize,
    /// Connections open at once from one source address.
    pub max_per_source: usize,
    /// A connection that sends nothing between blocks for this long is closed.
    pub idle: Duration,
    /// A block must arrive whole within this long of its first byte.
    pub block: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_per_source: 16,
            idle: Duration::from_secs(300),
            block: Duration::from_secs(30),
        }
    }
}

/// Why a connection was refused or cut. Every one is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `--max-connections` were open.
    Limit,
    /// `--max-connections-per-source` were open from its address.
    SourceLimit,
    /// The TLS handshake failed or did not finish in time.
    Handshake,
    /// Silent for `--idle-timeout` between blocks.
    Idle,
    /// A block took longer than `--read-timeout`.
    Slow,
}

impl Refusal {
    pub const ALL: [Self; 5] = [
        Self::Limit,
        Self::SourceLimit,
        Self::Handshake,
        Self::Idle,
        Self::Slow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Limit => "limit",
            Self::SourceLimit => "source_limit",
            Self::Handshake => "handshake",
            Self::Idle => "idle_timeout",
            Self::Slow => "read_timeout",
        }
    }
}

/// The connections open now, in all and per source.
#[derive(Debug, Default)]
pub struct Admission {
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: IpAddr,
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn admit(
        self: &Arc<Self>,
        source: IpAddr,
        limits: &StreamLimits,
    ) -> Result<Ticket, Refusal> {
        let mut open = self.lock();
        if open.total >= limits.max_connections {
            return Err(Refusal::Limit);
        }
        let from = open.per_source.entry(source).or_default();
        if *from >= limits.max_per_source {
            return Err(Refusal::SourceLimit);
        }
        *from += 1;
        open.total += 1;
        Ok(Ticket {
            admission: self.clone(),
            source,
        })
    }

    pub fn open(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.admission.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                open.per_source.remove(&self.source);
            }
        }
    }
}

/// At most one log line per period, for events a peer can cause at will;
/// the lines left out are counted elsewhere, and the next line says how
/// many it stands for.
#[derive(Debug)]
pub struct RateLog {
    start: Instant,
    period: Duration,
    /// When the last line went out, in ms since `start`, plus one (0: never).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLog {
    pub fn new(period: Duration) -> Self {
        Self {
            start: Instant::now(),
            period,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` if a line may go out now.
    pub fn allow(&self) -> Option<u64> {
        let now = u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let period = u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= period)
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_in_all_and_per_source() {
        let limits = StreamLimits {
            max_connections: 3,
            max_per_source: 2,
            ..StreamLimits::default()
        };
        let a = Arc::new(Admission::default());
        let (x, y) = (IpAddr::from([198, 18, 0, 1]), IpAddr::from([198, 18, 0, 2]));
        let t1 = a.admit(x, &limits).unwrap();
        let _t2 = a.admit(x, &limits).unwrap();
        assert_eq!(a.admit(x, &limits).unwrap_err(), Refusal::SourceLimit);
        let _t3 = a.admit(y, &limits).unwrap();
        assert_eq!(a.admit(y, &limits).unwrap_err(), Refusal::Limit);
        drop(t1);
        assert_eq!(a.open(), 2);
        let _t4 = a.admit(x, &limits).unwrap();
    }

    #[test]
    fn rate_log_lets_one_line_through_per_period() {
        let log = RateLog::new(Duration::from_secs(3600));
        assert_eq!(log.allow(), Some(0));
        assert_eq!(log.allow(), None);
        assert_eq!(log.allow(), None);
        let log = RateLog::new(Duration::ZERO);
        assert_eq!(log.allow(), Some(0));
        assert!(log.allow().is_some());
    }
}
