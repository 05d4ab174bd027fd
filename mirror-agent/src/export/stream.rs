//! pcapng streams: a file, standard output, or a TCP or mutual-TLS
//! connection to a collector. Each (re)connection starts a new pcapng section
//! (header and interface blocks, those added since included), so every
//! connection is a complete capture by itself. Interfaces added to a running
//! stream get their blocks in place, before the first packet that uses them.
//! TLS is TCP plus a handshake: one connect path, one backoff.

use std::{
    fs::File,
    io::{self, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use rustls::{ClientConfig, ClientConnection, StreamOwned, pki_types::ServerName};
use socket2::{Domain, Socket, Type};
use tracing::{info, warn};

use super::{
    Context, SocketMark, Stats,
    own::{Connection, Owner},
    queue::Inbox,
};
use crate::export::{
    output::{Endpoint, Output},
    pcapng,
    tls::{self, TlsError},
};

/// Reconnect backoff: from this, doubling, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("is a symbolic link; outputs never follow one (give the real path)")]
    Symlink,
    #[error(
        "already exists; outputs never overwrite a file they did not create \
         (remove it or choose another name)"
    )]
    Exists,
}

/// What a TLS output adds to TCP, loaded once at startup so bad files are
/// reported before anything is attached.
struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

enum Target {
    File(File, std::path::PathBuf),
    Stdout,
    Tcp {
        to: Endpoint,
        mark: SocketMark,
        owner: Owner,
    },
    Tls {
        to: Endpoint,
        mark: SocketMark,
        owner: Owner,
        tls: TlsClient,
    },
}

/// A live connection to a collector.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.write_all(buf),
            Self::Tls(s) => s.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

impl Conn {
    /// Ends the stream cleanly. TLS says so with close_notify, so the
    /// collector can tell the end from a cut connection (a truncation attack
    /// or a crash).
    fn finish(mut self) {
        if let Self::Tls(s) = &mut self {
            s.conn.send_close_notify();
        }
        let _ = self.flush();
    }
}

pub struct Sink {
    name: String,
    target: Target,
    /// Section header and interface blocks, written at every (re)start.
    preamble: Vec<u8>,
}

pub fn open(output: &Output, ctx: &Context<'_>) -> Result<Sink, StreamError> {
    let mut preamble = Vec::new();
    pcapng::section_header(
        &mut preamble,
        concat!("mirror-agent ", env!("CARGO_PKG_VERSION")),
    );
    for (_, name) in ctx.interfaces {
        pcapng::interface_block(&mut preamble, name, ctx.snaplen);
    }
    let target = match output.base() {
        // Reopened by a plan change: a new section after what is there
        // (pcapng files may hold several), never over it.
        Output::PcapngFile(path) => Target::File(open_file(path, ctx.append)?, path.clone()),
        Output::PcapngStdout => Target::Stdout,
        Output::Tcp(to) => Target::Tcp {
            to: to.clone(),
            mark: ctx.mark,
            owner: ctx.own.owner(),
        },
        Output::Tls(to, files) => Target::Tls {
            to: to.clone(),
            mark: ctx.mark,
            owner: ctx.own.owner(),
            tls: TlsClient {
                config: tls::client_config(files)?,
                name: tls::server_name(&files.server_name)?,
            },
        },
        other => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("{other} is not a pcapng stream"),
            )
            .into());
        }
    };
    Ok(Sink {
        name: output.to_string(),
        target,
        preamble,
    })
}

