//! TLS collectors: the Secret material the plan carries, and refusals.

use super::*;

/// shop/web sends to `lab` over TLS with Secret `lab-tls` (`secret`: its
/// data, if it exists); shop/all (sorted first) to vxlan `plain`.
fn tls(secret: Option<&[(&str, &[u8])]>) -> Snapshot {
    let mut snapshot = shop();
    snapshot.collectors = vec![
        from(
            json!({"apiVersion": "mirror.packets.dev/v1alpha1", "kind": "MirrorCollector",
                    "metadata": {"name": "lab"},
                    "spec": {"protocol": "tls", "address": "c.example", "port": 7443,
                             "tls": {"secretName": "lab-tls"},
                             "allowedNamespaces": {}}}),
        ),
        collector("plain", Some(json!({}))),
    ];
    snapshot.policies.push(policy(
        "shop",
        "all",
        json!({"matchLabels": {"app": "db"}}),
        "plain",
    ));
    if let Some(keys) = secret {
        let mut s = Secret {
            data: Some(
                keys.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        s.metadata.name = Some("lab-tls".into());
        snapshot.secrets.push(Arc::new(s));
    }
    snapshot
}

const KEYS: &[(&str, &[u8])] = &[("ca.crt", b"CA"), ("tls.crt", b"CERT"), ("tls.key", b"KEY")];

#[test]
fn a_tls_output_carries_the_secret_it_reads() {
    let node = node(AttachPoint::Auto);
    let d = desired(&tls(Some(KEYS)), &veths(), &node);
    let dir = Path::new("/run/mirror/tls/lab");
    assert_eq!(
        d.tls,
        vec![TlsMaterial {
            collector: "lab".into(),
            dir: dir.to_owned(),
            files: KEYS.iter().map(|(k, v)| (*k, v.to_vec())).collect(),
        }]
    );
    let web = d
        .plan
        .iter()
        .find(|p| p.name == "shop/web")
        .expect("planned");
    let want: Output = "tls://c.example:7443?ca=/run/mirror/tls/lab/ca.crt\
                        &cert=/run/mirror/tls/lab/tls.crt&key=/run/mirror/tls/lab/tls.key\
                        &name=c.example"
        .parse()
        .expect("uri");
    assert_eq!(web.outputs, vec![want]);

    // Its files are written even while it selects no pod.
    let mut idle = tls(Some(KEYS));
    idle.pods.clear();
    let d = desired(&idle, &veths(), &node);
    assert!(d.plan.is_empty());
    assert_eq!(d.tls.len(), 1);
}

#[test]
fn a_missing_secret_refuses_its_policies() {
    let node = node(AttachPoint::Auto);
    for (secret, why) in [
        (
            None,
            "spec.tls.secretName: no Secret \"lab-tls\" in the agent's namespace",
        ),
        (Some(&KEYS[..2]), "Secret \"lab-tls\" has no tls.key"),
    ] {
        let snapshot = tls(secret);
        assert!(
            to_locate(&snapshot, &node)
                .pods
                .iter()
                .all(|p| p.uid != "uid-1"),
            "{why}"
        );
        let d = desired(&snapshot, &veths(), &node);
        assert!(d.tls.is_empty());
        assert_eq!(
            outcome_of(&d, "shop/web").accepted,
            Err(Refusal {
                reason: reasons::INVALID_COLLECTOR,
                message: format!("MirrorCollector \"lab\": {why}"),
            })
        );
        let names: Vec<&str> = d.plan.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["shop/all"], "{why}");
    }
}

#[test]
fn files_that_cannot_be_written_refuse_the_policy_and_free_its_pods() {
    let node = node(AttachPoint::Auto);
    let mut snapshot = tls(Some(KEYS));
    // A cluster policy for every pod instead of shop/all: it sorts after
    // shop/web, which claims web-1 first while it can.
    snapshot.policies.pop();
    snapshot.collectors[1] = collector("plain", None);
    snapshot.cluster_policies.push(from(json!({
        "apiVersion": "mirror.packets.dev/v1alpha1", "kind": "ClusterMirrorPolicy",
        "metadata": {"name": "everything"},
        "spec": {"namespaceSelector": {}, "podSelector": {}, "collectorRef": {"name": "plain"}}})));
    let located: Located = to_locate(&snapshot, &node)
        .pods
        .iter()
        .map(|p| (p.uid.clone(), veths()[&p.uid].clone()))
        .collect();

    let written = compute(&snapshot, &located, &node, &BTreeMap::new());
    let o = outcome_of(&written, "everything");
    assert_eq!(
        o.problems,
        ["pod shop/web-1 is already mirrored by policy shop/web"]
    );

    let unwritable = BTreeMap::from([(
        "lab".to_owned(),
        "creating /run/mirror/tls/lab: Permission denied".to_owned(),
    )]);
    let d = compute(&snapshot, &located, &node, &unwritable);
    assert_eq!(
        outcome_of(&d, "shop/web").accepted,
        Err(Refusal {
            reason: reasons::INVALID_COLLECTOR,
            message: "MirrorCollector \"lab\": creating /run/mirror/tls/lab: Permission denied"
                .into(),
        })
    );
    assert!(d.tls.is_empty(), "not written again");
    let [p] = d.plan.as_slice() else {
        panic!("one policy planned: {:?}", d.plan)
    };
    assert_eq!(p.name, "everything");
    let labels: Vec<&str> = p.interfaces.iter().map(|i| i.label.as_str()).collect();
    assert_eq!(labels, ["shop/db-1", "shop/web-1"]);
}
