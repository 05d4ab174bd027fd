//! Ctrl-C and SIGTERM for the long commands (demo, bench): the handler only
//! raises a flag that the command checks between steps, so it returns
//! normally and the guards' `Drop` impls remove every namespace, link and
//! process it made, instead of the process dying with them in place.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context, Result};

/// The command was stopped by Ctrl-C or a signal, and cleaned up.
#[derive(Debug)]
pub struct Interrupted(pub &'static str);

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: interrupted; everything it created has been removed",
            self.0
        )
    }
}

impl std::error::Error for Interrupted {}

/// Raised by Ctrl-C or SIGTERM.
#[derive(Clone)]
pub struct StopFlag {
    flag: Arc<AtomicBool>,
    task: &'static str,
}

impl StopFlag {
    /// Installs the handler; `task` names the command in messages.
    pub fn install(task: &'static str) -> Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        ctrlc::set_handler(move || {
            // Children in our process group get the terminal's SIGINT too
            // and stop by themselves; the command notices at its next step.
            if !set.swap(true, Ordering::SeqCst) {
                eprintln!("\n{task}: interrupted, cleaning up");
            }
        })
        .context("installing the Ctrl-C handler")?;
        Ok(Self { flag, task })
    }

    pub fn raised(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// `Err(Interrupted)` once the flag is up.
    pub fn check(&self) -> Result<()> {
        if self.raised() {
            return Err(Interrupted(self.task).into());
        }
        Ok(())
    }
}
