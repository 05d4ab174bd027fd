//! Authenticated peers that hold a `tls://` listener (issue 17): a client
//! with a certificate from the collector's own CA completes the mutual-TLS
//! handshake, then stays silent or trickles a large block a byte a second.
//! The idle and read timeouts apply after the handshake as before it:
//! every such peer is cut, counted by reason, while a real agent's stream
//! over TLS gets every frame tcpdump saw on the pod's veth into the files.
//! Memory is the kernel's VmHWM of the collector.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use rustls::{ClientConnection, StreamOwned, pki_types::ServerName};
use testbed::{
    agent::Agent,
    capture,
    collector::Collector,
    http::{get, sample as metric},
    netns::join,
    pki::{self, Pki},
    tcpdump::Tcpdump,
    topology::CollectorLink,
    traffic,
};

#[path = "tls/client.rs"]
mod client;
#[path = "hostile/peers.rs"]
mod peers;

use client::plain_client;
use peers::{peak_rss_kib, shb_and_big_block_head};

const COLLECTOR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const PORT: u16 = 7443;
/// The collector's default --metrics-addr, inside its own namespace.
const METRICS: &str = "127.0.0.1:9464";
const IDLE: usize = 8;
const TRICKLE: usize = 6;

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Waits until the collector's /metrics satisfies `done`, for at most 20 s.
fn wait_metrics(ns: &testbed::netns::Netns, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = get(ns, METRICS, "/metrics").expect("/metrics answers").body;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How long after `since` the collector ended the connection (an end of
/// stream or an error: it cuts without close_notify), within 15 s.
fn closed_after(mut tls: Tls, since: Instant) -> Result<Duration> {
    tls.sock.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut b = [0u8; 16];
    match tls.read(&mut b) {
        Ok(0) => Ok(since.elapsed()),
        Ok(_) => bail!("the collector sent data"),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            bail!("still open after 15 s")
        }
        Err(_) => Ok(since.elapsed()),
    }
}

#[test]
fn idle_and_trickling_peers_after_a_tls_handshake_are_cut_while_an_agent_gets_through() {
    testbed::require_root();
    let (pair, link) = CollectorLink::jumbo_with_pod();
    let pki = Pki::new().expect("pki");
    let (listen, output) = pki.uris(&pki.main, PORT);
    let collector = Collector::start(
        &link.ns,
        &[&listen],
        &["--idle-timeout", "3", "--read-timeout", "3"],
    )
    .expect("collector starts");

    // The attackers hold the collector's own client certificate: they are
    // authenticated, so only the timeouts can end them.
    let config = plain_client(&pki.main.ca, Some(&pki.main.client));
    let addr = SocketAddr::from((COLLECTOR, PORT));
    let started = Instant::now();
    let (idle, trickle) = join(link.ns.spawn(move || {
        let open = || -> Result<Tls> {
            let tcp = TcpStream::connect(addr)?;
            let name = ServerName::try_from(pki::SERVER_NAME)?.to_owned();
            let mut tls = StreamOwned::new(ClientConnection::new(config.clone(), name)?, tcp);
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock)?;
            }
            Ok(tls)
        };
        let idle = (0..IDLE).map(|_| open()).collect::<Result<Vec<_>>>()?;
        let mut trickle = Vec::new();
        for _ in 0..TRICKLE {
            let mut tls = open()?;
            tls.write_all(&shb_and_big_block_head(320 * 1024))?;
            tls.flush()?;
            trickle.push(tls);
        }
        Ok((idle, trickle))
    }))
    .expect("attack connections");
    // Each idle peer waits for the collector to end it, from now on.
    let idle: Vec<_> = idle
        .into_iter()
        .map(|s| std::thread::spawn(move || closed_after(s, started)))
        .collect();
    // One byte a second on each trickler, for longer than --read-timeout.
    let trickler = std::thread::spawn(move || {
        let mut open = trickle;
        for _ in 0..6 {
            for s in &mut open {
                let _ = s.write_all(&[0]).and_then(|()| s.flush());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        open
    });

    let dump_dir = tempfile::tempdir().expect("tempdir");
    let tcpdump = Tcpdump::start(
        &pair.node,
        &pair.host_if,
        dump_dir.path().join("pod.pcap"),
        &[],
    )
    .expect("tcpdump");
    let agent = Agent::start(
        &pair.node,
        &["attach", "-i", &pair.host_if, "--output", &output],
    )
    .expect("agent starts");
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 5).expect("ping");
    traffic::udp(
        &pair.pod,
        &pair.node,
        IpAddr::V4(pair.node_v4),
        5001,
        &[100, 1400, 8000],
    )
    .expect("udp");
    let oracle = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");
    // The agent stops once the collector has decoded as many copies as
    // tcpdump saw.
    wait_metrics(&link.ns, "the agent's copies never arrived", |body| {
        metric(body, "mirror_collect_decoded_packets_total", &[]).unwrap_or(0)
            >= oracle.len() as u64
    });
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "agent failed: {}", exit.stderr);

    let idle_closed: Vec<Duration> = idle
        .into_iter()
        .map(|t| t.join().expect("reader"))
        .collect::<Result<_>>()
        .expect("every idle peer is cut by the collector");
    let first = idle_closed.iter().min().copied().unwrap_or_default();
    assert!(
        first >= Duration::from_millis(2500),
        "an idle peer was cut before --idle-timeout: {first:?}"
    );
    // By the time the trickler gives up, each of its peers has been cut
    // (the count by reason below says what cut them).
    for s in trickler.join().expect("trickler") {
        closed_after(s, started).expect("every trickling peer is cut by the collector");
    }
    let body = wait_metrics(&link.ns, "not every peer was counted", |body| {
        let cut = |reason: &str| {
            metric(
                body,
                "mirror_collect_refused_connections_total",
                &[&format!("reason=\"{reason}\"")],
            )
            .unwrap_or(0)
        };
        cut("idle_timeout") >= IDLE as u64 && cut("read_timeout") >= TRICKLE as u64
    });
    let refused = |reason: &str| {
        metric(
            &body,
            "mirror_collect_refused_connections_total",
            &[&format!("reason=\"{reason}\"")],
        )
        .expect("refusal counter")
    };
    assert_eq!(refused("handshake"), 0, "every handshake finished:\n{body}");
    assert_eq!(refused("read_timeout"), TRICKLE as u64, "{body}");
    // The agent's own connection may end idle too, after it stopped.
    let idle_cut = refused("idle_timeout");
    assert!(
        (IDLE as u64..=IDLE as u64 + 1).contains(&idle_cut),
        "{idle_cut} idle cuts:\n{body}"
    );
    let hwm = peak_rss_kib(collector.pid().expect("pid")).expect("VmHWM");

    let collected = collector.stop().expect("collector stops");
    collected.ensure_success().expect("collector exits 0");
    let frames = collected.frames().expect("readable");
    let diff = capture::difference(&oracle, &frames);
    assert!(
        diff.is_empty(),
        "the agent's frames differ from tcpdump's: {} missing, {} extra",
        diff.missing.len(),
        diff.extra.len()
    );
    assert!(
        hwm < 96 * 1024,
        "collector peak RSS {hwm} KiB, above 96 MiB"
    );
    eprintln!(
        "tls peers: {} frames through; {IDLE} idle peers cut {first:?}..{:?} after connecting, \
         {TRICKLE} trickling peers cut by the read timeout; collector peak RSS {hwm} KiB",
        frames.len(),
        idle_closed.iter().max().copied().unwrap_or_default(),
    );
}
