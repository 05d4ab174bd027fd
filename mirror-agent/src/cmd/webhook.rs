//! `mirror-agent webhook`: the mutating admission webhook that injects the
//! sidecar. Wires the flags, the API client and the HTTPS server
//! ([`crate::controller::admission`]); the decision itself is
//! [`crate::k8s::inject`].

use std::{io, net::SocketAddr, sync::Arc};

use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::{
    cli::WebhookArgs,
    controller::admission::{self, Certificate},
    export::tls::TlsError,
    k8s::inject::{Injector, annotations},
};

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("--tls-cert/--tls-key: {0}")]
    Tls(#[from] TlsError),
    #[error("--memory {0:?}: not a memory quantity of at least 16Mi (such as 64Mi)")]
    Memory(String),
    #[error("--listen {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: io::Error,
    },
    #[error("connecting to the Kubernetes API server: {0}")]
    Client(#[from] kube::Error),
}

impl WebhookError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Tls(_) | Self::Memory(_) | Self::Bind { .. } => 2,
            Self::Io { .. } | Self::Client(_) => 1,
        }
    }
}

pub fn run(args: WebhookArgs) -> Result<(), WebhookError> {
    let memory = annotations::quantity_bytes(&args.memory)
        .filter(|m| *m >= annotations::MIN_MEMORY)
        .ok_or_else(|| WebhookError::Memory(args.memory.clone()))?;
    let certificate = Arc::new(Certificate::load(
        args.tls_cert.clone(),
        args.tls_key.clone(),
    )?);
    let injector = Arc::new(Injector {
        image: args.image.clone(),
        own_namespace: args.own_namespace.clone(),
        memory,
        cpu: args.cpu.clone(),
        metrics_port: args.sidecar_metrics_port,
        tls_dir: "/run/mirror/tls".into(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| WebhookError::Io {
            context: "starting the runtime",
            source,
        })?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|source| WebhookError::Bind {
                addr: args.listen,
                source,
            })?;
        // The address bound (with port 0, the one the kernel chose).
        let listen = listener.local_addr().unwrap_or(args.listen);
        let client = kube::Client::try_default().await?;
        let io_err = |context| move |source| WebhookError::Io { context, source };
        let mut sigint = signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT"))?;
        let mut sigterm = signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM"))?;
        info!(%listen, image = %args.image, "webhook serving");
        tokio::select! {
            () = admission::serve(listener, certificate, injector, client) => {}
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        Ok(())
    })
}
