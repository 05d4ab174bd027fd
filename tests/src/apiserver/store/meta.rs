//! The server's side of a write: the checks it passes (type, name,
//! freshness; apply conflicts reported) and what the server sets itself
//! (type, uid, timestamps, managedFields).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{
    super::{
        error::ApiError,
        ownership::{self, Manager},
        resources::Resource,
    },
    Key,
};

pub(super) fn conflict_error(
    res: &Resource,
    name: &str,
    conflicts: &ownership::Conflicts,
) -> ApiError {
    let lines: Vec<String> = conflicts
        .iter()
        .map(|(m, p)| format!("conflict with \"{m}\": {}", ownership::describe(p)))
        .collect();
    let plural = if conflicts.len() == 1 { "" } else { "s" };
    let mut e = ApiError::new(
        409,
        "Conflict",
        format!(
            "Apply failed with {} conflict{plural}: {}",
            conflicts.len(),
            lines.join("\n")
        ),
    )
    .about(res, name);
    if let Some(details) = &mut e.details {
        details.causes = conflicts
            .iter()
            .map(|(m, p)| {
                json!({
                    "type": "FieldManagerConflict",
                    "message": format!("conflict with \"{m}\""),
                    "field": ownership::describe(p),
                })
            })
            .collect();
    }
    e
}

/// Optimistic concurrency: a resourceVersion in the body must be the stored one.
pub(super) fn check_fresh(
    res: &Resource,
    key: &Key,
    old: &Value,
    body: &Value,
) -> Result<(), ApiError> {
    let wanted = body
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let have = old
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if wanted.is_empty() || wanted == have {
        Ok(())
    } else {
        Err(ApiError::stale(res, &key.name))
    }
}

/// A body's `apiVersion` and `kind`, where given, must be the URL's.
pub(super) fn check_type(res: &Resource, obj: &Value) -> Result<(), ApiError> {
    let expected = res.api_version();
    if let Some(v) = obj.get("apiVersion").and_then(Value::as_str)
        && v != expected
    {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({expected})"
        )));
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str)
        && k != res.kind
    {
        return Err(ApiError::bad_request(format!(
            "the kind in the data ({k}) does not match the expected kind ({})",
            res.kind
        )));
    }
    Ok(())
}

/// A DNS-1123 subdomain, as object names and namespaces must be.
pub(super) fn check_name(res: &Resource, name: &str) -> Result<(), ApiError> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| ok_char(c) || c == '-' || c == '.')
        && name.starts_with(ok_char)
        && name.ends_with(ok_char);
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            res,
            name,
            format!(
                "metadata.name: Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of \
                 lower case alphanumeric characters, '-' or '.', and must start and end with an \
                 alphanumeric character"
            ),
        ))
    }
}

pub(super) fn set_type(res: &Resource, obj: &mut Value) {
    obj["apiVersion"] = json!(res.api_version());
    obj["kind"] = json!(res.kind);
}

pub(super) fn set_managed_fields(obj: &mut Value, managers: &[Manager]) {
    if managers.is_empty() {
        if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
            meta.remove("managedFields");
        }
    } else {
        obj["metadata"]["managedFields"] = ownership::render(managers);
    }
}

/// Everything but metadata and status: what `metadata.generation` counts.
pub(super) fn spec_of(obj: &Value) -> Value {
    let mut spec = obj.clone();
    if let Value::Object(o) = &mut spec {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            o.remove(k);
        }
    }
    spec
}

/// Now, as RFC 3339 in UTC to the second, as Kubernetes writes timestamps.
pub(super) fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to civil date (Howard Hinnant's algorithm), for dates after 1970.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// UIDs: unique, not secret (splitmix64).
#[derive(Debug)]
pub(super) struct Ids {
    state: u64,
}

impl Ids {
    pub(super) fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Self {
            state: nanos ^ (u64::from(std::process::id()) << 32),
        }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A version 4 UUID.
    pub(super) fn uid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }
}
