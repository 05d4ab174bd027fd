//! Running other programs: with their output shown (long steps), or
//! captured (checks), always with the command named in any error.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Runs `cmd` with its output going to ours; fails on a non-zero exit.
pub fn show(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; fails on a non-zero exit, showing stderr.
pub fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The stable `cargo` that runs us (`CARGO`, set by `cargo run`), else the one on PATH.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(crate::paths::workspace_root());
    cmd
}

/// A command run with the nightly toolchain (`rustup run nightly`). The
/// variables `cargo run` left for us would otherwise pin stable's rustc.
pub fn nightly(program: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", program]);
    for var in ["RUSTUP_TOOLCHAIN", "RUSTC", "RUSTDOC", "CARGO"] {
        cmd.env_remove(var);
    }
    cmd
}

/// `program arg arg ...`, for messages.
pub fn describe(cmd: &Command) -> String {
    // Just the program's name: `cargo`, not the toolchain's full path.
    let program = std::path::Path::new(cmd.get_program());
    std::iter::once(program.file_name().unwrap_or(program.as_os_str()))
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether we run as root (the privileged tests, the demo and apt need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails with a clear message unless root.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what} needs root (network namespaces, BPF, tc); run it as root");
    }
    Ok(())
}