/// Opens a `pcapng:PATH` output, as root, in a directory others may write
/// to: never through a symbolic link (`O_NOFOLLOW`), never truncating a
/// regular file that is there already, and creating it 0600 (copies hold
/// whole payloads). Devices and pipes (`/dev/null`, a FIFO) are written as
/// they are. `append` (the same output reopened for a new plan): a new
/// section after what this agent wrote.
fn open_file(path: &std::path::Path, append: bool) -> Result<File, StreamError> {
    use std::os::unix::fs::OpenOptionsExt;
    let symlink = |e: io::Error| {
        if e.raw_os_error() == Some(nix::libc::ELOOP) {
            StreamError::Symlink
        } else {
            StreamError::Io(e)
        }
    };
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW);
    if append {
        return options
            .append(true)
            .create(true)
            .open(path)
            .map_err(symlink);
    }
    match options.clone().create_new(true).open(path) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let file = options.open(path).map_err(symlink)?;
            if file.metadata()?.file_type().is_file() {
                return Err(StreamError::Exists);
            }
            Ok(file)
        }
        Err(e) => Err(symlink(e)),
    }
}

impl Sink {
    pub fn run(self, inbox: &Inbox, stats: &Stats) {
        match self.target {
            Target::File(file, ref path) => {
                write_file(&self.name, file, path, self.preamble, inbox, stats)
            }
            Target::Stdout => write_all_batches(
                &self.name,
                io::stdout().lock(),
                &self.preamble,
                inbox,
                stats,
            ),
            Target::Tcp {
                ref to,
                mark,
                ref owner,
            } => {
                let by = Connector { mark, owner };
                run_tcp(&self.name, self.preamble, to, &by, None, inbox, stats)
            }
            Target::Tls {
                ref to,
                mark,
                ref owner,
                ref tls,
            } => {
                let by = Connector { mark, owner };
                run_tcp(&self.name, self.preamble, to, &by, Some(tls), inbox, stats)
            }
        }
    }
}

