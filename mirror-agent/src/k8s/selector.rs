//! Label selectors (`matchLabels`, `matchExpressions`), as Kubernetes
//! matches them. The matching itself is kube-core's ([`Selector`]); this
//! module adds the checks the API server makes on built-in objects but not
//! on a custom resource's selector (the CRD schema only types the fields),
//! so a malformed selector is refused with its field named, instead of
//! quietly matching nothing: `In` and `NotIn` need values, `Exists` and
//! `DoesNotExist` take none.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::{Selector, SelectorExt};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error(
        "matchExpressions[{index}].operator: \"{operator}\" is not In, NotIn, Exists or DoesNotExist"
    )]
    Operator { index: usize, operator: String },
    #[error("matchExpressions[{index}].values: {operator} needs at least one value")]
    NoValues { index: usize, operator: String },
    #[error("matchExpressions[{index}].values: {operator} takes no values")]
    UnexpectedValues { index: usize, operator: String },
    /// kube-core refused what the checks above let through.
    #[error("{0}")]
    Other(String),
}

/// Checks `selector` and turns it into kube-core's form, for matching many
/// label sets.
pub fn parse(selector: &LabelSelector) -> Result<Selector, SelectorError> {
    for (index, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let operator = requirement.operator.as_str();
        let values = requirement.values.as_deref().unwrap_or_default();
        let error = match operator {
            "In" | "NotIn" if values.is_empty() => SelectorError::NoValues {
                index,
                operator: operator.to_owned(),
            },
            "Exists" | "DoesNotExist" if !values.is_empty() => SelectorError::UnexpectedValues {
                index,
                operator: operator.to_owned(),
            },
            "In" | "NotIn" | "Exists" | "DoesNotExist" => continue,
            _ => SelectorError::Operator {
                index,
                operator: operator.to_owned(),
            },
        };
        return Err(error);
    }
    Selector::try_from(selector.clone()).map_err(|e| SelectorError::Other(e.to_string()))
}

/// Whether `selector` selects an object with `labels`. An empty selector
/// (`{}`) selects everything, as in Kubernetes.
pub fn matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    Ok(parse(selector)?.matches(labels))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn requirement(key: &str, operator: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    fn selector(
        match_labels: &[(&str, &str)],
        expressions: Vec<LabelSelectorRequirement>,
    ) -> LabelSelector {
        LabelSelector {
            match_labels: (!match_labels.is_empty()).then(|| labels(match_labels)),
            match_expressions: (!expressions.is_empty()).then_some(expressions),
        }
    }

    #[test]
    fn empty_selects_everything() {
        let all = LabelSelector::default();
        assert_eq!(matches(&all, &labels(&[])), Ok(true));
        assert_eq!(matches(&all, &labels(&[("app", "web")])), Ok(true));
    }

    #[test]
    fn match_labels_all_must_hold() {
        let s = selector(&[("app", "web"), ("tier", "front")], vec![]);
        assert_eq!(
            matches(
                &s,
                &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])
            ),
            Ok(true)
        );
        assert_eq!(matches(&s, &labels(&[("app", "web")])), Ok(false));
        assert_eq!(
            matches(&s, &labels(&[("app", "web"), ("tier", "back")])),
            Ok(false)
        );
    }

    #[test]
    fn each_operator() {
        let pod = labels(&[("app", "web"), ("env", "prod")]);
        let check = |r: LabelSelectorRequirement| matches(&selector(&[], vec![r]), &pod);
        assert_eq!(
            check(requirement("env", "In", &["prod", "staging"])),
            Ok(true)
        );
        assert_eq!(check(requirement("env", "In", &["dev"])), Ok(false));
        assert_eq!(check(requirement("team", "In", &["a"])), Ok(false));
        assert_eq!(check(requirement("env", "NotIn", &["dev"])), Ok(true));
        assert_eq!(check(requirement("env", "NotIn", &["prod"])), Ok(false));
        // A missing key is "not in" any set, as in Kubernetes.
        assert_eq!(check(requirement("team", "NotIn", &["a"])), Ok(true));
        assert_eq!(check(requirement("app", "Exists", &[])), Ok(true));
        assert_eq!(check(requirement("team", "Exists", &[])), Ok(false));
        assert_eq!(check(requirement("team", "DoesNotExist", &[])), Ok(true));
        assert_eq!(check(requirement("app", "DoesNotExist", &[])), Ok(false));
    }

    #[test]
    fn labels_and_expressions_combine() {
        let s = selector(&[("app", "web")], vec![requirement("env", "In", &["prod"])]);
        assert_eq!(
            matches(&s, &labels(&[("app", "web"), ("env", "prod")])),
            Ok(true)
        );
        assert_eq!(
            matches(&s, &labels(&[("app", "web"), ("env", "dev")])),
            Ok(false)
        );
    }

    #[test]
    fn malformed_selectors_are_refused_with_the_field() {
        let err = |r| {
            matches(
                &selector(&[], vec![requirement("a", "Exists", &[]), r]),
                &labels(&[]),
            )
            .expect_err("malformed")
            .to_string()
        };
        assert_eq!(
            err(requirement("env", "in", &["x"])),
            "matchExpressions[1].operator: \"in\" is not In, NotIn, Exists or DoesNotExist"
        );
        assert_eq!(
            err(requirement("env", "In", &[])),
            "matchExpressions[1].values: In needs at least one value"
        );
        assert_eq!(
            err(requirement("env", "Exists", &["x"])),
            "matchExpressions[1].values: Exists takes no values"
        );
    }
}
