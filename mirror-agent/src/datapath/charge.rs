//! Charging each policy the drain thread's CPU time: filtering, encoding
//! and handing over its copies. The thread's CPU clock is a system call
//! (see [`crate::metrics::cpu`]), so it is read twice per drain round, and
//! the round's CPU time is split between the policies by the wall time of
//! their slices of it: a slice runs from the first of a policy's records
//! to the next record of another policy (one monotonic-clock read, a vDSO
//! call, per change of policy, none per record within a run of one).
//! Parsing a record and matching it to its interface are charged to the
//! slice they fall in.

use std::time::{Duration, Instant};

use crate::metrics::cpu::thread_cpu;

/// A drain round being measured.
struct Round {
    /// The thread's CPU clock at its start.
    cpu: Duration,
    /// The policy whose slice is running, and since when.
    policy: usize,
    since: Instant,
}

#[derive(Default)]
pub struct Meter {
    round: Option<Round>,
    /// Wall time per policy (by index) in the open round.
    walls: Vec<Duration>,
}

impl Meter {
    /// What follows is work for policy `policy` (an index into the fanout's
    /// policies), until another is entered or the round is closed.
    pub fn enter(&mut self, policy: usize) {
        match &mut self.round {
            Some(r) if r.policy == policy => {}
            Some(r) => {
                let now = Instant::now();
                add(&mut self.walls, r.policy, now - r.since);
                r.policy = policy;
                r.since = now;
            }
            None => {
                self.round = Some(Round {
                    cpu: thread_cpu(),
                    policy,
                    since: Instant::now(),
                });
            }
        }
    }

    /// Whether work has been entered since the last close.
    pub fn is_open(&self) -> bool {
        self.round.is_some()
    }

    /// Ends the round: `charge` gets each policy's share of the CPU time
    /// the thread used since the round's first `enter`.
    pub fn close(&mut self, mut charge: impl FnMut(usize, Duration)) {
        let Some(r) = self.round.take() else {
            return;
        };
        let now = Instant::now();
        let cpu = thread_cpu().saturating_sub(r.cpu);
        add(&mut self.walls, r.policy, now - r.since);
        let total: Duration = self.walls.iter().sum();
        if total.is_zero() {
            // Too short for the wall clock to tell: the last policy's.
            charge(r.policy, cpu);
        } else {
            for (i, wall) in self.walls.iter().enumerate() {
                if !wall.is_zero() {
                    charge(i, cpu.mul_f64(wall.as_secs_f64() / total.as_secs_f64()));
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
        meter.enter(0);
        spin(Duration::from_millis(10));
        meter.enter(2);
        spin(Duration::from_millis(40));
        meter.enter(0);
        spin(Duration::from_millis(10));
        assert!(meter.is_open());
        meter.close(|i, d| charged[i] += d);
        assert!(!meter.is_open());
        let [a, b, c] = charged;
        assert_eq!(b, Duration::ZERO);
        // 20 ms against 40 ms of the same spinning, whatever the machine's
        // load took of it: the shares go by wall time.
        let ratio = c.as_secs_f64() / a.as_secs_f64();
        assert!((1.5..2.7).contains(&ratio), "{a:?} against {c:?}");
        // A closed round charges nothing more.
        meter.close(|_, _| panic!("nothing open"));
    }
}
