//! How a watch retries while the API server is away or refuses it, and what
//! it says meanwhile.
//!
//! - The backoff is short and capped low (with jitter, so a node's six
//!   watches and a cluster's nodes do not retry in step), and starts over
//!   after any success: an agent notices a restarted API server within a
//!   couple of seconds, however long it was down.
//! - A `410 Gone` (a restarted server's fresh watch cache, or a compaction)
//!   is no failure: the watcher relists at once, without waiting.
//! - One line per distinct error, then a reminder at most once per
//!   [`REMINDER`], and one line when the watch works again. A watcher's
//!   relist (its `Init` event) is not a success and says nothing.

use std::time::{Duration, Instant};

use kube::runtime::watcher;

/// The first retry's delay.
pub const MIN_DELAY: Duration = Duration::from_millis(250);
/// The longest delay before jitter; jitter adds up to as much again.
pub const MAX_DELAY: Duration = Duration::from_millis(1500);
/// How often a failure that has not changed is said again.
pub const REMINDER: Duration = Duration::from_secs(60);

/// The watches' backoff: exponential from [`MIN_DELAY`] to [`MAX_DELAY`],
/// doubling, with jitter, never giving up.
pub fn backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(MIN_DELAY)
        .with_max_delay(MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// What a watch error means for the retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// 410 Gone: the resourceVersion is too old; relist now.
    Expired,
    /// Anything else: wait, then retry. The text names what went wrong
    /// (for a 403, the permission the agent lacks).
    Retry(String),
}

/// Classifies one error of the watch of `what` (such as `pods` or
/// `secrets in namespace mirror-system`).
pub fn classify(error: &watcher::Error, what: &str) -> Failure {
    let status = match error {
        watcher::Error::WatchError(status) => Some(status.as_ref()),
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => Some(status.as_ref()),
        _ => None,
    };
    match status {
        Some(s) if s.code == 410 => Failure::Expired,
        Some(s) if s.code == 403 => Failure::Retry(format!(
            "forbidden: this agent's ServiceAccount lacks the permission to list and watch {what} \
             (grant verbs list and watch on it, as deploy/rbac.yaml does): {}",
            s.message
        )),
        _ => Failure::Retry(error.to_string()),
    }
}

/// What to log after an event of the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Say {
    Nothing,
    /// A new failure (or a different one). `known`: whether the watch has
    /// had a full list before (so the agent mirrors on the last known state)
    /// or nothing is known yet.
    Failing {
        text: String,
        known: bool,
    },
    /// The same failure, still, for `since`.
    Still {
        text: String,
        known: bool,
        since: Duration,
    },
    /// Working again after failing for this long.
    Recovered(Duration),
}

struct Failing {
    text: String,
    since: Instant,
    said: Instant,
}

/// One watch's record of failures, deciding what is worth a log line.
#[derive(Default)]
pub struct Health {
    known: bool,
    failing: Option<Failing>,
}

impl Health {
    /// A list completed or an object event arrived.
    pub fn ok(&mut self, now: Instant) -> Say {
        self.known = true;
        match self.failing.take() {
            Some(f) => Say::Recovered(now.saturating_duration_since(f.since)),
            None => Say::Nothing,
        }
    }

    /// A failure other than [`Failure::Expired`].
    pub fn failed(&mut self, text: String, now: Instant) -> Say {
        let known = self.known;
        match &mut self.failing {
            Some(f) if f.text == text => {
                if now.saturating_duration_since(f.said) < REMINDER {
                    return Say::Nothing;
                }
                f.said = now;
                Say::Still {
                    text,
                    known,
                    since: now.saturating_duration_since(f.since),
                }
            }
            Some(f) => {
                // A different error: said at once; the outage goes on.
                f.text.clone_from(&text);
                f.said = now;
                Say::Failing { text, known }
            }
            None => {
                self.failing = Some(Failing {
                    text: text.clone(),
                    since: now,
                    said: now,
                });
                Say::Failing { text, known }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn status(code: u16) -> Box<Status> {
        let mut s = Status::failure("pods is forbidden: nope", "Forbidden");
        s.code = code;
        Box::new(s)
    }

    #[test]
    fn a_gone_watch_relists_at_once_and_a_refusal_names_the_permission() {
        let gone = watcher::Error::WatchError(status(410));
        assert_eq!(classify(&gone, "pods"), Failure::Expired);
        let refused = watcher::Error::InitialListFailed(kube::Error::Api(status(403)));
        let Failure::Retry(text) = classify(&refused, "pods") else {
            panic!("a 403 is retried")
        };
        assert!(text.contains("list and watch pods"), "{text}");
        assert!(text.contains("pods is forbidden: nope"), "{text}");
    }

    #[test]
    fn the_backoff_is_capped_low_and_jittered() {
        let delays: Vec<Duration> = backoff().take(50).collect();
        assert!(delays[0] >= MIN_DELAY && delays[0] < 2 * MIN_DELAY);
        assert!(delays.iter().all(|d| *d < 2 * MAX_DELAY), "{delays:?}");
        let late = &delays[10..];
        assert!(late.iter().all(|d| *d >= MAX_DELAY), "{delays:?}");
        assert!(
            late.windows(2).any(|w| w[0] != w[1]),
            "jittered: {delays:?}"
        );
    }

    #[test]
    fn one_line_per_distinct_error_then_a_reminder_a_minute() {
        let t0 = Instant::now();
        let mut h = Health::default();
        let e = || "connection refused".to_owned();
        assert_eq!(
            h.failed(e(), t0),
            Say::Failing {
                text: e(),
                known: false
            },
            "nothing is known before the first list"
        );
        for s in 1..60 {
            assert_eq!(h.failed(e(), t0 + Duration::from_secs(s)), Say::Nothing);
        }
        assert_eq!(
            h.failed(e(), t0 + Duration::from_secs(61)),
            Say::Still {
                text: e(),
                known: false,
                since: Duration::from_secs(61)
            }
        );
        assert_eq!(h.failed(e(), t0 + Duration::from_secs(62)), Say::Nothing);
        assert_eq!(
            h.failed("forbidden".into(), t0 + Duration::from_secs(63)),
            Say::Failing {
                text: "forbidden".into(),
                known: false
            },
            "a different error is said at once"
        );
        assert_eq!(
            h.ok(t0 + Duration::from_secs(70)),
            Say::Recovered(Duration::from_secs(70))
        );
        assert_eq!(h.ok(t0 + Duration::from_secs(71)), Say::Nothing);
        assert_eq!(
            h.failed(e(), t0 + Duration::from_secs(80)),
            Say::Failing {
                text: e(),
                known: true
            },
            "after a list, the last known state is kept"
        );
    }
}
