//! What the demo tells at the end: where the file is, the agent's own
//! counters, and what tshark (an independent reader) finds in the file.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context, Result};
use testbed::agent::{Exit, fields};

use crate::run::capture;

/// `pods` maps each mirrored host-side interface to its pod's name.
pub fn print(pcapng: &Path, exit: &Exit, pods: &[(String, String)]) -> Result<()> {
    println!();
    println!("demo: capture written to {}", pcapng.display());
    agent_counters(exit, pods)?;
    tshark_summary(pcapng, pods, exit)?;
    println!(
        "demo: open it in Wireshark: wireshark {}  (or: tshark -r {})",
        pcapng.display(),
        pcapng.display()
    );
    Ok(())
}

fn agent_counters(exit: &Exit, pods: &[(String, String)]) -> Result<()> {
    // Every counter of the `summary total` line, in the agent's own order.
    exit.summary()?;
    let total = exit
        .stderr
        .lines()
        .find(|l| l.contains("summary total"))
        .unwrap_or_default();
    let shown: Vec<&str> = total
        .split_whitespace()
        .filter(|kv| {
            kv.split_once('=')
                .is_some_and(|(_, v)| v.parse::<u64>().is_ok())
        })
        .collect();
    println!("demo: agent summary: {}", shown.join(" "));
    // Per-interface lines: `... summary interface=NAME seen=N mirrored=N ...`.
    for line in exit.stderr.lines().filter(|l| !l.contains("summary total")) {
        let Some(name) = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("interface="))
        else {
            continue;
        };
        if !line.contains(" summary ") {
            continue;
        }
        let f = fields(line);
        let get = |k: &str| f.get(k).copied().unwrap_or(0);
        println!(
            "demo:   {name} ({}): seen={} mirrored={}",
            pod_of(pods, name),
            get("seen"),
            get("mirrored")
        );
    }
    Ok(())
}

fn tshark_summary(pcapng: &Path, pods: &[(String, String)], exit: &Exit) -> Result<()> {
    let file = pcapng.to_string_lossy();
    let listing = capture(Command::new("tshark").args([
        "-r",
        &file,
        "-T",
        "fields",
        "-e",
        "frame.interface_name",
        "-e",
        "frame.packet_flags_direction",
    ]))
    .context("reading the capture with tshark")?;
    // (interface) -> (inbound, outbound), from the hooked interface's point of view.
    let mut per_if: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut packets = 0u64;
    for line in listing.lines() {
        let mut cols = line.split('\t');
        let name = cols.next().unwrap_or("?").to_owned();
        let dir = cols.next().unwrap_or("");
        let entry = per_if.entry(name).or_default();
        match direction(dir) {
            Some(1) => entry.0 += 1,
            Some(2) => entry.1 += 1,
            _ => {}
        }
        packets += 1;
    }
    let written = exit.summary()?.get("written").copied();
    let agrees = match written {
        Some(w) if w == packets => " (as many as the agent wrote)".to_owned(),
        Some(w) => format!(" (the agent says it wrote {w}!)"),
        None => String::new(),
    };
    println!("demo: tshark reads {packets} packets{agrees}");
    for (name, (inbound, outbound)) in &per_if {
        println!(
            "demo:   {name} ({}): {inbound} inbound (sent by the pod), {outbound} outbound (to the pod)",
            pod_of(pods, name)
        );
    }
    let phs = capture(Command::new("tshark").args(["-r", &file, "-q", "-z", "io,phs"]))
        .context("tshark protocol hierarchy")?;
    println!("demo: protocols in the capture (tshark -q -z io,phs):");
    for line in phs.lines().filter(|l| !l.trim().is_empty()) {
        println!("  {line}");
    }
    Ok(())
}

/// tshark prints `epb_flags` direction as hex (`0x00000001`) or decimal.
fn direction(field: &str) -> Option<u32> {
    let field = field.trim();
    match field.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => field.parse().ok(),
    }
}

fn pod_of<'a>(pods: &'a [(String, String)], interface: &str) -> &'a str {
    pods.iter()
        .find(|(host_if, _)| host_if == interface)
        .map_or("?", |(_, pod)| pod.as_str())
}
