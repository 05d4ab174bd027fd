//! What the admission webhook does to a pod, as a pure function: from the
//! pod, its namespace's labels, the namespace's `MirrorPolicy`s and the
//! `MirrorCollector`s, to a JSON patch that adds the mirror sidecar, or to
//! no patch and the reason (with a warning when the pod asked for one and
//! cannot have it). The pod is always admitted: production first.
//!
//! - [`annotations`]: the knobs, read and checked.
//! - [`container`]: the injected container and the patch.
//! - [`uri`]: a collector as a policy file's URI.

pub mod annotations;
pub mod container;
pub mod uri;

use std::{collections::BTreeMap, path::PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    ResourceExt,
    core::admission::{AdmissionRequest, AdmissionResponse},
};

use self::annotations::{Asked, Choice};
use super::{collector::MirrorCollector, policy::MirrorPolicy, tenancy};
use crate::policy::spec::{BodySpec, FilePolicySpec, FileSpec};

/// The injected container's name; a pod that has one is left alone.
pub const SIDECAR_NAME: &str = "mirror-sidecar";

/// The webhook's own settings (its flags).
#[derive(Clone, Debug)]
pub struct Injector {
    pub image: String,
    /// The project's namespace: never injected, as `kube-system`.
    pub own_namespace: String,
    /// Memory limit without the annotation, in bytes.
    pub memory: u64,
    /// CPU request without the annotation.
    pub cpu: String,
    pub metrics_port: u16,
    /// Where a TLS collector's Secret is mounted in the sidecar.
    pub tls_dir: PathBuf,
}

/// The sidecar's policy, as the webhook resolved it for one pod.
struct Resolved {
    policy: String,
    /// The policy file (YAML) the sidecar gets in `$MIRROR_POLICY`.
    text: String,
    /// Its collector needs a raw socket (GRE, ERSPAN): CAP_NET_RAW.
    raw: bool,
    /// A TLS collector's Secret, of the pod's namespace, to mount.
    tls_secret: Option<String>,
}

/// What the API server knows that the decision needs.
pub struct Cluster<'a> {
    pub namespace_labels: &'a BTreeMap<String, String>,
    /// The `MirrorPolicy`s of the pod's namespace.
    pub policies: &'a [MirrorPolicy],
    pub collectors: &'a [MirrorCollector],
}

/// The decision for one pod.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Inject {
        patch: json_patch::Patch,
        policy: String,
    },
    /// Not asked for, opted out, or never injected here; no warning.
    Skip(&'static str),
    /// Asked for, but impossible: admitted without it, with this warning.
    Refuse(String),
}

