//! `cargo xtask fuzz [--seconds N]`: every decoder the collector runs on
//! network input, fuzzed for N seconds each with `cargo fuzz` (nightly,
//! libFuzzer). The targets live in `mirror-agent/fuzz`, a workspace of its
//! own with its own target directory, so a fuzz build never holds the main
//! target directory's lock. Each starts from the valid packets in
//! `mirror-agent/fuzz/seeds`; corpora grow in `mirror-agent/fuzz/corpus`,
//! and a crash leaves its input in `mirror-agent/fuzz/artifacts`.

use std::{fs, process::Command};

use anyhow::{Context, Result};

use crate::{
    paths,
    run::{self, nightly, show},
};

/// One per decoder (see `mirror-agent/fuzz/Cargo.toml`).
const TARGETS: &[&str] = &["vxlan", "geneve", "gre", "erspan", "pcapng_stream"];
/// Seconds per target when `cargo xtask test` runs them.
pub const SHORT_SECONDS: u64 = 15;

pub fn run(seconds: u64) -> Result<()> {
    install_cargo_fuzz()?;
    let dir = paths::workspace_root().join("mirror-agent/fuzz");
    for target in TARGETS {
        // New inputs go to corpus/ (not committed); seeds/ holds valid
        // packets of each format, so the fuzzer starts past the headers.
        let corpus = dir.join("corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let mut cmd = nightly("cargo");
        // No sanitizer: the code is safe Rust, so what fuzzing finds is a
        // panic or an overflow (debug assertions stay on), and a build
        // without ASan is quicker to make and to run.
        cmd.current_dir(&dir)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .args(["fuzz", "run", "--sanitizer", "none", target])
            .arg(&corpus)
            .arg(dir.join("seeds").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-print_final_stats=1");
        println!("fuzz: {}", run::describe(&cmd));
        show(&mut cmd).with_context(|| format!("fuzz target {target} failed"))?;
    }
    Ok(())
}

fn install_cargo_fuzz() -> Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        println!("fuzz: cargo-fuzz: present");
        return Ok(());
    }
    println!("fuzz: cargo-fuzz: installing");
    show(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}
