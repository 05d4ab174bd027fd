//! `--metrics-addr`: /metrics, /healthz and /readyz over real HTTP, scraped
//! from inside the namespace the agent (or collector) runs in, while it runs.
//! The numbers are checked against independent counts (tcpdump on the
//! hooked interface, the frames and bytes in the collector's files) and the
//! summary the process logs when it stops; the text against an independent
//! parser (prometheus-parse) and a strict line check; the metric names the
//! docs and dashboard use against a live scrape.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use testbed::{
    agent::{self, Agent},
    capture,
    collector::Collector,
    http::get,
    netns::Netns,
    process::Process,
    tcpdump::Tcpdump,
    topology::{CollectorLink, PodPair},
    traffic,
};

/// The default `--metrics-addr`: every test has its own namespaces, so the
/// same port serves in each.
const DEFAULT: &str = "127.0.0.1:9464";

/// One sample: name (with `_total` for counters), labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Scrapes /metrics, checks the text and returns its samples.
fn scrape(ns: &Netns, addr: &str) -> Result<Vec<Sample>> {
    let answer = get(ns, addr, "/metrics")?;
    ensure!(answer.status == 200, "/metrics: {}", answer.status);
    ensure!(
        answer
            .content_type
            .starts_with("application/openmetrics-text"),
        "content type {}",
        answer.content_type
    );
    let samples = strict_check(&answer.body)?;
    // An independent parser must read every sample line the same way.
    let parsed = prometheus_parse::Scrape::parse(answer.body.lines().map(|l| Ok(l.to_owned())))?;
    ensure!(
        parsed.samples.len() == samples.len(),
        "prometheus-parse read {} samples, the line check {}",
        parsed.samples.len(),
        samples.len()
    );
    for (ours, theirs) in samples.iter().zip(&parsed.samples) {
        let value = match theirs.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => bail!("unexpected histogram or summary: {theirs:?}"),
        };
        ensure!(
            ours.name == theirs.metric && ours.value == value,
            "{ours:?} vs {theirs:?}"
        );
        for (k, v) in &ours.labels {
            ensure!(
                theirs.labels.get(k) == Some(v.as_str()),
                "{ours:?} vs {theirs:?}"
            );
        }
    }
    Ok(samples)
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Every line is HELP, TYPE, a sample of a declared family, or the final
/// `# EOF`; label values are properly quoted and escaped; counters end in
/// `_total`; every value is a number.
fn strict_check(text: &str) -> Result<Vec<Sample>> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = Vec::new();
    let mut lines = text.lines().peekable();
    let mut eof = false;
    while let Some(line) = lines.next() {
        ensure!(!eof, "text after # EOF: {line}");
        if line == "# EOF" {
            eof = true;
            ensure!(lines.peek().is_none(), "# EOF is not the last line");
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            ensure!(is_name(name), "bad HELP: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("bad TYPE")?;
            ensure!(is_name(name), "bad TYPE: {line}");
            ensure!(kind == "counter" || kind == "gauge", "type {kind}: {line}");
            types.insert(name.to_owned(), kind.to_owned());
        } else {
            samples.push(sample_line(line, &types).with_context(|| format!("line: {line}"))?);
        }
    }
    ensure!(eof, "no # EOF");
    Ok(samples)
}

fn sample_line(line: &str, types: &HashMap<String, String>) -> Result<Sample> {
    let end = line.find(['{', ' ']).context("no value")?;
    let name = &line[..end];
    ensure!(is_name(name), "bad name");
    let family = match types.get(name).map(String::as_str) {
        Some("gauge") => name,
        _ => {
            let base = name.strip_suffix("_total").context("undeclared family")?;
            ensure!(
                types.get(base).map(String::as_str) == Some("counter"),
                "undeclared"
            );
            base
        }
    };
    ensure!(family.starts_with("mirror_"), "not ours");
    let mut rest = &line[end..];
    let mut labels = HashMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            let (key, after) = rest.split_once("=\"").context("label without =\"")?;
            ensure!(is_name(key), "bad label name {key}");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let close = loop {
                match chars.next().context("unterminated label value")? {
                    (_, '\\') => match chars.next().context("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => bail!("bad escape \\{c}"),
                    },
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            labels.insert(key.to_owned(), value);
            rest = &after[close + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else {
                rest = rest.strip_prefix('}').context("labels not closed")?;
                break;
            }
        }
    }
    let value = rest.strip_prefix(' ').context("no space before value")?;
    let value: f64 = value.parse().context("value not a number")?;
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The value of the one sample of `name` whose labels include `with`.
fn value(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Result<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.value),
        _ => bail!(
            "{} samples of {name} with {with:?}: {samples:#?}",
            found.len()
        ),
    }
}

