//! Mutual TLS for the pcapng stream (`tls://` outputs and listeners), with
//! rustls on the `ring` provider.
//!
//! Both sides trust one CA file and nothing else (no system roots: a mirror
//! of production traffic must only ever reach, or be accepted from, a peer
//! the operator issued a certificate to). The agent presents its client
//! certificate; the collector requires one signed by its CA.
//!
//! Configs are built with an explicit provider, so nothing depends on a
//! process-wide default provider being installed.

use std::{
    fs,
    io::{self, Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ProtocolVersion, RootCertStore, ServerConfig,
    ServerConnection, StreamOwned,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};

use crate::export::output::TlsFiles;

/// A handshake must be over within this, so a peer that stalls or trickles
/// bytes cannot hold a connection slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// In TLS 1.3 the client finishes its handshake before the server has seen
/// the client certificate, so a refusal arrives only afterwards. The client
/// waits this long for the server's first word (session tickets if it
/// accepted, an alert if not); a silent server is taken as accepting, and a
/// later refusal shows up as a lost connection.
const VERDICT_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: no certificate in it (expected PEM, -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{}: no private key in it (expected an unencrypted PEM key: PKCS#8, PKCS#1 or SEC1)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("{}: not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: unusable private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("{}: unusable CA certificate: {reason}", path.display())]
    BadCa { path: PathBuf, reason: String },
    #[error("certificate {} with key {}: {reason}", cert.display(), key.display())]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("server name '{name}': {reason}")]
    ServerName { name: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("TLS handshake with {peer}: {reason}")]
    Handshake { peer: String, reason: String },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file, in order (a chain: leaf first).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM file, checked to be one the provider can
/// sign with, so a bad key is blamed on its file and not on the pair.
fn private_key(path: &Path, provider: &CryptoProvider) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        other => TlsError::Pem {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })?;
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| TlsError::BadKey {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(key)
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path)? {
        store.add(cert).map_err(|e| TlsError::BadCa {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(store))
}

fn cert_key_err(cert: &Path, key: &Path) -> impl FnOnce(rustls::Error) -> TlsError {
    move |e| TlsError::CertKey {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

fn config_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// The agent's side: trusts only `files.ca`, presents `files.cert` (a chain,
/// leaf first) signed with `files.key`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let roots = roots(&files.ca)?;
    let chain = certificates(&files.cert)?;
    let key = private_key(&files.key, &provider)?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(cert_key_err(&files.cert, &files.key))?;
    Ok(Arc::new(config))
}

/// The name the collector's certificate must carry: a DNS name or an IP
/// address (checked against the certificate's IP SANs).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|e| TlsError::ServerName {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

/// The collector's side: presents `cert` (a chain, leaf first) signed with
/// `key`, and requires every client to present a certificate signed by `ca`.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| TlsError::BadCa {
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    let chain = certificates(cert)?;
    let key_der = private_key(key, &provider)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key_der)
        .map_err(cert_key_err(cert, key))?;
    Ok(Arc::new(config))
}

/// A server that asks for no client certificate: the admission webhook's,
/// which the API server calls (it presents `cert`, signed with `key`).
pub fn server_config_without_client_auth(
    cert: &Path,
    key: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let chain = certificates(cert)?;
    let key_der = private_key(key, &provider)?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(config_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(cert_key_err(cert, key))?;
    Ok(Arc::new(config))
}

/// Completes the client handshake on a connected socket, and waits for the
/// server's verdict on our certificate (see [`VERDICT_WAIT`]). A server we do
/// not trust, or one that refuses us, is an error naming the reason.
pub fn connect(
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
    mut tcp: TcpStream,
) -> Result<StreamOwned<ClientConnection, TcpStream>, TlsError> {
    let peer = peer_of(&tcp);
    let fail = |reason: String| TlsError::Handshake {
        peer: peer.clone(),
        reason,
    };
    let mut conn =
        ClientConnection::new(config.clone(), name.clone()).map_err(|e| fail(e.to_string()))?;
    handshake(&mut conn, &mut tcp).map_err(&fail)?;
    if conn.protocol_version() == Some(ProtocolVersion::TLSv1_3) {
        await_verdict(&mut conn, &mut tcp).map_err(&fail)?;
    }
    clear_timeouts(&tcp).map_err(|e| fail(e.to_string()))?;
    Ok(StreamOwned::new(conn, tcp))
}

/// Completes the server handshake on an accepted socket within
/// [`HANDSHAKE_TIMEOUT`]. A client with no certificate, or with one not
/// signed by the CA, is refused here (and told why by an alert).
pub fn accept(
    config: &Arc<ServerConfig>,
    mut tcp: TcpStream,
) -> Result<StreamOwned<ServerConnection, TcpStream>, TlsError> {
    let peer = peer_of(&tcp);
    let fail = |reason: String| TlsError::Handshake {
        peer: peer.clone(),
        reason,
    };
    let mut conn = ServerConnection::new(config.clone()).map_err(|e| fail(e.to_string()))?;
    handshake(&mut conn, &mut tcp).map_err(&fail)?;
    clear_timeouts(&tcp).map_err(|e| fail(e.to_string()))?;
    Ok(StreamOwned::new(conn, tcp))
}

fn peer_of(tcp: &TcpStream) -> String {
    tcp.peer_addr()
        .map_or_else(|_| "an unknown peer".to_owned(), |a| a.to_string())
}

fn clear_timeouts(tcp: &TcpStream) -> io::Result<()> {
    tcp.set_read_timeout(None)?;
    tcp.set_write_timeout(None)
}

/// Runs the handshake to its end, then sends whatever it left queued (the
/// client's last flight, the server's session tickets), so the peer's view
/// is complete before either side moves on.
fn handshake<D>(conn: &mut ConnectionCommon<D>, tcp: &mut TcpStream) -> Result<(), String> {
    let mut io = Deadline {
        tcp,
        until: Instant::now() + HANDSHAKE_TIMEOUT,
    };
    let result = (|| {
        while conn.is_handshaking() {
            conn.complete_io(&mut io)?;
        }
        while conn.wants_write() {
            conn.write_tls(&mut io)?;
        }
        io.flush()
    })();
    result.map_err(|e| reason(&e))
}

fn await_verdict(conn: &mut ClientConnection, tcp: &mut TcpStream) -> Result<(), String> {
    tcp.set_read_timeout(Some(VERDICT_WAIT))
        .map_err(|e| e.to_string())?;
    match conn.read_tls(tcp) {
        Ok(0) => Err(
            "the server closed the connection right after the handshake \
                      (it did not accept our certificate)"
                .to_owned(),
        ),
        Ok(_) => conn
            .process_new_packets()
            .map(drop)
            .map_err(|e| e.to_string()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A readable reason for a failed handshake: rustls's own error where there
/// is one (it says which certificate check failed or which alert came).
fn reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            format!("no answer within {}s", HANDSHAKE_TIMEOUT.as_secs())
        }
        io::ErrorKind::UnexpectedEof => "the peer closed the connection".to_owned(),
        _ => e.to_string(),
    }
}

/// The socket under an overall deadline: each read or write may wait only
/// for what is left of it.
struct Deadline<'a> {
    tcp: &'a mut TcpStream,
    until: Instant,
}

impl Deadline<'_> {
    fn left(&self) -> io::Result<Duration> {
        self.until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_write_timeout(Some(left))?;
        self.tcp.write(buf)
    }

    /// rustls hands over all its queued records at once, and after a failed
    /// handshake makes a single last write (the alert telling the peer why):
    /// the default, first-buffer-only `write_vectored` would lose the alert
    /// behind any record queued before it.
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let left = self.left()?;
        self.tcp.set_write_timeout(Some(left))?;
        self.tcp.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

#[cfg(test)]
mod tests;
