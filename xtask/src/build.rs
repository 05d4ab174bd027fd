//! Building the agent (its build.rs builds and embeds the eBPF object).

use anyhow::{Context, Result};

use crate::{paths, run};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

/// Builds `mirror-agent` and returns the binary's absolute path.
pub fn agent_at(profile: Profile) -> Result<std::path::PathBuf> {
    let mut cmd = run::cargo();
    cmd.args(["build", "-p", "mirror-agent"]);
    let dir = match profile {
        Profile::Debug => "debug",
        Profile::Release => {
            cmd.arg("--release");
            "release"
        }
    };
    println!("build: {}", run::describe(&cmd));
    run::show(&mut cmd).context("building the agent")?;
    let bin = paths::target_dir().join(dir).join("mirror-agent");
    anyhow::ensure!(bin.exists(), "the build left no {}", bin.display());
    println!("build: agent at {}", bin.display());
    Ok(bin)
}

/// `cargo xtask build`: the same, for its side effect.
pub fn agent(profile: Profile) -> Result<()> {
    agent_at(profile).map(drop)
}
