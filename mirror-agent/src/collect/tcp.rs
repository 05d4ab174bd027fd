//! Stream listeners: agents connect (`--output tcp://...` or `tls://...`)
//! and send one pcapng stream each. All connections of a listener share one
//! thread, running a single-threaded tokio runtime: a connection costs a
//! task, a socket and its buffer, never a thread.
//!
//! What a peer may hold is bounded (see [`StreamLimits`]): connections in
//! all and per source address (past them, a connection is accepted and
//! closed at once, so the backlog never fills), silence between blocks
//! (`idle`), the time one block takes to arrive (`block`; a peer that
//! trickles a large block a byte at a time is cut), and bytes: a connection
//! buffers at most one block plus one read. Each refusal or cut is counted
//! by reason; logs about them are rate-limited, since a peer can cause them
//! at will.
//!
//! The pcapng decoder ([`StreamReader`]) reads blocking from any `Read`; here
//! it reads from memory, and only once a whole block has arrived, so it
//! never waits.

use std::{
    future::poll_fn,
    io::{self, Read},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::Poll,
};

use tokio::{
    io::{AsyncRead, ReadBuf},
    net::{TcpListener, TcpStream},
    task::JoinSet,
    time::{Instant, timeout, timeout_at},
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{
    limits::{Admission, Refusal, StreamLimits, Ticket},
    queue::QueueTx,
    receive::POLL,
    stats::{ListenerStats, Reason},
    stream::{Event, ReadError, StreamReader},
    writer::Packet,
};
use crate::export::{pcapng::read::MAX_BLOCK, tls::HANDSHAKE_TIMEOUT};

/// What an accepted connection goes through before its stream is read.
#[derive(Clone)]
pub enum Wrap {
    /// `tcp://`: the connection itself.
    Plain,
    /// `tls://`: the server side of a mutual-TLS handshake.
    Tls(TlsAcceptor),
}

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// Binds and listens now, so a bad address is refused before anything runs.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    // A restarted collector can listen again at once, despite TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Everything a connection task shares with its listener.
#[derive(Clone)]
pub struct Shared {
    pub wrap: Wrap,
    pub limits: StreamLimits,
    pub stats: Arc<ListenerStats>,
    pub packets: QueueTx,
}

/// Accepts until `stop`, then closes every connection.
pub fn run(listener: std::net::TcpListener, shared: Shared, stop: &AtomicBool) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(r) => r,
        Err(error) => {
            warn!(listener = %shared.stats.name, %error, "cannot start the listener's runtime");
            return;
        }
    };
    runtime.block_on(accept(listener, shared, stop));
}

