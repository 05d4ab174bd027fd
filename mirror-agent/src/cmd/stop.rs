//! SIGINT and SIGTERM during start-up. The drain loops wait on tokio's
//! signal streams, but start-up runs before them and blocks: reading and
//! compiling a policy file, loading the programs, hooking interfaces one
//! by one (each tcx attach waits for an RCU grace period, so hundreds of
//! interfaces take seconds). A flag set from the signal handler is what
//! those steps can look at; it is installed first thing, so a signal is
//! never lost to the default action half-way (which would skip the
//! summary) nor deferred until start-up ends.

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, RecvTimeoutError},
    },
    time::Duration,
};

use nix::sys::signal::Signal;

/// How often a step run by [`StopSignals::unless_stopped`] is looked in on.
const POLL: Duration = Duration::from_millis(10);

/// Whether SIGINT or SIGTERM has come since [`StopSignals::install`].
#[derive(Clone)]
pub struct StopSignals(Arc<AtomicBool>);

impl StopSignals {
    /// Registers the flag beside any other handler of the two signals
    /// (tokio's, installed later, runs too).
    pub fn install() -> io::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for signal in [Signal::SIGINT, Signal::SIGTERM] {
            let set = flag.clone();
            // SAFETY: the action only stores to an atomic, which is
            // async-signal-safe; it allocates nothing and takes no lock.
            unsafe {
                signal_hook_registry::register(signal as i32, move || {
                    set.store(true, Ordering::SeqCst)
                })
            }?;
        }
        Ok(Self(flag))
    }

    pub fn raised(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Runs `work` on a thread of its own and waits for it, unless a stop
    /// signal comes first: then `None` at once, and the thread is left to
    /// end with the process (what it computes is thrown away; it touches
    /// nothing that needs undoing).
    pub fn unless_stopped<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if self.raised() {
            return None;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let worker = std::thread::spawn(move || {
            // The receiver may be gone: then no one wants the result.
            let _ = tx.send(work());
        });
        loop {
            match rx.recv_timeout(POLL) {
                Ok(done) => return Some(done),
                Err(RecvTimeoutError::Timeout) if self.raised() => return None,
                Err(RecvTimeoutError::Timeout) => {}
                // It ended without sending: it panicked, and so do we.
                Err(RecvTimeoutError::Disconnected) => match worker.join() {
                    Err(panic) => std::panic::resume_unwind(panic),
                    Ok(()) => return rx.try_recv().ok(),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_stops_the_wait_for_a_long_step() {
        let stop = StopSignals::install().expect("handlers");
        assert_eq!(stop.unless_stopped(|| 7), Some(7));
        let (started_tx, started) = mpsc::channel();
        let raiser = stop.clone();
        let t = std::thread::spawn(move || {
            started.recv().expect("the step started");
            // The signal itself, through the handler, to this process.
            nix::sys::signal::raise(Signal::SIGTERM).expect("raise");
            assert!(raiser.raised());
        });
        let begun = std::time::Instant::now();
        let got = stop.unless_stopped(move || {
            started_tx.send(()).expect("send");
            std::thread::sleep(Duration::from_secs(30));
        });
        t.join().expect("raiser");
        assert_eq!(got, None);
        assert!(
            begun.elapsed() < Duration::from_secs(5),
            "{:?}",
            begun.elapsed()
        );
    }
}
