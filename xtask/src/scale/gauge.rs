//! The agent's own count of the interfaces it holds,
//! `mirror_attached_interfaces` on its /metrics, polled every [`POLL`]
//! from a thread in the node's namespace (where the agent serves it on
//! loopback) until it reads the wanted value.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use testbed::netns::Netns;

use super::{GIVE_UP, POLL};
use crate::bench::scrape::{self, METRICS_ADDR, Metrics};

/// The family read: a gauge without labels (mirror-agent/src/datapath/metrics.rs).
pub const ATTACHED: &str = "mirror_attached_interfaces";
/// One scrape waits at most this; a slow answer is retried on the next poll.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Failed scrapes kept, with their time, for the report.
const KEEP_ERRORS: usize = 3;

/// What the gauge read during one phase.
#[derive(Clone, Debug, Default)]
pub struct Gauge {
    /// Every value it read that differed from the one before (the first
    /// read included), with its time since the phase started.
    pub changes: Vec<(Duration, u64)>,
    /// When it first read the wanted value; `None`: not within [`GIVE_UP`].
    pub reached: Option<Duration>,
    /// Scrapes that got no answer or no 200 (a 503 when the agent's loop
    /// did not answer in time), retried on the next poll.
    pub failed: usize,
    /// The first few of them, with their time since the phase started.
    pub errors: Vec<(Duration, String)>,
}

/// The gauge's value in one answer. Its absence is an error: the agent's
/// family renamed, which must not read as nothing attached.
pub fn attached(m: &Metrics) -> Result<u64> {
    let v = m.sum(ATTACHED)?;
    anyhow::ensure!(
        v >= 0.0 && v.fract() == 0.0,
        "{ATTACHED} is {v}, not a count"
    );
    Ok(v as u64)
}

/// Polls the agent's /metrics from a thread in `node` until the gauge reads
/// `want`, [`GIVE_UP`] after `start` passes, or `cancel` is raised. An
/// answer without the gauge ends it with an error.
pub fn watch(
    node: &Netns,
    want: u64,
    start: Instant,
    cancel: Arc<AtomicBool>,
) -> thread::JoinHandle<Result<Gauge>> {
    node.spawn(move || {
        let mut g = Gauge::default();
        loop {
            let round = Instant::now();
            match scrape::get(METRICS_ADDR, SCRAPE_TIMEOUT) {
                Ok(m) => {
                    let at = start.elapsed();
                    if g.record(at, attached(&m)?, want) {
                        break;
                    }
                }
                Err(e) => {
                    g.failed += 1;
                    if g.errors.len() < KEEP_ERRORS {
                        g.errors.push((start.elapsed(), format!("{e:#}")));
                    }
                }
            }
            if cancel.load(Ordering::SeqCst) || start.elapsed() > GIVE_UP {
                break;
            }
            thread::sleep(POLL.saturating_sub(round.elapsed()));
        }
        Ok(g)
    })
}

impl Gauge {
    /// Notes `value` read at `at`; whether it is the wanted one.
    fn record(&mut self, at: Duration, value: u64, want: u64) -> bool {
        if self.changes.last().is_none_or(|(_, v)| *v != value) {
            self.changes.push((at, value));
        }
        if value == want && self.reached.is_none() {
            self.reached = Some(at);
        }
        value == want
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_changes_and_the_first_time_it_got_there() {
        let ms = Duration::from_millis;
        let mut g = Gauge::default();
        assert!(!g.record(ms(50), 0, 3));
        assert!(!g.record(ms(100), 0, 3));
        assert!(!g.record(ms(150), 2, 3));
        assert!(g.record(ms(200), 3, 3));
        assert_eq!(g.changes, vec![(ms(50), 0), (ms(150), 2), (ms(200), 3)]);
        assert_eq!(g.reached, Some(ms(200)));
    }

    #[test]
    fn reads_the_count_and_refuses_its_absence() {
        let text = "# HELP mirror_attached_interfaces Interfaces with the hooks attached.\n\
                    # TYPE mirror_attached_interfaces gauge\n\
                    mirror_attached_interfaces 250\n\
                    # HELP mirror_ready 1 once the hooks are attached.\n\
                    # TYPE mirror_ready gauge\n\
                    mirror_ready 1\n\
                    # EOF\n";
        assert_eq!(attached(&Metrics::parse(text).unwrap()).unwrap(), 250);
        // As if the agent had renamed it: an error, not zero.
        let renamed = text.replace("mirror_attached_interfaces", "mirror_hooked_interfaces");
        let e = attached(&Metrics::parse(&renamed).unwrap()).unwrap_err();
        assert!(e.to_string().contains(ATTACHED), "{e}");
    }
}
