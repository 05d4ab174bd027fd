//! `cargo xtask test`: set up, build the agent, run every test as root.

use anyhow::{Context, Result};

use crate::{bench, build, fuzz, layers, manifests, run, setup};

pub fn run(extra: &[String]) -> Result<()> {
    // Before anything slow: the namespace and BPF tests fail without root,
    // and must never pass by skipping.
    run::require_root("cargo xtask test")?;
    // Reads the sources only: a layering slip fails in a second, not after the build.
    layers::run()?;
    setup::run()?;
    let agent = build::agent_at(build::Profile::Debug)?;
    // No -p/--workspace: the default members, which leave out the eBPF
    // crate (it builds only for the BPF target, through the agent).
    let mut cmd = run::cargo();
    // Every test binary runs even after one fails, so a CI log shows all failures.
    cmd.args(["test", "--no-fail-fast"])
        .args(extra)
        .env("MIRROR_AGENT_BIN", &agent)
        // The venv's Python, with scapy: the collector's independent sender.
        .env("MIRROR_TEST_PYTHON", setup::python_tool("python3"))
        .env("RUST_BACKTRACE", "1");
    println!(
        "test: MIRROR_AGENT_BIN={} {}",
        agent.display(),
        run::describe(&cmd)
    );
    run::show(&mut cmd).context("the tests failed")?;
    // The whole suite ends with every decoder's fuzz target, briefly.
    if extra.is_empty() {
        // deploy/: the CRDs match the types, the manifests and examples are valid.
        manifests::check()?;
        fuzz::run(fuzz::SHORT_SECONDS)?;
        // And the bench harness once, briefly, so it cannot rot; of its
        // numbers, only that every mirror delivered copies is checked.
        bench::smoke(&agent)?;
    }
    Ok(())
}
