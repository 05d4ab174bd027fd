//! The injected container, and the JSON patch that adds it.
//!
//! A native sidecar (Kubernetes 1.29+): an init container with
//! `restartPolicy: Always`, first of the init containers, so it is running
//! (its startup probe answered: hooks attached) before any other container
//! starts, and is stopped only after them. Privileges: CAP_BPF (load the
//! programs and make the ring buffer), CAP_PERFMON (without it the verifier
//! refuses the programs' packet-pointer arithmetic, as for an unprivileged
//! loader) and CAP_NET_ADMIN (attach them to the pod's interfaces with
//! tcx), CAP_NET_RAW only for a GRE or ERSPAN
//! collector's raw socket; every other capability dropped, no privilege
//! escalation, a read-only root filesystem. It runs as uid 0 because
//! Kubernetes gives added capabilities to non-root containers only in
//! their bounding set, not their effective one.
//!
//! A TLS collector's client certificate, key and CA come from a Secret of
//! the pod's namespace, mounted read-only at [`Injector::tls_dir`] (only
//! its three keys, readable by the sidecar's uid alone).

use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
        ObjectFieldSelector, Pod, Probe, ResourceRequirements, SecretVolumeSource, SecurityContext,
        Volume, VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use serde_json::{Value, json};

use super::{Injector, SIDECAR_NAME, annotations::Asked, annotations::INJECTED};
use crate::k8s::collector::{TLS_CA_KEY, TLS_CERT_KEY, TLS_KEY_KEY};

/// The volume a TLS collector's Secret is mounted from.
pub const TLS_VOLUME: &str = "mirror-sidecar-tls";

/// The volume of the Secret `secret`: its CA, certificate and key only,
/// mode 0400. A missing Secret or key keeps the pod from starting, with
/// the kubelet's event naming it, rather than a sidecar that cannot send.
pub fn tls_volume(secret: &str) -> Volume {
    let item = |key: &str| KeyToPath {
        key: key.to_owned(),
        path: key.to_owned(),
        mode: None,
    };
    Volume {
        name: TLS_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(vec![
                item(TLS_CA_KEY),
                item(TLS_CERT_KEY),
                item(TLS_KEY_KEY),
            ]),
            default_mode: Some(0o400),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

/// The sidecar container for `policy`, whose policy file is `text`; `tls`:
/// it mounts [`TLS_VOLUME`].
pub fn container(
    injector: &Injector,
    asked: &Asked,
    text: &str,
    raw: bool,
    tls: bool,
) -> Container {
    let port = asked.metrics_port.unwrap_or(injector.metrics_port);
    let memory = asked.memory.unwrap_or(injector.memory);
    let mut args = vec![
        "sidecar".to_owned(),
        "--metrics-addr".to_owned(),
        format!("0.0.0.0:{port}"),
    ];
    for name in &asked.interfaces {
        args.extend(["--interface".to_owned(), name.clone()]);
    }
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(port)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    };
    let mut add = vec![
        "BPF".to_owned(),
        "PERFMON".to_owned(),
        "NET_ADMIN".to_owned(),
    ];
    if raw {
        add.push("NET_RAW".to_owned());
    }
    let cpu = asked
        .cpu
        .clone()
        .unwrap_or_else(|| Quantity(injector.cpu.clone()));
    Container {
        name: SIDECAR_NAME.to_owned(),
        image: Some(injector.image.clone()),
        args: Some(args),
        restart_policy: Some("Always".to_owned()),
        env: Some(vec![
            EnvVar {
                name: "MIRROR_POLICY".to_owned(),
                value: Some(text.to_owned()),
                ..Default::default()
            },
            EnvVar {
                name: "NODE_NAME".to_owned(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        api_version: Some("v1".to_owned()),
                        field_path: "spec.nodeName".to_owned(),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("mirror-metrics".to_owned()),
            container_port: i32::from(port),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        resources: Some(ResourceRequirements {
            limits: Some([("memory".to_owned(), Quantity(memory.to_string()))].into()),
            requests: Some(
                [
                    ("memory".to_owned(), Quantity(memory.to_string())),
                    ("cpu".to_owned(), cpu),
                ]
                .into(),
            ),
            ..Default::default()
        }),
        // Started (hooks attached) before the application's containers.
        volume_mounts: tls.then(|| {
            vec![VolumeMount {
                name: TLS_VOLUME.to_owned(),
                mount_path: injector.tls_dir.display().to_string(),
                read_only: Some(true),
                ..Default::default()
            }]
        }),
        startup_probe: Some(probe("/readyz", 1, 30)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(add),
                drop: Some(vec!["ALL".to_owned()]),
            }),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `/` and `~` escaped in a JSON pointer's token (RFC 6901).
fn token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The patch: the container first among the init containers, a TLS
/// collector's Secret among the volumes, and the `injected` annotation
/// naming the policy.
pub fn patch(
    injector: &Injector,
    pod: &Pod,
    asked: &Asked,
    policy: &str,
    text: &str,
    raw: bool,
    tls_secret: Option<&str>,
) -> json_patch::Patch {
    let c = serde_json::to_value(container(injector, asked, text, raw, tls_secret.is_some()))
        .unwrap_or(Value::Null);
    let has_init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some();
    let mut ops = vec![if has_init {
        json!({"op": "add", "path": "/spec/initContainers/0", "value": c})
    } else {
        json!({"op": "add", "path": "/spec/initContainers", "value": [c]})
    }];
    if let Some(secret) = tls_secret {
        let v = serde_json::to_value(tls_volume(secret)).unwrap_or(Value::Null);
        let has_volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).is_some();
        ops.push(if has_volumes {
            json!({"op": "add", "path": "/spec/volumes/-", "value": v})
        } else {
            json!({"op": "add", "path": "/spec/volumes", "value": [v]})
        });
    }
    if pod.metadata.annotations.is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    ops.push(json!({
        "op": "add",
        "path": format!("/metadata/annotations/{}", token(INJECTED)),
        "value": policy,
    }));
    // Every op above is well formed by construction.
    serde_json::from_value(Value::Array(ops)).unwrap_or(json_patch::Patch(Vec::new()))
}
