use std::sync::Arc;

use mirror_common::{DIR_EGRESS, DIR_INGRESS};
use tokio::sync::Notify;

use super::*;
use crate::{
    datapath::testing::{Written, frame, iface, pcapng_output, record, written},
    export::Stats,
    policy::PolicyBody,
};

/// One policy, on the interfaces given, with the body written in YAML.
fn policy(name: &str, body: &str, exporters: Vec<Exporter>) -> Running {
    let body = PolicyBody::from_yaml(name, body).expect("a valid body");
    Running::new(
        name.into(),
        Some(body.filters().expect("filters compile")),
        exporters,
        PolicyStats::default(),
    )
}

fn clock() -> WallClock {
    WallClock::now().expect("the clocks")
}

fn sent(e: &Exporter) -> u64 {
    Stats::get(&e.stats().sent_packets)
}

#[test]
fn rejected_by_rules_is_counted_and_never_reaches_an_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let progress = Arc::new(Notify::new());
    let a = iface(7);
    let listed = [(a, "veth-a".to_owned())];
    let (one, two) = (dir.path().join("one.pcapng"), dir.path().join("two.pcapng"));
    let outputs = vec![
        pcapng_output(&one, &listed, &progress),
        pcapng_output(&two, &listed, &progress),
    ];
    let rules = "rules: [{action: Reject, protocol: UDP}, {action: Accept, protocol: TCP}]";
    let routes = HashMap::from([(a, ("veth-a".to_owned(), 0))]);
    let mut fanout = Fanout::new(vec![policy("web", rules, outputs)], routes, clock());

    let (udp, tcp) = (frame(true, 30), frame(false, 100));
    fanout.record(&record(a, 1_000, DIR_INGRESS, &udp));
    fanout.record(&record(a, 2_000, DIR_EGRESS, &tcp));
    fanout.close(Duration::from_secs(5));

    let web = &fanout.policies()[0];
    assert_eq!(web.stats().rejected_by_rules, 1);
    assert_eq!(web.stats().rejected_by_filter, 0);
    assert_eq!(fanout.stats().delivered, 1);
    let only_tcp = vec![Written {
        interface: "veth-a".into(),
        original_len: tcp.len() as u32,
        data: tcp,
    }];
    // Every output of the policy gets the copy, and only that one.
    assert_eq!(written(&one), only_tcp);
    assert_eq!(written(&two), only_tcp);
    assert!(fanout.exporters().all(|e| sent(e) == 1));
}

#[test]
fn each_record_goes_to_its_interfaces_policy_through_its_filter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let progress = Arc::new(Notify::new());
    let (a, b) = (iface(7), iface(8));
    let (file_a, file_b) = (dir.path().join("a.pcapng"), dir.path().join("b.pcapng"));
    let out_a = pcapng_output(&file_a, &[(a, "veth-a".into())], &progress);
    let out_b = pcapng_output(&file_b, &[(b, "veth-b".into())], &progress);
    let routes = HashMap::from([(a, ("veth-a".into(), 0)), (b, ("veth-b".into(), 1))]);
    let policies = vec![
        policy("dns", "filter: 'udp'", vec![out_a]),
        policy("web", "{}", vec![out_b]),
    ];
    let mut fanout = Fanout::new(policies, routes, clock());

    let (udp, tcp) = (frame(true, 10), frame(false, 20));
    let second = 1_000_000_000;
    fanout.record(&record(a, second, DIR_INGRESS, &udp));
    fanout.record(&record(a, second, DIR_INGRESS, &tcp));
    fanout.record(&record(b, second, DIR_INGRESS, &tcp));
    fanout.record(&record(b, 3 * second, DIR_INGRESS, &udp));
    fanout.close(Duration::from_secs(5));

    let [dns, web] = fanout.policies() else {
        panic!("two policies");
    };
    assert_eq!(dns.stats().rejected_by_filter, 1);
    assert_eq!(web.stats().rejected_by_filter, 0);
    assert_eq!(fanout.stats().delivered, 3);
    let data = |w: Vec<Written>| -> Vec<(String, Vec<u8>)> {
        w.into_iter().map(|w| (w.interface, w.data)).collect()
    };
    assert_eq!(data(written(&file_a)), [("veth-a".into(), udp.clone())]);
    assert_eq!(
        data(written(&file_b)),
        [("veth-b".into(), tcp), ("veth-b".into(), udp)]
    );
}

