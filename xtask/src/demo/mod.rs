//! `cargo xtask demo`: a node namespace with a bridge and three pods, the
//! release agent mirroring the pods' host-side veths into a pcapng, real
//! HTTP, UDP and ping between the pods, and a summary of what was captured.
//!
//! Every namespace, link, thread and process is owned by a guard, and
//! Ctrl-C (or SIGTERM) only raises a flag, so the guards' Drop impls run on
//! every way out, and nothing is left behind.

mod http;
mod report;

use std::{net::IpAddr, path::Path, process::Stdio};

use anyhow::{Context, Result, ensure};
use testbed::{agent::Agent, topology::BridgedNode, traffic};

use crate::{
    build, paths, run, setup,
    stop::{Interrupted, StopFlag},
};

/// How many HTTP requests pod1 makes to pod2.
const HTTP_REQUESTS: usize = 5;
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;
/// UDP payload sizes; the last is over the MTU, so it goes as IP fragments.
const UDP_SIZES: &[usize] = &[64, 512, 1400, 3000];
const PINGS: u32 = 4;

pub fn run() -> Result<()> {
    run::require_root("cargo xtask demo")?;
    let stop = StopFlag::install("demo")?;
    let result = demo(&stop);
    // A step that failed because Ctrl-C killed its child (cargo, ping) was
    // interrupted, not broken.
    if stop.raised() {
        return Err(Interrupted("demo").into());
    }
    result
}

fn demo(stop: &StopFlag) -> Result<()> {
    setup::run()?;
    stop.check()?;
    let agent_bin = build::agent_at(build::Profile::Release)?;
    stop.check()?;

    let out_dir = paths::target_dir().join("demo");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let pcapng = out_dir.join("demo.pcapng");
    // A file from an earlier run must not pass for this one's.
    if pcapng.exists() {
        std::fs::remove_file(&pcapng).with_context(|| format!("removing {}", pcapng.display()))?;
    }

    println!("demo: creating a node namespace with a bridge and 3 pods (198.18.0.0/24)");
    let node = BridgedNode::new(3).context("creating the node and its pods")?;
    for pod in &node.pods {
        println!(
            "demo:   {} {} (namespace {}), host side {} in {}",
            pod.name,
            pod.v4,
            pod.ns.name(),
            pod.host_if,
            node.node.name()
        );
    }
    let names: Vec<(String, String)> = node
        .pods
        .iter()
        .map(|p| (p.host_if.clone(), p.name.clone()))
        .collect();
    stop.check()?;
    let result = mirror_traffic(&node, &agent_bin, &pcapng, stop);
    // The agent and server are stopped inside; the namespaces go here.
    drop(node);
    stop.check()?;
    let exit = result?;
    report::print(&pcapng, &exit, &names)
}

/// Starts the server and the agent, makes the traffic, stops both, and
/// returns the agent's exit. Guards stop whatever was started on error.
fn mirror_traffic(
    node: &BridgedNode,
    agent_bin: &Path,
    pcapng: &Path,
    stop: &StopFlag,
) -> Result<testbed::agent::Exit> {
    let [pod1, pod2, pod3] = &node.pods[..] else {
        anyhow::bail!("expected 3 pods, got {}", node.pods.len());
    };
    let server = http::Server::start(&pod2.ns, HTTP_PORT, stop.clone())?;
    println!(
        "demo: HTTP server listening on {}:{HTTP_PORT} in {}",
        pod2.v4, pod2.name
    );

    let mut cmd = node.node.command(&agent_bin.to_string_lossy());
    cmd.arg("attach");
    for pod in &node.pods {
        cmd.args(["-i", &pod.host_if]);
    }
    cmd.arg("--output")
        .arg(format!("pcapng:{}", pcapng.display()))
        .stdout(Stdio::null());
    println!("demo: {}", run::describe(&cmd));
    let agent = Agent::start_command(cmd).context("starting the agent")?;
    println!("demo: mirroring started");

    let traffic = make_traffic(pod1, pod2, pod3, stop);
    // Always stop the agent, so the file is complete whatever happened.
    println!("demo: stopping the agent (SIGTERM)");
    let exit = agent.stop().context("stopping the agent");
    let served = server.stop();
    stop.check()?;
    traffic?;
    let exit = exit?;
    served?;
    ensure!(
        exit.status.success(),
        "the agent failed ({}):\n{}",
        exit.status,
        exit.stderr
    );
    Ok(exit)
}

fn make_traffic(
    pod1: &testbed::topology::BridgedPod,
    pod2: &testbed::topology::BridgedPod,
    pod3: &testbed::topology::BridgedPod,
    stop: &StopFlag,
) -> Result<()> {
    println!(
        "demo: HTTP: {HTTP_REQUESTS} GET requests {} -> {}:{HTTP_PORT}",
        pod1.name, pod2.name
    );
    let bytes = http::get_many(&pod1.ns, IpAddr::V4(pod2.v4), HTTP_PORT, HTTP_REQUESTS)?;
    println!("demo:   {HTTP_REQUESTS} responses, {bytes} bytes, all 200 OK");
    stop.check()?;

    println!(
        "demo: UDP: datagrams of {UDP_SIZES:?} bytes {} -> {}:{UDP_PORT} (the last one fragmented)",
        pod3.name, pod1.name
    );
    traffic::udp(&pod3.ns, &pod1.ns, IpAddr::V4(pod1.v4), UDP_PORT, UDP_SIZES)?;
    stop.check()?;

    println!(
        "demo: ping: {PINGS} echo requests {} -> {}",
        pod1.name, pod3.name
    );
    traffic::ping(&pod1.ns, IpAddr::V4(pod3.v4), PINGS)?;
    stop.check()
}
