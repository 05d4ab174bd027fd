//! How a watch retries while the API server is away or refuses it, and what
//! it says meanwhile.
//!
//! - The backoff is short and capped low (with jitter, so a node's six
//!   watches and a cluster's nodes do not retry in step), and starts over
//!   after any success: an agent notices a restarted API server within a
//!   couple of seconds, however long it was down.
//! - A `410 Gone` (a restarted server's fresh watch cache, or a compaction)
//!   is no failure: the watcher relists at once, without waiting.
//! - One line per distinct error per watch while the agent's budget allows
//!   (shared by all watches: [`BUDGET`] lines a minute), otherwise one line
//!   naming every failing watch; then one reminder line for all of them at
//!   most once per [`REMINDER`], and one line when a watch works again. A
//!   watcher's relist (its `Init` event) is not a success and says nothing.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

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

/// Lines of watch failures allowed in any [`REMINDER`]-long window, over all
/// watches: a refused agent (six watches, each 403) stays under 10 a minute.
pub const BUDGET: usize = 6;
/// Lines given to single watches' new errors; the rest of the budget is
/// kept for combined lines and the reminder.
pub const SINGLE: usize = 3;
/// How long new errors that did not get their own line are gathered before
/// one combined line names them all (the six watches fail within moments).
pub const GATHER: Duration = Duration::from_secs(2);

/// One failing watch, as a log line names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub watch: &'static str,
    pub text: String,
    /// Whether the watch had a full list before (so the agent mirrors on
    /// the last known state) or nothing is known of it yet.
    pub known: bool,
}

/// What to log after an event of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Say {
    Nothing,
    /// A watch's new failure (or a different one), in a line of its own.
    Failing(Failed),
    /// One line for every failing watch: new errors that did not fit the
    /// budget, or the reminder (`reminder`) at most once per [`REMINDER`].
    All {
        failing: Vec<Failed>,
        reminder: bool,
        since: Duration,
    },
    /// A watch works again after failing for this long.
    Recovered(Duration),
}

struct Entry {
    text: String,
    since: Instant,
    known: bool,
    /// Named in a line since its error last changed.
    said: bool,
}

#[derive(Default)]
struct State {
    known: BTreeSet<&'static str>,
    failing: BTreeMap<&'static str, Entry>,
    /// When each line of the last [`REMINDER`] was said.
    lines: VecDeque<Instant>,
    /// When every failing watch was last named in one line (or the first
    /// failure of the outage, so the reminder comes a minute after it).
    all_said: Option<Instant>,
    outage: Option<Instant>,
}

/// The watches' shared record of failures, deciding what is worth a log
/// line: the budget and the reminder are the agent's, not each watch's, so
/// six refused watches do not make six times the noise.
#[derive(Default)]
pub struct Health {
    state: Mutex<State>,
}

impl Health {
    /// A list of `watch` completed or an object event arrived.
    pub fn ok(&self, watch: &'static str, now: Instant) -> Say {
        let mut s = self.lock();
        s.known.insert(watch);
        let Some(e) = s.failing.remove(watch) else {
            return Say::Nothing;
        };
        if s.failing.is_empty() {
            s.all_said = None;
            s.outage = None;
        }
        // Good news is always said, and counts.
        s.lines.push_back(now);
        Say::Recovered(now.saturating_duration_since(e.since))
    }

