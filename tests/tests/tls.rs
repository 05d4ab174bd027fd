//! pcapng over mutual TLS. A rustls server in the collector namespace (the
//! agent's own `tls::server_config` and `tls::accept`, which the collector
//! uses) receives the agent's stream; what arrives must equal what tcpdump
//! saw on the pod's veth. The wrong CA, or no client certificate, is
//! refused on both sides, and a refused peer delivers nothing.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result};
use mirror_agent::export::tls;
use rustls::{ClientConfig, ClientConnection, ServerConfig, StreamOwned, pki_types::ServerName};
use testbed::{
    agent::{self, Agent, Exit},
    capture::{self, Frame},
    netns::Netns,
    pki::{self, Authority, Identity, Pki},
    scenario::assert_same_frames,
    tcpdump::Tcpdump,
    topology::{CollectorLink, PodPair},
    traffic,
};

#[path = "tls/client.rs"]
mod client;

use client::plain_client;

const PORT: u16 = 7443;
/// What the plain clients send.
const PAYLOAD: &[u8] = b"only for an authenticated client";

/// What one connection to the test server came to: the bytes read to a
/// clean end of stream, or why it failed (with what it had read by then).
type Received = Result<Vec<u8>, (String, usize)>;

/// A TLS collector stand-in in the collector namespace: accepts until
/// stopped, one connection at a time, reading each to its end.
struct TlsServer {
    stop: Arc<AtomicBool>,
    /// Connections served to their end so far.
    served: Arc<AtomicUsize>,
    thread: JoinHandle<Result<Vec<Received>>>,
}

impl TlsServer {
    fn start(link: &CollectorLink, config: Arc<ServerConfig>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let addr = SocketAddr::new(IpAddr::V4(link.collector_v4), PORT);
        let flag = stop.clone();
        let served = Arc::new(AtomicUsize::new(0));
        let count = served.clone();
        let thread = link.ns.spawn(move || {
            let listener = TcpListener::bind(addr).context("binding the TLS server")?;
            // Polled, so the stop flag is seen between connections.
            listener.set_nonblocking(true)?;
            ready_tx.send(()).ok();
            let mut received = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        tcp.set_nonblocking(false)?;
                        received.push(serve(&config, tcp));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(received)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(3))
            .context("the TLS server did not start")?;
        Ok(Self {
            stop,
            served,
            thread,
        })
    }

    /// Waits until `n` connections have been served, for at most 10 s.
    fn wait_served(&self, n: usize) -> usize {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.served.load(Ordering::Relaxed) < n && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.served.load(Ordering::Relaxed)
    }

    fn stop(self) -> Result<Vec<Received>> {
        self.stop.store(true, Ordering::Relaxed);
        testbed::netns::join(self.thread)
    }
}

fn serve(config: &Arc<ServerConfig>, tcp: TcpStream) -> Received {
    let mut stream = tls::accept(config, tcp).map_err(|e| (e.to_string(), 0))?;
    // A stalled test must fail, not hang.
    stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| (e.to_string(), 0))?;
    let mut got = Vec::new();
    match stream.read_to_end(&mut got) {
        Ok(_) => {
            // Close cleanly too, so a client waiting for our answer sees an
            // orderly end rather than a cut connection.
            stream.conn.send_close_notify();
            let _ = stream.flush();
            Ok(got)
        }
        Err(e) => Err((format!("after the handshake: {e}"), got.len())),
    }
}

fn server_config(a: &Authority) -> Arc<ServerConfig> {
    tls::server_config(&a.ca, &a.server.cert, &a.server.key).expect("server config")
}

fn uri(ca: &Path, client: &Identity) -> String {
    format!(
        "tls://{}:{PORT}?ca={}&cert={}&key={}&name={}",
        pki::SERVER_IP,
        ca.display(),
        client.cert.display(),
        client.key.display(),
        pki::SERVER_NAME
    )
}

fn mixed_traffic(p: &PodPair) -> Result<()> {
    p.flush_neighbours()?;
    traffic::ping(&p.pod, IpAddr::V4(p.node_v4), 3)?;
    traffic::udp(
        &p.pod,
        &p.node,
        IpAddr::V4(p.node_v4),
        5001,
        &[0, 100, 1472, 1473, 4000],
    )
}

/// A field of the agent's `output summary` line.
fn output_field(exit: &Exit, field: &str) -> u64 {
    let summary = exit.fields_of("output summary").expect("output summary");
    summary
        .get(field)
        .copied()
        .unwrap_or_else(|| panic!("no {field} in: {summary:?}"))
}

fn summary_field(exit: &Exit, field: &str) -> u64 {
    exit.summary().expect("summary")[field]
}

