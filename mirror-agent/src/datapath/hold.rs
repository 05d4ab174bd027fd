//! When read records may be released: once every output has sent what it
//! was handed up to that point. Each drain round leaves a mark (the ring
//! position it read up to, and how many batches each output had been handed);
//! a mark is released when each output has finished that many batches.
//!
//! A stuck output must not stall the ring for the others, so a mark is also
//! released, sent or not, once it is older than [`Limits::age`] or the held
//! bytes pass [`Limits::bytes`]: past that, records live only in the output's
//! own (byte-bounded, counted) queue, as they would without holding (a
//! file output's batches, which refer to the ring's bytes, get their own
//! copy of them first: the pump releases through the ring's ledger, see
//! [`crate::export::loan`]).

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub age: Duration,
    pub bytes: u64,
}

struct Mark {
    position: u64,
    at: Instant,
}

#[derive(Default)]
pub struct Holds {
    marks: VecDeque<Mark>,
    /// Batches handed to each output at each mark, `width` per mark, flat so
    /// that steady state allocates nothing.
    handed: VecDeque<u64>,
    width: usize,
}

impl Holds {
    /// Records that everything before `position` has been handed to the
    /// outputs, which had by then been handed `handed[i]` batches each.
    pub fn mark(&mut self, position: u64, at: Instant, handed: &[u64]) {
        if self.marks.back().is_some_and(|m| m.position >= position) {
            return;
        }
        if self.marks.is_empty() {
            self.width = handed.len();
        }
        if handed.len() != self.width {
            // The set of outputs changed: earlier marks cannot be compared.
            // Releasing them is what holding bounded by time would do anyway.
            self.marks.clear();
            self.handed.clear();
            self.width = handed.len();
        }
        self.marks.push_back(Mark { position, at });
        self.handed.extend(handed.iter().copied());
    }

    /// The furthest position that may be released now, if any mark can go:
    /// `done[i]` is how many batches output `i` has finished, and `held` the
    /// bytes read but not yet released.
    pub fn release(
        &mut self,
        now: Instant,
        held: u64,
        limits: Limits,
        done: &[u64],
    ) -> Option<u64> {
        let mut released = None;
        while let Some(mark) = self.marks.front() {
            let sent =
                done.len() == self.width && (0..self.width).all(|i| done[i] >= self.handed[i]);
            let forced =
                now.saturating_duration_since(mark.at) >= limits.age || held > limits.bytes;
            if !sent && !forced {
                break;
            }
            released = Some(mark.position);
            self.marks.pop_front();
            self.handed.drain(..self.width);
        }
        released
    }

    /// Marks not yet released.
    pub fn len(&self) -> usize {
        self.marks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        age: Duration::from_millis(100),
        bytes: 1000,
    };

    #[test]
    fn released_only_once_every_output_has_sent() {
        let t = Instant::now();
        let mut h = Holds::default();
        h.mark(100, t, &[1, 0]);
        h.mark(200, t, &[2, 1]);
        assert_eq!(h.release(t, 200, LIMITS, &[0, 0]), None);
        assert_eq!(h.release(t, 200, LIMITS, &[1, 0]), Some(100));
        assert_eq!(h.release(t, 100, LIMITS, &[2, 0]), None);
        assert_eq!(h.release(t, 100, LIMITS, &[2, 1]), Some(200));
        assert!(h.is_empty());
    }

    #[test]
    fn a_stuck_output_holds_only_so_long_or_so_much() {
        let t = Instant::now();
        let mut h = Holds::default();
        h.mark(100, t, &[5]);
        h.mark(300, t + Duration::from_millis(50), &[6]);
        assert_eq!(
            h.release(t + Duration::from_millis(99), 300, LIMITS, &[0]),
            None
        );
        assert_eq!(
            h.release(t + Duration::from_millis(100), 300, LIMITS, &[0]),
            Some(100)
        );
        assert_eq!(
            h.release(t + Duration::from_millis(100), 2000, LIMITS, &[0]),
            Some(300)
        );
    }

    #[test]
    fn marks_never_go_backwards() {
        let t = Instant::now();
        let mut h = Holds::default();
        h.mark(100, t, &[1]);
        h.mark(100, t, &[2]);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn marks_made_before_the_outputs_changed_go_with_the_next() {
        let t = Instant::now();
        let mut h = Holds::default();
        h.mark(100, t, &[1, 1]);
        h.mark(200, t, &[3]);
        assert_eq!(h.len(), 1, "the two-output mark cannot be compared");
        assert_eq!(h.release(t, 200, LIMITS, &[2]), None);
        assert_eq!(h.release(t, 200, LIMITS, &[3]), Some(200));
    }
}
