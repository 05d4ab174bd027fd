//! Every copy is accounted for: each record handed to an output is either
//! sent or counted as lost, even when the collector never answers.

use std::net::IpAddr;

use testbed::{
    agent::Agent,
    topology::{CollectorLink, PodPair},
    traffic,
};

#[test]
fn copies_for_a_collector_that_never_answers_are_counted() {
    testbed::require_root();
    let pair = PodPair::new(false).expect("topology");
    let link = CollectorLink::new(&pair.node).expect("collector link");
    // Nothing listens there: every connection attempt is refused.
    let output = format!("tcp://{}:9", link.collector_v4);
    let agent = Agent::start(
        &pair.node,
        &["attach", "-i", &pair.host_if, "--output", &output],
    )
    .expect("agent starts");
    traffic::ping(&pair.pod, IpAddr::V4(pair.node_v4), 5).expect("ping");
    let exit = agent.stop().expect("agent stops");
    assert!(exit.status.success(), "{}", exit.stderr);
    let total = exit.summary().expect("summary");
    let out = exit.fields_of("output summary").expect("output summary");
    assert!(total["written"] >= 10, "{}", exit.stderr);
    assert_eq!(out["sent"], 0);
    assert_eq!(
        out["lost_queue_full"] + out["lost_send_error"],
        total["written"],
        "copies neither sent nor counted:\n{}",
        exit.stderr
    );
    assert_eq!(total["lost"], total["written"]);
}
