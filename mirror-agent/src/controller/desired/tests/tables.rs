//! The kernel's prefix tables, shared by the policies a node loads: a
//! policy whose CIDRs alone overflow one is refused everywhere; one that
//! fits alone but not beside the policies ahead of it is left out on this
//! node, with a problem naming the field and the limit, while the others
//! run and its pods go to the next policy that selects them.

use super::*;
use crate::k8s::reasons;

/// A policy of shop for pods `app: APP`, accepting `n` distinct /24
/// source CIDRs from the `first`-th on.
fn cidr_policy(name: &str, app: &str, first: u32, n: u32) -> Arc<MirrorPolicy> {
    let cidrs: Vec<String> = (first..first + n)
        .map(|i| format!("{}/24", std::net::Ipv4Addr::from(0x0A00_0000 | (i << 8))))
        .collect();
    from(
        json!({"apiVersion": "mirror.packets.dev/v1alpha1", "kind": "MirrorPolicy",
                "metadata": {"name": name, "namespace": "shop", "generation": 1},
                "spec": {"podSelector": {"matchLabels": {"app": app}},
                         "collectorRef": {"name": "lab"},
                         "rules": [{"action": "Accept", "sourceCIDRs": cidrs}]}}),
    )
}

fn planned_names(d: &Desired) -> Vec<&str> {
    d.plan.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn a_policy_past_the_shared_tables_is_left_out_and_the_others_run() {
    let mut snapshot = shop();
    snapshot.policies = vec![
        // Ahead by name: takes 10,000 of the 16,384 entries.
        cidr_policy("a", "web", 0, 10_000),
        // 10,000 more do not fit beside them on this node.
        cidr_policy("b", "db", 10_000, 10_000),
        // No CIDRs: fits, and takes db-1, which "b" gave up.
        policy("shop", "c", json!({"matchLabels": {"app": "db"}}), "lab"),
    ];
    let d = desired(&snapshot, &veths(), &node(AttachPoint::Auto));
    assert_eq!(planned_names(&d), ["shop/a", "shop/c"]);
    let b = outcome_of(&d, "shop/b");
    assert_eq!(
        b.accepted,
        Ok(Acceptance::default()),
        "the spec is fine; this node is full"
    );
    assert_eq!((b.matched, b.attached), (1, 0));
    let [problem] = b.problems.as_slice() else {
        panic!("one problem: {:?}", b.problems);
    };
    for needed in [
        "not loaded on this node",
        "spec.rules[*].sourceCIDRs",
        "IPv4 source",
        "to 20000",
        "16384 entries",
    ] {
        assert!(problem.contains(needed), "'{needed}' missing: {problem}");
    }
    let c = &d.plan[1];
    assert_eq!(c.interfaces, vec![host_end(2, "shop/db-1")]);
    assert_eq!(outcome_of(&d, "shop/c").attached, 1);
}

#[test]
fn a_policy_with_no_pods_here_takes_no_room() {
    let mut snapshot = shop();
    snapshot.policies = vec![
        cidr_policy("a", "nowhere", 0, 10_000),
        cidr_policy("b", "web", 10_000, 10_000),
    ];
    let d = desired(&snapshot, &veths(), &node(AttachPoint::Auto));
    assert_eq!(planned_names(&d), ["shop/b"]);
    assert!(outcome_of(&d, "shop/b").problems.is_empty());
}

#[test]
fn a_policy_whose_cidrs_alone_overflow_a_table_is_refused_as_invalid() {
    let mut snapshot = shop();
    snapshot.policies = vec![
        cidr_policy("a", "web", 0, 20_000),
        policy("shop", "b", json!({"matchLabels": {"app": "web"}}), "lab"),
    ];
    let d = desired(&snapshot, &veths(), &node(AttachPoint::Auto));
    assert_eq!(
        planned_names(&d),
        ["shop/b"],
        "web-1 goes to the next policy"
    );
    let refusal = outcome_of(&d, "shop/a")
        .accepted
        .clone()
        .expect_err("refused");
    assert_eq!(refusal.reason, reasons::INVALID_SPEC);
    assert_eq!(
        refusal.message,
        "spec.rules[*].sourceCIDRs: 20000 distinct prefixes here bring the kernel's IPv4 source \
         table to 20000, past its 16384 entries (shared by every policy): list fewer or wider CIDRs"
    );
}
