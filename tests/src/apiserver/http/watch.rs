//! Watches: the events after a resourceVersion (or the current objects
//! first), streamed as newline-delimited JSON, with bookmarks and a 410
//! ERROR event once the history no longer reaches back.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use hyper::{
    Response,
    header::{CONTENT_TYPE, HeaderValue},
};
use serde_json::{Value, json};
use tokio::{sync::mpsc, time::Instant};

use super::{
    super::{
        Shared,
        error::ApiError,
        resources::RESOURCES,
        select::Selector,
        store::{Event, EventType},
    },
    Body, Call, Url,
};

/// A watch without `timeoutSeconds` ends after this (the real server picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Where a watch starts.
enum Start {
    /// No resourceVersion, or "0": the current objects as ADDED, then changes.
    Now,
    /// After this resourceVersion.
    After(u64),
}

struct WatchSpec {
    res: usize,
    namespace: Option<String>,
    selector: Selector,
    start: Start,
    bookmarks: bool,
    timeout: Duration,
}

pub(super) fn watch(
    shared: &Arc<Shared>,
    t: &Url,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    let selector = call.selector()?;
    let start = match call.query.get("resourceVersion") {
        None | Some("") | Some("0") => Start::Now,
        Some(rv) => Start::After(rv.parse().map_err(|_| {
            ApiError::bad_request(format!("resourceVersion: Invalid value: {rv:?}"))
        })?),
    };
    let timeout =
        match call.query.get("timeoutSeconds") {
            None => DEFAULT_WATCH_TIMEOUT,
            Some(s) => Duration::from_secs(s.parse().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds: Invalid value: {s:?}"))
            })?),
        };
    let spec = WatchSpec {
        res: t.res,
        namespace: t.namespace.clone(),
        selector,
        start,
        bookmarks: call.query.flag("allowWatchBookmarks"),
        timeout,
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(run_watch(shared.clone(), spec, tx));
    let mut response = Response::new(Body::Stream(rx));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut out =
        serde_json::to_vec(&json!({ "type": kind, "object": object })).unwrap_or_default();
    out.push(b'\n');
    Bytes::from(out)
}

fn bookmark(spec: &WatchSpec, rv: u64) -> Bytes {
    let res = &RESOURCES[spec.res];
    let metadata = json!({ "resourceVersion": rv.to_string() });
    line(
        "BOOKMARK",
        &json!({ "kind": res.kind, "apiVersion": res.api_version(), "metadata": metadata }),
    )
}

/// What a watch shows of an event: a change that moves an object across
/// the selector's edge is an ADDED or a DELETED, as on the real server.
fn event_line(spec: &WatchSpec, e: &Event) -> Option<Bytes> {
    if e.key.res != spec.res
        || spec
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != e.key.namespace)
    {
        return None;
    }
    let now = spec.selector.matches(&e.object);
    let before = e.prev.as_ref().is_some_and(|p| spec.selector.matches(p));
    let kind = match (e.kind, before, now) {
        (EventType::Added, _, true) => EventType::Added,
        (EventType::Modified, true, true) => EventType::Modified,
        (EventType::Modified, false, true) => EventType::Added,
        (EventType::Modified, true, false) => EventType::Deleted,
        (EventType::Deleted, _, true) => EventType::Deleted,
        _ => return None,
    };
    Some(line(kind.as_str(), &e.object))
}

async fn run_watch(shared: Arc<Shared>, spec: WatchSpec, tx: mpsc::Sender<Bytes>) {
    // Subscribed before the first look at the store, so no change is missed.
    let mut changed = shared.changed.subscribe();
    let deadline = Instant::now() + spec.timeout;
    let mut pending = Vec::new();
    let mut last = {
        let store = shared.lock();
        match spec.start {
            Start::Now => {
                let ns = spec.namespace.as_deref();
                for (_, obj) in store.list(spec.res, ns, &spec.selector, None) {
                    pending.push(line("ADDED", obj));
                }
                store.resource_version()
            }
            Start::After(rv) => rv,
        }
    };
    let interval = shared.bookmark_interval;
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    // A slow reader gets one bookmark late, not a burst of them.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        for l in pending.drain(..) {
            if tx.send(l).await.is_err() {
                return;
            }
        }
        let gone = {
            let store = shared.lock();
            match store.since(last) {
                Ok(events) => {
                    pending.extend(events.filter_map(|e| event_line(&spec, e)));
                    last = store.resource_version();
                    None
                }
                Err(e) => Some(e),
            }
        };
        if let Some(e) = gone {
            // The client must relist: one ERROR event with a 410 Status, then the end.
            shared.expired.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(line("ERROR", &e.status())).await;
            return;
        }
        if !pending.is_empty() {
            continue;
        }
        tokio::select! {
            result = changed.changed() => if result.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = ticker.tick(), if spec.bookmarks => pending.push(bookmark(&spec, last)),
            _ = tx.closed() => return,
        }
    }
}
