//! Real traffic between namespaces: sockets on threads that entered them.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::netns::{Netns, join};

/// A socket to send to `dst` from the same port number where it is free
/// (an ephemeral one otherwise): Wireshark dissects a datagram by its ports,
/// and about 30 ephemeral ones name a protocol (ENIP, BACnet, ...), whose
/// dissector then calls our test payload malformed once in a while.
fn udp_sender(dst: SocketAddr) -> std::io::Result<UdpSocket> {
    let any = match dst {
        SocketAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
        SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
    };
    UdpSocket::bind(SocketAddr::new(any, dst.port()))
        .or_else(|_| UdpSocket::bind(SocketAddr::new(any, 0)))
}

/// Sends one UDP datagram of each size in `sizes` (payload bytes; larger than
/// the MTU means IP fragments) from `from` to `to` at `dst`, and checks that
/// all arrive. Payload bytes encode the datagram's index so frames differ.
pub fn udp(from: &Netns, to: &Netns, dst: IpAddr, port: u16, sizes: &[usize]) -> Result<()> {
    let addr = SocketAddr::new(dst, port);
    let bind: SocketAddr = match dst {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], port)),
    };
    let expected = sizes.len();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = to.spawn(move || {
        let sock = UdpSocket::bind(bind).context("binding the UDP receiver")?;
        sock.set_read_timeout(Some(Duration::from_secs(3)))?;
        ready_tx.send(()).ok();
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        while got < expected {
            sock.recv_from(&mut buf).context("UDP datagram missing")?;
            got += 1;
        }
        Ok(got)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(3))
        .context("UDP receiver did not start")?;
    let sizes = sizes.to_vec();
    let sender = from.spawn(move || {
        let sock = udp_sender(addr)?;
        for (i, size) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..*size).map(|b| (b + i) as u8).collect();
            sock.send_to(&payload, addr)?;
            // Pace slightly so a receiver queue never overflows.
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    });
    join(sender)?;
    let got = join(receiver)?;
    ensure!(got == expected, "received {got} of {expected} datagrams");
    Ok(())
}

/// Sends `count` small UDP datagrams as fast as a loop can, without waiting
/// for them to arrive (for sampling and load). Returns the count sent.
pub fn udp_flood(from: &Netns, dst: SocketAddr, count: usize, size: usize) -> Result<usize> {
    join(from.spawn(move || {
        let sock = udp_sender(dst)?;
        let payload = vec![0x5a; size];
        for _ in 0..count {
            sock.send_to(&payload, dst)?;
        }
        Ok(count)
    }))
}

/// Sends `count` UDP datagrams at `per_second`, their payload sizes taken
/// from `sizes` in turn, without waiting for them to arrive: a flood of a
/// known rate and duration (for rate limits). The pace is kept against the
/// start, so a stall is caught up at once rather than stretching the flood.
/// Returns the seconds it took.
pub fn udp_paced(
    from: &Netns,
    dst: SocketAddr,
    count: usize,
    sizes: &[usize],
    per_second: u32,
) -> Result<f64> {
    ensure!(!sizes.is_empty() && per_second > 0, "no sizes or no rate");
    let payloads: Vec<Vec<u8>> = sizes.iter().map(|n| vec![0x5a; *n]).collect();
    join(from.spawn(move || {
        let sock = UdpSocket::bind(match dst {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
        })?;
        let start = std::time::Instant::now();
        for i in 0..count {
            let due = start + Duration::from_secs_f64(i as f64 / f64::from(per_second));
            loop {
                let now = std::time::Instant::now();
                if now >= due {
                    break;
                }
                // Sleep only when well ahead: a sleep overshoots by tens
                // of microseconds, more than the gap at high rates.
                if due - now > Duration::from_micros(200) {
                    std::thread::sleep(due - now - Duration::from_micros(100));
                } else {
                    std::thread::yield_now();
                }
            }
            sock.send_to(&payloads[i % payloads.len()], dst)?;
        }
        Ok(start.elapsed().as_secs_f64())
    }))
}

/// Moves `bytes` over one TCP connection from `client` to `server` at `dst`;
/// on veth, the kernel hands the hook GSO packets of up to 64 KiB.
pub fn tcp_bulk(
    client: &Netns,
    server: &Netns,
    dst: IpAddr,
    port: u16,
    bytes: usize,
) -> Result<()> {
    let addr = SocketAddr::new(dst, port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = server.spawn(move || {
        let bind = SocketAddr::new(
            match addr {
                SocketAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
                SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
            },
            port,
        );
        let listener = TcpListener::bind(bind).context("binding the TCP server")?;
        ready_tx.send(()).ok();
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut total = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n;
        }
        Ok(total)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(3))
        .context("TCP server did not start")?;
    let cli = client.spawn(move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        let chunk: Vec<u8> = (0..1 << 16).map(|b| (b % 251) as u8).collect();
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            conn.write_all(&chunk[..n])?;
            left -= n;
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        // Wait for the server's FIN so the whole exchange is on the wire.
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest)?;
        Ok(())
    });
    join(cli)?;
    let got = join(srv)?;
    ensure!(got == bytes, "server received {got} of {bytes} bytes");
    Ok(())
}

/// `ping -c COUNT` from inside `from`; fails unless every echo is answered.
pub fn ping(from: &Netns, dst: IpAddr, count: u32) -> Result<()> {
    from.exec(&[
        "ping",
        "-n",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.05",
        "-W",
        "2",
        &dst.to_string(),
    ])
    .map(drop)
}

