//! A small tmpfs of the test's own, for filling a disk on purpose. Its
//! mount point is unique per run; it is unmounted (and the point removed)
//! on drop, so a failing test leaves nothing mounted.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{netns::run, unique_name};

pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` bytes (rounded up to pages by the kernel).
    pub fn mount(bytes: u64) -> Result<Self> {
        let dir = std::env::temp_dir().join(unique_name("mttmpfs"));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let fs = Self { dir };
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("tmpfs")
            .arg(&fs.dir))?;
        Ok(fs)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
