//! pcapng streams: a file, standard output, or a TCP connection to a
//! collector. Each (re)connection starts a new pcapng section (header and
//! interface blocks), so every connection is a complete capture by itself.

use std::{
    fs::File,
    io::{self, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    time::Duration,
};

use socket2::{Domain, Socket, Type};
use tracing::{info, warn};

use super::{Context, SocketMark, Stats, queue::Inbox};
use crate::output::{Endpoint, Output};

/// Reconnect backoff: from this, doubling, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

enum Target {
    File(File),
    Stdout,
    Tcp { to: Endpoint, mark: SocketMark },
}

pub struct Sink {
    name: String,
    target: Target,
    /// Section header and interface blocks, written at every (re)start.
    preamble: Vec<u8>,
}

pub fn open(output: &Output, ctx: &Context<'_>) -> io::Result<Sink> {
    let mut preamble = Vec::new();
    crate::pcapng::section_header(
        &mut preamble,
        concat!("mirror-agent ", env!("CARGO_PKG_VERSION")),
    );
    for (_, name) in ctx.interfaces {
        crate::pcapng::interface_block(&mut preamble, name, ctx.snaplen);
    }
    let target = match output {
        Output::PcapngFile(path) => Target::File(File::create(path)?),
        Output::PcapngStdout => Target::Stdout,
        Output::Tcp(to) => Target::Tcp {
            to: to.clone(),
            mark: ctx.mark,
        },
        other => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{other} is not a pcapng stream"),
            ));
        }
    };
    Ok(Sink {
        name: output.to_string(),
        target,
        preamble,
    })
}

impl Sink {
    pub fn run(self, inbox: &Inbox, stats: &Stats) {
        match self.target {
            Target::File(file) => write_all_batches(&self.name, file, &self.preamble, inbox, stats),
            Target::Stdout => write_all_batches(
                &self.name,
                io::stdout().lock(),
                &self.preamble,
                inbox,
                stats,
            ),
            Target::Tcp { ref to, mark } => self.run_tcp(to, mark, inbox, stats),
        }
    }

    /// Connects, streams until the connection fails, and reconnects with
    /// backoff (resolving the name again each time). Batches that arrive
    /// while disconnected wait in the queue up to its bound.
    fn run_tcp(&self, to: &Endpoint, mark: SocketMark, inbox: &Inbox, stats: &Stats) {
        let mut backoff = MIN_BACKOFF;
        let mut logged = false;
        loop {
            let mut conn = match connect(to, mark) {
                Ok(c) => {
                    info!(output = %self.name, "connected");
                    backoff = MIN_BACKOFF;
                    logged = false;
                    c
                }
                Err(error) => {
                    if !logged {
                        warn!(output = %self.name, %error, "cannot connect; retrying with backoff");
                        logged = true;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if conn.write_all(&self.preamble).is_err() {
                continue;
            }
            loop {
                let Some(batch) = inbox.recv() else {
                    let _ = conn.flush();
                    return;
                };
                match conn.write_all(&batch.buf) {
                    Ok(()) => stats.add_sent(batch.packets.len(), batch.buf.len()),
                    Err(error) => {
                        warn!(output = %self.name, %error, "connection lost; reconnecting");
                        stats.add_send_errors(batch.packets.len());
                        inbox.done(batch);
                        break;
                    }
                }
                inbox.done(batch);
            }
        }
    }
}

fn write_all_batches(
    name: &str,
    mut out: impl Write,
    preamble: &[u8],
    inbox: &Inbox,
    stats: &Stats,
) {
    let mut failed = out.write_all(preamble).and_then(|()| out.flush()).is_err();
    while let Some(batch) = inbox.recv() {
        match out.write_all(&batch.buf).and_then(|()| out.flush()) {
            Ok(()) => stats.add_sent(batch.packets.len(), batch.buf.len()),
            Err(error) => {
                // Log the first failure (a full disk, a closed pipe); count all.
                if !failed {
                    warn!(output = %name, %error, "writing failed; later failures are only counted");
                    failed = true;
                }
                stats.add_send_errors(batch.packets.len());
            }
        }
        inbox.done(batch);
    }
}

fn connect(to: &Endpoint, mark: SocketMark) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} resolves to nothing", to.host),
    );
    for addr in (to.host.as_str(), to.port).to_socket_addrs()? {
        match connect_one(addr, mark) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn connect_one(addr: SocketAddr, mark: SocketMark) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_mark(mark.value)?;
    socket.set_tcp_nodelay(true)?;
    socket.connect_timeout(&addr.into(), CONNECT_TIMEOUT)?;
    Ok(socket.into())
}
