//! Tenant safety: a `MirrorPolicy` mirrors only pods of its own namespace
//! (see [`super::policy::ValidPolicy::selects`]), and only to a
//! `MirrorCollector` whose `allowedNamespaces` admits that namespace. A
//! collector without `allowedNamespaces` admits none: opening it is a
//! decision its administrator makes, never a default. A `ClusterMirrorPolicy`
//! is an administrator's too, and is not limited by `allowedNamespaces`.
//!
//! Everything here is a pure function of the objects, so the node agent's
//! decision is the one the tests check; the agent turns a [`Refusal`] into
//! `Accepted=False` and mirrors nothing for the policy.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::policy::{Capped, RateLimit};

use super::{
    collector::MirrorCollector,
    policy::{Capping, ClusterMirrorPolicy, MirrorPolicy, ValidPolicy},
    selector,
    status::{Condition, condition, conditions, reasons},
};

/// Why a policy is not accepted: a condition reason from [`reasons`] and a
/// message for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Whether a `MirrorPolicy` in `namespace`, whose Namespace object has
/// `namespace_labels`, may send to `collector`.
pub fn check_collector(
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    collector: &MirrorCollector,
) -> Result<(), Refusal> {
    let name = collector.name_any();
    let Some(allowed) = &collector.spec.allowed_namespaces else {
        return Err(Refusal::new(
            reasons::COLLECTOR_NOT_ALLOWED,
            format!(
                "MirrorCollector \"{name}\" admits no namespace (it has no allowedNamespaces); \
                 an administrator must admit namespace \"{namespace}\" there"
            ),
        ));
    };
    match selector::matches(allowed, namespace_labels) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Refusal::new(
            reasons::COLLECTOR_NOT_ALLOWED,
            format!(
                "MirrorCollector \"{name}\" does not admit namespace \"{namespace}\": its \
                 allowedNamespaces selector does not match the namespace's labels"
            ),
        )),
        Err(e) => Err(Refusal::new(
            reasons::INVALID_COLLECTOR,
            format!("MirrorCollector \"{name}\": spec.allowedNamespaces.{e}"),
        )),
    }
}

/// The whole decision behind a `MirrorPolicy`'s `Accepted` condition: its
/// spec is valid, its collector exists and is valid, and admits its
/// namespace. `collector` is the one `spec.collectorRef` names, if found.
pub fn accept_policy(
    policy: &MirrorPolicy,
    namespace_labels: &BTreeMap<String, String>,
    collector: Option<&MirrorCollector>,
) -> Result<ValidPolicy, Refusal> {
    let mut valid = policy
        .validate()
        .map_err(|e| Refusal::new(reasons::INVALID_SPEC, format!("spec.{e}")))?;
    let collector = usable_collector(&valid, collector)?;
    check_collector(
        &policy.namespace().unwrap_or_default(),
        namespace_labels,
        collector,
    )?;
    // usable_collector checked the ceiling.
    let ceiling = collector.spec.ceiling().unwrap_or_default();
    apply_ceiling(&mut valid, &ceiling);
    Ok(valid)
}

/// Lowers a tenant's `rateLimit` to its collector's ceiling, noting it
/// when that changed anything.
pub fn apply_ceiling(valid: &mut ValidPolicy, ceiling: &RateLimit) {
    let asked = valid.body.rate_limit;
    let Capped { limit, capped } = asked.within(ceiling);
    valid.body.rate_limit = limit;
    valid.capped = capped.then(|| Capping {
        collector: valid.collector.clone(),
        asked,
        limit,
    });
}

/// What an accepted policy's `Accepted` condition has to say beyond yes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acceptance {
    /// Its rate limit, lowered to its collector's ceiling.
    pub capped: Option<Capping>,
}

impl From<&ValidPolicy> for Acceptance {
    fn from(valid: &ValidPolicy) -> Self {
        Self {
            capped: valid.capped.clone(),
        }
    }
}

/// The same for a `ClusterMirrorPolicy`, which no `allowedNamespaces` limits.
pub fn accept_cluster_policy(
    policy: &ClusterMirrorPolicy,
    collector: Option<&MirrorCollector>,
) -> Result<ValidPolicy, Refusal> {
    let valid = policy
        .validate()
        .map_err(|e| Refusal::new(reasons::INVALID_SPEC, format!("spec.{e}")))?;
    usable_collector(&valid, collector)?;
    Ok(valid)
}

fn usable_collector<'a>(
    policy: &ValidPolicy,
    collector: Option<&'a MirrorCollector>,
) -> Result<&'a MirrorCollector, Refusal> {
    let collector = collector.ok_or_else(|| {
        Refusal::new(
            reasons::COLLECTOR_NOT_FOUND,
            format!("no MirrorCollector is named \"{}\"", policy.collector),
        )
    })?;
    collector.spec.validate().map_err(|e| {
        Refusal::new(
            reasons::INVALID_COLLECTOR,
            format!("MirrorCollector \"{}\": spec.{e}", policy.collector),
        )
    })?;
    Ok(collector)
}

