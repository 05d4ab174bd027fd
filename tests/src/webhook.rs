//! The real `mirror-agent webhook`, started against the fake API server,
//! and a plain rustls client that posts it `AdmissionReview`s over HTTPS as
//! the API server does; and `kubernetes-validate` (from the Python tools
//! venv `cargo xtask setup` makes) to check the pods it patches.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use serde_json::{Value, json};
use tempfile::NamedTempFile;

use crate::{agent::binary, apiserver::ApiServer, pki, process::Process};

/// The Kubernetes version patched pods are validated for.
pub const KUBERNETES: &str = "1.34.0";

/// A running webhook. Dropping it kills the process.
pub struct Webhook {
    process: Process,
    pub addr: SocketAddr,
    _kubeconfig: NamedTempFile,
}

impl Webhook {
    /// Starts `mirror-agent webhook` on an ephemeral port of 127.0.0.1,
    /// serving `cert`/`key`, with the fake API server as its cluster.
    pub fn start(api: &ApiServer, cert: &Path, key: &Path, extra: &[&str]) -> Result<Self> {
        let kubeconfig = api.kubeconfig_file()?;
        let mut cmd = Command::new(binary());
        cmd.args(["webhook", "--listen", "127.0.0.1:0", "--image"])
            .arg("registry.test/mirror-agent:test")
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .args(extra)
            .env("KUBECONFIG", kubeconfig.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let mut process = Process::spawn("mirror-agent webhook", cmd)?;
        let line = process.wait_for_line("webhook serving", Duration::from_secs(20))?;
        let addr = line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("listen="))
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("no listen=ADDR in {line:?}"))?;
        Ok(Self {
            process,
            addr,
            _kubeconfig: kubeconfig,
        })
    }

    /// Stops it (SIGTERM) and returns its log.
    pub fn stop(self) -> Result<String> {
        let (status, stderr) = self
            .process
            .stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10))?;
        ensure!(status.success(), "the webhook failed: {status}\n{stderr}");
        Ok(stderr)
    }
}

/// A client that trusts `ca` only, as the API server trusts the webhook
/// configuration's `caBundle`.
pub fn client(ca: &Path) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    Ok(Arc::new(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// `method path` with `body` over HTTPS to `addr`, the server named as the
/// test PKI's server certificate names it. Returns the status and body.
pub fn request(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>)> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let name = ServerName::try_from(pki::SERVER_NAME)?.to_owned();
    let mut tls = StreamOwned::new(ClientConnection::new(config, name)?, tcp);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        pki::SERVER_NAME,
        body.len()
    );
    tls.write_all(head.as_bytes())?;
    tls.write_all(body)?;
    tls.flush()?;
    // Read until the whole body is in (by Content-Length), so an ending
    // without close_notify does not matter.
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    loop {
        if let Some(answer) = parse(&raw)? {
            return Ok(answer);
        }
        let n = tls.read(&mut chunk).context("reading the answer")?;
        if n == 0 {
            bail!(
                "the connection ended before the answer was whole:\n{}",
                String::from_utf8_lossy(&raw)
            );
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// A whole HTTP/1.1 answer with Content-Length, or None if more is to come.
fn parse(raw: &[u8]) -> Result<Option<(u16, Vec<u8>)>> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head}"))?;
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .with_context(|| format!("no Content-Length in {head}"))?;
    let body = &raw[end + 4..];
    Ok((body.len() >= length).then(|| (status, body[..length].to_vec())))
}

/// An `AdmissionReview` of the creation of `pod`, as kube-apiserver sends
/// it (admission.k8s.io/v1).
pub fn review(uid: &str, pod: &Value) -> Value {
    let meta = |k: &str| pod["metadata"][k].clone();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": meta("name"),
            "namespace": meta("namespace"),
            "operation": "CREATE",
            "userInfo": {"username": "tester", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// Runs `kubernetes-validate --strict` for [`KUBERNETES`] on `objects`,
/// each written to a file of its own; Err with its messages if it refuses any.
pub fn validate(objects: &[Value]) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut files = Vec::new();
    for (i, obj) in objects.iter().enumerate() {
        let path = dir.path().join(format!("object-{i}.yaml"));
        std::fs::write(&path, serde_norway::to_string(obj)?)?;
        files.push(path);
    }
    // As a module of the venv's Python: the script's #! names the path
    // where the venv was made, which a copied target directory is not.
    let out = Command::new(crate::scapy::venv_python())
        .args(["-m", "kubernetes_validate"])
        .args(["--kubernetes-version", KUBERNETES, "--strict"])
        .args(&files)
        .output()
        .context("running kubernetes-validate (`cargo xtask setup` installs it)")?;
    ensure!(
        out.status.success(),
        "kubernetes-validate refused: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
