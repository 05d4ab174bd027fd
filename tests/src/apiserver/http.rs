//! The HTTP side: hyper's HTTP/1 server, the URL layout of the Kubernetes
//! API, and the verbs on it (watches in watch.rs).

mod watch;

use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming, SizeHint},
    header::{CONTENT_TYPE, HeaderValue, USER_AGENT},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    net::{TcpListener, TcpSocket},
    sync::mpsc,
    task::JoinSet,
    time::Instant,
};

use super::{
    Ctrl, RequestRecord, Shared,
    error::ApiError,
    ownership::Part,
    resources::{self, RESOURCES},
    select::Selector,
    store::{Key, PatchBody, Target},
};
use watch::watch;

/// Bodies larger than this are refused (413).
const MAX_BODY: usize = 16 << 20;
/// Pause after a failed accept (out of fds): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a restart keeps trying to bind the port again.
const REBIND_FOR: Duration = Duration::from_secs(5);

/// Binds a listening socket that can take over its port again at once
/// after a restart (SO_REUSEADDR, as the closed connections linger).
pub(super) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let deadline = Instant::now() + REBIND_FOR;
    loop {
        match bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Accepts connections until stopped. A restart drops the listener and
/// every connection (cutting watches mid-stream), waits, forgets the watch
/// history, and binds again.
pub(super) async fn serve(
    mut listener: TcpListener,
    addr: SocketAddr,
    shared: Arc<Shared>,
    mut ctrl: mpsc::UnboundedReceiver<Ctrl>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| handle(req, shared.clone()));
                        // Errors here are the client's (reset, garbage): nothing to report.
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            command = ctrl.recv() => match command {
                Some(Ctrl::Restart { downtime, done }) => {
                    drop(listener);
                    conns.abort_all();
                    while conns.join_next().await.is_some() {}
                    tokio::time::sleep(downtime).await;
                    // A restarted server's watch cache starts at the
                    // current resourceVersion: a watch resumed from an
                    // older one gets 410 Expired, and the client relists.
                    shared.mutate(super::store::Store::compact);
                    match rebind(addr).await {
                        Ok(l) => {
                            listener = l;
                            done.send(Ok(()));
                        }
                        Err(e) => {
                            done.send(Err(e));
                            return;
                        }
                    }
                }
                Some(Ctrl::Stop) | None => {
                    conns.abort_all();
                    return;
                }
            },
        }
    }
}

/// A response body: whole, or the lines of a watch as they come.
pub(super) enum Body {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|d| d.map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            Body::Full(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = Response::new(Body::Full(Some(Bytes::from(body))));
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.status())
}

/// The query string, decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Self {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

/// application/x-www-form-urlencoded: `+` is a space, `%XX` a byte.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// What a URL names.
enum Route {
    CoreVersions,
    Groups,
    Group(String),
    ResourceList(String, String),
    Object(Url),
    NotFound,
}

/// A resource URL: the kind, namespace, name and part of the object.
struct Url {
    res: usize,
    namespace: Option<String>,
    name: Option<String>,
    part: Part,
}

