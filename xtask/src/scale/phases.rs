//! The measured phases of a scale run, with the agent running: baseline,
//! attach, idle and detach (see the list in mod.rs), and the Pod objects
//! and policy status they go by.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use testbed::{apiserver::ApiServer, netns::join};

use super::{
    GIVE_UP, IDLE, MIRROR, NODE, POLICY, POLL, STATUS_INTERVAL, TENANT, gauge,
    hooks::{self, Want},
    memory::Memory,
    pod_name,
    report::{self, Figures},
    topology::{End, ScaleNet},
};
use crate::{
    bench::{
        measure,
        scrape::{self, METRICS_ADDR},
    },
    stop::StopFlag,
};

/// Baseline, attach, idle and detach, with the agent running; `ends[i]`
/// is where pod i's hooks are expected.
pub(super) fn measure_phases(
    net: &ScaleNet,
    ends: &[End],
    server: &ApiServer,
    pid: u32,
    stop: &StopFlag,
) -> Result<Figures> {
    let n = ends.len();
    // The agent writes the policy's first status (no pods yet) within a
    // second or so; then it idles past --status-interval, so the status
    // after the pods arrive is not held back by that first write.
    println!("scale: baseline: the agent idles with no pods");
    let started = Instant::now();
    loop {
        if node_status(server).is_some() {
            break;
        }
        ensure_running(pid, stop)?;
        if started.elapsed() > Duration::from_secs(15) {
            bail!("the agent wrote no status for policy {TENANT}/{POLICY} within 15 s");
        }
        thread::sleep(POLL);
    }
    idle(Duration::from_secs(STATUS_INTERVAL + 1), pid, stop)?;
    let baseline = Memory::of(pid)?;
    println!("scale: baseline RSS {}", report::mib(baseline.rss));
    // /metrics answers, and counts nothing yet: else the phases below
    // would only time out.
    let before = join(
        net.node
            .spawn(|| gauge::attached(&scrape::get(METRICS_ADDR, Duration::from_secs(5))?)),
    )
    .with_context(|| format!("the agent's /metrics at {METRICS_ADDR}"))?;
    anyhow::ensure!(
        before == 0,
        "with no pods, the agent's /metrics says {} {before}",
        gauge::ATTACHED
    );

    // Attach: every Pod object at once.
    println!("scale: attach: creating {n} Pod objects");
    let cpu0 = measure::process_cpu_ns(pid)?;
    let t0 = Instant::now();
    for (i, ip) in net.ips.iter().enumerate() {
        server
            .create(pod(i, &ip.to_string()))
            .map_err(|e| anyhow::anyhow!("creating pod {}: {e}", pod_name(i)))?;
    }
    let create_objects = t0.elapsed();
    let cancel = Arc::new(AtomicBool::new(false));
    let watcher = hooks::watch(ends.to_vec(), Want::Attached, t0, pid, cancel.clone())?;
    let counter = gauge::watch(&net.node, n as u64, t0, cancel.clone());
    let mut status: Option<Duration> = None;
    let mut last_seen = None;
    loop {
        if status.is_none() {
            let counts = node_status(server).map(|s| counts(&s));
            if let Some((_, attached)) = counts
                && attached == n as u64
            {
                status = Some(t0.elapsed());
            }
            last_seen = counts.or(last_seen);
        }
        let watched = watcher.is_finished() && counter.is_finished();
        if (status.is_some() && watched) || t0.elapsed() > GIVE_UP {
            break;
        }
        if let Err(e) = ensure_running(pid, stop) {
            cancel.store(true, Ordering::SeqCst);
            let _ = join(watcher);
            let _ = join(counter);
            return Err(e);
        }
        thread::sleep(POLL);
    }
    cancel.store(true, Ordering::SeqCst);
    let attach = join(watcher).context("watching the hooks being attached")?;
    let counted = join(counter).context("reading the agent's /metrics while it attached")?;
    let attach_cpu_ns = attach.cpu_at_done.unwrap_or(measure::process_cpu_ns(pid)?) - cpu0;
    println!(
        "scale: attach: {} of {n} attached, the last after {}; /metrics {}={} after {}; \
         status attachedPods={} after {}",
        attach.count(),
        report::secs(attach.last()),
        gauge::ATTACHED,
        counted
            .changes
            .last()
            .map_or_else(|| "?".to_owned(), |(_, v)| v.to_string()),
        report::secs(counted.reached),
        last_seen.map_or_else(|| "?".to_owned(), |(_, a)| a.to_string()),
        report::secs(status)
    );

    // Idle with every pod attached.
    println!("scale: idle: {} s with the pods attached", IDLE.as_secs());
    let idle_cpu0 = measure::process_cpu_ns(pid)?;
    idle(IDLE, pid, stop)?;
    let idle_cpu_ns = measure::process_cpu_ns(pid)? - idle_cpu0;
    let idle_memory = Memory::of(pid)?;
    println!("scale: idle RSS {}", report::mib(idle_memory.rss));

    // Detach: every Pod object deleted.
    println!("scale: detach: deleting {n} Pod objects");
    let cpu1 = measure::process_cpu_ns(pid)?;
    let t1 = Instant::now();
    for i in 0..n {
        server
            .delete("v1", "Pod", Some(TENANT), &pod_name(i))
            .map_err(|e| anyhow::anyhow!("deleting pod {}: {e}", pod_name(i)))?;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let watcher = hooks::watch(ends.to_vec(), Want::Detached, t1, pid, cancel.clone())?;
    let counter = gauge::watch(&net.node, 0, t1, cancel.clone());
    // Both end by themselves: when there, or at GIVE_UP.
    while !(watcher.is_finished() && counter.is_finished()) {
        if let Err(e) = ensure_running(pid, stop) {
            cancel.store(true, Ordering::SeqCst);
            let _ = join(watcher);
            let _ = join(counter);
            return Err(e);
        }
        thread::sleep(POLL);
    }
    let detach = join(watcher).context("watching the hooks being detached")?;
    let counted_detach = join(counter).context("reading the agent's /metrics while it detached")?;
    let detach_cpu_ns = detach.cpu_at_done.unwrap_or(measure::process_cpu_ns(pid)?) - cpu1;
    println!(
        "scale: detach: {} of {n} detached, the last after {}; /metrics {}=0 after {}",
        detach.count(),
        report::secs(detach.last()),
        gauge::ATTACHED,
        report::secs(counted_detach.reached)
    );
    Ok(Figures {
        pods: n,
        setup: Default::default(),
        create_objects,
        attach: attach.at,
        counted,
        attach_cpu_ns,
        status,
        status_seen: last_seen,
        baseline,
        idle: idle_memory,
        idle_secs: IDLE.as_secs_f64(),
        idle_cpu_ns,
        detach: detach.at,
        counted_detach,
        detach_cpu_ns,
        total_cpu_ns: measure::process_cpu_ns(pid)?,
        status_interval: STATUS_INTERVAL,
        ring_size: None,
        attach_point: None,
        log_level: String::new(),
    })
}

/// A Running pod of the tenant on this node, selected by the policy.
fn pod(i: usize, ip: &str) -> Value {
    let name = pod_name(i);
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": TENANT, "uid": format!("uid-scale-{i}"),
                        "labels": {"app": "scale"}},
           "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "example"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// The policy's status entry of this node, if written.
fn node_status(server: &ApiServer) -> Option<Value> {
    let policy = server.get(MIRROR, "MirrorPolicy", Some(TENANT), POLICY)?;
    policy["status"]["nodes"]
        .as_array()?
        .iter()
        .find(|e| e["node"] == NODE)
        .cloned()
}

/// `(matchedPods, attachedPods)` of a status entry.
fn counts(entry: &Value) -> (u64, u64) {
    (
        entry["matchedPods"].as_u64().unwrap_or(0),
        entry["attachedPods"].as_u64().unwrap_or(0),
    )
}

/// Fails if Ctrl-C was pressed or the agent has exited.
fn ensure_running(pid: u32, stop: &StopFlag) -> Result<()> {
    stop.check()?;
    if !alive(pid) {
        // Its log says why: the caller stops it and keeps the log.
        bail!("the agent (pid {pid}) exited during the measurement");
    }
    Ok(())
}

/// Whether `pid` still runs (an exited child is a zombie until reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Waits `how_long`, watching for Ctrl-C and the agent's exit.
fn idle(how_long: Duration, pid: u32, stop: &StopFlag) -> Result<()> {
    let until = Instant::now() + how_long;
    while Instant::now() < until {
        ensure_running(pid, stop)?;
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
