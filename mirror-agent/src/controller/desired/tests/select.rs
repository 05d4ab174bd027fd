//! Which pods each policy selects, which policies are refused, and when
//! the plan changes.

use super::*;
use crate::policy::spec::RateLimitSpec;

#[test]
fn a_policy_selects_running_pods_of_its_namespace_by_label() {
    let mut snapshot = shop();
    let mut not_running = pod("shop", "web-3", 3, json!({"app": "web"}));
    not_running["status"]["phase"] = json!("Pending");
    let mut host_network = pod("shop", "web-4", 4, json!({"app": "web"}));
    host_network["spec"]["hostNetwork"] = json!(true);
    // Injected by the webhook: its sidecar mirrors it, the node agent not.
    let mut with_sidecar = pod("shop", "web-7", 7, json!({"app": "web"}));
    with_sidecar["spec"]["initContainers"] =
        json!([{"name": "mirror-sidecar", "image": "mirror-agent", "restartPolicy": "Always"}]);
    snapshot.pods.extend(pods(vec![
        not_running,
        host_network,
        with_sidecar,
        pod("other", "web-5", 5, json!({"app": "web"})),
    ]));
    let node = node(AttachPoint::Auto);

    let wanted = to_locate(&snapshot, &node);
    assert_eq!(
        wanted.pods,
        vec![PodAddr {
            uid: "uid-1".into(),
            ips: vec!["198.18.0.1".parse().expect("ip")],
        }],
        "only the selected pod is looked for"
    );
    let mut on_node: Vec<&str> = wanted.on_node.iter().map(String::as_str).collect();
    on_node.sort_unstable();
    assert_eq!(on_node, ["uid-1", "uid-2", "uid-4", "uid-5", "uid-7"]);

    let d = desired(&snapshot, &veths(), &node);
    let [p] = d.plan.as_slice() else {
        panic!("one policy planned: {:?}", d.plan)
    };
    assert_eq!((p.id, p.name.as_str()), (PolicyId(1), "shop/web"));
    assert_eq!(p.interfaces, vec![host_end(1, "shop/web-1")]);
    assert_eq!(p.directions, Directions::Both);
    assert_eq!(p.snaplen.get(), 128);
    assert_eq!(p.outputs, vec![VXLAN.parse::<Output>().expect("uri")]);
    assert_eq!(
        d.outcomes,
        vec![Outcome {
            policy: PolicyRef {
                cluster: false,
                namespace: "shop".into(),
                name: "web".into(),
            },
            generation: Some(3),
            accepted: Ok(Acceptance::default()),
            matched: 1,
            attached: 1,
            skipped_host_network: 1,
            sidecar: 1,
            terminating: 0,
            problems: Vec::new(),
        }]
    );
    assert!(d.tls.is_empty());
}

