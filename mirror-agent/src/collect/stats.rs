//! Counters of one listener, shared by its receiving threads and read once
//! for the summary. Every skipped packet is counted under one reason; the
//! first of each reason is also logged, so a flood of garbage cannot flood
//! the log.

use std::{
    fmt,
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use tracing::{info, warn};

use super::limits::{RateLog, Refusal};

const LOG_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a packet (or a stream) was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Cut short: fewer bytes than its own headers announce.
    Short,
    /// Well formed, but not something we collect: another protocol, version
    /// or link type, an OAM packet, ERSPAN Type I.
    Foreign,
    /// Fields that contradict each other or the format: bad lengths, bad
    /// options, a wrong checksum, an unknown interface.
    Garbled,
}

impl Reason {
    const ALL: [Self; 3] = [Self::Short, Self::Foreign, Self::Garbled];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Foreign => "foreign",
            Self::Garbled => "garbled",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A listener's counters at one moment (see [`ListenerStats::snapshot`]).
#[derive(Clone, Debug, Default)]
pub struct ListenerSnapshot {
    pub received: u64,
    pub reads: u64,
    pub decoded: u64,
    pub truncated: u64,
    pub connections: u64,
    /// Connections refused or cut per reason name.
    pub refused: [(&'static str, u64); Refusal::ALL.len()],
    /// Skipped packets per reason name.
    pub errors: [(&'static str, u64); 3],
}

#[derive(Debug)]
pub struct ListenerStats {
    /// The listener's URI, as logs and the summary name it.
    pub name: String,
    /// Datagrams, or for streams packet blocks, that arrived.
    received: AtomicU64,
    /// Datagram listeners: receive calls that returned datagrams (each
    /// `recvmmsg` call, however many datagrams it brought).
    reads: AtomicU64,
    /// Packets handed to the writer.
    decoded: AtomicU64,
    /// Packets the sender marked as cut (ERSPAN T bit, GENEVE or pcapng
    /// original length above what came).
    truncated: AtomicU64,
    /// Stream connections accepted.
    connections: AtomicU64,
    /// Stream connections refused or cut, per [`Refusal`].
    refused: [AtomicU64; Refusal::ALL.len()],
    errors: [AtomicU64; Reason::ALL.len()],
    /// Logs about connections (refused, connected, closed), which any peer
    /// can cause at will: each at most once per 10 s.
    pub conn_log: RateLog,
    pub open_log: RateLog,
    pub close_log: RateLog,
}

impl ListenerStats {
    pub fn new(name: String) -> Self {
        Self {
            name,
            received: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            decoded: AtomicU64::new(0),
            truncated: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            refused: Default::default(),
            errors: Default::default(),
            conn_log: RateLog::new(LOG_PERIOD),
            open_log: RateLog::new(LOG_PERIOD),
            close_log: RateLog::new(LOG_PERIOD),
        }
    }

    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn decoded(&self, truncated: bool) {
        self.decoded.fetch_add(1, Ordering::Relaxed);
        if truncated {
            self.truncated.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, why: Refusal) {
        if let Some(c) = self.refused.get(why as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn refused_count(&self, why: Refusal) -> u64 {
        self.refused
            .get(why as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts a skipped packet; logs it if it is the first of its reason.
    pub fn skip(&self, reason: Reason, from: IpAddr, error: &dyn fmt::Display) {
        let Some(counter) = self.errors.get(reason as usize) else {
            return;
        };
        if counter.fetch_add(1, Ordering::Relaxed) == 0 {
            warn!(
                listener = %self.name,
                %from,
                reason = %reason,
                %error,
                "skipped; further packets skipped for this reason are only counted"
            );
        }
    }

    pub fn errors(&self, reason: Reason) -> u64 {
        self.errors
            .get(reason as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Every counter as of now, for a metrics scrape.
    pub fn snapshot(&self) -> ListenerSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ListenerSnapshot {
            received: get(&self.received),
            reads: get(&self.reads),
            decoded: get(&self.decoded),
            truncated: get(&self.truncated),
            connections: get(&self.connections),
            refused: Refusal::ALL.map(|r| (r.as_str(), self.refused_count(r))),
            errors: Reason::ALL.map(|r| (r.as_str(), self.errors(r))),
        }
    }

    pub fn decoded_count(&self) -> u64 {
        self.decoded.load(Ordering::Relaxed)
    }

    /// The `listener summary` line.
    pub fn summarize(&self) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let errors: u64 = Reason::ALL.iter().map(|&r| self.errors(r)).sum();
        info!(
            listener = %self.name,
            received = get(&self.received),
            reads = get(&self.reads),
            decoded = get(&self.decoded),
            truncated = get(&self.truncated),
            connections = get(&self.connections),
            refused = Refusal::ALL.iter().map(|&r| self.refused_count(r)).sum::<u64>(),
            refused_limit = self.refused_count(Refusal::Limit),
            refused_source_limit = self.refused_count(Refusal::SourceLimit),
            refused_handshake = self.refused_count(Refusal::Handshake),
            idle_timeouts = self.refused_count(Refusal::Idle),
            read_timeouts = self.refused_count(Refusal::Slow),
            errors,
            short = self.errors(Reason::Short),
            foreign = self.errors(Reason::Foreign),
            garbled = self.errors(Reason::Garbled),
            "listener summary"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_reason() {
        let s = ListenerStats::new("vxlan://0.0.0.0:4789".into());
        let from = IpAddr::from([198, 18, 1, 1]);
        s.skip(Reason::Short, from, &"x");
        s.skip(Reason::Short, from, &"y");
        s.skip(Reason::Garbled, from, &"z");
        assert_eq!(
            Reason::ALL.map(|r| s.errors(r)),
            [2, 0, 1],
            "short, foreign, garbled"
        );
        // The array index is the enum's discriminant.
        assert!(
            Reason::ALL
                .iter()
                .enumerate()
                .all(|(i, r)| *r as usize == i)
        );
    }
}
