//! A plain rustls client (not the agent), for tests that speak TLS to a
//! server themselves: tls.rs and hostile_tls.rs.

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use testbed::pki::Identity;

/// Trusts `ca` and presents `identity`, or no certificate at all.
pub fn plain_client(ca: &Path, identity: Option<&Identity>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&id.cert)
                    .expect("cert file")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert PEM"),
                PrivateKeyDer::from_pem_file(&id.key).expect("key"),
            )
            .expect("client auth"),
    })
}