#[test]
fn malformed_records_and_unknown_interfaces_are_counted_not_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let progress = Arc::new(Notify::new());
    let a = iface(7);
    let file = dir.path().join("a.pcapng");
    let out = pcapng_output(&file, &[(a, "veth-a".into())], &progress);
    let routes = HashMap::from([(a, ("veth-a".into(), 0))]);
    let mut fanout = Fanout::new(vec![policy("all", "{}", vec![out])], routes, clock());

    let f = frame(true, 10);
    let good = record(a, 1, DIR_INGRESS, &f);
    // Shorter than the header; a direction no hook writes; more
    // captured bytes claimed than the record holds.
    fanout.record(&good[..20]);
    fanout.record(&record(a, 1, 7, &f));
    let mut long = good.clone();
    long[32..36].copy_from_slice(&10_000u32.to_ne_bytes());
    fanout.record(&long);
    // An interface no policy asked for.
    fanout.record(&record(iface(9), 1, DIR_INGRESS, &f));
    fanout.close(Duration::from_secs(5));

    let s = fanout.stats();
    assert_eq!((s.malformed, s.unknown_interface, s.delivered), (3, 1, 0));
    assert_eq!(written(&file), []);
    assert_eq!(sent(fanout.exporters().next().expect("one output")), 0);
}

#[test]
fn copies_of_the_agents_own_connections_are_counted_never_sent() {
    use crate::export::own::Connection;
    let dir = tempfile::tempdir().expect("tempdir");
    let progress = Arc::new(Notify::new());
    let a = iface(7);
    let file = dir.path().join("a.pcapng");
    let out = pcapng_output(&file, &[(a, "veth-a".into())], &progress);
    let routes = HashMap::from([(a, ("veth-a".into(), 0))]);
    let own = Arc::new(OwnConnections::default());
    let mut fanout =
        Fanout::new(vec![policy("all", "{}", vec![out])], routes, clock()).with_own(own.clone());
    // `frame`'s TCP goes from 198.18.0.1:1000 to 198.18.0.2:443: as if
    // the agent were at 198.18.0.2:443 and its collector at :1000.
    let owner = own.owner();
    owner.connection(Connection {
        local: "198.18.0.2:443".parse().expect("addr"),
        peer: "198.18.0.1:1000".parse().expect("addr"),
    });
    let (tcp, udp) = (frame(false, 10), frame(true, 10));
    fanout.record(&record(a, 1, DIR_INGRESS, &tcp));
    // The same hosts and ports over UDP are not the connection.
    fanout.record(&record(a, 2, DIR_INGRESS, &udp));
    fanout.close(Duration::from_secs(5));

    let s = fanout.stats();
    assert_eq!((s.own_traffic, s.delivered), (1, 1));
    let data: Vec<Vec<u8>> = written(&file).into_iter().map(|w| w.data).collect();
    assert_eq!(data, [udp]);
}

#[test]
fn outputs_and_counters_can_be_taken_for_the_next_plan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let progress = Arc::new(Notify::new());
    let a = iface(7);
    let path = dir.path().join("a.pcapng");
    let out = pcapng_output(&path, &[(a, "veth-a".into())], &progress);
    let routes = HashMap::from([(a, ("veth-a".into(), 0))]);
    let udp_only = "filter: 'udp'";
    let mut fanout = Fanout::new(vec![policy("web", udp_only, vec![out])], routes, clock());
    fanout.record(&record(a, 5, DIR_INGRESS, &frame(true, 10)));
    fanout.record(&record(a, 6, DIR_INGRESS, &frame(false, 10)));

    assert!(fanout.policy_mut("dns").is_none());
    let web = fanout.policy_mut("web").expect("web runs");
    let output = Output::PcapngFile(path.clone());
    assert!(web.sends_to(&output));
    assert!(!web.sends_to(&Output::PcapngFile(dir.path().join("other"))));
    let mut taken = web.take_exporter(&output).expect("its output");
    assert_eq!(web.take_stats().rejected_by_filter, 1);
    assert!(!web.sends_to(&output));
    assert_eq!(web.stats().rejected_by_filter, 0);
    // The output taken still holds, and sends, what it was handed.
    taken.close(Duration::from_secs(5));
    assert_eq!(written(&path).len(), 1);
}