fn route(path: &str) -> Route {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return Route::CoreVersions,
        ["apis"] => return Route::Groups,
        ["apis", g] => return Route::Group((*g).to_string()),
        ["api", v] => return Route::ResourceList(String::new(), (*v).to_string()),
        ["apis", g, v] => return Route::ResourceList((*g).to_string(), (*v).to_string()),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Route::NotFound,
    };
    let namespaced = |plural: &str| {
        resources::by_plural(group, version, plural).filter(|&i| RESOURCES[i].namespaced)
    };
    let (res, namespace, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced(plural).is_some() => {
            (namespaced(plural), Some((*ns).to_string()), tail)
        }
        [plural, tail @ ..] => (resources::by_plural(group, version, plural), None, tail),
        [] => return Route::NotFound,
    };
    let Some(res) = res else {
        return Route::NotFound;
    };
    let (name, part) = match tail {
        [] => (None, Part::Main),
        [name] => (Some((*name).to_string()), Part::Main),
        [name, "status"] if RESOURCES[res].status => (Some((*name).to_string()), Part::Status),
        _ => return Route::NotFound,
    };
    // A namespaced kind's single object is only reachable through its namespace.
    if RESOURCES[res].namespaced && namespace.is_none() && name.is_some() {
        return Route::NotFound;
    }
    Route::Object(Url {
        res,
        namespace,
        name,
        part,
    })
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(CONTENT_TYPE);
    let user_agent = header(USER_AGENT);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let mut record = RequestRecord {
        verb: "get",
        resource: None,
        subresource: None,
        name: None,
        field_manager: query.get("fieldManager").map(str::to_string),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let e = ApiError::new(
                413,
                "RequestEntityTooLarge",
                "the request body is too large or was cut",
            );
            shared.record(record);
            return Ok(error_response(&e));
        }
    };
    let call = Call {
        method: &method,
        query: &query,
        content_type: content_type.as_deref().unwrap_or(""),
        user_agent: user_agent.as_deref(),
        body: &body,
    };
    let response = match route(&path) {
        Route::CoreVersions => json_response(200, &resources::core_versions(&shared.host())),
        Route::Groups => json_response(200, &resources::groups()),
        Route::Group(g) => match resources::group(&g) {
            Some(doc) => json_response(200, &doc),
            None => not_found(&path),
        },
        Route::ResourceList(g, v) => match resources::resource_list(&g, &v) {
            Some(doc) => json_response(200, &doc),
            None => not_found(&path),
        },
        Route::Object(t) => {
            record.resource = Some(RESOURCES[t.res].plural.to_string());
            record.subresource = (t.part == Part::Status).then(|| "status".to_string());
            record.name = t.name.clone();
            let verb = verb_of(&t, &call);
            let res = &RESOURCES[t.res];
            let refused_by = match (&shared.unbound_user, &shared.rbac) {
                (Some(user), _) => Some(user.as_str()),
                (None, Some(rbac))
                    if !rbac.allows(verb, res.group, &plural(&t), t.namespace.as_deref()) =>
                {
                    Some(rbac.user.as_str())
                }
                _ => None,
            };
            if let Some(user) = refused_by {
                let e = forbidden(user, &t, verb);
                record.verb = verb;
                shared.record(record);
                return Ok(error_response(&e));
            }
            let (verb, result) = object_call(&shared, &t, &call);
            record.verb = verb;
            result.unwrap_or_else(|e| error_response(&e))
        }
        Route::NotFound => not_found(&path),
    };
    shared.record(record);
    Ok(response)
}

/// The RBAC verb of a request.
fn verb_of(t: &Url, call: &Call) -> &'static str {
    match (call.method, &t.name) {
        (&Method::GET, None) if call.query.flag("watch") => "watch",
        (&Method::GET, None) => "list",
        (&Method::GET, Some(_)) => "get",
        (&Method::POST, _) => "create",
        (&Method::PUT, _) => "update",
        (&Method::PATCH, _) => "patch",
        (&Method::DELETE, _) => "delete",
        _ => "unsupported",
    }
}

/// The resource as RBAC names it: `plural`, or `plural/status`.
fn plural(t: &Url) -> String {
    let res = &RESOURCES[t.res];
    match t.part {
        Part::Status => format!("{}/status", res.plural),
        Part::Main => res.plural.to_string(),
    }
}

/// The 403 of kube-apiserver's RBAC authorizer to a user not granted `verb`.
fn forbidden(user: &str, t: &Url, verb: &str) -> ApiError {
    let res = &RESOURCES[t.res];
    let plural = plural(t);
    let scope = match &t.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let message = format!(
        "{} is forbidden: User \"{user}\" cannot {verb} resource \"{plural}\" in API group \"{}\" {scope}",
        match &t.name {
            Some(name) => format!("{} \"{name}\"", res.plural),
            None => res.plural.to_string(),
        },
        res.group,
    );
    ApiError::new(403, "Forbidden", message)
}