/// The `Accepted` condition for a decision of [`accept_policy`] or
/// [`accept_cluster_policy`].
pub fn accepted_condition(
    decision: &Result<Acceptance, Refusal>,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    match decision {
        Ok(Acceptance {
            capped: Some(capping),
        }) => condition(
            conditions::ACCEPTED,
            true,
            reasons::RATE_LIMIT_CAPPED,
            format!("the collector admits this policy, but {capping}"),
            generation,
            now,
        ),
        Ok(_) => condition(
            conditions::ACCEPTED,
            true,
            reasons::ACCEPTED,
            "the spec is valid and the collector admits this policy",
            generation,
            now,
        ),
        Err(refusal) => condition(
            conditions::ACCEPTED,
            false,
            refusal.reason,
            refusal.message.clone(),
            generation,
            now,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::{ClusterMirrorPolicy, MirrorCollector};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn collector(allowed: &str) -> MirrorCollector {
        serde_norway::from_str(&format!(
            "apiVersion: mirror.packets.dev/v1alpha1
kind: MirrorCollector
metadata: {{name: lab}}
spec:
  protocol: vxlan
  address: 198.18.0.9
  vni: 42
{allowed}"
        ))
        .expect("collector")
    }

    fn policy(namespace: &str, collector: &str) -> MirrorPolicy {
        serde_norway::from_str(&format!(
            "apiVersion: mirror.packets.dev/v1alpha1
kind: MirrorPolicy
metadata: {{name: web, namespace: {namespace}}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  collectorRef: {{name: {collector}}}
  snaplen: 128
"
        ))
        .expect("policy")
    }

    const TEAM_A: &str = "  allowedNamespaces:\n    matchLabels: {team: a}\n";

    #[test]
    fn admitted_namespace_is_accepted() {
        let c = collector(TEAM_A);
        let ns = labels(&[("team", "a"), ("kubernetes.io/metadata.name", "shop")]);
        assert_eq!(check_collector("shop", &ns, &c), Ok(()));
        let valid = accept_policy(&policy("shop", "lab"), &ns, Some(&c)).expect("accepted");
        assert_eq!(valid.body.snaplen.get(), 128);
        assert!(valid.selects("shop", &ns, &labels(&[("app", "web")])));
        // Never a pod of another namespace, whatever its labels.
        assert!(!valid.selects("other", &ns, &labels(&[("app", "web")])));
        assert!(!valid.selects("shop", &ns, &labels(&[("app", "db")])));
    }

    #[test]
    fn other_namespace_is_refused() {
        let c = collector(TEAM_A);
        let refusal = accept_policy(
            &policy("intruder", "lab"),
            &labels(&[("team", "b")]),
            Some(&c),
        )
        .expect_err("refused");
        assert_eq!(refusal.reason, "CollectorNotAllowed");
        assert_eq!(
            refusal.message,
            "MirrorCollector \"lab\" does not admit namespace \"intruder\": its allowedNamespaces \
             selector does not match the namespace's labels"
        );
        let cond = accepted_condition(&Err(refusal), Some(4), Time(Default::default()));
        assert_eq!(
            (
                cond.type_.as_str(),
                cond.status.as_str(),
                cond.reason.as_str()
            ),
            ("Accepted", "False", "CollectorNotAllowed")
        );
        assert_eq!(cond.observed_generation, Some(4));
    }

    #[test]
    fn no_allowed_namespaces_admits_none_and_empty_admits_all() {
        let closed = collector("");
        let refusal = check_collector("shop", &labels(&[]), &closed).expect_err("closed");
        assert_eq!(refusal.reason, reasons::COLLECTOR_NOT_ALLOWED);
        assert!(
            refusal.message.contains("admits no namespace"),
            "{}",
            refusal.message
        );
        let open = collector("  allowedNamespaces: {}\n");
        assert_eq!(check_collector("shop", &labels(&[]), &open), Ok(()));
    }

    #[test]
    fn by_namespace_name_label() {
        let c = collector(
            "  allowedNamespaces:\n    matchExpressions:\n      - {key: kubernetes.io/metadata.name, operator: In, values: [shop, blog]}\n",
        );
        let ns = |name| labels(&[("kubernetes.io/metadata.name", name)]);
        assert_eq!(check_collector("blog", &ns("blog"), &c), Ok(()));
        assert!(check_collector("bank", &ns("bank"), &c).is_err());
    }

    #[test]
    fn malformed_selector_blames_the_collector() {
        let c =
            collector("  allowedNamespaces:\n    matchExpressions: [{key: team, operator: In}]\n");
        let refusal = check_collector("shop", &labels(&[("team", "a")]), &c).expect_err("bad");
        assert_eq!(refusal.reason, reasons::INVALID_COLLECTOR);
        assert_eq!(
            refusal.message,
            "MirrorCollector \"lab\": spec.allowedNamespaces.matchExpressions[0].values: In needs \
             at least one value"
        );
    }

    #[test]
    fn missing_or_invalid_collector_and_invalid_spec() {
        let ns = labels(&[("team", "a")]);
        let refusal = accept_policy(&policy("shop", "nope"), &ns, None).expect_err("missing");
        assert_eq!(
            (refusal.reason, refusal.message.as_str()),
            (
                reasons::COLLECTOR_NOT_FOUND,
                "no MirrorCollector is named \"nope\""
            )
        );
        let mut bad = collector(TEAM_A);
        bad.spec.vni = None;
        let refusal = accept_policy(&policy("shop", "lab"), &ns, Some(&bad)).expect_err("invalid");
        assert_eq!(
            (refusal.reason, refusal.message.as_str()),
            (
                reasons::INVALID_COLLECTOR,
                "MirrorCollector \"lab\": spec.vni: required for protocol vxlan"
            )
        );
        let mut p = policy("shop", "lab");
        p.spec.body.sampling = 0;
        let refusal = accept_policy(&p, &ns, Some(&collector(TEAM_A))).expect_err("spec");
        assert_eq!(
            (refusal.reason, refusal.message.as_str()),
            (
                reasons::INVALID_SPEC,
                "spec.sampling: 0 is not from 1 (every packet) to 4294967295"
            )
        );
    }

    #[test]
    fn cluster_policy_ignores_allowed_namespaces() {
        let p: ClusterMirrorPolicy = serde_norway::from_str(
            "apiVersion: mirror.packets.dev/v1alpha1
kind: ClusterMirrorPolicy
metadata: {name: all-dns}
spec:
  namespaceSelector: {matchLabels: {env: prod}}
  podSelector: {}
  collectorRef: {name: lab}
  rules: [{action: Accept, protocol: UDP, destinationPorts: [{from: 53}]}]
",
        )
        .expect("cluster policy");
        let valid = accept_cluster_policy(&p, Some(&collector(""))).expect("accepted");
        let prod = labels(&[("env", "prod")]);
        assert!(valid.selects("a", &prod, &labels(&[])));
        assert!(!valid.selects("b", &labels(&[("env", "dev")]), &labels(&[])));
        // Nor by a ceiling: an administrator's own policy.
        let capped = collector(&format!(
            "{TEAM_A}  maxRateLimit: {{packetsPerSecond: 10}}\n"
        ));
        let valid = accept_cluster_policy(&p, Some(&capped)).expect("accepted");
        assert!(valid.body.rate_limit.is_unlimited() && valid.capped.is_none());
    }

    const CEILING: &str = "  maxRateLimit: {packetsPerSecond: 1000, bytesBurst: 0}\n";

    fn accepted(limit: &str) -> Result<ValidPolicy, Refusal> {
        let c = collector(&format!("{TEAM_A}{CEILING}"));
        let mut p = policy("shop", "lab");
        p.spec.body = serde_norway::from_str(limit).expect("body");
        accept_policy(&p, &labels(&[("team", "a")]), Some(&c))
    }

    #[test]
    fn a_tenant_over_the_ceiling_or_unlimited_gets_the_ceiling_and_is_told() {
        for asked in [
            "{}",
            "rateLimit: {packetsPerSecond: 5000, packetsBurst: 9000}",
        ] {
            let valid = accepted(asked).expect("accepted");
            let packets = valid.body.rate_limit.packets.expect("limited");
            assert_eq!(
                (packets.per_second.get(), packets.burst.get()),
                (1000, 1000)
            );
            assert_eq!(valid.body.rate_limit.bytes, None);
            let capping = valid.capped.clone().expect("capped");
            let cond = accepted_condition(
                &Ok(Acceptance::from(&valid)),
                Some(2),
                Time(Default::default()),
            );
            assert_eq!(
                (cond.status.as_str(), cond.reason.as_str()),
                ("True", "RateLimitCapped")
            );
            assert!(
                cond.message
                    .contains("MirrorCollector \"lab\"'s maxRateLimit")
                    && cond
                        .message
                        .ends_with("gets packetsPerSecond 1000 (packetsBurst 1000)"),
                "{}",
                cond.message
            );
            assert_eq!(capping.limit, valid.body.rate_limit);
        }
        // Under the ceiling: as asked, and a plain Accepted.
        let valid =
            accepted("rateLimit: {packetsPerSecond: 10, bytesPerSecond: 100}").expect("accepted");
        assert_eq!(valid.capped, None);
        assert_eq!(
            valid.body.rate_limit.packets.map(|l| l.per_second.get()),
            Some(10)
        );
        let cond = accepted_condition(
            &Ok(Acceptance::from(&valid)),
            Some(2),
            Time(Default::default()),
        );
        assert_eq!(cond.reason, "Accepted");
    }

    #[test]
    fn a_bad_ceiling_blames_the_collector() {
        let c = collector(&format!("{TEAM_A}  maxRateLimit: {{bytesBurst: 1500}}\n"));
        let refusal = accept_policy(&policy("shop", "lab"), &labels(&[("team", "a")]), Some(&c))
            .expect_err("refused");
        assert_eq!(refusal.reason, reasons::INVALID_COLLECTOR);
        assert_eq!(
            refusal.message,
            "MirrorCollector \"lab\": spec.maxRateLimit.bytesBurst: a burst needs bytesPerSecond \
             (0 or absent is no limit, which has no burst)"
        );
    }
}
