//! `GET /metrics` of the agent or the collector, parsed by prometheus-parse:
//! the figures `soak` and `scale` read, by family name rather than from log
//! text, so a renamed family fails loudly instead of reading as zero.
//!
//! The request is written by hand over a `TcpStream` and the answer's head
//! read by httparse: one GET to a loopback address inside a namespace needs
//! no client crate, and the agent serves one request per connection
//! (mirror-agent/src/metrics/http.rs) with a `Content-Length`.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use testbed::netns::{Netns, join};

/// The agent's and the collector's default `--metrics-addr`
/// (mirror-agent/src/metrics/mod.rs): loopback, each namespace its own.
pub const METRICS_ADDR: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9464));

/// One answer of /metrics: its samples, as prometheus-parse reads them.
///
/// prometheus-parse splits label pairs on `,` and `=` without regard to
/// quoting, so a label whose value holds either (an output's URI, such as
/// `vxlan://…?vni=42`) is left out of that sample's labels; the sample and
/// its value stay. Only `reason` and `interface` are read here, whose
/// values never do.
#[derive(Clone, Debug)]
pub struct Metrics(Vec<prometheus_parse::Sample>);

impl Metrics {
    pub fn parse(text: &str) -> Result<Self> {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .context("parsing /metrics")?;
        Ok(Self(scrape.samples))
    }

    /// Every series of `name` (a counter's with its `_total`) and its value.
    fn series<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a prometheus_parse::Labels, f64)> + 'a {
        self.0
            .iter()
            .filter(move |s| s.metric == name)
            .filter_map(|s| {
                match s.value {
                    prometheus_parse::Value::Counter(v)
                    | prometheus_parse::Value::Gauge(v)
                    | prometheus_parse::Value::Untyped(v) => Some((&s.labels, v)),
                    // Neither the agent nor the collector has any.
                    prometheus_parse::Value::Histogram(_) | prometheus_parse::Value::Summary(_) => {
                        None
                    }
                }
            })
    }

    /// The sum of every series of `name`; an error if there is none, so a
    /// family renamed in the agent is not read as zero.
    pub fn sum(&self, name: &str) -> Result<f64> {
        let mut found = false;
        let total = self
            .series(name)
            .inspect(|_| found = true)
            .map(|(_, v)| v)
            .sum();
        ensure!(found, "no {name} in /metrics");
        Ok(total)
    }

    /// The series of `name` summed per value of `label` (`?` where a
    /// series has none); an error if there is no series of `name`.
    pub fn sum_by(&self, name: &str, label: &str) -> Result<BTreeMap<String, f64>> {
        let mut by = BTreeMap::new();
        let mut found = false;
        for (labels, v) in self.series(name) {
            found = true;
            *by.entry(labels.get(label).unwrap_or("?").to_owned())
                .or_insert(0.0) += v;
        }
        ensure!(found, "no {name} in /metrics");
        Ok(by)
    }
}

/// `GET /metrics` at `addr` from the calling thread's namespace, each step
/// bounded by `timeout`, parsed.
pub fn get(addr: SocketAddr, timeout: Duration) -> Result<Metrics> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).context("reading the answer")?;
    Metrics::parse(&body_of(&raw)?)
}

/// The body of a whole HTTP/1.1 answer, if its status is 200 and it is
/// all there.
fn body_of(raw: &[u8]) -> Result<String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut answer = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(head) = answer.parse(raw).context("not an HTTP answer")? else {
        bail!("the answer ended inside its head");
    };
    let code = answer.code.context("no status code")?;
    ensure!(
        code == 200,
        "answered {code} {}",
        answer.reason.unwrap_or_default()
    );
    let header = |name: &str| {
        answer
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    ensure!(
        header("transfer-encoding").is_none(),
        "a chunked answer (the agent sends a Content-Length)"
    );
    let body = &raw[head..];
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().context("a bad Content-Length")?;
        ensure!(
            body.len() == len,
            "the answer was cut short: {} of {len} bytes",
            body.len()
        );
    }
    String::from_utf8(body.to_vec()).context("the answer is not UTF-8")
}

/// A GET of /metrics under way on a thread inside a namespace, so that
/// several endpoints can be asked at once.
pub struct Scrape {
    handle: thread::JoinHandle<Result<Metrics>>,
    started: Instant,
    timeout: Duration,
}

