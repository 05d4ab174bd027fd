//! Real traffic between namespaces: sockets on threads that entered them.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, ensure};

use crate::netns::{Netns, join};

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
        let sock = UdpSocket::bind(SocketAddr::new(
            match addr {
                SocketAddr::V4(_) => IpAddr::from([0, 0, 0, 0]),
                SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
            },
            0,
        ))?;
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
        let sock = UdpSocket::bind(match dst {
            SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
            SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
        })?;
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
