//! A pcapng file that only ever holds whole blocks. A write that fails part
//! way (a full disk, a quota) would leave a torn block that makes every
//! later block unreadable; instead the file is cut back to where the last
//! successful write ended, so whatever happens it stays valid pcapng, and
//! the caller knows exactly which of its blocks are on disk (all of a
//! successful write, none of a failed one).
//!
//! A file that is not a regular one (a FIFO, a device) is written without
//! blocking, and waited on between writes: a caller that holds something
//! for the length of a write (ring memory it writes from, see
//! [`crate::export::loan`]) holds it for one system call, never for as
//! long as a reader takes.

use std::{
    fs::File,
    io::{self, IoSlice, Seek, SeekFrom, Write},
    os::fd::AsFd,
};

use nix::{
    fcntl::{FcntlArg, OFlag, fcntl},
    poll::{PollFd, PollFlags, PollTimeout, poll},
};

pub struct BlockFile {
    file: File,
    /// Bytes on disk that end with a whole block.
    good: u64,
    /// Only a regular file can be cut back (not a FIFO or a device).
    regular: bool,
}

impl BlockFile {
    /// Takes an open file; what it holds already counts as whole blocks.
    pub fn new(file: File) -> io::Result<Self> {
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            let flags = OFlag::from_bits_retain(fcntl(&file, FcntlArg::F_GETFL)?);
            fcntl(&file, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        }
        Ok(Self {
            good: meta.len(),
            regular: meta.file_type().is_file(),
            file,
        })
    }

    /// Writes `parts` one after another, all or nothing: on an error the
    /// file is cut back to its length before this call (shrinking a file
    /// needs no space) and the write position follows it.
    pub fn write(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let total = parts.iter().map(|p| p.len()).sum();
        self.write_gathered(total, |mut file, from| {
            let mut slices = Vec::with_capacity(parts.len());
            let mut gather = Gather::new(from, &mut slices);
            parts.iter().all(|p| gather.push(p));
            file.write_vectored(&slices)
        })
    }

    /// Writes `total` bytes, all or nothing as [`BlockFile::write`], by
    /// calls of `once(file, from)`, each of which writes some of them from
    /// byte `from` on with one system call and returns how many it wrote
    /// (a `writev` of what it gathers). A file that would block is waited
    /// on between calls.
    pub fn write_gathered(
        &mut self,
        total: usize,
        mut once: impl FnMut(&File, usize) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut done = 0;
        let written = loop {
            if done >= total {
                break Ok(());
            }
            match once(&self.file, done) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = writable(&self.file) {
                        break Err(e);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        match written {
            Ok(()) => {
                self.good += total as u64;
                Ok(())
            }
            Err(error) => {
                if self.regular {
                    // Best effort: if even this fails, the error to report is
                    // still the write's.
                    let _ = self.file.set_len(self.good);
                    let _ = self.file.seek(SeekFrom::Start(self.good));
                }
                Err(error)
            }
        }
    }

    /// Bytes of whole blocks in the file.
    pub fn len(&self) -> u64 {
        self.good
    }

    pub fn is_empty(&self) -> bool {
        self.good == 0
    }

    /// A regular file (not a FIFO or a device such as `/dev/null`).
    pub fn is_regular(&self) -> bool {
        self.regular
    }
}

/// Slices one `writev` takes at most (the kernel's `IOV_MAX`).
pub const MAX_SLICES: usize = 1024;

/// The slices of a stream of pieces from byte `skip` on, for one `writev`
/// of what a partial write left ([`BlockFile::write_gathered`]).
pub struct Gather<'a, 'o> {
    skip: usize,
    out: &'o mut Vec<IoSlice<'a>>,
}

impl<'a, 'o> Gather<'a, 'o> {
    pub fn new(skip: usize, out: &'o mut Vec<IoSlice<'a>>) -> Self {
        Self { skip, out }
    }

    /// Adds the next piece (what of it lies past `skip`); false once the
    /// write holds [`MAX_SLICES`] and takes no more.
    pub fn push(&mut self, piece: &'a [u8]) -> bool {
        if self.skip >= piece.len() {
            self.skip -= piece.len();
            return true;
        }
        self.out.push(IoSlice::new(&piece[self.skip..]));
        self.skip = 0;
        self.out.len() < MAX_SLICES
    }
}

/// Waits until `file` takes more (a FIFO's reader has read).
fn writable(file: &File) -> io::Result<()> {
    let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLOUT)];
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => return Ok(()),
            Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file size limit (RLIMIT_FSIZE) stands in for a full disk without
    /// root: a write past it fails with EFBIG after writing what fits.
    #[test]
    fn a_failed_write_leaves_only_whole_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        // In a child process, so the limit (and SIGXFSZ) stay there. Its
        // output goes to pipes: the limit applies to every regular file the
        // child writes, and a test run's own output may be one.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "export::pcapng::file::tests::child_writes_past_a_limit",
                "--nocapture",
            ])
            .env("BLOCKFILE_PATH", &path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "child: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read(&path).unwrap(),
            [[1u8; 100], [2u8; 100]].concat()
        );
    }

    #[test]
    fn child_writes_past_a_limit() {
        let Some(path) = std::env::var_os("BLOCKFILE_PATH") else {
            return;
        };
        // SAFETY: ignoring SIGXFSZ, so the write returns EFBIG instead.
        unsafe { nix::libc::signal(nix::libc::SIGXFSZ, nix::libc::SIG_IGN) };
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE, 250, 250)
            .unwrap();
        let mut f = BlockFile::new(File::create(path).unwrap()).unwrap();
        f.write(&[&[1; 100]]).unwrap();
        f.write(&[&[2; 50], &[2; 50]]).unwrap();
        // 50 of these 100 bytes fit: they must not stay.
        assert!(f.write(&[&[3; 100]]).is_err());
        assert_eq!(f.len(), 200);
        // The write position followed the cut: no hole, no torn bytes.
        assert!(f.write(&[&[4; 60]]).is_err());
        assert_eq!(f.len(), 200);
    }
}
