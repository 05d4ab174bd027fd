//! The admission webhook's server (`mirror-agent webhook`): HTTPS (rustls)
//! on one port, `POST /mutate` with an `AdmissionReview` of a Pod, and
//! `GET /healthz`. For each review it reads, from the API server, what the
//! decision needs (the namespace's labels, its `MirrorPolicy`s, the
//! `MirrorCollector`s) and answers with [`crate::k8s::inject`]'s decision.
//! Whatever fails here (the API server, a body), the pod is admitted
//! without the sidecar and the response says why: a webhook must never
//! keep a pod from starting.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api,
    api::ListParams,
    core::{
        DynamicObject,
        admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
    },
};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::{
    export::tls::{self, TlsError},
    k8s::{
        collector::MirrorCollector,
        inject::{self, Cluster, Injector},
        policy::MirrorPolicy,
    },
};

/// Largest review body read: a Pod is far smaller.
const MAX_BODY: usize = 4 << 20;

/// The serving certificate and key, read again when either file changes
/// (as a Secret volume is updated in place by the kubelet).
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<(Option<SystemTime>, Arc<ServerConfig>)>,
}

fn modified(cert: &PathBuf, key: &PathBuf) -> Option<SystemTime> {
    let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    m(cert).max(m(key))
}

impl Certificate {
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Self, TlsError> {
        let config = tls::server_config_without_client_auth(&cert, &key)?;
        let stamp = modified(&cert, &key);
        Ok(Self {
            cert,
            key,
            loaded: Mutex::new((stamp, config)),
        })
    }

    /// The config, reloaded first if the files changed; a reload that
    /// fails keeps the previous one (and says why).
    fn current(&self) -> Arc<ServerConfig> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = modified(&self.cert, &self.key);
        if stamp != loaded.0 {
            match tls::server_config_without_client_auth(&self.cert, &self.key) {
                Ok(config) => {
                    info!(cert = %self.cert.display(), "serving certificate reloaded");
                    *loaded = (stamp, config);
                }
                Err(error) => {
                    warn!(%error, "the new serving certificate is refused; keeping the old one");
                    loaded.0 = stamp;
                }
            }
        }
        loaded.1.clone()
    }
}

/// Serves until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    certificate: Arc<Certificate>,
    injector: Arc<Injector>,
    client: kube::Client,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "accepting a connection");
                continue;
            }
        };
        let acceptor = TlsAcceptor::from(certificate.current());
        let (injector, client) = (injector.clone(), client.clone());
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(error) => {
                    warn!(%peer, %error, "TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |req| handle(req, injector.clone(), client.clone()));
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                warn!(%peer, %error, "serving a connection");
            }
        });
    }
}

fn reply(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn handle(
    req: Request<Incoming>,
    injector: Arc<Injector>,
    client: kube::Client,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => return Ok(reply(StatusCode::OK, b"ok".to_vec())),
        (&Method::POST, "/mutate") => {}
        _ => return Ok(reply(StatusCode::NOT_FOUND, b"not found".to_vec())),
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(error) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                format!("reading the body: {error}").into_bytes(),
            ));
        }
    };
    let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(error) => {
            return Ok(reply(
                StatusCode::BAD_REQUEST,
                format!("not an AdmissionReview of a Pod: {error}").into_bytes(),
            ));
        }
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(error) => {
            let response = AdmissionResponse::invalid(error.to_string());
            return Ok(reply(StatusCode::OK, to_json(response.into_review())));
        }
    };
    let response = review_pod(&request, &injector, &client).await;
    Ok(reply(StatusCode::OK, to_json(response.into_review())))
}

fn to_json(review: AdmissionReview<DynamicObject>) -> Vec<u8> {
    serde_json::to_vec(&review).unwrap_or_default()
}

async fn review_pod(
    request: &AdmissionRequest<Pod>,
    injector: &Injector,
    client: &kube::Client,
) -> AdmissionResponse {
    let namespace = request.namespace.clone().unwrap_or_default();
    let looked_up = async {
        let ns = Api::<Namespace>::all(client.clone())
            .get(&namespace)
            .await
            .map_err(|e| format!("reading namespace {namespace}: {e}"))?;
        let policies = Api::<MirrorPolicy>::namespaced(client.clone(), &namespace)
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing the MirrorPolicies of {namespace}: {e}"))?;
        let collectors = Api::<MirrorCollector>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing MirrorCollectors: {e}"))?;
        Ok::<_, String>((
            ns.metadata.labels.unwrap_or_default(),
            policies.items,
            collectors.items,
        ))
    };
    let (labels, policies, collectors): (BTreeMap<String, String>, _, _) = match looked_up.await {
        Ok(found) => found,
        Err(reason) => {
            warn!(%namespace, pod = %request.name, %reason, "admitted without the sidecar");
            return inject::respond(
                request,
                inject::Outcome::Refuse(format!(
                    "the mirror webhook could not decide: {reason}; the pod is admitted without \
                     the mirror sidecar"
                )),
            );
        }
    };
    let outcome = match &request.object {
        Some(pod) => injector.decide(
            pod,
            &namespace,
            &Cluster {
                namespace_labels: &labels,
                policies: &policies,
                collectors: &collectors,
            },
        ),
        None => inject::Outcome::Skip("no object in the review"),
    };
    info!(%namespace, pod = %request.name, outcome = %outcome.summary(), "admission");
    inject::respond(request, outcome)
}