async fn accept(listener: std::net::TcpListener, shared: Shared, stop: &AtomicBool) {
    let stats = shared.stats.clone();
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(error) => {
            warn!(listener = %stats.name, %error, "cannot listen");
            return;
        }
    };
    let admission = Arc::new(Admission::default());
    let mut tasks = JoinSet::new();
    while !stop.load(Ordering::Relaxed) {
        while tasks.try_join_next().is_some() {}
        let (tcp, peer) = match timeout(POLL, listener.accept()).await {
            Err(_) => continue,
            Ok(Ok(c)) => c,
            Ok(Err(error)) => {
                // Out of descriptors, say: wait and go on.
                if let Some(left_out) = stats.conn_log.allow() {
                    warn!(listener = %stats.name, %error, left_out, "accepting failed");
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        match admission.admit(peer.ip(), &shared.limits) {
            Ok(ticket) => {
                stats.connection();
                tasks.spawn(connection(tcp, peer, ticket, shared.clone()));
            }
            Err(why) => {
                refuse(&stats, why, peer, &"too many connections");
                drop(tcp);
            }
        }
    }
    tasks.shutdown().await;
}

/// Counts a refusal, and logs it unless one was logged lately.
fn refuse(stats: &ListenerStats, why: Refusal, peer: SocketAddr, detail: &dyn std::fmt::Display) {
    stats.refused(why);
    if let Some(left_out) = stats.conn_log.allow() {
        warn!(
            listener = %stats.name,
            %peer,
            reason = why.as_str(),
            %detail,
            left_out,
            "connection refused or cut (further ones are counted; one line per 10s)"
        );
    }
}

async fn connection(tcp: TcpStream, peer: SocketAddr, _ticket: Ticket, shared: Shared) {
    let stats = &shared.stats;
    match stats.open_log.allow() {
        Some(left_out) => info!(listener = %stats.name, %peer, left_out, "stream connected"),
        None => debug!(listener = %stats.name, %peer, "stream connected"),
    }
    let served = match &shared.wrap {
        Wrap::Plain => serve(tcp, peer, &shared).await,
        Wrap::Tls(acceptor) => match timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => serve(stream, peer, &shared).await,
            Ok(Err(error)) => return refuse(stats, Refusal::Handshake, peer, &error),
            Err(_) => {
                let why = format!("no handshake within {}s", HANDSHAKE_TIMEOUT.as_secs());
                return refuse(stats, Refusal::Handshake, peer, &why);
            }
        },
    };
    match stats.close_log.allow() {
        Some(left_out) => {
            info!(listener = %stats.name, %peer, packets = served, left_out, "stream closed");
        }
        None => debug!(listener = %stats.name, %peer, packets = served, "stream closed"),
    }
}

/// Decodes one pcapng stream from `peer` until it ends, breaks or times
/// out; returns how many packets it delivered. Each interface the stream
/// describes is filed as `PEER-IP/NAME` (`PEER-IP/if-N` when the block has
/// no name).
pub async fn serve<S: AsyncRead + Unpin>(mut io: S, peer: SocketAddr, shared: &Shared) -> u64 {
    let (stats, limits) = (&shared.stats, &shared.limits);
    let mut conn = Conn::new(peer.ip());
    let mut out = Vec::new();
    let mut delivered = 0;
    // When the first byte of the block being received came.
    let mut block_started: Option<Instant> = None;
    loop {
        let decoded = conn.decode(stats, &mut out);
        let consumed = !out.is_empty() || conn.consumed;
        for p in out.drain(..) {
            let truncated = u64::from(p.orig_len) > p.data.len() as u64;
            if shared.packets.send(p).await.is_err() {
                return delivered;
            }
            stats.decoded(truncated);
            delivered += 1;
        }
        if let Err(e) = decoded {
            stats.skip(e.reason(), peer.ip(), &e);
            return delivered;
        }
        let pending = conn.pending();
        block_started = match (pending, block_started) {
            (0, _) => None,
            (_, Some(t)) if !consumed => Some(t),
            _ => Some(Instant::now()),
        };
        let (deadline, why) = match block_started {
            None => (Instant::now() + limits.idle, Refusal::Idle),
            Some(t) => (t + limits.block, Refusal::Slow),
        };
        match timeout_at(deadline, read_some(&mut io, conn.buffer())).await {
            Err(_) => {
                let detail = match why {
                    Refusal::Idle => format!("silent for {}s", limits.idle.as_secs()),
                    _ => format!("a block took over {}s", limits.block.as_secs()),
                };
                refuse(stats, why, peer, &detail);
                return delivered;
            }
            Ok(Ok(n)) if n > 0 => {
                if block_started.is_none() {
                    block_started = Some(Instant::now());
                }
            }
            // A clean end: between blocks. A TLS peer that exits without
            // close_notify (an agent stopped by SIGTERM) ends here too.
            Ok(Ok(_)) if pending == 0 => return delivered,
            Ok(Err(e))
                if pending == 0
                    && matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                    ) =>
            {
                return delivered;
            }
            Ok(Ok(_)) => {
                stats.skip(Reason::Short, peer.ip(), &ReadError::Truncated);
                return delivered;
            }
            Ok(Err(e)) => {
                let e = ReadError::Io(e);
                stats.skip(e.reason(), peer.ip(), &e);
                return delivered;
            }
        }
    }
}