/// The sum of every sample of `name` whose labels include `with` (a counter
/// split by a label such as `reason`); at least one must be there.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Result<f64> {
    let found: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
        .collect();
    ensure!(!found.is_empty(), "no sample of {name} with {with:?}");
    Ok(found.iter().sum())
}

/// The agent's counters, scraped live, equal tcpdump's count of the same
/// interface (packets and bytes), then the summary it logs at exit.
#[test]
fn agent_metrics_match_tcpdump() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let dir = tempfile::tempdir().expect("temp dir");
    let output = format!("pcapng:{}", dir.path().join("out.pcapng").display());
    // The topology is quiet (no IPv6), so tcpdump, started first, sees
    // exactly the packets of the agent's window.
    let tcpdump =
        Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("t.pcap"), &[]).expect("tcpdump");
    let agent = Agent::start(
        &pair.node,
        &["attach", "-i", &pair.host_if, "--output", &output],
    )
    .expect("agent starts");
    // "mirroring started" has been printed: ready, and healthy.
    let ready = get(&pair.node, DEFAULT, "/readyz").expect("readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(
        get(&pair.node, DEFAULT, "/healthz")
            .expect("healthz")
            .status,
        200
    );
    assert_eq!(
        get(&pair.node, DEFAULT, "/nothing").expect("404").status,
        404
    );

    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 5).expect("ping");
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    let packets = oracle.len() as f64;
    let bytes: f64 = oracle.iter().map(|f| f64::from(f.orig_len)).sum();
    assert!(packets >= 10.0, "too little traffic: {packets}");
    let iface = [
        ("interface", pair.host_if.as_str()),
        ("policy", "command-line"),
    ];
    let out = [("output", output.as_str())];
    // Live: scrape until every copy is counted as mirrored and sent.
    let mut samples = Vec::new();
    eventually("the agent counts what tcpdump saw", || {
        samples = scrape(&pair.node, DEFAULT)?;
        Ok(
            value(&samples, "mirror_mirrored_packets_total", &iface)? == packets
                && value(&samples, "mirror_output_sent_packets_total", &out)? == packets,
        )
    });
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let total = exit.summary().expect("summary");
    assert_eq!(total["mirrored"] as f64, packets, "{}", exit.stderr);
    assert_eq!(
        value(&samples, "mirror_seen_packets_total", &iface).expect("seen"),
        packets
    );
    assert_eq!(total["seen"] as f64, packets, "{}", exit.stderr);
    assert_eq!(
        value(&samples, "mirror_mirrored_bytes_total", &iface).expect("bytes"),
        bytes
    );
    assert_eq!(
        value(&samples, "mirror_seen_bytes_total", &iface).expect("seen bytes"),
        bytes
    );
    for reason in ["ring_full", "copy_failed", "sampling"] {
        let with = [iface[0], ("reason", reason)];
        assert_eq!(
            value(&samples, "mirror_dropped_packets_total", &with).expect(reason),
            0.0
        );
    }
    let kernel_filter = [iface[0], ("reason", "filter"), ("stage", "kernel")];
    assert_eq!(
        value(&samples, "mirror_dropped_packets_total", &kernel_filter).expect("filter"),
        0.0
    );
    for reason in ["queue_full", "send_error"] {
        let with = [out[0], ("reason", reason)];
        assert_eq!(
            value(&samples, "mirror_dropped_packets_total", &with).expect(reason),
            0.0
        );
    }
    assert_eq!(
        value(&samples, "mirror_mtu_truncated_total", &out).expect("mtu"),
        0.0
    );
    // Everything was sent, so nothing waits anywhere.
    assert_eq!(
        value(&samples, "mirror_output_queue_bytes", &out).expect("queue"),
        0.0
    );
    assert_eq!(
        value(&samples, "mirror_attached_interfaces", &[]).expect("attached"),
        1.0
    );
    assert_eq!(value(&samples, "mirror_ready", &[]).expect("ready"), 1.0);
    assert_eq!(
        value(&samples, "mirror_ring_buffer_pending_bytes", &[]).expect("pending"),
        0.0
    );
    assert!(value(&samples, "mirror_ring_buffer_size_bytes", &[]).expect("size") >= 4096.0);
    // A file output sends nothing over the hooked interface.
    assert_eq!(
        value(&samples, "mirror_own_traffic_packets_total", &iface).expect("own"),
        0.0
    );
    let reasons: HashSet<&str> = samples
        .iter()
        .filter(|s| s.name == "mirror_dropped_packets_total")
        .filter_map(|s| s.labels.get("reason").map(String::as_str))
        .collect();
    assert_eq!(
        reasons,
        HashSet::from([
            "ring_full",
            "copy_failed",
            "sampling",
            "filter",
            "rate_limit",
            "queue_full",
            "send_error",
            "malformed"
        ]),
    );
}

