//! Stream listeners: agents connect (`--output tcp://...`) and send one
//! pcapng stream each. One thread accepts; each connection gets its own.
//!
//! The seam for TLS: an accepted `TcpStream` goes through a [`Wrap`], which
//! for `tcp://` hands it back as it is and for `tls://` runs the
//! server side of the handshake and returns the decrypted stream. Everything
//! after it only needs `Read`. Shutdown closes the TCP sockets underneath,
//! which ends every read, wrapped or not.

use std::{
    collections::HashMap,
    io::{self, BufReader, Read},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc::SyncSender,
    },
    thread::JoinHandle,
};

use socket2::{Domain, Socket, Type};
use tracing::{info, warn};

use super::{
    receive::POLL,
    stats::ListenerStats,
    stream::{Event, StreamReader},
    writer::Packet,
};

/// Turns an accepted connection into the byte stream to decode.
pub type Wrap = Arc<dyn Fn(TcpStream) -> io::Result<Box<dyn Read + Send>> + Send + Sync>;

/// For `tcp://`: the connection itself.
pub fn plain() -> Wrap {
    Arc::new(|stream| Ok(Box::new(stream)))
}

/// Read buffer per connection: batches from an agent arrive in large writes.
const READ_BUFFER: usize = 256 * 1024;

/// Binds and listens now, so a bad address is refused before anything runs.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    // A restarted collector can listen again at once, despite TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    // Non-blocking accept, polled, so the thread notices shutdown.
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Accepts until `stop`, then closes every connection and waits for their threads.
pub fn run(
    listener: &TcpListener,
    wrap: &Wrap,
    stats: &Arc<ListenerStats>,
    packets: &SyncSender<Packet>,
    stop: &AtomicBool,
) {
    let open: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    let mut logged = false;
    while !stop.load(Ordering::Relaxed) {
        let (conn, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                threads.retain(|t| !t.is_finished());
                std::thread::sleep(POLL / 2);
                continue;
            }
            Err(error) => {
                // Out of descriptors, say: wait and go on.
                if !logged {
                    warn!(listener = %stats.name, %error, "accepting failed; later failures are only counted");
                    logged = true;
                }
                std::thread::sleep(POLL);
                continue;
            }
        };
        stats.connection();
        let id = next_id;
        next_id += 1;
        match conn.try_clone() {
            Ok(handle) => {
                lock(&open).insert(id, handle);
            }
            Err(error) => warn!(%peer, %error, "cannot keep a handle to close the connection"),
        }
        let (wrap, stats, packets, open) =
            (wrap.clone(), stats.clone(), packets.clone(), open.clone());
        let spawned = std::thread::Builder::new()
            .name("collect-conn".into())
            .spawn(move || {
                connection(conn, peer, &wrap, &stats, &packets);
                lock(&open).remove(&id);
            });
        match spawned {
            Ok(t) => threads.push(t),
            Err(error) => warn!(%peer, %error, "cannot start a thread for the connection"),
        }
    }
    for conn in lock(&open).values() {
        let _ = conn.shutdown(Shutdown::Both);
    }
    for t in threads {
        let _ = t.join();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A connection thread that panicked left the map consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn connection(
    conn: TcpStream,
    peer: SocketAddr,
    wrap: &Wrap,
    stats: &ListenerStats,
    packets: &SyncSender<Packet>,
) {
    // The listener is non-blocking; the connection must not be.
    if let Err(error) = conn.set_nonblocking(false) {
        warn!(%peer, %error, "cannot set up the connection");
        return;
    }
    let stream = match wrap(conn) {
        Ok(s) => s,
        Err(error) => {
            stats.refused();
            warn!(listener = %stats.name, %peer, %error, "connection refused");
            return;
        }
    };
    info!(listener = %stats.name, %peer, "stream connected");
    let got = serve(
        BufReader::with_capacity(READ_BUFFER, stream),
        peer.ip(),
        stats,
        packets,
    );
    info!(listener = %stats.name, %peer, packets = got, "stream closed");
}

/// Decodes one pcapng stream from `peer` until it ends or breaks; returns
/// how many packets it delivered. Each interface the stream describes is
/// filed as `PEER-IP/NAME` (`PEER-IP/if-N` when the block has no name).
pub fn serve(
    reader: impl Read,
    peer: IpAddr,
    stats: &ListenerStats,
    packets: &SyncSender<Packet>,
) -> u64 {
    let mut stream = StreamReader::new(reader);
    let mut names: Vec<Arc<str>> = Vec::new();
    let mut delivered = 0;
    loop {
        let event = match stream.next_event() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                stats.skip(e.reason(), peer, &e);
                break;
            }
        };
        match event {
            Event::Section => names.clear(),
            Event::Interface => {
                let id = names.len();
                let name = match stream.interfaces().last().and_then(|i| i.name.as_deref()) {
                    Some(n) if !n.is_empty() => {
                        format!("{peer}/{}", n.replace(char::is_control, "?"))
                    }
                    _ => format!("{peer}/if-{id}"),
                };
                names.push(name.into());
            }
            Event::Packet(p) => {
                stats.received();
                // The reader only returns packets of described interfaces.
                let Some(name) = names.get(p.interface as usize) else {
                    continue;
                };
                let data = p
                    .data
                    .get(..mirror_common::MAX_SNAPLEN as usize)
                    .unwrap_or(p.data);
                let truncated = u64::from(p.orig_len) > data.len() as u64;
                let packet = Packet {
                    interface: name.clone(),
                    unix_ns: p.unix_ns,
                    orig_len: p.orig_len,
                    direction: p.direction,
                    data: data.to_vec(),
                };
                if packets.send(packet).is_err() {
                    break;
                }
                stats.decoded(truncated);
                delivered += 1;
            }
            Event::Skipped(e) => {
                stats.received();
                stats.skip(e.reason(), peer, &e);
            }
            Event::Other => {}
        }
    }
    delivered
}