/// Reads what the socket has (at most [`READ_CHUNK`]) onto the end of `buf`.
async fn read_some<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> io::Result<usize> {
    let old = buf.len();
    buf.resize(old + READ_CHUNK, 0);
    let result = poll_fn(|cx| {
        let mut rb = ReadBuf::new(buf.get_mut(old..).unwrap_or_default());
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    buf.truncate(old + result.as_ref().map_or(0, |n| *n));
    result
}

/// The bytes received and not yet decoded, as the decoder reads them.
#[derive(Default)]
struct Feed {
    buf: Vec<u8>,
    pos: usize,
}

impl Read for Feed {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let left = self.buf.get(self.pos..).unwrap_or_default();
        let n = left.len().min(out.len());
        if let (Some(to), Some(from)) = (out.get_mut(..n), left.get(..n)) {
            to.copy_from_slice(from);
        }
        self.pos += n;
        Ok(n)
    }
}

/// One connection's decoding state.
struct Conn {
    peer: IpAddr,
    reader: StreamReader<Feed>,
    /// The byte order of the current section, once its header has come.
    big_endian: Option<bool>,
    names: Vec<Arc<str>>,
    /// The last [`Conn::decode`] used up at least one block.
    consumed: bool,
}

const SHB: u32 = 0x0A0D_0D0A;
const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

impl Conn {
    fn new(peer: IpAddr) -> Self {
        Self {
            peer,
            reader: StreamReader::new(Feed::default()),
            big_endian: None,
            names: Vec::new(),
            consumed: false,
        }
    }

    fn pending(&mut self) -> usize {
        let feed = self.reader.get_mut();
        feed.buf.len() - feed.pos
    }

    /// The receive buffer, with what was decoded dropped from its front.
    fn buffer(&mut self) -> &mut Vec<u8> {
        let feed = self.reader.get_mut();
        feed.buf.drain(..feed.pos);
        feed.pos = 0;
        &mut feed.buf
    }

    /// Whether the buffer holds a whole block, or enough for the decoder to
    /// refuse it (a bad length or magic). Only the framing is looked at.
    fn block_ready(&mut self) -> bool {
        let feed = self.reader.get_mut();
        let p = feed.buf.get(feed.pos..).unwrap_or_default();
        let word = |at: usize| -> Option<[u8; 4]> { p.get(at..at + 4)?.try_into().ok() };
        let (Some(kind), Some(len)) = (word(0), word(4)) else {
            return false;
        };
        let big = if u32::from_le_bytes(kind) == SHB {
            let Some(magic) = word(8) else {
                return false;
            };
            match u32::from_le_bytes(magic) {
                BYTE_ORDER_MAGIC => false,
                m if m.swap_bytes() == BYTE_ORDER_MAGIC => true,
                _ => return true,
            }
        } else {
            match self.big_endian {
                Some(b) => b,
                None => return true,
            }
        };
        let len = if big {
            u32::from_be_bytes(len)
        } else {
            u32::from_le_bytes(len)
        } as usize;
        if len < 12 || !len.is_multiple_of(4) || len > MAX_BLOCK {
            return true;
        }
        if p.len() < len {
            return false;
        }
        if u32::from_le_bytes(kind) == SHB {
            self.big_endian = Some(big);
        }
        true
    }

    /// Decodes every whole block buffered, its packets onto `out`. An error
    /// ends the stream (the framing is lost).
    fn decode(&mut self, stats: &ListenerStats, out: &mut Vec<Packet>) -> Result<(), ReadError> {
        self.consumed = false;
        while self.block_ready() {
            self.consumed = true;
            let Some(event) = self.reader.next_event()? else {
                return Ok(());
            };
            match event {
                Event::Section => self.names.clear(),
                Event::Interface => {
                    let id = self.names.len();
                    let peer = self.peer;
                    let name = match self
                        .reader
                        .interfaces()
                        .last()
                        .and_then(|i| i.name.as_deref())
                    {
                        Some(n) if !n.is_empty() => {
                            format!("{peer}/{}", n.replace(char::is_control, "?"))
                        }
                        _ => format!("{peer}/if-{id}"),
                    };
                    self.names.push(name.into());
                }
                Event::Packet(p) => {
                    stats.received();
                    // The reader only returns packets of described interfaces.
                    let Some(name) = self.names.get(p.interface as usize) else {
                        continue;
                    };
                    let data = p
                        .data
                        .get(..mirror_common::MAX_SNAPLEN as usize)
                        .unwrap_or(p.data);
                    out.push(Packet {
                        interface: name.clone(),
                        source: self.peer,
                        unix_ns: p.unix_ns,
                        orig_len: p.orig_len,
                        direction: p.direction,
                        data: data.to_vec(),
                    });
                }
                Event::Skipped(e) => {
                    stats.received();
                    stats.skip(e.reason(), self.peer, &e);
                }
                Event::Other => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
