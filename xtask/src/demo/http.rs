//! A tiny HTTP/1.1 server and client, each on a thread inside a pod's
//! namespace: enough for real TCP handshakes, requests and responses.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, ensure};
use testbed::netns::{Netns, join};

use super::StopFlag;

const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// Requests are a few hundred bytes; refuse to buffer more.
const MAX_REQUEST: usize = 8192;

/// The server thread; stopped and joined on drop, so it never outlives the
/// namespace it runs in.
pub struct Server {
    done: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<usize>>>,
}

impl Server {
    pub fn start(ns: &Netns, port: u16, stop: StopFlag) -> Result<Self> {
        let done = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let quit = Arc::clone(&done);
        let handle = ns.spawn(move || {
            let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
                .with_context(|| format!("binding the HTTP server to port {port}"))?;
            // Non-blocking accept, so the loop sees the stop flags.
            listener.set_nonblocking(true)?;
            ready_tx.send(()).ok();
            serve(&listener, || quit.load(Ordering::SeqCst) || stop.raised())
        });
        let mut server = Self {
            done,
            handle: Some(handle),
        };
        if ready_rx.recv_timeout(IO_TIMEOUT).is_err() {
            // The thread ended (its error says why) or hangs; either way, stop it.
            return Err(server
                .finish()
                .err()
                .unwrap_or_else(|| anyhow!("the HTTP server did not start")));
        }
        Ok(server)
    }

    /// Stops the server and returns how many requests it answered.
    pub fn stop(mut self) -> Result<usize> {
        self.finish()
    }

    fn finish(&mut self) -> Result<usize> {
        self.done.store(true, Ordering::SeqCst);
        match self.handle.take() {
            Some(handle) => join(handle).context("HTTP server"),
            None => Ok(0),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

fn serve(listener: &TcpListener, stopped: impl Fn() -> bool) -> Result<usize> {
    let mut served = 0;
    while !stopped() {
        match listener.accept() {
            Ok((conn, _)) => {
                answer(conn).context("answering a request")?;
                served += 1;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e).context("accepting a connection"),
        }
    }
    Ok(served)
}

fn answer(mut conn: TcpStream) -> Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    let request = read_head(&mut conn)?;
    let path = request
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("GET "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or("/");
    let body = format!("hello from pod2, you asked for {path}\n");
    // One write: `write!` on the bare stream would send a segment per piece.
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes())?;
    Ok(())
}

/// Reads up to the blank line that ends an HTTP head.
fn read_head(conn: &mut TcpStream) -> Result<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk)?;
        ensure!(n > 0, "connection closed before the request ended");
        buf.extend_from_slice(&chunk[..n]);
        ensure!(
            buf.len() <= MAX_REQUEST,
            "request head over {MAX_REQUEST} bytes"
        );
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Makes `count` GET requests, one connection each, from inside `ns`; fails
/// unless every answer is a 200. Returns the response bytes received.
pub fn get_many(ns: &Netns, ip: IpAddr, port: u16, count: usize) -> Result<usize> {
    let addr = SocketAddr::new(ip, port);
    join(ns.spawn(move || {
        let mut total = 0;
        for i in 1..=count {
            let mut conn = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
                .with_context(|| format!("connecting to {addr}"))?;
            conn.set_read_timeout(Some(IO_TIMEOUT))?;
            let request = format!(
                "GET /demo/{i} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: cargo-xtask-demo\r\nConnection: close\r\n\r\n"
            );
            conn.write_all(request.as_bytes())?;
            let mut response = Vec::new();
            conn.read_to_end(&mut response)
                .with_context(|| format!("reading the response to request {i}"))?;
            ensure!(
                response.starts_with(b"HTTP/1.1 200 "),
                "request {i} got: {}",
                String::from_utf8_lossy(&response).lines().next().unwrap_or("nothing")
            );
            total += response.len();
        }
        Ok(total)
    }))
}