impl Injector {
    pub fn decide(&self, pod: &Pod, namespace: &str, cluster: &Cluster<'_>) -> Outcome {
        if namespace == "kube-system" || namespace == self.own_namespace {
            return Outcome::Skip("the mirror never injects into kube-system or its own namespace");
        }
        let spec = pod.spec.as_ref();
        if spec.and_then(|s| s.host_network).unwrap_or(false) {
            return Outcome::Skip("hostNetwork pods share the node's interfaces: never injected");
        }
        let has_sidecar = spec.is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == SIDECAR_NAME)
        });
        if has_sidecar {
            return Outcome::Skip("already injected");
        }
        let asked = match annotations::read(pod.annotations()) {
            Ok(asked) => asked,
            Err(bad) => return Outcome::Refuse(bad.to_string()),
        };
        let namespace_choice = match cluster.namespace_labels.get(annotations::SIDECAR) {
            None => None,
            Some(v) => match annotations::choice(annotations::SIDECAR, v) {
                Ok(c) => Some(c),
                // The namespace's label is an administrator's: say so, inject nothing.
                Err(bad) => {
                    return Outcome::Refuse(format!("namespace {namespace}: label {}", bad));
                }
            },
        };
        match asked.choice.or(namespace_choice) {
            Some(Choice::Enabled) => {}
            Some(Choice::Disabled) => return Outcome::Skip("opted out"),
            None => return Outcome::Skip("not opted in"),
        }
        match self.resolve(pod, namespace, cluster, &asked) {
            Ok(r) => Outcome::Inject {
                patch: container::patch(
                    self,
                    pod,
                    &asked,
                    &r.policy,
                    &r.text,
                    r.raw,
                    r.tls_secret.as_deref(),
                ),
                policy: r.policy,
            },
            Err(warning) => Outcome::Refuse(format!(
                "{warning}; the pod is admitted without the mirror sidecar"
            )),
        }
    }

    /// The policy for the pod, as the sidecar's policy file, with what its
    /// collector needs; or why there is none.
    fn resolve(
        &self,
        pod: &Pod,
        namespace: &str,
        cluster: &Cluster<'_>,
        asked: &Asked,
    ) -> Result<Resolved, String> {
        let policy = match &asked.policy {
            Some(name) => cluster
                .policies
                .iter()
                .find(|p| p.name_any() == *name)
                .ok_or_else(|| {
                    format!(
                        "annotation {}={name:?}: no MirrorPolicy \"{name}\" in namespace {namespace}",
                        annotations::POLICY
                    )
                })?,
            None => {
                let selecting: Vec<&MirrorPolicy> = cluster
                    .policies
                    .iter()
                    .filter(|p| {
                        p.validate().is_ok_and(|v| {
                            v.selects(namespace, cluster.namespace_labels, pod.labels())
                        })
                    })
                    .collect();
                match selecting.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(format!(
                            "no MirrorPolicy of namespace {namespace} selects this pod (name one \
                             with annotation {})",
                            annotations::POLICY
                        ));
                    }
                    several => {
                        let names: Vec<String> = several.iter().map(|p| p.name_any()).collect();
                        return Err(format!(
                            "MirrorPolicies {} all select this pod: name one with annotation {}",
                            names.join(", "),
                            annotations::POLICY
                        ));
                    }
                }
            }
        };
        let name = policy.name_any();
        let collector = cluster
            .collectors
            .iter()
            .find(|c| c.name_any() == policy.spec.collector_ref.name);
        // The node agent's own decision: valid spec, collector found,
        // valid, and admitting this namespace.
        let valid = tenancy::accept_policy(policy, cluster.namespace_labels, collector)
            .map_err(|refusal| format!("MirrorPolicy \"{name}\": {}", refusal.message))?;
        let collector =
            collector.ok_or_else(|| format!("MirrorPolicy \"{name}\": no collector"))?;
        // TCP and TLS collectors are fine: the sidecar never mirrors its
        // own connection (export/own.rs). A TLS collector's client
        // certificate comes from the Secret of the collector's secretName
        // in the pod's own namespace (a pod can mount no other), made for
        // that tenant; the node agent's, in the project's namespace, never
        // reaches the pod.
        let tls_secret = collector.spec.tls.as_ref().map(|t| t.secret_name.clone());
        let uri = uri::collector_uri(&collector.spec, &self.tls_dir)
            .map_err(|e| format!("MirrorCollector \"{}\": {e}", collector.name_any()))?;
        let raw = collector.spec.protocol.needs_raw_socket();
        // The rate limit as accepted: under the collector's ceiling.
        let body = &BodySpec {
            rate_limit: valid.body.rate_limit.to_spec(),
            ..policy.spec.body.clone()
        };
        let interfaces = if asked.interfaces.is_empty() {
            vec!["*".to_owned()]
        } else {
            asked.interfaces.clone()
        };
        let file = FileSpec {
            policies: vec![FilePolicySpec::new(&name, interfaces, vec![uri], body)],
        };
        let text = serde_norway::to_string(&file)
            .map_err(|e| format!("MirrorPolicy \"{name}\": writing the sidecar's policy: {e}"))?;
        Ok(Resolved {
            policy: name,
            text,
            raw,
            tls_secret,
        })
    }
}

impl Outcome {
    /// One word for the log.
    pub fn summary(&self) -> String {
        match self {
            Self::Inject { policy, .. } => format!("injected policy={policy}"),
            Self::Skip(why) => format!("skipped: {why}"),
            Self::Refuse(why) => format!("refused: {why}"),
        }
    }
}

/// The response to `request`: always allowed; with the patch, or with the
/// refusal as a warning (`kubectl` shows it to whoever made the pod).
pub fn respond<T: kube::Resource>(
    request: &AdmissionRequest<T>,
    outcome: Outcome,
) -> AdmissionResponse {
    let response = AdmissionResponse::from(request);
    match outcome {
        Outcome::Inject { patch, .. } => match response.clone().with_patch(patch) {
            Ok(patched) => patched,
            Err(error) => with_warning(response, format!("writing the patch: {error}")),
        },
        Outcome::Skip(_) => response,
        Outcome::Refuse(warning) => with_warning(response, warning),
    }
}

fn with_warning(mut response: AdmissionResponse, warning: String) -> AdmissionResponse {
    response.warnings.get_or_insert_with(Vec::new).push(warning);
    response
}

#[cfg(test)]
mod tests;