/// Mutual TLS with the right certificates: one connection, closed cleanly
/// (close_notify), carrying exactly the frames tcpdump saw on the pod veth.
#[test]
fn mutual_tls_stream_carries_what_tcpdump_saw() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    let pki = Pki::new().expect("certificates");
    let server = TlsServer::start(&link, server_config(&pki.main)).expect("TLS server");
    let dir = tempfile::tempdir().expect("tempdir");
    let at_pod = Tcpdump::start(&pair.node, &pair.host_if, dir.path().join("pod.pcap"), &[])
        .expect("tcpdump on the pod veth");

    // The sender connects while the hooks load; copies wait in its queue
    // until then, so traffic need not wait for it.
    let output = uri(&pki.main.ca, &pki.main.client);
    let agent = Agent::start(
        &pair.node,
        &["attach", "-i", &pair.host_if, "--output", &output],
    )
    .expect("agent starts");
    mixed_traffic(&pair).expect("traffic");
    at_pod.settle().expect("the traffic is past the hook");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let pod = capture::read(&at_pod.stop().expect("tcpdump")).expect("read tcpdump");
    let received = server.stop().expect("TLS server");

    assert_eq!(received.len(), 1, "connections: {received:?}");
    let bytes = match &received[0] {
        Ok(b) => b,
        Err(e) => panic!("the stream failed: {e:?}\nagent:\n{}", exit.stderr),
    };
    let frames: Vec<Frame> = capture::parse(bytes).expect("the stream is pcapng");
    assert!(pod.len() >= 10, "too little traffic");
    assert_same_frames(&pod, &frames);
    assert!(
        frames
            .iter()
            .all(|f| f.interface.as_deref() == Some(pair.host_if.as_str()))
    );
    assert_eq!(output_field(&exit, "sent"), frames.len() as u64);
    assert_eq!(output_field(&exit, "lost_send_error"), 0);
    assert_eq!(output_field(&exit, "lost_queue_full"), 0);
}

/// Runs the agent with `output` against a server of `config` until it has
/// failed to connect at least once (and retried), with traffic meanwhile.
/// Every copy must be counted as lost, and the server must receive nothing.
///
/// The queue bound is one byte, so every copy is dropped and counted as it
/// comes: with the default bound they would wait for a connection that never
/// comes, and the agent gives up on them uncounted at shutdown.
fn refused_run(config: Arc<ServerConfig>, output: &str) -> (Exit, Vec<Received>) {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    let server = TlsServer::start(&link, config).expect("TLS server");
    let agent = Agent::start(
        &pair.node,
        &[
            "attach",
            "-i",
            &pair.host_if,
            "--output",
            output,
            "--queue-bytes",
            "1",
        ],
    )
    .expect("agent starts");
    mixed_traffic(&pair).expect("traffic");
    // Past the first backoff steps: the agent keeps retrying, quietly.
    // Waited for, not slept: two refused handshakes, whenever they come.
    let served = server.wait_served(2);
    assert!(served >= 2, "the agent did not retry within 10 s: {served}");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let received = server.stop().expect("TLS server");

    assert!(received.len() >= 2, "the agent did not retry: {received:?}");
    for r in &received {
        assert!(
            matches!(r, Err((_, 0))),
            "a refused connection delivered data: {r:?}"
        );
    }
    let mirrored = summary_field(&exit, "mirrored");
    assert!(mirrored >= 10, "too little traffic:\n{}", exit.stderr);
    assert_eq!(output_field(&exit, "sent"), 0);
    assert_eq!(
        output_field(&exit, "lost_queue_full") + output_field(&exit, "lost_send_error"),
        mirrored,
        "every copy is counted as lost:\n{}",
        exit.stderr
    );
    // Logged once per reason, not once per retry.
    let warnings = exit
        .stderr
        .lines()
        .filter(|l| l.contains("cannot connect"))
        .count();
    assert_eq!(warnings, 1, "{}", exit.stderr);
    (exit, received)
}

/// The connections that ran a whole handshake: all but the last, which the
/// agent may have opened just as it was stopped (its sender is still
/// retrying when the process exits).
fn handshakes(received: &[Received]) -> &[Received] {
    &received[..received.len().saturating_sub(1)]
}

/// The agent trusts another CA: it refuses the collector's certificate.
#[test]
fn agent_refuses_a_collector_from_another_ca() {
    let pki = Pki::new().expect("certificates");
    let (exit, received) = refused_run(
        server_config(&pki.main),
        &uri(&pki.other.ca, &pki.main.client),
    );
    assert!(
        exit.stderr
            .contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        exit.stderr
    );
    // The server learns why from the agent's alert.
    for r in handshakes(&received) {
        assert!(
            matches!(r, Err((e, _)) if e.contains("alert")),
            "{r:?} in {received:?}"
        );
    }
}

