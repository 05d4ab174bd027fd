//! Charging each policy the drain thread's CPU time: filtering, encoding
//! and handing over its copies.
//!
//! Within a drain round, the wall time is split into slices, one per run of
//! one policy's records (a monotonic-clock read, a vDSO call of about
//! 30 ns, per change of policy; none per record). The thread's CPU clock is
//! a system call (see [`crate::metrics::cpu`]), so it is read once when an
//! accounting period starts (at a round's first record) and once when it
//! ends (at the end of the first round at least [`PERIOD`] later): at most
//! about two thousand reads a second, however many rounds. The period's CPU
//! time is then split by the policies' slices, and never more than their
//! wall time in rounds is charged: CPU the thread spent between rounds
//! (waiting, under `run` the Kubernetes controller) is charged to no
//! policy unless slices stretched by preemption cover it. Parsing a record
//! and matching it to its interface are charged to the slice they fall in.

use std::time::{Duration, Instant};

use crate::metrics::cpu::{READ_EVERY, thread_cpu};

/// Least length of an accounting period.
pub const PERIOD: Duration = READ_EVERY;

/// An accounting period: the thread's CPU clock and the wall clock at its
/// start.
struct Period {
    cpu: Duration,
    since: Instant,
}

#[derive(Default)]
pub struct Meter {
    period: Option<Period>,
    /// The policy whose slice is running, and since when: some inside a
    /// round.
    slice: Option<(usize, Instant)>,
    /// Wall time per policy (by index) in rounds of the open period.
    walls: Vec<Duration>,
}

impl Meter {
    /// What follows is work for policy `policy` (an index into the fanout's
    /// policies), until another is entered or the round is closed.
    pub fn enter(&mut self, policy: usize) {
        match self.slice {
            Some((current, _)) if current == policy => {}
            Some((current, since)) => {
                let now = Instant::now();
                add(&mut self.walls, current, now - since);
                self.slice = Some((policy, now));
            }
            None => {
                let now = Instant::now();
                if self.period.is_none() {
                    self.period = Some(Period {
                        cpu: thread_cpu(),
                        since: now,
                    });
                }
                self.slice = Some((policy, now));
            }
        }
    }

    /// Whether a round is open: work entered since the last close.
    pub fn is_open(&self) -> bool {
        self.slice.is_some()
    }

    /// Ends the round; if the period has lasted [`PERIOD`], ends it too,
    /// and `charge` gets each policy's share of its CPU time.
    pub fn close(&mut self, charge: impl FnMut(usize, Duration)) {
        let Some((current, since)) = self.slice.take() else {
            return;
        };
        let now = Instant::now();
        add(&mut self.walls, current, now - since);
        if self
            .period
            .as_ref()
            .is_some_and(|p| now - p.since >= PERIOD)
        {
            self.settle(charge);
        }
    }

    /// Ends the period now (the fanout is closing), charging what it holds.
    pub fn settle(&mut self, mut charge: impl FnMut(usize, Duration)) {
        let Some(period) = self.period.take() else {
            return;
        };
        let cpu = thread_cpu().saturating_sub(period.cpu);
        let wall: Duration = self.walls.iter().sum();
        let charged = cpu.min(wall);
        if !wall.is_zero() {
            for (i, w) in self.walls.iter().enumerate() {
                if !w.is_zero() {
                    charge(i, charged.mul_f64(w.as_secs_f64() / wall.as_secs_f64()));
                }
            }
        }
        self.walls.iter_mut().for_each(|w| *w = Duration::ZERO);
    }
}

fn add(walls: &mut Vec<Duration>, policy: usize, wall: Duration) {
    if walls.len() <= policy {
        walls.resize(policy + 1, Duration::ZERO);
    }
    walls[policy] += wall;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Burns about `wall` of this thread's CPU.
    fn spin(wall: Duration) {
        let start = Instant::now();
        let mut x = 0u64;
        while start.elapsed() < wall {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }

    #[test]
    fn a_round_is_split_by_the_policies_slices() {
        let mut meter = Meter::default();
        let mut charged = [Duration::ZERO; 3];
        let t0 = Instant::now();
        meter.enter(0);
        spin(Duration::from_millis(10));
        let t1 = Instant::now();
        meter.enter(2);
        spin(Duration::from_millis(40));
        let t2 = Instant::now();
        meter.enter(0);
        spin(Duration::from_millis(10));
        assert!(meter.is_open());
        meter.close(|i, d| charged[i] += d);
        let t3 = Instant::now();
        assert!(!meter.is_open());
        let [a, b, c] = charged;
        assert_eq!(b, Duration::ZERO);
        // The shares go by wall time (as the test saw it, preemption by a
        // loaded machine included).
        let walls = ((t1 - t0) + (t3 - t2)).as_secs_f64() / (t2 - t1).as_secs_f64();
        let ratio = a.as_secs_f64() / c.as_secs_f64();
        assert!(
            (ratio / walls - 1.0).abs() < 0.1,
            "{a:?} against {c:?}, walls {walls}"
        );
        // Never more than the slices' wall time.
        assert!(a + c <= t3 - t0, "{a:?} + {c:?}");
        // A closed round charges nothing more.
        meter.close(|_, _| panic!("nothing open"));
        meter.settle(|_, _| panic!("nothing open"));
    }

    #[test]
    fn short_rounds_are_charged_together_once_a_period_has_passed() {
        let mut meter = Meter::default();
        let mut charged = [Duration::ZERO; 2];
        let start = Instant::now();
        meter.enter(1);
        meter.close(|_, _| panic!("the period has not passed"));
        // Time between rounds is no policy's.
        std::thread::sleep(PERIOD);
        spin(Duration::from_millis(3));
        let round = Instant::now();
        meter.enter(0);
        spin(Duration::from_millis(2));
        meter.close(|i, d| charged[i] += d);
        let slice = round.elapsed();
        // Charged at most its wall time: not the 3 ms spun between rounds.
        assert!(
            charged[0] > Duration::ZERO && charged[0] <= slice,
            "{charged:?}"
        );
        assert!(
            charged[1] < round - start - Duration::from_millis(3),
            "{charged:?}"
        );
    }
}
