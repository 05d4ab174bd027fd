//! `/metrics`, `/healthz` and `/readyz` for `attach` and `collect`.
//!
//! Counters stay where they are counted (per-CPU kernel maps, the drain
//! loop's plain integers, the exporters' and listeners' atomics): nothing is
//! added to the packet path. On each scrape they are read into a list of
//! [`Family`]s, which [`encode`] turns into Prometheus text with
//! prometheus-client.
//!
//! The HTTP server runs on its own thread with a small tokio runtime, for
//! both commands: the probes then answer while the agent is still loading
//! its programs (`/readyz` says 503 until it is mirroring), however busy the
//! drain loop is, and under `collect`'s blocking threads alike.

pub mod cpu;
mod http;
mod text;

use std::{
    fmt,
    net::{SocketAddr, TcpListener},
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

pub use self::text::{Family, Kind, Sample, Value, encode};

/// The default `--metrics-addr` of `attach` and `collect`: loopback, so
/// nothing is exposed unless asked. `run` defaults to the pod IP instead
/// (`$POD_IP`, see `cmd/run.rs`), so the DaemonSet's probes reach it.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// How long a scrape waits for the drain loop to answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// `--metrics-addr ADDR:PORT`, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Listen(SocketAddr),
    /// No endpoint, e.g. for a second agent in a namespace whose port is taken.
    Off,
}

impl FromStr for MetricsAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "off" {
            return Ok(Self::Off);
        }
        s.parse().map(Self::Listen).map_err(|_| {
            format!("expected ADDR:PORT (such as {DEFAULT_ADDR} or [::1]:9464), or off; not '{s}'")
        })
    }
}

impl fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Listen(a) => write!(f, "{a}"),
            Self::Off => f.write_str("off"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics-addr {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the metrics server: {0}")]
    Start(std::io::Error),
}

impl MetricsError {
    /// 2 for an address we cannot listen on (bad input), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Bind { .. } => 2,
            Self::Start(_) => 1,
        }
    }
}

/// A scrape request to the owner of the counters (attach's drain loop).
pub struct Reply(oneshot::Sender<Vec<Family>>);

impl Reply {
    pub fn send(self, families: Vec<Family>) {
        // The scrape may have timed out meanwhile: nothing to do then.
        let _ = self.0.send(families);
    }
}

/// Scrape requests, as the drain loop receives them.
pub struct Requests(Option<mpsc::Receiver<Reply>>);

impl Requests {
    /// The next scrape request; never ready when metrics are off.
    pub async fn next(&mut self) -> Reply {
        if let Some(rx) = &mut self.0
            && let Some(reply) = rx.recv().await
        {
            return reply;
        }
        self.0 = None;
        std::future::pending().await
    }

    /// For when metrics are off.
    pub fn none() -> Self {
        Self(None)
    }
}

/// Where a scrape's families come from.
pub enum Source {
    /// Counters that any thread may read (collect's atomics).
    Shared(Box<dyn Fn() -> Vec<Family> + Send + Sync>),
    /// Counters only their owner may read: asked over a channel, answered
    /// between two batches of the drain loop.
    Owner(mpsc::Sender<Reply>),
}

impl Source {
    /// A source answered by [`Requests`].
    pub fn owner() -> (Self, Requests) {
        // A handful: scrapes are rare, and a full channel only fails a scrape.
        let (tx, rx) = mpsc::channel(4);
        (Self::Owner(tx), Requests(Some(rx)))
    }

    async fn families(&self) -> Option<Vec<Family>> {
        match self {
            Self::Shared(f) => Some(f()),
            Self::Owner(tx) => {
                let (reply, answer) = oneshot::channel();
                tx.try_send(Reply(reply)).ok()?;
                tokio::time::timeout(SCRAPE_TIMEOUT, answer)
                    .await
                    .ok()?
                    .ok()
            }
        }
    }
}

/// What the server shares with the command it serves.
struct State {
    ready: AtomicBool,
    source: Source,
}

/// A bound `--metrics-addr`, not yet serving.
pub struct Bound {
    listener: TcpListener,
}

/// Binds `--metrics-addr` (None when `off`): a bad or taken address is
/// refused before the command changes anything.
pub fn bind(addr: MetricsAddr) -> Result<Option<Bound>, MetricsError> {
    let MetricsAddr::Listen(addr) = addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(Some(Bound { listener }))
}

impl Bound {
    /// Starts the server thread; not ready until [`Endpoint::set_ready`].
    pub fn serve(self, source: Source) -> Result<Endpoint, MetricsError> {
        let state = Arc::new(State {
            ready: AtomicBool::new(false),
            source,
        });
        http::spawn(self.listener, state.clone()).map_err(MetricsError::Start)?;
        Ok(Endpoint { state })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }
}

/// The running endpoint, as its command sees it.
pub struct Endpoint {
    state: Arc<State>,
}

impl Endpoint {
    /// `/readyz` answers 200 from now on (or 503 again, when stopping).
    pub fn set_ready(&self, ready: bool) {
        self.state.ready.store(ready, Ordering::Relaxed);
    }
}

/// `set_ready` on an optional endpoint (metrics may be off).
/// Binds and serves `addr` for an owner that answers scrapes from its own
/// loop (`attach`, `run`): nothing when `off`. Called before anything is
/// attached, so a bad address changes nothing.
pub fn start(addr: MetricsAddr) -> Result<(Option<Endpoint>, Requests), MetricsError> {
    Ok(match bind(addr)? {
        Some(bound) => {
            let (source, requests) = Source::owner();
            (Some(bound.serve(source)?), requests)
        }
        None => (None, Requests::none()),
    })
}

pub fn set_ready(endpoint: Option<&Endpoint>, ready: bool) {
    if let Some(e) = endpoint {
        e.set_ready(ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        assert_eq!("off".parse(), Ok(MetricsAddr::Off));
        assert_eq!(
            "127.0.0.1:9464".parse(),
            Ok(MetricsAddr::Listen(SocketAddr::from((
                [127, 0, 0, 1],
                9464
            ))))
        );
        assert!("127.0.0.1".parse::<MetricsAddr>().is_err());
        assert!("localhost:9464".parse::<MetricsAddr>().is_err());
    }

    #[test]
    fn a_taken_port_is_bad_input() {
        let first = bind(MetricsAddr::Listen(SocketAddr::from(([127, 0, 0, 1], 0))))
            .expect("binds")
            .expect("on");
        let taken = first.local_addr().expect("address");
        let err = bind(MetricsAddr::Listen(taken)).err().expect("refused");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().starts_with("--metrics-addr "), "{err}");
    }
}