#[test]
fn a_terminating_pod_is_mirrored_until_its_namespace_is_gone() {
    let mut snapshot = shop();
    let mut deleting = pod("shop", "web-6", 6, json!({"app": "web"}));
    deleting["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    snapshot.pods.extend(pods(vec![deleting]));
    let node = node(AttachPoint::Auto);
    let wanted = to_locate(&snapshot, &node);
    let wanted: Vec<&str> = wanted.pods.iter().map(|p| p.uid.as_str()).collect();
    assert_eq!(wanted, ["uid-1", "uid-6"], "still looked for");

    let d = desired(&snapshot, &veths(), &node);
    let [p] = d.plan.as_slice() else {
        panic!("one policy planned: {:?}", d.plan)
    };
    assert_eq!(
        p.interfaces,
        vec![host_end(1, "shop/web-1"), host_end(6, "shop/web-6")]
    );
    let o = &d.outcomes[0];
    assert_eq!((o.matched, o.attached, o.terminating), (2, 2, 1));

    // Its namespace gone: finished, neither mirrored nor a problem.
    let mut facts = veths();
    facts.insert("uid-6".into(), Err("no network namespace holds it".into()));
    let d = desired(&snapshot, &facts, &node);
    assert_eq!(d.plan[0].interfaces, vec![host_end(1, "shop/web-1")]);
    let o = &d.outcomes[0];
    assert_eq!((o.matched, o.attached, o.terminating), (1, 1, 0));
    assert!(o.problems.is_empty(), "{:?}", o.problems);
}

#[test]
fn a_cluster_policy_selects_namespaces_by_their_labels() {
    let snapshot = Snapshot {
        pods: pods(vec![
            pod("prod-a", "web", 1, json!({"app": "web"})),
            pod("dev", "web", 2, json!({"app": "web"})),
            pod("prod-b", "web", 3, json!({"app": "web"})),
            pod("prod-b", "db", 4, json!({"app": "db"})),
        ]),
        namespaces: vec![
            namespace("prod-a", json!({"env": "prod"})),
            namespace("prod-b", json!({"env": "prod"})),
            namespace("dev", json!({"env": "dev"})),
        ],
        cluster_policies: vec![cluster_policy(
            "all-web",
            json!({"matchLabels": {"env": "prod"}}),
            json!({"matchLabels": {"app": "web"}}),
        )],
        // No allowedNamespaces: a cluster policy is not limited by it.
        collectors: vec![collector("lab", None)],
        ..Snapshot::default()
    };
    let d = desired(&snapshot, &veths(), &node(AttachPoint::Auto));
    let [p] = d.plan.as_slice() else {
        panic!("one policy planned: {:?}", d.plan)
    };
    assert_eq!(p.name, "all-web");
    assert_eq!(
        p.interfaces,
        vec![host_end(1, "prod-a/web"), host_end(3, "prod-b/web")]
    );
    let o = outcome_of(&d, "all-web");
    assert_eq!(
        (o.matched, o.attached, &o.accepted),
        (2, 2, &Ok(Acceptance::default()))
    );
}

#[test]
fn a_collector_that_does_not_admit_the_namespace_refuses_the_policy() {
    let mut snapshot = shop();
    snapshot
        .namespaces
        .push(namespace("b-team", json!({"team": "b"})));
    snapshot
        .pods
        .extend(pods(vec![pod("b-team", "web-1", 3, json!({"app": "web"}))]));
    snapshot.policies.extend([
        policy("b-team", "web", json!({}), "lab"),
        policy("b-team", "closed", json!({}), "closed"),
        policy("b-team", "nowhere", json!({}), "missing"),
    ]);
    snapshot.collectors.push(collector("closed", None));
    let node = node(AttachPoint::Auto);

    let wanted = to_locate(&snapshot, &node);
    assert!(
        wanted.pods.iter().all(|p| p.uid != "uid-3"),
        "pods of refused policies are not looked for: {wanted:?}"
    );
    let d = desired(&snapshot, &veths(), &node);
    let refusal = |name: &str| outcome_of(&d, name).accepted.clone().expect_err(name);
    let r = refusal("b-team/web");
    assert_eq!(r.reason, reasons::COLLECTOR_NOT_ALLOWED);
    assert!(
        r.message
            .contains("MirrorCollector \"lab\" does not admit namespace \"b-team\""),
        "{}",
        r.message
    );
    let r = refusal("b-team/closed");
    assert_eq!(r.reason, reasons::COLLECTOR_NOT_ALLOWED);
    assert!(r.message.contains("admits no namespace"), "{}", r.message);
    assert_eq!(
        refusal("b-team/nowhere"),
        Refusal {
            reason: reasons::COLLECTOR_NOT_FOUND,
            message: "no MirrorCollector is named \"missing\"".into(),
        }
    );
    // Refused, each still counts the pod it selects, and hooks none.
    for name in ["b-team/web", "b-team/closed", "b-team/nowhere"] {
        let o = outcome_of(&d, name);
        assert_eq!((o.matched, o.attached), (1, 0), "{name}");
    }
    // The admitted policy still runs, with its place in the order as id.
    let names: Vec<(PolicyId, &str)> = d.plan.iter().map(|p| (p.id, p.name.as_str())).collect();
    assert_eq!(names, [(PolicyId(4), "shop/web")]);
}

#[test]
fn a_pod_is_mirrored_by_the_first_policy_that_selects_it() {
    let mut snapshot = shop();
    snapshot
        .policies
        .push(policy("shop", "all", json!({}), "lab"));
    let d = desired(&snapshot, &veths(), &node(AttachPoint::Auto));
    let plans: Vec<(&str, Vec<&str>)> = d
        .plan
        .iter()
        .map(|p| {
            let labels = p.interfaces.iter().map(|i| i.label.as_str()).collect();
            (p.name.as_str(), labels)
        })
        .collect();
    assert_eq!(
        plans,
        [("shop/all", vec!["shop/db-1", "shop/web-1"])],
        "shop/all sorts first"
    );
    let o = outcome_of(&d, "shop/web");
    assert_eq!((o.matched, o.attached), (1, 0));
    assert_eq!(
        o.problems,
        ["pod shop/web-1 is already mirrored by policy shop/all"]
    );
}

#[test]
fn the_plan_changes_with_the_selected_pods_and_nothing_else() {
    let node = node(AttachPoint::Auto);
    let facts = veths();
    let plan = |s: &Snapshot| desired(s, &facts, &node).plan;
    let before = plan(&shop());
    assert_eq!(before.len(), 1);

    let mut added = shop();
    added
        .pods
        .extend(pods(vec![pod("shop", "web-2", 3, json!({"app": "web"}))]));
    assert_ne!(plan(&added), before, "a selected pod added");
    assert_eq!(plan(&added)[0].interfaces.len(), 2);

    let mut removed = shop();
    removed
        .pods
        .retain(|p| p.metadata.name.as_deref() != Some("web-1"));
    assert!(plan(&removed).is_empty(), "the selected pod removed");

    let mut relabelled = shop();
    relabelled.pods = pods(vec![
        pod("shop", "web-1", 1, json!({"app": "web"})),
        pod("shop", "db-1", 2, json!({"app": "web"})),
    ]);
    assert_ne!(plan(&relabelled), before, "a pod's labels now select it");

    let mut collector_moved = shop();
    let mut lab = (*collector_moved.collectors[0]).clone();
    lab.spec.vni = Some(43);
    collector_moved.collectors = vec![Arc::new(lab)];
    assert_ne!(plan(&collector_moved), before, "the output changed");

    // Unrelated: a pod no policy selects, another namespace's labels, a
    // Secret, the order the caches list things in.
    let mut unrelated = shop();
    unrelated.pods.extend(pods(vec![
        pod("shop", "db-2", 3, json!({"app": "db"})),
        pod("other", "web", 4, json!({"app": "web"})),
    ]));
    unrelated.pods.reverse();
    unrelated.namespaces[1] = namespace("other", json!({"team": "a", "tier": "gold"}));
    let mut secret = Secret::default();
    secret.metadata.name = Some("unused".into());
    unrelated.secrets.push(Arc::new(secret));
    assert_eq!(plan(&unrelated), before, "nothing mirrored changed");
}

/// A tenant's policy with no rate limit, sent to a collector with a
/// ceiling, is planned with the ceiling as its budget, and its outcome (the
/// `Accepted` condition) says so; a cluster policy on the same collector
/// is not limited.
#[test]
fn a_tenant_policy_is_planned_under_its_collectors_ceiling() {
    let mut snapshot = shop();
    let mut capped = (*collector("lab", team_a())).clone();
    capped.spec.max_rate_limit = Some(RateLimitSpec {
        packets_per_second: 500,
        bytes_per_second: 1_000_000,
        bytes_burst: 3_000_000,
        ..RateLimitSpec::default()
    });
    snapshot.collectors = vec![Arc::new(capped)];
    snapshot
        .pods
        .extend(pods(vec![pod("ops", "web", 3, json!({"app": "web"}))]));
    snapshot
        .namespaces
        .push(namespace("ops", json!({"env": "prod"})));
    snapshot.cluster_policies = vec![cluster_policy(
        "all-web",
        json!({"matchLabels": {"env": "prod"}}),
        json!({"matchLabels": {"app": "web"}}),
    )];
    let d = desired(&snapshot, &veths(), &node(AttachPoint::Auto));
    let planned = |name: &str| {
        let p = d.plan.iter().find(|p| p.name == name).expect(name);
        p.body.as_ref().expect("a body").rate_limit
    };
    let limit = planned("shop/web");
    let (packets, bytes) = (limit.packets.expect("packets"), limit.bytes.expect("bytes"));
    assert_eq!((packets.per_second.get(), packets.burst.get()), (500, 500));
    assert_eq!(
        (bytes.per_second.get(), bytes.burst.get()),
        (1_000_000, 3_000_000)
    );
    let budget = limit.budget();
    assert_eq!((budget.limited, budget.packets.burst), (1, 500));
    let capping = outcome_of(&d, "shop/web")
        .accepted
        .clone()
        .expect("accepted")
        .capped
        .expect("capped");
    assert_eq!((capping.collector.as_str(), capping.limit), ("lab", limit));
    assert!(capping.asked.is_unlimited());
    assert!(planned("all-web").is_unlimited());
    assert_eq!(
        outcome_of(&d, "all-web").accepted,
        Ok(Acceptance::default())
    );
}