/// /readyz says 200 only once the hooks are attached: never before the
/// agent has printed "mirroring started" (it sets ready just after).
#[test]
fn ready_only_once_mirroring() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let mut cmd = pair.node.command(&agent::binary().to_string_lossy());
    cmd.args(["attach", "-i", &pair.host_if, "-o", "pcapng:/dev/null"])
        .stdout(std::process::Stdio::null());
    let mut process = Process::spawn("mirror-agent", cmd).expect("agent runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut not_ready = 0;
    loop {
        assert!(Instant::now() < deadline, "never ready");
        match get(&pair.node, DEFAULT, "/readyz") {
            Ok(a) if a.status == 200 => break,
            Ok(a) => {
                assert_eq!(a.status, 503, "{}", a.body);
                not_ready += 1;
            }
            // Not listening yet.
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    process
        .wait_for_line("mirroring started", Duration::from_millis(500))
        .expect("ready only after mirroring started");
    // The port is bound before the programs load, which takes long enough
    // (the verifier) for many 503s at this polling rate.
    assert!(not_ready > 0, "/readyz never answered 503 before 200");
    let (status, stderr) = process
        .stop(Signal::SIGTERM, Duration::from_secs(20))
        .expect("agent stops");
    assert!(status.success(), "{stderr}");
}

#[test]
fn a_bad_metrics_addr_is_bad_input() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    // Unparseable, then not an address of this namespace.
    for addr in ["localhost", "198.18.200.1:9464"] {
        let exit = agent::run(
            &pair.node,
            &[
                "attach",
                "-i",
                &pair.host_if,
                "-o",
                "pcapng:/dev/null",
                "--metrics-addr",
                addr,
            ],
        )
        .expect("agent runs");
        assert_eq!(exit.status.code(), Some(2), "{addr}: {}", exit.stderr);
        assert!(exit.stderr.contains("--metrics-addr"), "{}", exit.stderr);
        assert!(!exit.stderr.contains("attached"), "{}", exit.stderr);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let output = format!("pcapng:{}", dir.path().display());
    let exit = agent::run(
        &pair.node,
        &[
            "collect",
            "-l",
            "vxlan://127.0.0.1",
            "-o",
            &output,
            "--metrics-addr",
            "198.18.200.1:1",
        ],
    )
    .expect("collector runs");
    assert_eq!(exit.status.code(), Some(2), "{}", exit.stderr);
    assert!(exit.stderr.contains("--metrics-addr"), "{}", exit.stderr);
}

/// Polls `f` until it holds, for at most 10 s.
fn eventually(what: &str, mut f: impl FnMut() -> Result<bool>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Ok(true) => return,
            Ok(false) | Err(_) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Ok(false) => panic!("{what}: never held"),
            Err(e) => panic!("{what}: {e:#}"),
        }
    }
}

