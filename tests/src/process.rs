//! Child processes that are killed and reaped when their guard drops.

use std::{
    io::{BufRead, BufReader},
    process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::{self, Signal},
    unistd::Pid,
};

/// A running process whose stderr is collected line by line.
pub struct Process {
    name: String,
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stderr_log: Vec<String>,
}

impl Process {
    /// Spawns `cmd` with stderr piped (stdin and stdout as the caller set them).
    pub fn spawn(name: &str, mut cmd: Command) -> Result<Self> {
        cmd.stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        let stderr: ChildStderr = child.stderr.take().context("stderr was piped")?;
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            lines: rx,
            stderr_log: Vec::new(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits for a stderr line containing `needle`; fails if the process
    /// exits or `timeout` passes first, showing what it printed.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_log.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "{} did not print '{needle}' within {timeout:?}; stderr so far:\n{}",
                    self.name,
                    self.stderr_log.join("\n")
                ),
            }
        }
    }

    /// The child's stdout, if it was piped and not taken yet.
    pub fn stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Sends `sig` and waits for the process to exit; returns its status and all of stderr.
    pub fn stop(self, sig: Signal, timeout: Duration) -> Result<(ExitStatus, String)> {
        let pid = self.pid().context("already stopped")?;
        let _ = signal::kill(Pid::from_raw(i32::try_from(pid).context("pid")?), sig);
        self.wait(timeout).with_context(|| format!("after {sig}"))
    }

    /// Waits for the process to exit by itself (killing it after `timeout`).
    pub fn wait(mut self, timeout: Duration) -> Result<(ExitStatus, String)> {
        let mut child = self.child.take().context("already stopped")?;
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            thread::sleep(Duration::from_millis(20));
        };
        Ok((status, self.drain_stderr()))
    }

    fn drain_stderr(&mut self) -> String {
        // The reader thread ends at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.stderr_log.push(line);
        }
        self.stderr_log.join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
