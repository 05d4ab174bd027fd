//! `tcp://NAME:PORT` and `tls://NAME:PORT` resolve the name again on every
//! reconnect. The name is the test's own: the agent runs under `ip netns
//! exec`, which mounts the namespace's hosts file over /etc/hosts (see
//! `testbed::netns::EtcHosts`). Two collectors listen, at the name's first
//! and second address; the first drops the connection after the name has
//! moved but goes on listening, so an agent that kept the old address
//! would simply reconnect there. The kernel's accept() says which address
//! each connection reached, and what the second collector received must be
//! the frames tcpdump saw on the pod's veth after the move.

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use mirror_agent::export::tls;
use rustls::ServerConfig;
use testbed::{
    agent::Agent,
    capture::{self, Frame},
    netns::{EtcHosts, Netns},
    pki::{self, Pki},
    scenario::assert_same_frames,
    tcpdump::{FEW_FRAMES, Tcpdump},
    topology::{CollectorLink, PodPair},
    traffic,
};

const PORT: u16 = 7600;
const FIRST: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const SECOND: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
/// UDP port of the traffic sent after the move.
const AFTER: u16 = 5099;

/// One listening collector stand-in: accepts until stopped, serving each
/// connection (TLS when configured) on its own thread to its end.
struct Listener {
    stop: Arc<AtomicBool>,
    /// A handle on every connection accepted, to cut them.
    open: Arc<Mutex<Vec<TcpStream>>>,
    thread: JoinHandle<Result<Vec<JoinHandle<Vec<u8>>>>>,
}

impl Listener {
    fn start(ns: &Netns, addr: Ipv4Addr, tls: Option<Arc<ServerConfig>>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (flag, conns) = (stop.clone(), open.clone());
        let thread = ns.spawn(move || {
            let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(addr), PORT))?;
            listener.set_nonblocking(true)?;
            ready_tx.send(()).ok();
            let mut served = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        tcp.set_nonblocking(false)?;
                        // A stalled test must fail, not hang.
                        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
                        conns.lock().expect("lock").push(tcp.try_clone()?);
                        let tls = tls.clone();
                        served.push(std::thread::spawn(move || read_all(tcp, tls)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(served)
        });
        ready_rx
            .recv_timeout(Duration::from_secs(3))
            .context("the listener did not start")?;
        Ok(Self { stop, open, thread })
    }

    fn accepted(&self) -> usize {
        self.open.lock().expect("lock").len()
    }

    /// Waits until `n` connections were accepted, for at most `timeout`.
    fn wait_accepted(&self, n: usize, timeout: Duration, mut meanwhile: impl FnMut()) -> usize {
        let deadline = Instant::now() + timeout;
        while self.accepted() < n && Instant::now() < deadline {
            meanwhile();
            std::thread::sleep(Duration::from_millis(50));
        }
        self.accepted()
    }

    /// Cuts every connection accepted so far; goes on listening.
    fn cut(&self) {
        for c in self.open.lock().expect("lock").iter() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Stops listening; the bytes each connection delivered, in order.
    fn stop(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        let served = testbed::netns::join(self.thread).expect("listener");
        served
            .into_iter()
            .map(|h| h.join().expect("connection thread"))
            .collect()
    }
}

/// Everything one connection delivers (through TLS when configured) until
/// it ends, however it ends.
fn read_all(tcp: TcpStream, tls: Option<Arc<ServerConfig>>) -> Vec<u8> {
    let mut got = Vec::new();
    match tls {
        None => {
            let _ = (&tcp).read_to_end(&mut got);
        }
        Some(config) => {
            if let Ok(mut stream) = tls::accept(&config, tcp) {
                let _ = stream.read_to_end(&mut got);
            }
        }
    }
    got
}

/// The agent streams the pod veth to `output` (naming `pki::SERVER_NAME`),
/// which resolves to FIRST; the name moves to SECOND, FIRST cuts its
/// connection, and the agent's next connection must reach SECOND, carrying
/// what was sent after it.
fn reconnects_to_the_new_address(output: &str, tls: Option<Arc<ServerConfig>>) {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    let second = format!("{SECOND}/24");
    link.ns
        .ip(&["addr", "add", &second, "dev", &link.collector_if])
        .expect("second address");
    let name = pki::SERVER_NAME;
    let hosts = EtcHosts::new(&pair.node, &format!("{FIRST} {name}\n")).expect("hosts file");
    let first = Listener::start(&link.ns, FIRST, tls.clone()).expect("first collector");
    let later = Listener::start(&link.ns, SECOND, tls).expect("second collector");
    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("pod.pcap");
    let tcpdump = Tcpdump::start(&pair.node, &pair.host_if, pcap, &FEW_FRAMES).expect("tcpdump");
    let agent = Agent::start(
        &pair.node,
        &["attach", "-i", &pair.host_if, "--output", output],
    )
    .expect("agent starts");
    let node = IpAddr::V4(pair.node_v4);
    let ping = || traffic::ping(&pair.pod, node, 1).expect("ping");
    assert_eq!(
        first.wait_accepted(1, Duration::from_secs(10), || {}),
        1,
        "the agent never reached {name} at {FIRST}"
    );
    ping();

    hosts
        .set(&format!("{SECOND} {name}\n"))
        .expect("move the name");
    first.cut();
    // The agent notices a lost connection when it next writes.
    let reached = later.wait_accepted(1, Duration::from_secs(20), ping);
    assert_eq!(reached, 1, "no connection reached {SECOND} after the move");
    // Arrived, so past the hook; the agent sends what it holds before it exits.
    traffic::udp(&pair.pod, &pair.node, node, AFTER, &[100, 1000, 1400]).expect("udp");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let at_first = first.stop();
    let at_second = later.stop();
    let veth = capture::read(&tcpdump.stop().expect("tcpdump")).expect("read");

    assert_eq!(
        at_first.len(),
        1,
        "the agent went back to {FIRST}, the name's old address:\n{}",
        exit.stderr
    );
    assert_eq!(at_second.len(), 1, "{}", exit.stderr);
    let streamed = capture::parse(&at_second[0]).expect("a pcapng stream at SECOND");
    let after = |frames: &[Frame]| -> Vec<Frame> {
        frames
            .iter()
            .filter(|f| f.udp_dst_port() == Some(AFTER))
            .cloned()
            .collect()
    };
    let sent_after = after(&veth);
    assert_eq!(
        sent_after.len(),
        3,
        "tcpdump saw {} datagrams",
        sent_after.len()
    );
    assert_same_frames(&sent_after, &after(&streamed));
}

#[test]
fn tcp_output_resolves_its_host_name_again_on_reconnect() {
    let output = format!("tcp://{}:{PORT}", pki::SERVER_NAME);
    reconnects_to_the_new_address(&output, None);
}

/// The same over mutual TLS: the certificate names `pki::SERVER_NAME`,
/// which is also the host the URI resolves.
#[test]
fn tls_output_resolves_its_host_name_again_on_reconnect() {
    let pki = Pki::new().expect("pki");
    let a = &pki.main;
    let output = format!(
        "tls://{}:{PORT}?ca={}&cert={}&key={}",
        pki::SERVER_NAME,
        a.ca.display(),
        a.client.cert.display(),
        a.client.key.display()
    );
    let config = tls::server_config(&a.ca, &a.server.cert, &a.server.key).expect("server config");
    reconnects_to_the_new_address(&output, Some(config));
}