#[test]
fn collector_metrics_match_its_summary() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    // The listener label is its URI as the collector shows it, port included.
    let listen = format!("vxlan://{}:4789", link.collector_v4);
    let collector = Collector::start(&link.ns, &[&listen], &[]).expect("collector starts");
    assert_eq!(
        get(&link.ns, DEFAULT, "/readyz").expect("readyz").status,
        200
    );
    assert_eq!(
        get(&link.ns, DEFAULT, "/healthz").expect("healthz").status,
        200
    );

    let output = format!("vxlan://{}?vni=5", link.collector_v4);
    let dir = tempfile::tempdir().expect("temp dir");
    let tcpdump =
        Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("t.pcap"), &[]).expect("tcpdump");
    let agent = Agent::start(&pair.node, &["attach", "-i", &pair.host_if, "-o", &output])
        .expect("agent starts");
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 5).expect("ping");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let sent = exit.fields_of("output summary").expect("output summary")["sent"] as f64;
    assert!(sent >= 10.0, "{}", exit.stderr);

    let label = [("listener", listen.as_str())];
    let mut last = Vec::new();
    // Listener counters are live; the writer's are published once a second.
    eventually("the collector counts every copy", || {
        last = scrape(&link.ns, DEFAULT)?;
        Ok(
            value(&last, "mirror_collect_decoded_packets_total", &label)? == sent
                && value(&last, "mirror_collect_written_packets_total", &[])? == sent,
        )
    });
    assert!(
        value(&last, "mirror_collect_received_packets_total", &label).expect("received") >= sent
    );
    for reason in ["short", "foreign", "garbled"] {
        let with = [label[0], ("reason", reason)];
        assert_eq!(
            value(&last, "mirror_collect_errors_total", &with).expect(reason),
            0.0
        );
    }
    assert_eq!(
        value(&last, "mirror_collect_write_errors_total", &[]).expect("errors"),
        0.0
    );
    // No rotation, and a datagram listener takes no connections.
    assert_eq!(
        value(&last, "mirror_collect_files_deleted_total", &[]).expect("deleted"),
        0.0
    );
    assert_eq!(
        value(&last, "mirror_collect_connections_total", &label).expect("connections"),
        0.0
    );
    assert_eq!(
        total(&last, "mirror_collect_refused_connections_total", &label).expect("refused"),
        0.0
    );

    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exit");
    // Independent counts: the frames in its files (read by pcap-file), and
    // tcpdump's on the pod's veth.
    let frames = collected.frames().expect("collector files");
    assert_eq!(frames.len() as f64, sent);
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    assert_eq!(oracle.len() as f64, sent, "{}", exit.stderr);
    // Bytes written are the files' bytes (blocks and all), as on disk.
    let files = collected.files().expect("files");
    let on_disk: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).expect("file size").len())
        .sum();
    assert_eq!(
        value(&last, "mirror_collect_written_bytes_total", &[]).expect("written bytes"),
        on_disk as f64
    );
    assert_eq!(
        value(&last, "mirror_collect_files_written_total", &[]).expect("files"),
        files.len() as f64
    );
    let listener = testbed::agent::fields(
        collected
            .stderr
            .lines()
            .find(|l| l.contains("listener summary"))
            .expect("listener summary"),
    );
    assert_eq!(listener["decoded"] as f64, sent, "{}", collected.stderr);
}

/// Every metric the Grafana dashboard and docs/metrics.md name is one a
/// live scrape shows: of an agent mirroring into a tunnel, and of the
/// collector receiving it.
#[test]
fn dashboard_and_docs_name_metrics_a_scrape_shows() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    let listen = format!("vxlan://{}:4789", link.collector_v4);
    let collector = Collector::start(&link.ns, &[&listen], &[]).expect("collector starts");
    let output = format!("vxlan://{}?vni=5", link.collector_v4);
    let agent = Agent::start(&pair.node, &["attach", "-i", &pair.host_if, "-o", &output])
        .expect("agent starts");
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 2).expect("ping");
    let doc = include_str!("../../docs/metrics.md");
    let dashboard = include_str!("../../deploy/grafana/mirror-dashboard.json");
    let named = |text: &str| -> Vec<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|t| t.starts_with("mirror_") && !matches!(*t, "mirror_common" | "mirror_agent"))
            .map(str::to_owned)
            .collect()
    };
    let wanted: HashSet<String> = named(doc).into_iter().chain(named(dashboard)).collect();
    assert!(
        wanted.len() > 20,
        "only {} metric names named",
        wanted.len()
    );
    let mut missing = Vec::new();
    // The collector's writer publishes once a second: scrape until it has.
    eventually("every named metric is in a scrape", || {
        let scraped: HashSet<String> = scrape(&pair.node, DEFAULT)?
            .into_iter()
            .chain(scrape(&link.ns, DEFAULT)?)
            .map(|s| s.name)
            .collect();
        missing = wanted
            .iter()
            .filter(|n| !scraped.contains(*n) && !scraped.contains(&format!("{n}_total")))
            .cloned()
            .collect();
        Ok(missing.is_empty())
    });
    assert!(missing.is_empty(), "named but not exported: {missing:?}");
    agent.stop().expect("agent stops");
    collector.stop().expect("collector stops");
}