fn not_found(path: &str) -> Response<Body> {
    error_response(&ApiError::new(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({path})"),
    ))
}

/// One request's inputs besides the URL.
struct Call<'a> {
    method: &'a Method,
    query: &'a Query,
    content_type: &'a str,
    user_agent: Option<&'a str>,
    body: &'a Bytes,
}

impl Call<'_> {
    fn json(&self) -> Result<Value, ApiError> {
        serde_json::from_slice(self.body)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
    }

    /// The manager of a plain write: `fieldManager`, else the user agent's
    /// program name, as the API server does.
    fn manager(&self) -> String {
        self.query
            .get("fieldManager")
            .map(str::to_string)
            .or_else(|| {
                self.user_agent
                    .and_then(|ua| ua.split('/').next())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown".to_string())
    }

    fn selector(&self) -> Result<Selector, ApiError> {
        Selector::parse(
            self.query.get("labelSelector"),
            self.query.get("fieldSelector"),
        )
    }
}

/// Serves a request on a resource URL; returns its Kubernetes verb too.
/// Only what the agent's client and the tests send is served: of the
/// status subresource, PATCH alone.
fn object_call(
    shared: &Arc<Shared>,
    t: &Url,
    call: &Call,
) -> (&'static str, Result<Response<Body>, ApiError>) {
    let res = &RESOURCES[t.res];
    let key = |name: &str| Key::new(t.res, t.namespace.as_deref(), name);
    let method = call.method;
    match (method, t.name.as_deref(), t.part) {
        (&Method::GET, None, Part::Main) if call.query.flag("watch") => {
            ("watch", watch(shared, t, call))
        }
        (&Method::GET, Some(name), Part::Main) => {
            let found = shared.lock().get(&key(name)).cloned();
            (
                "get",
                found
                    .map(|o| json_response(200, &o))
                    .ok_or_else(|| ApiError::not_found(res, name)),
            )
        }
        (&Method::GET, None, Part::Main) => ("list", list(shared, t, call)),
        (&Method::POST, None, Part::Main) => {
            let result = call.json().and_then(|body| {
                let manager = call.manager();
                shared.mutate(|s| {
                    s.create(
                        t.res,
                        t.namespace.as_deref(),
                        body,
                        Target::Main,
                        &manager,
                        None,
                    )
                })
            });
            ("create", result.map(|o| json_response(201, &o)))
        }
        (&Method::PUT, Some(name), Part::Main) => {
            let result = call.json().and_then(|body| {
                let manager = call.manager();
                shared.mutate(|s| s.replace(&key(name), body, &manager))
            });
            ("update", result.map(|o| json_response(200, &o)))
        }
        (&Method::PATCH, Some(name), part) => {
            let target = match part {
                Part::Main => Target::Main,
                Part::Status => Target::Status,
            };
            ("patch", patch(shared, key(name), target, call))
        }
        (&Method::DELETE, Some(name), Part::Main) => {
            // The body's DeleteOptions ask for nothing this server does.
            let result = shared.mutate(|s| s.delete(&key(name)));
            ("delete", result.map(|o| json_response(200, &o)))
        }
        _ => (
            "unsupported",
            Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!(
                    "the server does not allow this method on the requested resource ({method})"
                ),
            )),
        ),
    }
}

fn patch(
    shared: &Arc<Shared>,
    key: Key,
    target: Target,
    call: &Call,
) -> Result<Response<Body>, ApiError> {
    let media = call.content_type.split(';').next().unwrap_or("").trim();
    let body = match media {
        "application/merge-patch+json" => PatchBody::Merge(call.json()?),
        "application/apply-patch+yaml" => {
            if call.query.get("fieldManager").is_none_or(str::is_empty) {
                return Err(ApiError::bad_request(
                    "PATCH: fieldManager is required for apply requests",
                ));
            }
            PatchBody::Apply {
                object: parse_yaml_or_json(call.body)?,
                force: call.query.flag("force"),
            }
        }
        // Strategic merge and JSON patches. The real server refuses the
        // first for custom kinds only; nothing here sends either to a
        // built-in kind, so both are refused rather than approximated.
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!(
                    "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
            ));
        }
    };
    let manager = call.manager();
    let (object, created) = shared.mutate(|s| s.patch(&key, target, body, &manager))?;
    Ok(json_response(if created { 201 } else { 200 }, &object))
}

