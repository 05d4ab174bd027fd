//! A plain HTTP/1.1 GET with a std TcpStream, from inside a namespace: how
//! tests read /metrics, /healthz and /readyz without the agent's own code.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::netns::{Netns, join};

pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `GET path` on `addr` from inside `ns`.
pub fn get(ns: &Netns, addr: &str, path: &str) -> Result<Answer> {
    let addr: SocketAddr = addr.parse()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    join(ns.spawn(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request.as_bytes())?;
        let mut raw = String::new();
        stream.read_to_string(&mut raw)?;
        let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line in {head}"))?;
        let content_type = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        Ok(Answer {
            status,
            content_type,
            body: body.to_owned(),
        })
    }))
}

/// The sum of every sample `name{...}` in a /metrics body (one per
/// listener, say); 0 if there is none.
pub fn total(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The value of the first sample `name{...}` whose line contains every
/// `with` (such as `reason="limit"`), from a /metrics body.
pub fn sample(body: &str, name: &str, with: &[&str]) -> Result<u64> {
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
                && with.iter().all(|w| l.contains(w))
        })
        .find_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .map(|v| v as u64)
        .with_context(|| format!("no sample {name} with {with:?} in\n{body}"))
}

/// The agent's (mirrored, sent, lost for `reason`) from its /metrics at
/// `addr` in `ns`, once every copy the hook made is either sent or lost
/// for that reason, and there are at least `least`.
pub fn wait_accounted(ns: &Netns, addr: &str, reason: &str, least: u64) -> Result<(u64, u64, u64)> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let reason = format!("reason=\"{reason}\"");
    loop {
        let body = get(ns, addr, "/metrics")?.body;
        let mirrored = sample(&body, "mirror_mirrored_packets_total", &[])?;
        let sent = sample(&body, "mirror_output_sent_packets_total", &[])?;
        let lost = sample(&body, "mirror_dropped_packets_total", &[&reason])?;
        if mirrored >= least && sent + lost == mirrored {
            return Ok((mirrored, sent, lost));
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{sent} sent + {lost} lost ({reason}) of {mirrored} mirrored \
             (at least {least} expected):\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
