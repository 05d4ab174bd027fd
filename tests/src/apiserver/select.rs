//! Label and field selectors, with the API server's grammar and meaning.

use std::collections::BTreeSet;

use serde_json::Value;

use super::error::ApiError;

#[derive(Debug, Clone)]
enum Label {
    Equal(String, String),
    NotEqual(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone)]
struct Field {
    /// A dotted path into the object, such as `spec.nodeName`.
    path: String,
    value: String,
    equal: bool,
}

/// Both selectors of one list or watch; the empty selector matches all.
#[derive(Debug, Clone, Default)]
pub struct Selector {
    labels: Vec<Label>,
    fields: Vec<Field>,
}

impl Selector {
    pub fn parse(labels: Option<&str>, fields: Option<&str>) -> Result<Self, ApiError> {
        let mut selector = Self::default();
        for term in split_terms(labels.unwrap_or("")) {
            selector.labels.push(parse_label(term)?);
        }
        for term in fields.unwrap_or("").split(',').map(str::trim) {
            if term.is_empty() {
                continue;
            }
            selector.fields.push(parse_field(term)?);
        }
        Ok(selector)
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        let labels_match = self.labels.iter().all(|term| match term {
            Label::Equal(k, v) => label(k) == Some(v),
            // As in Kubernetes, `!=` and `notin` also match objects without the label.
            Label::NotEqual(k, v) => label(k) != Some(v),
            Label::In(k, set) => label(k).is_some_and(|v| set.contains(v)),
            Label::NotIn(k, set) => !label(k).is_some_and(|v| set.contains(v)),
            Label::Exists(k) => label(k).is_some(),
            Label::NotExists(k) => label(k).is_none(),
        });
        labels_match
            && self
                .fields
                .iter()
                .all(|f| (field_value(object, &f.path) == f.value) == f.equal)
    }
}

/// A field as the selector compares it: a missing field is the empty string
/// (so `spec.nodeName=` selects unscheduled pods), numbers and booleans
/// in their JSON spelling.
fn field_value(object: &Value, path: &str) -> String {
    let mut v = object;
    for part in path.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Splits at the commas that are not inside `in (a, b)`.
fn split_terms(s: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn bad(term: &str) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {term:?}"))
}

fn key(k: &str, term: &str) -> Result<String, ApiError> {
    let k = k.trim();
    let valid = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if valid {
        Ok(k.to_string())
    } else {
        Err(bad(term))
    }
}

fn set(values: &str, term: &str) -> Result<BTreeSet<String>, ApiError> {
    let inner = values
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| bad(term))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn parse_label(term: &str) -> Result<Label, ApiError> {
    if let Some(k) = term.strip_prefix('!') {
        return Ok(Label::NotExists(key(k, term)?));
    }
    if let Some((k, values)) = term.split_once(" notin ") {
        return Ok(Label::NotIn(key(k, term)?, set(values, term)?));
    }
    if let Some((k, values)) = term.split_once(" in ") {
        return Ok(Label::In(key(k, term)?, set(values, term)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Label::NotEqual(key(k, term)?, v.trim().to_string()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Label::Equal(key(k, term)?, v.trim().to_string()));
    }
    Ok(Label::Exists(key(term, term)?))
}

fn parse_field(term: &str) -> Result<Field, ApiError> {
    let (path, value, equal) = if let Some((p, v)) = term.split_once("!=") {
        (p, v, false)
    } else if let Some((p, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        (p, v, true)
    } else {
        return Err(ApiError::bad_request(format!(
            "invalid selector: '{term}'; can't understand '{term}'"
        )));
    };
    Ok(Field {
        path: key(path, term)?,
        value: value.trim().to_string(),
        equal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_and_fields() {
        let pod = json!({
            "metadata": {"name": "a", "namespace": "n", "labels": {"app": "web", "tier": "f"}},
            "spec": {"nodeName": "node1"},
        });
        let s = |l: &str, f: &str| Selector::parse(Some(l), Some(f)).unwrap().matches(&pod);
        assert!(s("", ""));
        assert!(s("app=web", "spec.nodeName=node1"));
        assert!(s("app==web,tier", "metadata.name=a,metadata.namespace=n"));
        assert!(!s("app=db", ""));
        assert!(s("app in (db, web),!missing", ""));
        assert!(!s("app notin (db, web)", ""));
        assert!(s("missing!=x", "spec.nodeName!=node2"));
        assert!(!s("", "spec.nodeName=node2"));
        assert!(!s("", "spec.nodeName="));
        assert!(Selector::parse(Some("a in b"), None).is_err());
        assert!(Selector::parse(None, Some("spec.nodeName")).is_err());
    }
}