/// Apply bodies are YAML (kube-rs sends JSON, which is YAML too).
fn parse_yaml_or_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).or_else(|_| {
        serde_norway::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    })
}

fn list_kind(t: &Url) -> Value {
    let res = &RESOURCES[t.res];
    json!({ "kind": format!("{}List", res.kind), "apiVersion": res.api_version() })
}

fn list(shared: &Arc<Shared>, t: &Url, call: &Call) -> Result<Response<Body>, ApiError> {
    let selector = call.selector()?;
    let limit = match call.query.get("limit") {
        None | Some("") | Some("0") => None,
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
    };
    // A continue token: the list's resourceVersion and the last key served.
    let resume = match call.query.get("continue").filter(|c| !c.is_empty()) {
        None => None,
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            let parsed = (parts.next(), parts.next(), parts.next());
            match parsed {
                (Some(rv), Some(ns), Some(name)) => match rv.parse::<u64>() {
                    Ok(rv) => Some((rv, Key::new(t.res, Some(ns), name))),
                    Err(_) => return Err(ApiError::bad_request("invalid continue token")),
                },
                _ => return Err(ApiError::bad_request("invalid continue token")),
            }
        }
    };
    let store = shared.lock();
    let list_rv = match &resume {
        Some((rv, _)) => {
            store.check_continue(*rv)?;
            *rv
        }
        None => store.resource_version(),
    };
    let mut items = Vec::new();
    let mut next = None;
    let matching = store.list(
        t.res,
        t.namespace.as_deref(),
        &selector,
        resume.map(|r| r.1),
    );
    for (k, obj) in matching {
        if limit.is_some_and(|l| items.len() >= l) {
            next = Some(k.clone());
            break;
        }
        items.push(obj.clone());
    }
    let mut metadata = json!({ "resourceVersion": list_rv.to_string() });
    if let (Some(_), Some(last)) = (&next, items.last()) {
        let ns = last
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let name = last
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        metadata["continue"] = json!(format!("{list_rv}/{ns}/{name}"));
    }
    drop(store);
    let mut doc = list_kind(t);
    doc["metadata"] = metadata;
    doc["items"] = Value::Array(items);
    Ok(json_response(200, &doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let object = |p: &str| match route(p) {
            Route::Object(t) => Some((RESOURCES[t.res].plural, t.namespace, t.name, t.part)),
            _ => None,
        };
        assert_eq!(
            object("/api/v1/namespaces/a/pods/b/status"),
            Some(("pods", Some("a".into()), Some("b".into()), Part::Status))
        );
        assert_eq!(
            object("/api/v1/pods"),
            Some(("pods", None, None, Part::Main))
        );
        assert_eq!(object("/api/v1/pods/b"), None);
        assert_eq!(
            object("/api/v1/namespaces/a"),
            Some(("namespaces", None, Some("a".into()), Part::Main))
        );
        assert_eq!(
            object("/api/v1/namespaces/a/status"),
            Some(("namespaces", None, Some("a".into()), Part::Status))
        );
        assert_eq!(
            object("/apis/mirror.packets.dev/v1alpha1/mirrorcollectors/c"),
            Some(("mirrorcollectors", None, Some("c".into()), Part::Main))
        );
        assert_eq!(
            object("/apis/events.k8s.io/v1/namespaces/x/events"),
            Some(("events", Some("x".into()), None, Part::Main))
        );
        assert_eq!(object("/api/v1/namespaces/a/secrets/s/status"), None);
        assert!(matches!(
            route("/apis/mirror.packets.dev/v1alpha1"),
            Route::ResourceList(..)
        ));
        assert_eq!(decode("spec.nodeName%3Dn1+x"), "spec.nodeName=n1 x");
        assert_eq!(decode("100%"), "100%");
    }
}
