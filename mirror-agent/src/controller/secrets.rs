//! A TLS collector's credentials: the Secret it names, from the agent's own
//! namespace (the only one whose Secrets it may read), to be written as the
//! PEM files the TLS exporter reads when it connects, into a directory of
//! its own per collector, readable by the agent alone.
//!
//! Reading them from a snapshot ([`TlsMaterial::from_snapshot`]) is pure and
//! part of the desired state; writing them ([`TlsMaterial::write`]) happens
//! after it is computed, before it is applied.

use std::{
    fmt, fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use kube::ResourceExt;

use crate::{
    controller::snapshot::Snapshot,
    k8s::{TLS_CA_KEY, TLS_CERT_KEY, TLS_KEY_KEY},
};

/// One collector's credentials, read from its Secret, and where they go.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// The `MirrorCollector`'s name.
    pub collector: String,
    /// `root/COLLECTOR`: the directory its output reads the files from.
    pub dir: PathBuf,
    /// Each key of the Secret (the file's name) and its bytes.
    pub files: Vec<(&'static str, Vec<u8>)>,
}

// Keys stay out of logs: only which files, not what they hold.
impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("collector", &self.collector)
            .field("dir", &self.dir)
            .field(
                "files",
                &self.files.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TlsMaterial {
    /// The credentials of `collector`, from the Secret named `secret` in the
    /// snapshot, to be written under `root/COLLECTOR/`; or why there are none.
    pub fn from_snapshot(
        snapshot: &Snapshot,
        collector: &str,
        secret: &str,
        root: &Path,
    ) -> Result<Self, String> {
        let found = snapshot
            .secrets
            .iter()
            .find(|s| s.name_any() == secret)
            .ok_or_else(|| {
                format!("spec.tls.secretName: no Secret \"{secret}\" in the agent's namespace")
            })?;
        let data = found.data.as_ref();
        let files = [TLS_CA_KEY, TLS_CERT_KEY, TLS_KEY_KEY]
            .into_iter()
            .map(|key| {
                data.and_then(|d| d.get(key))
                    .map(|bytes| (key, bytes.0.clone()))
                    .ok_or_else(|| format!("Secret \"{secret}\" has no {key}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            collector: collector.to_owned(),
            dir: root.join(collector),
            files,
        })
    }

    /// Writes the files that changed, or says why it cannot.
    pub fn write(&self) -> Result<(), String> {
        let dir = &self.dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        for (key, bytes) in &self.files {
            let path = dir.join(key);
            if fs::read(&path).is_ok_and(|old| old == *bytes) {
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
                f.write_all(bytes)?;
                fs::rename(&tmp, &path)
            };
            write().map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, os::unix::fs::PermissionsExt, sync::Arc};

    use k8s_openapi::{ByteString, api::core::v1::Secret};

    use super::*;

    fn secret(name: &str, keys: &[(&str, &[u8])]) -> Arc<Secret> {
        let data: BTreeMap<String, ByteString> = keys
            .iter()
            .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
            .collect();
        let mut s = Secret {
            data: Some(data),
            ..Secret::default()
        };
        s.metadata.name = Some(name.to_owned());
        s.metadata.namespace = Some("mirror-system".to_owned());
        Arc::new(s)
    }

    fn full() -> Arc<Secret> {
        secret(
            "lab-tls",
            &[("ca.crt", b"CA"), ("tls.crt", b"CERT"), ("tls.key", b"KEY")],
        )
    }

    #[test]
    fn the_secret_named_with_every_key() {
        let snapshot = Snapshot {
            secrets: vec![secret("other", &[]), full()],
            ..Snapshot::default()
        };
        let m = TlsMaterial::from_snapshot(&snapshot, "lab", "lab-tls", Path::new("/run/tls"))
            .expect("material");
        assert_eq!(m.dir, Path::new("/run/tls/lab"));
        assert_eq!(
            m.files,
            vec![
                ("ca.crt", b"CA".to_vec()),
                ("tls.crt", b"CERT".to_vec()),
                ("tls.key", b"KEY".to_vec())
            ]
        );
        let shown = format!("{m:?}");
        assert!(
            shown.contains("tls.key") && !shown.contains("KEY") && !shown.contains("75"),
            "the file names, not their bytes: {shown}"
        );
    }

    #[test]
    fn a_missing_secret_or_key_is_said() {
        let none = Snapshot::default();
        assert_eq!(
            TlsMaterial::from_snapshot(&none, "lab", "lab-tls", Path::new("/t")),
            Err("spec.tls.secretName: no Secret \"lab-tls\" in the agent's namespace".into())
        );
        let partial = Snapshot {
            secrets: vec![secret("lab-tls", &[("ca.crt", b"CA"), ("tls.crt", b"C")])],
            ..Snapshot::default()
        };
        assert_eq!(
            TlsMaterial::from_snapshot(&partial, "lab", "lab-tls", Path::new("/t")),
            Err("Secret \"lab-tls\" has no tls.key".into())
        );
    }

    #[test]
    fn written_for_the_agent_alone_and_rewritten_when_changed() {
        let root = tempfile::tempdir().expect("tempdir");
        let snapshot = Snapshot {
            secrets: vec![full()],
            ..Snapshot::default()
        };
        let m =
            TlsMaterial::from_snapshot(&snapshot, "lab", "lab-tls", root.path()).expect("material");
        m.write().expect("written");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&m.dir), 0o700);
        assert_eq!(mode(&m.dir.join("tls.key")), 0o600);
        assert_eq!(fs::read(m.dir.join("tls.key")).expect("key"), b"KEY");

        let renewed = Snapshot {
            secrets: vec![secret(
                "lab-tls",
                &[
                    ("ca.crt", b"CA"),
                    ("tls.crt", b"CERT2"),
                    ("tls.key", b"KEY2"),
                ],
            )],
            ..Snapshot::default()
        };
        TlsMaterial::from_snapshot(&renewed, "lab", "lab-tls", root.path())
            .expect("material")
            .write()
            .expect("rewritten");
        assert_eq!(fs::read(m.dir.join("tls.crt")).expect("cert"), b"CERT2");
        assert_eq!(fs::read(m.dir.join("tls.key")).expect("key"), b"KEY2");
        assert!(!m.dir.join(".tls.key.new").exists(), "no temporary left");
    }
}
