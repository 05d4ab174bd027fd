//! The HTTP side: hyper's HTTP/1 server on a current-thread tokio runtime
//! of its own thread. One request per connection (no keep-alive), each
//! connection bounded in time, so a stuck client holds nothing for long.

use std::{convert::Infallible, sync::Arc, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::Incoming,
    header::{CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use tracing::warn;

use super::{State, encode};

/// What prometheus-client's text encoder writes.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A whole connection, request and answer, must fit in this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of fds): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub(super) fn spawn(listener: std::net::TcpListener, state: Arc<State>) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || runtime.block_on(serve(listener, state)))?;
    Ok(())
}

async fn serve(listener: std::net::TcpListener, state: Arc<State>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(error) => {
            warn!(%error, "metrics endpoint disabled");
            return;
        }
    };
    let mut logged = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                if !logged {
                    warn!(%error, "metrics endpoint: accept failed (retrying)");
                    logged = true;
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, state.clone()));
            let conn = http1::Builder::new()
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            // Errors here are the client's (reset, garbage): nothing to report.
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"));
    }
    let ready = state.ready.load(Ordering::Relaxed);
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if ready => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/metrics" => match state.source.families().await {
            Some(mut families) => {
                families.push(ready_gauge(ready));
                let mut response = Response::new(Full::new(Bytes::from(encode(families))));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
                response
            }
            // The drain loop did not answer: not started yet, or stopping.
            None => text(StatusCode::SERVICE_UNAVAILABLE, "counters not available\n"),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /healthz, /readyz\n",
        ),
    })
}

fn ready_gauge(ready: bool) -> super::Family {
    let mut f = super::Family::new(
        "mirror_ready",
        "1 once the hooks are attached (attach) or the listeners bound (collect), as /readyz.",
        super::Kind::Gauge,
    );
    f.with(&[], u64::from(ready));
    f
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
