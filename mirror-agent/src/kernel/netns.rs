//! Network namespaces as owned file descriptors, and running code inside one.
//!
//! `setns(CLONE_NEWNET)` moves only the calling thread, and a thread that has
//! moved must never run anything else: a tokio worker that entered a pod's
//! namespace would open every later socket of every task there. So code for
//! another namespace runs on a short-lived thread of its own ([`run_in`]),
//! which enters the namespace, runs the closure and ends.

use std::{
    fs::File,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    thread,
};

use crate::model::record::NetnsCookie;
use nix::{
    libc,
    sched::{CloneFlags, setns},
    sys::stat::fstat,
};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} is not a network namespace")]
    NotNetns { path: PathBuf },
    #[error("entering network namespace {ns}: {source}")]
    Enter { ns: String, source: nix::Error },
    #[error("starting a thread for network namespace {ns}: {source}")]
    Thread { ns: String, source: io::Error },
    #[error("reading network namespace {ns}: {source}")]
    Stat { ns: String, source: nix::Error },
    #[error("reading the network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14 or later): {0}")]
    Cookie(io::Error),
}

/// The cookie of the calling thread's network namespace, the one the hook
/// reads for packets on its devices (`bpf_get_netns_cookie`).
pub fn current_cookie() -> Result<NetnsCookie, NetnsError> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetnsError::Cookie(io::Error::last_os_error()));
    }
    // SAFETY: fd is a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the option writes at most `len` bytes into `cookie`. nix has no
    // wrapper for this option.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(NetnsError::Cookie(io::Error::last_os_error()));
    }
    Ok(NetnsCookie(cookie))
}

/// An open network namespace, with the path it was opened from for messages
/// (`/proc/<pid>/ns/net`, `/var/run/netns/<name>`, ...). The descriptor
/// keeps the namespace alive even after its last process exits.
#[derive(Debug)]
pub struct Namespace {
    path: PathBuf,
    fd: OwnedFd,
}

impl Namespace {
    /// Opens `path` and checks that it is a network namespace, so a wrong
    /// path fails here rather than at the first `setns`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, NetnsError> {
        let path = path.as_ref().to_owned();
        let fd = File::open(&path)
            .map_err(|source| NetnsError::Open {
                path: path.clone(),
                source,
            })?
            .into();
        Self::from_fd(path, fd)
    }

    /// The calling thread's own network namespace (the agent's, the host's
    /// when the agent runs with hostNetwork).
    pub fn current() -> Result<Self, NetnsError> {
        // thread-self, not self: /proc/self is the main thread's, which may
        // be elsewhere when this runs inside [`run_in`].
        Self::open("/proc/thread-self/ns/net")
    }

    /// Takes an already open descriptor; `path` only names it in messages.
    pub fn from_fd(path: PathBuf, fd: OwnedFd) -> Result<Self, NetnsError> {
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd.
        let kind = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
        if kind != libc::CLONE_NEWNET {
            return Err(NetnsError::NotNetns { path });
        }
        Ok(Self { path, fd })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This namespace's cookie (read from inside it).
    pub fn cookie(&self) -> Result<NetnsCookie, NetnsError> {
        self.run(current_cookie)?
    }

    /// Whether both are the same namespace (a hostNetwork pod's is the
    /// host's): nsfs gives each namespace one inode.
    pub fn same_as(&self, other: &Self) -> Result<bool, NetnsError> {
        let id = |ns: &Self| {
            fstat(&ns.fd)
                .map(|st| (st.st_dev, st.st_ino))
                .map_err(|source| NetnsError::Stat {
                    ns: ns.path.display().to_string(),
                    source,
                })
        };
        Ok(id(self)? == id(other)?)
    }

    /// Runs `f` inside this namespace, on a thread of its own; see [`run_in`].
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        enter_and_run(self.fd.as_fd(), &self.path.display().to_string(), f)
    }
}

impl AsFd for Namespace {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Runs `f` on a new OS thread that has entered the network namespace `ns`,
/// waits for it, and returns what `f` returned. The caller's thread never
/// changes namespace; sockets `f` opens belong to `ns` and stay there.
/// `f` may borrow from the caller (a scoped thread). A panic in `f` resumes
/// on the caller's thread. It blocks: from async code, call it through
/// `spawn_blocking`.
pub fn run_in<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    enter_and_run(ns, &format!("fd {}", ns.as_raw_fd()), f)
}

fn enter_and_run<T: Send>(
    ns: BorrowedFd<'_>,
    label: &str,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NetnsError> {
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(scope, move || {
                setns(ns, CloneFlags::CLONE_NEWNET).map(|()| f())
            })
            .map_err(|source| NetnsError::Thread {
                ns: label.to_owned(),
                source,
            })?;
        match handle.join() {
            Ok(result) => result.map_err(|source| NetnsError::Enter {
                ns: label.to_owned(),
                source,
            }),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        let err = Namespace::open("/proc/self/status").unwrap_err();
        assert!(matches!(err, NetnsError::NotNetns { .. }), "{err}");
        assert!(err.to_string().contains("/proc/self/status"));
    }

    #[test]
    fn a_missing_path_is_named() {
        let err = Namespace::open("/nonexistent/netns").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }

    #[test]
    fn run_in_the_own_namespace_returns_the_value_and_borrows() {
        let ns = Namespace::current().expect("own namespace");
        let here = Namespace::current().expect("own namespace");
        assert!(ns.same_as(&here).expect("fstat"));
        let word = String::from("borrowed");
        // Entering needs CAP_SYS_ADMIN even for the own namespace; an
        // unprivileged run gets the error, naming the namespace.
        match ns.run(|| word.len()) {
            Ok(len) => assert_eq!(len, 8),
            Err(e) => assert!(e.to_string().contains("thread-self"), "{e}"),
        }
        match run_in(ns.as_fd(), || 1) {
            Ok(v) => assert_eq!(v, 1),
            Err(e) => assert!(e.to_string().contains("entering"), "{e}"),
        }
    }
}
