//! scapy (from PyPI, in the Python tools venv `cargo xtask setup` makes),
//! an independent packet builder: it sends the collector GENEVE, GRE and
//! ERSPAN packets that the project's own encoders never touched.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    capture::{Dir, Frame},
    netns::Netns,
};

/// The venv's Python: `MIRROR_TEST_PYTHON` (set by `cargo xtask test`), else
/// `pytools/bin/python3` under the target directory. Fails with a clear
/// message when scapy is not installed there.
pub fn python() -> Result<PathBuf> {
    let path = venv_python();
    let check = std::process::Command::new(&path)
        .args(["-c", "import scapy.all"])
        .output();
    ensure!(
        check.as_ref().is_ok_and(|o| o.status.success()),
        "scapy is not importable by {}; `cargo xtask setup` installs it ({:?})",
        path.display(),
        check.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
    );
    Ok(path)
}

/// The venv's Python, whatever it has installed: `MIRROR_TEST_PYTHON`,
/// else `pytools/bin/python3` under the target directory.
pub fn venv_python() -> PathBuf {
    std::env::var_os("MIRROR_TEST_PYTHON").map_or_else(
        || {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")),
                PathBuf::from,
            );
            target.join("pytools/bin/python3")
        },
        PathBuf::from,
    )
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// Runs `scripts/encap_sender.py KIND DST` in `ns` and returns the frames
/// it sent, in order, each with the interface name the collector must file
/// it under, its original length and its direction (if the tunnel carries one).
pub fn send_encapsulated(ns: &Netns, kind: &str, dst: &str) -> Result<Vec<Frame>> {
    send(ns, kind, dst, None)
}

/// As [`send_encapsulated`], for the kinds that carry a capture time
/// (`geneve-time`, `erspan3-time`): frames 1 ms apart from `base_ns`, each
/// returned with the time it carries in `ts_ns`.
pub fn send_encapsulated_at(
    ns: &Netns,
    kind: &str,
    dst: &str,
    base_ns: u128,
) -> Result<Vec<Frame>> {
    send(ns, kind, dst, Some(base_ns))
}

fn send(ns: &Netns, kind: &str, dst: &str, base_ns: Option<u128>) -> Result<Vec<Frame>> {
    let python = python()?;
    let dir = tempfile::tempdir()?;
    let expected = dir.path().join("sent.tsv");
    crate::netns::run(
        ns.command(&python.to_string_lossy())
            .arg(script("encap_sender.py"))
            .args([kind, dst])
            .arg(&expected)
            .args(base_ns.map(|t| t.to_string())),
    )
    .with_context(|| format!("scapy sending {kind}"))?;
    let text = std::fs::read_to_string(&expected)?;
    text.lines().map(parse_line).collect()
}

fn parse_line(line: &str) -> Result<Frame> {
    let fields: Vec<&str> = line.split('\t').collect();
    let (interface, hex, orig, dir, ts) = match fields[..] {
        [interface, hex, orig, dir] => (interface, hex, orig, dir, None),
        [interface, hex, orig, dir, ts] => (interface, hex, orig, dir, Some(ts)),
        _ => bail!("a line of the sender's list has not 4 or 5 fields: {line:?}"),
    };
    let data = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .with_context(|| format!("hex in {line:?}"))?;
    Ok(Frame {
        data,
        orig_len: orig
            .parse()
            .with_context(|| format!("length in {line:?}"))?,
        interface: Some(interface.to_owned()),
        dir: match dir {
            "in" => Some(Dir::In),
            "out" => Some(Dir::Out),
            _ => None,
        },
        ts_ns: match ts {
            Some(t) => t.parse().with_context(|| format!("time in {line:?}"))?,
            None => 0,
        },
    })
}