impl Scrape {
    pub fn start(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            handle: ns.spawn(move || get(addr, timeout)),
            started: Instant::now(),
            timeout,
        }
    }

    /// The parsed answer, or an error if there was none within the timeout
    /// (a late thread is left to end by its socket timeouts).
    pub fn wait(self) -> Result<Metrics> {
        let Self {
            handle,
            started,
            timeout,
        } = self;
        while !handle.is_finished() {
            if started.elapsed() > timeout {
                bail!("no answer within {} s", timeout.as_secs_f64());
            }
            thread::sleep(Duration::from_millis(10));
        }
        ensure!(
            started.elapsed() <= timeout,
            "answered after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        join(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the agent under `run` answers, as prometheus-client writes it
    /// (OpenMetrics: counters with `_total`, `# EOF`), for two pods, with
    /// the family names of mirror-agent/src/datapath/metrics.rs,
    /// mirror-agent/src/collect/metrics.rs and mirror-agent/src/metrics/http.rs.
    const AGENT: &str = "\
# HELP mirror_seen_packets Packets the hooks saw in a mirrored direction.
# TYPE mirror_seen_packets counter
mirror_seen_packets_total{interface=\"scale/pod-0000\",policy=\"scale/all-pods\"} 120
mirror_seen_packets_total{interface=\"scale/pod-0001\",policy=\"scale/all-pods\"} 80
# HELP mirror_mirrored_packets Packets copied into the ring buffer.
# TYPE mirror_mirrored_packets counter
mirror_mirrored_packets_total{interface=\"scale/pod-0000\",policy=\"scale/all-pods\"} 118
mirror_mirrored_packets_total{interface=\"scale/pod-0001\",policy=\"scale/all-pods\"} 80
# HELP mirror_dropped_packets Copies not mirrored or not sent, by reason.
# TYPE mirror_dropped_packets counter
mirror_dropped_packets_total{interface=\"scale/pod-0000\",policy=\"scale/all-pods\",reason=\"ring_full\"} 2
mirror_dropped_packets_total{interface=\"scale/pod-0001\",policy=\"scale/all-pods\",reason=\"ring_full\"} 3
mirror_dropped_packets_total{interface=\"scale/pod-0000\",policy=\"scale/all-pods\",reason=\"filter\",stage=\"kernel\"} 0
mirror_dropped_packets_total{output=\"vxlan://10.99.0.2:4789?vni=4242\",policy=\"scale/all-pods\",reason=\"queue_full\"} 5
mirror_dropped_packets_total{reason=\"malformed\"} 0
# HELP mirror_output_sent_packets Copies an output sent or wrote.
# TYPE mirror_output_sent_packets counter
mirror_output_sent_packets_total{output=\"vxlan://10.99.0.2:4789?vni=4242\",policy=\"scale/all-pods\"} 193
# HELP mirror_output_queue_bytes Bytes waiting in an output's queue.
# TYPE mirror_output_queue_bytes gauge
mirror_output_queue_bytes{output=\"vxlan://10.99.0.2:4789?vni=4242\",policy=\"scale/all-pods\"} 1536
# HELP mirror_attached_interfaces Interfaces with the hooks attached.
# TYPE mirror_attached_interfaces gauge
mirror_attached_interfaces 2
# HELP mirror_ring_buffer_size_bytes Size of the BPF ring buffer.
# TYPE mirror_ring_buffer_size_bytes gauge
mirror_ring_buffer_size_bytes 33554432
# HELP mirror_ring_buffer_pending_bytes Bytes in the ring buffer not yet released.
# TYPE mirror_ring_buffer_pending_bytes gauge
mirror_ring_buffer_pending_bytes 4096
# HELP mirror_ready 1 once the hooks are attached (attach) or the listeners bound (collect), as /readyz.
# TYPE mirror_ready gauge
mirror_ready 1
# EOF
";

    #[test]
    fn reads_the_agents_families() {
        let m = Metrics::parse(AGENT).unwrap();
        assert_eq!(m.sum("mirror_attached_interfaces").unwrap(), 2.0);
        assert_eq!(m.sum("mirror_mirrored_packets_total").unwrap(), 198.0);
        assert_eq!(m.sum("mirror_output_sent_packets_total").unwrap(), 193.0);
        assert_eq!(m.sum("mirror_output_queue_bytes").unwrap(), 1536.0);
        assert_eq!(m.sum("mirror_ring_buffer_pending_bytes").unwrap(), 4096.0);
        let drops = m.sum_by("mirror_dropped_packets_total", "reason").unwrap();
        let want: BTreeMap<String, f64> = [
            ("filter", 0.0),
            ("malformed", 0.0),
            ("queue_full", 5.0),
            ("ring_full", 5.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        assert_eq!(drops, want);
        let by_pod = m.sum_by("mirror_seen_packets_total", "interface").unwrap();
        assert_eq!(by_pod.get("scale/pod-0001"), Some(&80.0));
    }

    #[test]
    fn a_missing_family_is_an_error_not_zero() {
        let m = Metrics::parse(AGENT).unwrap();
        // Without `_total`, a counter's samples are not there.
        let e = m.sum("mirror_mirrored_packets").unwrap_err();
        assert!(e.to_string().contains("no mirror_mirrored_packets"), "{e}");
        assert!(m.sum_by("mirror_attached", "interface").is_err());
        // A family with no sample (no interface hooked yet) is missing too.
        let empty = "# HELP mirror_seen_packets x.\n# TYPE mirror_seen_packets counter\n# EOF\n";
        assert!(
            Metrics::parse(empty)
                .unwrap()
                .sum("mirror_seen_packets_total")
                .is_err()
        );
    }

    #[test]
    fn the_families_read_are_the_agents() {
        // The names soak and scale read, as the agent's sources write them
        // (counters without `_total`, which the encoder appends).
        let sources = [
            include_str!("../../../mirror-agent/src/datapath/metrics.rs"),
            include_str!("../../../mirror-agent/src/collect/metrics.rs"),
        ]
        .concat();
        for name in [
            "mirror_attached_interfaces",
            "mirror_mirrored_packets",
            "mirror_dropped_packets",
            "mirror_output_sent_packets",
            "mirror_output_queue_bytes",
            "mirror_ring_buffer_pending_bytes",
            "mirror_collect_received_packets",
        ] {
            assert!(
                sources.contains(&format!("\"{name}\"")),
                "the agent has no family {name}"
            );
        }
    }

    #[test]
    fn takes_the_body_of_a_whole_200() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/openmetrics-text\r\n\
                   content-length: 17\r\n\r\nmirror_ready 1\n#\n";
        assert_eq!(body_of(ok).unwrap(), "mirror_ready 1\n#\n");
        let busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 23\r\n\r\n\
                     counters not available\n";
        assert!(body_of(busy).unwrap_err().to_string().contains("503"));
        let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 170\r\n\r\nmirror_ready 1\n";
        assert!(body_of(cut).unwrap_err().to_string().contains("cut short"));
        assert!(body_of(b"HTTP/1.1 200 OK\r\ncontent-le").is_err());
    }
}
