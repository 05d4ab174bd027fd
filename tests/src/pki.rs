//! Certificates for the TLS tests, made fresh for each test with rcgen and
//! written as PEM files into a temporary directory (removed on drop).
//!
//! Two unrelated authorities, each with a server certificate for the test
//! collector (`collector.test` and 198.18.1.2) and a client certificate, so
//! a test can mix them: the wrong CA, a foreign client, and so on.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// The name the test collector's certificates carry (besides its address).
pub const SERVER_NAME: &str = "collector.test";
/// The collector's address in [`crate::topology::CollectorLink`].
pub const SERVER_IP: &str = "198.18.1.2";
/// The name in the agents' client certificates.
pub const CLIENT_NAME: &str = "agent.test";

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One certificate authority and what it issued.
#[derive(Debug)]
pub struct Authority {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    pub server: Identity,
    pub client: Identity,
}

/// The test PKI: the collector's authority and an unrelated one.
pub struct Pki {
    pub main: Authority,
    pub other: Authority,
    /// Holds the files.
    pub dir: TempDir,
}

impl Pki {
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        Ok(Self {
            main: authority(dir.path(), "main")?,
            other: authority(dir.path(), "other")?,
            dir,
        })
    }

    /// The collector's `tls://` listener at [`SERVER_IP`]:`port` with the
    /// main authority's server certificate, and an agent's output to it
    /// presenting `client`'s client certificate.
    pub fn uris(&self, client: &Authority, port: u16) -> (String, String) {
        let p = |path: &Path| path.display().to_string();
        let listen = format!(
            "tls://{SERVER_IP}:{port}?ca={}&cert={}&key={}",
            p(&self.main.ca),
            p(&self.main.server.cert),
            p(&self.main.server.key)
        );
        let output = format!(
            "tls://{SERVER_IP}:{port}?ca={}&cert={}&key={}&name={SERVER_NAME}",
            p(&self.main.ca),
            p(&client.client.cert),
            p(&client.client.key),
        );
        (listen, output)
    }
}

fn authority(dir: &Path, tag: &str) -> Result<Authority> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    // Distinct names: two CAs with one name would meet as a bad signature
    // rather than as an unknown issuer.
    params
        .distinguished_name
        .push(DnType::CommonName, format!("mirror test CA {tag}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let write = |name: &str, pem: &str| -> Result<PathBuf> {
        let path = dir.join(format!("{tag}-{name}.pem"));
        fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let issue = |name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose| -> Result<Identity> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, sans[0]);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca)?;
        Ok(Identity {
            cert: write(&format!("{name}-cert"), &cert.pem())?,
            key: write(&format!("{name}-key"), &key.serialize_pem())?,
        })
    };
    Ok(Authority {
        server: issue(
            "server",
            &[SERVER_NAME, SERVER_IP],
            ExtendedKeyUsagePurpose::ServerAuth,
        )?,
        client: issue(
            "client",
            &[CLIENT_NAME],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?,
        ca: write("ca", &ca.pem())?,
    })
}
