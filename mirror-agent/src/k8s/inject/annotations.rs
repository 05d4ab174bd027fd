//! The annotations (and the namespace label) that steer injection, read
//! and checked. A bad one is named with its reason, for an admission
//! warning; the pod is then admitted without the sidecar.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::policy::{InterfacePattern, valid_name};

/// Namespace label and pod annotation: `enabled` opts in, `disabled` out.
/// The pod's annotation wins over its namespace's label.
pub const SIDECAR: &str = "mirror.packets.dev/sidecar";
/// The MirrorPolicy of the pod's namespace to mirror by; without it, the
/// one policy of the namespace whose podSelector matches the pod.
pub const POLICY: &str = "mirror.packets.dev/policy";
/// The sidecar's memory limit (a Kubernetes quantity, at least 16Mi); its
/// ring and queues are sized from it.
pub const MEMORY: &str = "mirror.packets.dev/memory";
/// The sidecar's CPU request (a Kubernetes quantity).
pub const CPU: &str = "mirror.packets.dev/cpu";
/// Comma-separated interface names; default every interface but `lo`.
pub const INTERFACES: &str = "mirror.packets.dev/interfaces";
/// The port of the sidecar's /metrics and probes.
pub const METRICS_PORT: &str = "mirror.packets.dev/metrics-port";
/// Written on an injected pod: the policy it was injected with.
pub const INJECTED: &str = "mirror.packets.dev/injected";

/// Least memory limit accepted: the agent itself takes about 8 MiB.
pub const MIN_MEMORY: u64 = 16 << 20;

/// One annotation refused: which, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "annotation {annotation}={value:?}: {reason}; the pod is admitted without the mirror sidecar"
)]
pub struct BadAnnotation {
    pub annotation: &'static str,
    pub value: String,
    pub reason: String,
}

/// Opt in or out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Enabled,
    Disabled,
}

/// What the annotations ask, checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Asked {
    pub choice: Option<Choice>,
    pub policy: Option<String>,
    /// Bytes.
    pub memory: Option<u64>,
    pub cpu: Option<Quantity>,
    pub interfaces: Vec<String>,
    pub metrics_port: Option<u16>,
}

fn bad(annotation: &'static str, value: &str, reason: impl Into<String>) -> BadAnnotation {
    BadAnnotation {
        annotation,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

pub fn choice(annotation: &'static str, value: &str) -> Result<Choice, BadAnnotation> {
    match value {
        "enabled" => Ok(Choice::Enabled),
        "disabled" => Ok(Choice::Disabled),
        _ => Err(bad(
            annotation,
            value,
            "expected \"enabled\" or \"disabled\"",
        )),
    }
}

/// Reads every annotation of ours; the first bad one is the error.
pub fn read(annotations: &BTreeMap<String, String>) -> Result<Asked, BadAnnotation> {
    let mut asked = Asked::default();
    if let Some(v) = annotations.get(SIDECAR) {
        asked.choice = Some(choice(SIDECAR, v)?);
    }
    if let Some(v) = annotations.get(POLICY) {
        if !valid_name(v) {
            return Err(bad(POLICY, v, "not a valid MirrorPolicy name"));
        }
        asked.policy = Some(v.clone());
    }
    if let Some(v) = annotations.get(MEMORY) {
        let bytes = quantity_bytes(v)
            .ok_or_else(|| bad(MEMORY, v, "not a memory quantity (such as 64Mi or 100M)"))?;
        if bytes < MIN_MEMORY {
            return Err(bad(MEMORY, v, "less than 16Mi, too little for the sidecar"));
        }
        asked.memory = Some(bytes);
    }
    if let Some(v) = annotations.get(CPU) {
        if !is_cpu_quantity(v) {
            return Err(bad(CPU, v, "not a CPU quantity (such as 100m or 0.5)"));
        }
        asked.cpu = Some(Quantity(v.clone()));
    }
    if let Some(v) = annotations.get(INTERFACES) {
        for name in v.split(',').map(str::trim) {
            match InterfacePattern::parse(name) {
                Ok(InterfacePattern::Name(_)) => {}
                Ok(InterfacePattern::Glob(_)) => {
                    return Err(bad(
                        INTERFACES,
                        v,
                        format!("{name:?}: names only, no globs"),
                    ));
                }
                Err(reason) => return Err(bad(INTERFACES, v, reason)),
            }
            if asked.interfaces.iter().any(|n| n == name) {
                return Err(bad(INTERFACES, v, format!("{name:?} is listed twice")));
            }
            asked.interfaces.push(name.to_owned());
        }
    }
    if let Some(v) = annotations.get(METRICS_PORT) {
        let port = v
            .parse::<u16>()
            .ok()
            .filter(|p| *p >= 1024)
            .ok_or_else(|| bad(METRICS_PORT, v, "expected a port from 1024 to 65535"))?;
        asked.metrics_port = Some(port);
    }
    Ok(asked)
}

/// A memory quantity in bytes: a whole number with an optional binary
/// (Ki..Ei) or decimal (k, M, G, T, P, E) suffix. Hand-written because
/// k8s-openapi's `Quantity` is a string with no parser.
pub fn quantity_bytes(text: &str) -> Option<u64> {
    const SUFFIXES: [(&str, u64); 12] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("Pi", 1 << 50),
        ("Ei", 1 << 60),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("P", 1_000_000_000_000_000),
        ("E", 1_000_000_000_000_000_000),
    ];
    let (digits, scale) = SUFFIXES
        .iter()
        .find_map(|(s, m)| text.strip_suffix(s).map(|d| (d, *m)))
        .unwrap_or((text, 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

fn is_cpu_quantity(text: &str) -> bool {
    let digits = text.strip_suffix('m').unwrap_or(text);
    let mut parts = digits.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let frac = parts.next();
    !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        && !(text.ends_with('m') && frac.is_some())
}