    /// A failure of `watch` other than [`Failure::Expired`].
    pub fn failed(&self, watch: &'static str, text: String, now: Instant) -> Say {
        let mut s = self.lock();
        while s
            .lines
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= REMINDER)
        {
            s.lines.pop_front();
        }
        let known = s.known.contains(watch);
        let outage = *s.outage.get_or_insert(now);
        s.all_said.get_or_insert(now);
        let new = match s.failing.get_mut(watch) {
            Some(e) if e.text == text => false,
            Some(e) => {
                e.text = text;
                e.said = false;
                true
            }
            None => {
                s.failing.insert(
                    watch,
                    Entry {
                        text,
                        since: now,
                        known,
                        said: false,
                    },
                );
                true
            }
        };
        if new && s.lines.len() < SINGLE {
            let e = s.failing.get_mut(watch).expect("inserted above");
            e.said = true;
            let said = Failed {
                watch,
                text: e.text.clone(),
                known: e.known,
            };
            s.lines.push_back(now);
            return Say::Failing(said);
        }
        let unsaid_since = s
            .failing
            .values()
            .filter(|e| !e.said)
            .map(|e| e.since)
            .min();
        let gathered = unsaid_since.is_some_and(|t| now.saturating_duration_since(t) >= GATHER);
        let reminder = s
            .all_said
            .is_some_and(|t| now.saturating_duration_since(t) >= REMINDER);
        if !(gathered || reminder) || s.lines.len() >= BUDGET {
            return Say::Nothing;
        }
        s.lines.push_back(now);
        s.all_said = Some(now);
        let failing = s
            .failing
            .iter_mut()
            .map(|(w, e)| {
                e.said = true;
                Failed {
                    watch: w,
                    text: e.text.clone(),
                    known: e.known,
                }
            })
            .collect();
        Say::All {
            failing,
            reminder: !gathered,
            since: now.saturating_duration_since(outage),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding it left plain data, still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    const WATCHES: [&str; 6] = crate::controller::watch::WATCHED;

    /// Six refused watches retrying every 1.5 s for five minutes: what
    /// they log, with the instant of each line.
    fn refused_for(h: &Health, t0: Instant, secs: u64) -> Vec<(Duration, Say)> {
        let mut said = Vec::new();
        let mut at = Duration::ZERO;
        while at < Duration::from_secs(secs) {
            for (i, w) in WATCHES.iter().enumerate() {
                let now = at + Duration::from_millis(10 * i as u64);
                match h.failed(w, format!("forbidden: {w}"), t0 + now) {
                    Say::Nothing => {}
                    s => said.push((now, s)),
                }
            }
            at += Duration::from_millis(1500);
        }
        said
    }

    #[test]
    fn six_refused_watches_stay_under_the_budget_and_are_all_named() {
        let t0 = Instant::now();
        let h = Health::default();
        let said = refused_for(&h, t0, 300);
        // Every minute-long window, the first seconds' burst included.
        for (i, (start, _)) in said.iter().enumerate() {
            let in_window = said[i..]
                .iter()
                .take_while(|(t, _)| *t < *start + REMINDER)
                .count();
            assert!(
                in_window <= BUDGET,
                "{in_window} lines within a minute: {said:#?}"
            );
        }
        let singles = said
            .iter()
            .filter(|(_, s)| matches!(s, Say::Failing(_)))
            .count();
        assert_eq!(singles, SINGLE, "{said:#?}");
        let alls: Vec<_> = said
            .iter()
            .filter_map(|(t, s)| match s {
                Say::All {
                    failing, reminder, ..
                } => Some((*t, failing, *reminder)),
                _ => None,
            })
            .collect();
        // One combined line once the burst is gathered, then a reminder a
        // minute: at 60, 120, 180 and 240 s after it (give or take a retry).
        assert_eq!(alls.len(), 5, "{said:#?}");
        assert!(!alls[0].2 && alls[1..].iter().all(|a| a.2), "{said:#?}");
        assert!(alls[0].0 >= GATHER && alls[0].0 < GATHER + Duration::from_secs(2));
        for w in alls.windows(2) {
            let gap = w[1].0 - w[0].0;
            assert!(
                gap >= REMINDER && gap < REMINDER + Duration::from_secs(2),
                "{gap:?}"
            );
        }
        for (_, failing, _) in &alls {
            let named: Vec<_> = failing.iter().map(|f| f.watch).collect();
            assert_eq!(named.len(), WATCHES.len(), "{named:?}");
            assert!(
                failing
                    .iter()
                    .all(|f| f.text == format!("forbidden: {}", f.watch))
            );
            assert!(failing.iter().all(|f| !f.known), "nothing is known yet");
        }
    }

    #[test]
    fn a_changed_error_is_said_and_a_recovery_too_then_the_state_is_known() {
        let t0 = Instant::now();
        let h = Health::default();
        let at = |s| t0 + Duration::from_secs(s);
        let refused = |known| {
            Say::Failing(Failed {
                watch: "pods",
                text: "connection refused".into(),
                known,
            })
        };
        assert_eq!(
            h.failed("pods", "connection refused".into(), at(0)),
            refused(false)
        );
        for s in 1..60 {
            assert_eq!(
                h.failed("pods", "connection refused".into(), at(s)),
                Say::Nothing
            );
        }
        let Say::All {
            failing,
            reminder: true,
            since,
        } = h.failed("pods", "connection refused".into(), at(60))
        else {
            panic!("a reminder a minute after the failure")
        };
        assert_eq!((failing.len(), since), (1, Duration::from_secs(60)));
        assert_eq!(
            h.failed("pods", "forbidden".into(), at(61)),
            Say::Failing(Failed {
                watch: "pods",
                text: "forbidden".into(),
                known: false
            }),
            "a different error is said at once"
        );
        assert_eq!(
            h.ok("pods", at(70)),
            Say::Recovered(Duration::from_secs(70))
        );
        assert_eq!(h.ok("pods", at(71)), Say::Nothing);
        // Three single lines in the last minute: a new failure waits to be
        // gathered into a combined line.
        assert_eq!(
            h.failed("pods", "connection refused".into(), at(72)),
            Say::Nothing
        );
        let Say::All {
            failing,
            reminder: false,
            ..
        } = h.failed("pods", "connection refused".into(), at(74))
        else {
            panic!("gathered after GATHER")
        };
        assert!(
            failing[0].known,
            "after a list, the last known state is kept"
        );
    }
}
