//! `cargo xtask setup`: everything a fresh Debian machine needs to build and
//! test, each step skipped when its result is already there, so a second run
//! takes seconds. See docs/toolchain.md for why each step is so.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    paths,
    run::{self, capture, nightly, show},
};

/// What the tests and benchmarks run (tcpdump and tshark are the oracles,
/// ping and iperf3/trafgen make traffic, bpftool inspects hooks, ethtool
/// turns a link's offloads off so the kernel segments, the bench chart's
/// text is drawn in DejaVu Sans).
const DEBIAN_PACKAGES: &[&str] = &[
    "tcpdump",
    "tshark",
    "iperf3",
    "netsniff-ng",
    "libpcap-dev",
    "iputils-ping",
    "iproute2",
    "bpftool",
    "procps",
    "ethtool",
    "fonts-dejavu-core",
];

/// The Python tools the tests run, from PyPI, pinned: kubernetes-validate
/// for the plain manifests, check-jsonschema for the examples against the
/// CRDs' schemas, and scapy, an independent packet builder that sends the
/// collector GENEVE, GRE and ERSPAN packets our own encoders did not make.
pub const PYTHON_TOOLS: &[(&str, &str)] = &[
    ("kubernetes-validate", "1.37.0"),
    ("check-jsonschema", "0.39.0"),
    ("scapy", "2.8.0"),
];

pub fn run() -> Result<()> {
    let started = Instant::now();
    let mut done = Vec::new();
    timed(&mut done, "rust-src for nightly", || {
        rust_components("nightly", &["rust-src"])
    })?;
    timed(&mut done, "bpf-linker", bpf_linker)?;
    timed(&mut done, "rustfmt, clippy for stable", || {
        rust_components("stable", &["rustfmt", "clippy"])
    })?;
    timed(&mut done, "Debian packages", debian_packages)?;
    timed(&mut done, "Python tools", python_tools)?;
    // One line a step at the end, so what a fresh machine spent its time on
    // stands together rather than between apt's and cargo's output.
    for (what, outcome, took) in &done {
        println!("setup: {what}: {outcome} ({})", seconds(*took));
    }
    println!("setup: total {}", seconds(started.elapsed()));
    Ok(())
}

/// Runs one step of [`run`], noting what it did and how long it took.
fn timed(
    done: &mut Vec<(&'static str, String, Duration)>,
    what: &'static str,
    step: impl FnOnce() -> Result<String>,
) -> Result<()> {
    let started = Instant::now();
    let outcome = step()?;
    done.push((what, outcome, started.elapsed()));
    Ok(())
}

fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// What building the agent needs beyond stable Rust: nightly's rust-src and
/// bpf-linker (its build.rs builds the eBPF crate).
pub fn agent_toolchain() -> Result<()> {
    rust_components("nightly", &["rust-src"])?;
    bpf_linker()?;
    Ok(())
}

/// The virtual environment of [`PYTHON_TOOLS`], under the target directory:
/// private to the workspace, gone with `cargo clean`, and no `pip install`
/// into a Python that other software on the machine uses.
pub fn python_tools_dir() -> PathBuf {
    paths::target_dir().join("pytools")
}

/// The executable of one of [`PYTHON_TOOLS`].
pub fn python_tool(name: &str) -> PathBuf {
    python_tools_dir().join("bin").join(name)
}

fn step(what: &str, status: &str) {
    println!("setup: {what}: {status}");
}

fn rust_components(toolchain: &str, wanted: &[&str]) -> Result<String> {
    let what = format!("{} for {toolchain}", wanted.join(", "));
    let listed = capture(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        toolchain,
    ]))
    .with_context(|| format!("the {toolchain} toolchain is needed (rustup toolchain list)"))?;
    // Listed as `rust-src`, or with the host triple: `clippy-x86_64-unknown-linux-gnu`.
    let has = |name: &str| {
        listed
            .lines()
            .any(|l| l == name || l.strip_prefix(name).is_some_and(|r| r.starts_with('-')))
    };
    let missing: Vec<&str> = wanted.iter().copied().filter(|c| !has(c)).collect();
    if missing.is_empty() {
        step(&what, "present");
        return Ok("present".to_owned());
    }
    step(&what, &format!("installing {}", missing.join(", ")));
    show(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", toolchain])
            .args(&missing),
    )?;
    Ok(format!("installed {}", missing.join(", ")))
}

