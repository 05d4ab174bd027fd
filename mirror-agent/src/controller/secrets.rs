//! A TLS collector's credentials: the Secret it names, from the agent's own
//! namespace (the only one whose Secrets it may read), written as the PEM
//! files the TLS exporter reads when it connects, into a directory of its
//! own per collector, readable by the agent alone.

use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use kube::ResourceExt;

use crate::{
    controller::watch::Cluster,
    k8s::{TLS_CA_KEY, TLS_CERT_KEY, TLS_KEY_KEY},
};

/// Writes the Secret's three files under `root/COLLECTOR/` (only what
/// changed) and returns that directory, or why it cannot.
pub fn materialize(
    cluster: &Cluster,
    collector: &str,
    secret: &str,
    root: &Path,
) -> Result<PathBuf, String> {
    let found = cluster
        .secrets
        .state()
        .into_iter()
        .find(|s| s.name_any() == secret)
        .ok_or_else(|| {
            format!("spec.tls.secretName: no Secret \"{secret}\" in the agent's namespace")
        })?;
    let data = found.data.as_ref();
    let dir = root.join(collector);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for key in [TLS_CA_KEY, TLS_CERT_KEY, TLS_KEY_KEY] {
        let bytes = data
            .and_then(|d| d.get(key))
            .ok_or_else(|| format!("Secret \"{secret}\" has no {key}"))?;
        let path = dir.join(key);
        if fs::read(&path).is_ok_and(|old| old == bytes.0) {
            continue;
        }
        // A new file moved into place, so a connection never reads half of one.
        let tmp = dir.join(format!(".{key}.new"));
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&bytes.0)?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(dir)
}
