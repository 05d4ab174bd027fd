//! Where hooks go, given what discovery found.

use super::*;

/// The one interface planned for shop/web-1, or the problems of its policy.
fn attach(at: AttachPoint, facts: Result<LocatedPod, String>) -> Result<Interface, Vec<String>> {
    let facts = HashMap::from([("uid-1".to_owned(), facts)]);
    let d = desired(&shop(), &facts, &node(at));
    match d.plan.as_slice() {
        [p] => Ok(p.interfaces.first().cloned().expect("an interface")),
        _ => Err(outcome_of(&d, "shop/web").problems.clone()),
    }
}

#[test]
fn attach_points_follow_what_discovery_found() {
    let veth = || Ok(found(1, LinkKind::Veth, &[]));
    let web = "shop/web-1";
    assert_eq!(attach(AttachPoint::Auto, veth()), Ok(host_end(1, web)));
    assert_eq!(attach(AttachPoint::Host, veth()), Ok(host_end(1, web)));
    assert_eq!(attach(AttachPoint::Pod, veth()), Ok(pod_end(1, web)));
    let pod = attach(AttachPoint::Pod, veth()).expect("pod end");
    assert!(
        pod.ns.is_some(),
        "a pod end is hooked from inside its namespace"
    );

    // A CNI's own program on the host end may bypass it.
    let bypassed = Ok(found(1, LinkKind::Veth, &["cil_from_container"]));
    assert_eq!(attach(AttachPoint::Auto, bypassed), Ok(pod_end(1, web)));
    // Ours there does not count.
    let ours = Ok(found(1, LinkKind::Veth, &[mirror_common::PROG_INGRESS]));
    assert_eq!(attach(AttachPoint::Auto, ours), Ok(host_end(1, web)));

    let macvlan = || Ok(found(1, LinkKind::MacVlan, &[]));
    assert_eq!(attach(AttachPoint::Auto, macvlan()), Ok(pod_end(1, web)));
    assert_eq!(
        attach(AttachPoint::Host, macvlan()),
        Err(vec![
            "pod shop/web-1: pod network namespace /run/netns/pod-1: attach point `host` for \
             eth0: it is a macvlan with no host end in this namespace"
                .to_owned()
        ])
    );

    // The pod's cookie matters only where the pod end is hooked.
    let mut no_cookie = found(1, LinkKind::Veth, &[]);
    no_cookie.netns = Err("reading the network namespace's cookie: gone".into());
    assert_eq!(
        attach(AttachPoint::Auto, Ok(no_cookie.clone())),
        Ok(host_end(1, web))
    );
    assert_eq!(
        attach(AttachPoint::Pod, Ok(no_cookie)),
        Err(vec![
            "pod shop/web-1: reading the network namespace's cookie: gone".to_owned()
        ])
    );

    assert_eq!(
        attach(
            AttachPoint::Auto,
            Err("no network namespace on this node holds 198.18.0.1".into())
        ),
        Err(vec![
            "pod shop/web-1: no network namespace on this node holds 198.18.0.1".to_owned()
        ])
    );
}