/// bpf-linker, built against the nightly toolchain's own libLLVM: the LLVM
/// that emits the eBPF bitcode must be the one that links it, and no LLVM
/// development package of that version exists here.
fn bpf_linker() -> Result<String> {
    // The binary finds libLLVM only through the nightly lib dir that
    // `rustup run nightly` (and so aya-build's `cargo +nightly`) puts on
    // LD_LIBRARY_PATH; a nightly update breaks it, and this notices.
    let mut version = nightly("bpf-linker");
    version.arg("--version");
    if let Ok(v) = capture(&mut version) {
        let outcome = format!("present ({})", v.trim());
        step("bpf-linker", &outcome);
        return Ok(outcome);
    }
    let sysroot = PathBuf::from(capture(nightly("rustc").args(["--print", "sysroot"]))?.trim());
    let libllvm = nightly_libllvm(&sysroot.join("lib"))?;
    let major = llvm_major()?;
    let prefix = paths::home()?.join(".cache/mirror-llvm");
    let link = prefix.join("lib/libLLVM.so");
    fs::create_dir_all(prefix.join("lib"))
        .with_context(|| format!("creating {}", prefix.display()))?;
    if link.symlink_metadata().is_ok() {
        fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
    }
    symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    step(
        "bpf-linker",
        &format!(
            "building against {} (LLVM {major}; about a minute)",
            libllvm.display()
        ),
    );
    let mut install = nightly("cargo");
    install
        .args(["install", "bpf-linker", "--locked", "--force"])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        // Away from the workspace, so its cargo config cannot affect the install.
        .current_dir(paths::home()?);
    show(&mut install)?;
    let v = capture(&mut version).context("bpf-linker was installed but does not run")?;
    let outcome = format!("built and installed ({})", v.trim());
    step("bpf-linker", &outcome);
    Ok(outcome)
}

/// The nightly toolchain's `libLLVM.so.<version>-rust-<version>-nightly`.
fn nightly_libllvm(lib: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.ends_with("-nightly"))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some(path) if found.is_empty() => Ok(path),
        Some(_) => bail!("more than one libLLVM.so.*-nightly in {}", lib.display()),
        None => bail!("no libLLVM.so.*-nightly in {}", lib.display()),
    }
}

/// The LLVM major version of nightly rustc, which picks bpf-linker's `llvm-N` feature.
fn llvm_major() -> Result<u32> {
    let vv = capture(nightly("rustc").arg("-vV"))?;
    vv.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .context("rustc +nightly -vV names no LLVM version")
}

/// [`PYTHON_TOOLS`] in their venv. A stamp file records the pins installed,
/// so a second run reads one file instead of asking pip.
pub fn python_tools() -> Result<String> {
    let names: Vec<&str> = PYTHON_TOOLS.iter().map(|(name, _)| *name).collect();
    let what = names.join(", ");
    let pins: Vec<String> = PYTHON_TOOLS
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect();
    let want = pins.join("\n");
    let dir = python_tools_dir();
    let stamp = dir.join("installed-pins.txt");
    let complete = names.iter().all(|name| python_tool(name).exists());
    if complete && fs::read_to_string(&stamp).is_ok_and(|have| have == want) {
        let outcome = format!("present ({})", pins.join(", "));
        step(&what, &outcome);
        return Ok(outcome);
    }
    step(
        &what,
        &format!("installing {} into {}", pins.join(" "), dir.display()),
    );
    let pip = dir.join("bin/pip");
    if !pip.exists() {
        show(Command::new("python3").args(["-m", "venv"]).arg(&dir)).context(
            "creating a Python venv needs python3 with its venv module \
             (on Debian: apt-get install python3-venv)",
        )?;
    }
    show(
        Command::new(&pip)
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(&pins),
    )?;
    fs::write(&stamp, &want).with_context(|| format!("writing {}", stamp.display()))?;
    step(&what, "installed");
    Ok(format!("installed {}", pins.join(", ")))
}

fn debian_packages() -> Result<String> {
    let what = "Debian packages";
    if !Path::new("/usr/bin/dpkg-query").exists() {
        let outcome = format!(
            "skipped: not Debian; install by hand: {}",
            DEBIAN_PACKAGES.join(" ")
        );
        step(what, &outcome);
        return Ok(outcome);
    }
    let missing = missing_packages()?;
    if missing.is_empty() {
        step(what, "present");
        return Ok("present".to_owned());
    }
    if !run::is_root() {
        let outcome = format!(
            "missing {}; not root, so not installed (run setup as root)",
            missing.join(" ")
        );
        step(what, &outcome);
        return Ok(outcome);
    }
    step(what, &format!("installing {}", missing.join(" ")));
    show(
        Command::new("apt-get")
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    show(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            // No progress meter: CI logs are not terminals.
            .args(["-o", "Dpkg::Use-Pty=0"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        bail!("apt-get did not install {}", still.join(" "));
    }
    step(what, "installed");
    Ok(format!("installed {}", missing.join(" ")))
}

/// Packages of [`DEBIAN_PACKAGES`] that dpkg does not list as installed.
fn missing_packages() -> Result<Vec<&'static str>> {
    // Exits 1 when it knows a package not at all; stdout still lists the rest.
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        .args(DEBIAN_PACKAGES)
        .output()
        .context("running dpkg-query")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(_, status)| status.starts_with("ii"))
        .map(|(name, _)| name.split(':').next().unwrap_or(name))
        .collect();
    Ok(DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect())
}