/// The agent's certificate is from another CA: the collector refuses it, and
/// the agent learns so while connecting (TLS 1.3 tells it only after its
/// own handshake is done).
#[test]
fn collector_refuses_an_agent_certificate_from_another_ca() {
    let pki = Pki::new().expect("certificates");
    let (exit, received) = refused_run(
        server_config(&pki.main),
        &uri(&pki.main.ca, &pki.other.client),
    );
    assert!(
        exit.stderr.contains("received fatal alert"),
        "{}",
        exit.stderr
    );
    for r in handshakes(&received) {
        assert!(
            matches!(r, Err((e, _)) if e.contains("UnknownIssuer")),
            "{r:?}"
        );
    }
}

/// Connects from `ns` to the server, sends a little straight after the
/// handshake (before any verdict on the certificate could arrive), ends the
/// stream, and reads the server's answer: Ok if the server closed in order,
/// else the client's error.
fn plain_exchange(ns: &Netns, config: Arc<ClientConfig>) -> Result<(), String> {
    let addr = SocketAddr::from(([198, 18, 1, 2], PORT));
    testbed::netns::join(ns.spawn(move || {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let name = ServerName::try_from(pki::SERVER_NAME)?.to_owned();
        let conn = ClientConnection::new(config, name)?;
        let mut tls = StreamOwned::new(conn, tcp);
        let outcome = (|| {
            tls.write_all(PAYLOAD)?;
            tls.conn.send_close_notify();
            tls.flush()?;
            let mut rest = Vec::new();
            tls.read_to_end(&mut rest).map(drop)
        })();
        Ok(outcome.map_err(|e| e.to_string()))
    }))
    .expect("client thread")
}

/// No client certificate, or one from another CA: `accept` refuses both,
/// the clients are told (an alert, or at least a dead connection), and not
/// a byte of their data reaches the server.
#[test]
fn collector_refuses_clients_without_a_certificate_from_its_ca() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    let pki = Pki::new().expect("certificates");
    let server = TlsServer::start(&link, server_config(&pki.main)).expect("TLS server");

    let anonymous = plain_exchange(&pair.node, plain_client(&pki.main.ca, None));
    let foreign = plain_exchange(
        &pair.node,
        plain_client(&pki.main.ca, Some(&pki.other.client)),
    );
    // And a good client, so the refusals are not just a broken server.
    let good = plain_exchange(
        &pair.node,
        plain_client(&pki.main.ca, Some(&pki.main.client)),
    );
    let received = server.stop().expect("TLS server");

    assert!(anonymous.is_err(), "the anonymous client was not refused");
    assert!(foreign.is_err(), "the foreign client was not refused");
    assert_eq!(received.len(), 3, "{received:?}");
    assert!(
        matches!(&received[0], Err((e, 0)) if e.contains("no certificate")),
        "{:?}",
        received[0]
    );
    assert!(
        matches!(&received[1], Err((e, 0)) if e.contains("UnknownIssuer")),
        "{:?}",
        received[1]
    );
    assert_eq!(good, Ok(()));
    assert!(
        matches!(&received[2], Ok(b) if b == PAYLOAD),
        "{:?}",
        received[2]
    );
}

/// Unusable TLS files are bad input: exit code 2 at startup, naming the
/// file and the reason, before any hook is attached.
#[test]
fn bad_tls_files_are_refused_at_startup() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let pki = Pki::new().expect("certificates");
    let missing = pki.dir.path().join("nowhere.pem");
    let cases = [
        (uri(&missing, &pki.main.client), "nowhere.pem: cannot read"),
        (
            uri(
                &pki.main.ca,
                &Identity {
                    cert: pki.main.client.key.clone(),
                    key: pki.main.client.key.clone(),
                },
            ),
            "no certificate in it",
        ),
        (
            uri(
                &pki.main.ca,
                &Identity {
                    cert: pki.main.client.cert.clone(),
                    key: pki.other.client.key.clone(),
                },
            ),
            "other-client-key.pem",
        ),
    ];
    for (output, needle) in cases {
        let exit = agent::run(
            &pair.node,
            &["attach", "-i", &pair.host_if, "--output", &output],
        )
        .expect("agent runs");
        assert_eq!(exit.status.code(), Some(2), "{output}: {}", exit.stderr);
        assert!(exit.stderr.contains(needle), "{output}: {}", exit.stderr);
        assert!(!exit.stderr.contains("attached"), "{}", exit.stderr);
    }
}