/// The address to bind for a socket that talks to `dst`: the unspecified
/// address of its family, on `port`.
fn any(dst: IpAddr, port: u16) -> SocketAddr {
    match dst {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], port)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], port)),
    }
}

/// HTTP/1.1 over one kept-alive connection from `client` to `server` at
/// `dst`: one `GET` per path, each answered `200 OK` with a short body,
/// in lockstep (so no write is large enough to become a super-packet).
pub fn http(client: &Netns, server: &Netns, dst: IpAddr, port: u16, paths: &[&str]) -> Result<()> {
    /// Reads one HTTP message's head (up to the blank line) and, if it
    /// says so, its body; `None` at the end of the stream.
    fn message(conn: &mut TcpStream) -> Result<Option<String>> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte)? == 0 {
                ensure!(head.is_empty(), "the stream ended inside a message");
                return Ok(None);
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(Ok(0), str::parse::<usize>)?;
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body)?;
        Ok(Some(head))
    }
    let addr = SocketAddr::new(dst, port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = server.spawn(move || {
        let listener = TcpListener::bind(any(dst, port)).context("binding the HTTP server")?;
        ready_tx.send(()).ok();
        let (mut conn, _) = listener.accept()?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut served = 0;
        while let Some(request) = message(&mut conn)? {
            let path = request.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let body = format!("served {path}\n");
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            conn.write_all(answer.as_bytes())?;
            served += 1;
        }
        Ok(served)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(3))
        .context("HTTP server did not start")?;
    let paths: Vec<String> = paths.iter().map(|p| (*p).to_owned()).collect();
    let expected = paths.len();
    let cli = client.spawn(move || {
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        for path in &paths {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: mirror.test\r\nUser-Agent: mirror-tests\r\n\r\n"
            );
            conn.write_all(request.as_bytes())?;
            let answer = message(&mut conn)?.context("no HTTP answer")?;
            ensure!(answer.starts_with("HTTP/1.1 200"), "answer {answer}");
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest)?;
        Ok(())
    });
    join(cli)?;
    let served = join(srv)?;
    ensure!(served == expected, "served {served} of {expected} requests");
    Ok(())
}

/// UDP requests from `client` to `server` at `dst`, one of each size in
/// `sizes`, each answered by the server with the same bytes before the
/// next is sent (a DNS-like exchange).
pub fn udp_echo(
    client: &Netns,
    server: &Netns,
    dst: IpAddr,
    port: u16,
    sizes: &[usize],
) -> Result<()> {
    let expected = sizes.len();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = server.spawn(move || {
        let sock = UdpSocket::bind(any(dst, port)).context("binding the UDP server")?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        ready_tx.send(()).ok();
        let mut buf = vec![0u8; 65536];
        for _ in 0..expected {
            let (n, from) = sock.recv_from(&mut buf).context("UDP request missing")?;
            sock.send_to(&buf[..n], from)?;
        }
        Ok(())
    });
    ready_rx
        .recv_timeout(Duration::from_secs(3))
        .context("UDP server did not start")?;
    let sizes = sizes.to_vec();
    let cli = client.spawn(move || {
        let sock = UdpSocket::bind(any(dst, 0))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut buf = vec![0u8; 65536];
        for (i, size) in sizes.iter().enumerate() {
            let request: Vec<u8> = (0..*size).map(|b| (b * 3 + i) as u8).collect();
            sock.send_to(&request, SocketAddr::new(dst, port))?;
            let n = sock.recv(&mut buf).context("UDP answer missing")?;
            ensure!(
                buf[..n] == request[..],
                "the answer differs from the request"
            );
        }
        Ok(())
    });
    join(cli)?;
    join(srv)
}

/// One UDP GSO send (`UDP_SEGMENT`, as QUIC stacks do) of `total` bytes
/// from `from` to `to` at `dst`: the kernel hands one super-packet down
/// and cuts it into datagrams of `segment` bytes (the last shorter) where
/// the path cannot carry it whole. Checks every datagram arrives.
pub fn udp_gso(
    from: &Netns,
    to: &Netns,
    dst: IpAddr,
    port: u16,
    segment: u16,
    total: usize,
) -> Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::UdpGsoSegment};
    let expected = total.div_ceil(usize::from(segment));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = to.spawn(move || {
        let sock = UdpSocket::bind(any(dst, port)).context("binding the UDP receiver")?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        ready_tx.send(()).ok();
        let mut buf = vec![0u8; 65536];
        let mut bytes = 0;
        for _ in 0..expected {
            bytes += sock.recv(&mut buf).context("UDP GSO segment missing")?;
        }
        Ok(bytes)
    });
    ready_rx
        .recv_timeout(Duration::from_secs(3))
        .context("UDP receiver did not start")?;
    let sender = from.spawn(move || {
        let sock = UdpSocket::bind(any(dst, 0))?;
        setsockopt(&sock, UdpGsoSegment, &i32::from(segment)).context("UDP_SEGMENT")?;
        let payload: Vec<u8> = (0..total).map(|b| (b * 7 + b / 251) as u8).collect();
        let sent = sock.send_to(&payload, SocketAddr::new(dst, port))?;
        ensure!(sent == total, "sent {sent} of {total} bytes");
        Ok(())
    });
    join(sender)?;
    let got = join(receiver)?;
    ensure!(got == total, "received {got} of {total} bytes");
    Ok(())
}
