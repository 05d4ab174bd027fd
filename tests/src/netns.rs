//! Network namespaces owned by guards.

use std::{fs::File, process::Command, thread};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

use crate::unique_name;

/// A named network namespace (`ip netns`), deleted on drop together with
/// every interface still inside it.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with loopback up and IPv6 made quiet: no duplicate
    /// address detection and no router solicitations, so the only packets on
    /// its links are the ones a test sends (and a few MLD reports right after
    /// a link comes up; see [`crate::topology::settle`]).
    pub fn new(prefix: &str) -> Result<Self> {
        let ns = Self {
            name: unique_name(prefix),
        };
        run(Command::new("ip").args(["netns", "add", &ns.name]))?;
        ns.ip(&["link", "set", "lo", "up"])?;
        for (key, value) in [
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.default.dad_transmits", "0"),
            ("net.ipv6.conf.default.router_solicitations", "0"),
            ("net.ipv6.conf.default.accept_ra", "0"),
        ] {
            ns.sysctl(key, value)?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// No IPv6 at all on links made after this call (for IPv4-only tests).
    pub fn disable_ipv6(&self) -> Result<()> {
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
    }

    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs inside the namespace (`ip netns exec`), with no stdin.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program])
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs a command inside the namespace to completion; fails on a non-zero exit.
    pub fn exec(&self, argv: &[&str]) -> Result<String> {
        let (program, args) = argv.split_first().context("empty command")?;
        run(self.command(program).args(args))
    }

    /// Runs `f` on a new OS thread that has entered this namespace: `setns`
    /// changes only the calling thread, so it never touches the test's own.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> thread::JoinHandle<Result<T>> {
        let path = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {path}"))?;
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Runs a command to completion; on failure the error shows its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Joins a thread made by [`Netns::spawn`], turning a panic into an error.
pub fn join<T>(handle: thread::JoinHandle<Result<T>>) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
}

/// A hosts file for one namespace: `ip netns exec NAME` (how
/// [`Netns::command`] runs programs) bind-mounts `/etc/netns/NAME/hosts`
/// over `/etc/hosts` for the program, so names resolve as the test says.
/// Rewritten in place ([`EtcHosts::set`]), the same file stays mounted and
/// a running program sees the new text. Removed on drop.
pub struct EtcHosts {
    dir: std::path::PathBuf,
}

impl EtcHosts {
    /// Must be made before the program starts.
    pub fn new(ns: &Netns, text: &str) -> Result<Self> {
        let dir = std::path::Path::new("/etc/netns").join(ns.name());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let hosts = Self { dir };
        hosts.set(text)?;
        Ok(hosts)
    }

    /// Replaces the text in place (same inode: truncated and written).
    pub fn set(&self, text: &str) -> Result<()> {
        let path = self.dir.join("hosts");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for EtcHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
