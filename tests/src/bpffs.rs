//! A bpf filesystem of the test's own, so pin tests never touch the host's
//! /sys/fs/bpf and parallel tests never see each other's pins. Unmounting
//! it on drop releases whatever was left pinned there (links detach).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{netns::run, unique_name};

pub struct BpfFs {
    dir: PathBuf,
}

impl BpfFs {
    pub fn mount() -> Result<Self> {
        let dir = std::env::temp_dir().join(unique_name("mtbpf"));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let fs = Self { dir };
        run(Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&fs.dir))?;
        Ok(fs)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}