/// Connects (and, for TLS, completes the handshake), streams until the
/// connection fails, and reconnects with backoff (resolving the name again
/// each time). A failed handshake (a server we do not trust, or one that
/// refuses our certificate) is a failed connection like any other. Batches
/// that arrive while disconnected wait in the queue up to its bound.
fn run_tcp(
    name: &str,
    mut preamble: Vec<u8>,
    to: &Endpoint,
    by: &Connector<'_>,
    tls: Option<&TlsClient>,
    inbox: &Inbox,
    stats: &Stats,
) {
    let mut backoff = MIN_BACKOFF;
    // Log each distinct reason once, not every retry: a collector that
    // is down for an hour must not flood the log, but a change (refused,
    // then a certificate problem) is news.
    let mut logged: Option<String> = None;
    loop {
        let mut conn = match connect(to, by, tls) {
            Ok(c) => {
                info!(output = %name, "connected");
                backoff = MIN_BACKOFF;
                logged = None;
                c
            }
            Err(error) => {
                let reason = error.to_string();
                if logged.as_ref() != Some(&reason) {
                    warn!(output = %name, %error, "cannot connect; retrying with backoff");
                    logged = Some(reason);
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if conn.write_all(&preamble).is_err() {
            continue;
        }
        loop {
            let Some(batch) = inbox.recv() else {
                conn.finish();
                return;
            };
            // A later connection's section describes these too.
            preamble.extend_from_slice(&batch.idbs);
            match conn
                .write_all(&batch.idbs)
                .and_then(|()| conn.write_all(&batch.buf))
            {
                Ok(()) => stats.add_sent(batch.packets.len(), batch.buf.len()),
                Err(error) => {
                    warn!(output = %name, %error, "connection lost; reconnecting");
                    stats.add_send_errors(batch.packets.len());
                    inbox.done(batch);
                    break;
                }
            }
            inbox.done(batch);
        }
    }
}

/// A file, written a batch at a time through [`pcapng::BlockFile`]: a full
/// disk loses whole batches (counted in `send_errors`, logged once per
/// outage) but never leaves a torn block, and writing goes on in the same
/// file once there is room. Blocks that describe interfaces (the section
/// header too, until it is on disk) go with the next batch when theirs is
/// lost. A file that never got its header is removed at the end.
fn write_file(
    name: &str,
    file: File,
    path: &std::path::Path,
    mut head: Vec<u8>,
    inbox: &Inbox,
    stats: &Stats,
) {
    let mut out = match pcapng::BlockFile::new(file) {
        Ok(out) => out,
        Err(error) => {
            warn!(output = %name, %error, "cannot use the file; every copy is counted lost");
            while let Some(batch) = inbox.recv() {
                stats.add_send_errors(batch.packets.len());
                inbox.done(batch);
            }
            return;
        }
    };
    // Packets lost since writing began to fail; `None` while it works.
    let mut failing: Option<usize> = None;
    let fail = |error: &io::Error, lost: usize, failing: &mut Option<usize>| {
        if failing.is_none() {
            warn!(
                output = %name,
                %error,
                "writing failed; copies are counted lost (send_errors) until it works again"
            );
        }
        *failing = Some(failing.unwrap_or(0) + lost);
        stats.add_send_errors(lost);
    };
    match out.write(&[&head]) {
        Ok(()) => head.clear(),
        Err(error) => fail(&error, 0, &mut failing),
    }
    while let Some(batch) = inbox.recv() {
        head.extend_from_slice(&batch.idbs);
        match batch.write_to(&mut out, &head) {
            Ok(()) => {
                stats.add_sent(batch.packets.len(), batch.len());
                head.clear();
                if let Some(lost) = failing.take() {
                    info!(output = %name, lost, "writing works again");
                }
            }
            Err(error) => fail(&error, batch.packets.len(), &mut failing),
        }
        inbox.done(batch);
    }
    if out.is_empty() && out.is_regular() && std::fs::remove_file(path).is_ok() {
        warn!(output = %name, "removed the file: not even its header could be written");
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
        let written = out
            .write_all(&batch.idbs)
            .and_then(|()| out.write_all(&batch.buf))
            .and_then(|()| out.flush());
        match written {
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

/// How a stream's connections are made: with the agent's socket mark (the
/// hook passes over what they send), each one published to the drain
/// before its SYN, so the collector's answers are never mirrored either.
struct Connector<'a> {
    mark: SocketMark,
    owner: &'a Owner,
}

fn connect(
    to: &Endpoint,
    by: &Connector<'_>,
    tls: Option<&TlsClient>,
) -> Result<Conn, StreamError> {
    let tcp = connect_tcp(to, by)?;
    Ok(match tls {
        None => Conn::Tcp(tcp),
        Some(t) => Conn::Tls(Box::new(tls::connect(&t.config, &t.name, tcp)?)),
    })
}

fn connect_tcp(to: &Endpoint, by: &Connector<'_>) -> io::Result<TcpStream> {
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} resolves to nothing", to.host),
    );
    for addr in (to.host.as_str(), to.port).to_socket_addrs()? {
        match connect_one(addr, by) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn connect_one(addr: SocketAddr, by: &Connector<'_>) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_mark(by.mark.value)?;
    socket.set_tcp_nodelay(true)?;
    // The local port is chosen now, not at connect, so the connection is
    // known before its first packet.
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    socket.bind(&any.into())?;
    let bound = local_addr(&socket)?;
    by.owner.connection(Connection {
        local: bound,
        peer: addr,
    });
    socket.connect_timeout(&addr.into(), CONNECT_TIMEOUT)?;
    by.owner.connection(Connection {
        local: local_addr(&socket)?,
        peer: addr,
    });
    Ok(socket.into())
}

fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket.local_addr()?.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the socket's local address is not an IP address",
        )
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn files_are_new_0600_never_through_a_link_never_over_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.pcapng");
        let file = open_file(&path, false).unwrap();
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        drop(file);
        std::fs::write(&path, b"someone's data").unwrap();
        assert!(matches!(open_file(&path, false), Err(StreamError::Exists)));
        assert_eq!(std::fs::read(&path).unwrap(), b"someone's data");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").unwrap();
        let link = dir.path().join("link.pcapng");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        for append in [false, true] {
            assert!(matches!(
                open_file(&link, append),
                Err(StreamError::Symlink)
            ));
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        // Devices are written as they are.
        open_file(std::path::Path::new("/dev/null"), false).unwrap();
    }
}
