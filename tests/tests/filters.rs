//! The agent's filters against tcpdump, the oracle: a varied set of frames
//! goes into a pcap file, and for each expression (or rule set) the frames
//! our code accepts must be exactly those `tcpdump -r FILE -w - EXPR` keeps.
//!
//! No root needed: tcpdump only reads a file. A missing tcpdump fails the
//! test (`cargo xtask setup` installs it); nothing is skipped.
//!
//! The allocator of this test binary counts allocations per thread, to hold
//! the filters to their promise of no allocation per packet.

use std::{collections::BTreeSet, process::Command};

use frames::{Frame, cut_inside_ip, frames, ipv6_chains, stacked_frames};
use mirror_agent::policy::{PolicyBody, pcapfilter::PcapFilter};
use oracle::{RULE_SETS, tcpdump_keeps, through_tags, write_pcap};

// The corpus, the oracle and the counting allocator, kept apart so each
// file reads at once.
#[path = "filters/counting.rs"]
mod counting;
#[path = "filters/frames.rs"]
mod frames;
#[path = "filters/oracle.rs"]
mod oracle;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

fn report(
    frames: &[Frame],
    what: &str,
    ours: &BTreeSet<usize>,
    theirs: &BTreeSet<usize>,
) -> Option<String> {
    if ours == theirs {
        return None;
    }
    let names = |s: BTreeSet<&usize>| s.into_iter().map(|i| frames[*i].name).collect::<Vec<_>>();
    Some(format!(
        "{what}\n  only ours: {:?}\n  only tcpdump: {:?}",
        names(ours.difference(theirs).collect()),
        names(theirs.difference(ours).collect())
    ))
}

fn check_all(failures: Vec<String>, checked: usize) {
    assert!(checked > 0, "nothing was compared");
    assert!(
        failures.is_empty(),
        "{} of {checked} disagree with tcpdump:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn pcap_filter_expressions_match_tcpdump() {
    let mut frames = frames();
    frames.push(cut_inside_ip());
    frames.extend(stacked_frames());
    frames.extend(ipv6_chains());
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_pcap(dir.path(), &frames);
    let expressions = [
        "",
        "tcp port 443",
        "udp and dst portrange 8000-8100",
        "icmp or icmp6",
        "net 198.18.0.0/24 and not arp",
        "tcp[tcpflags] & tcp-syn != 0",
        "tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)",
        "tcp[tcpflags] & (tcp-fin|tcp-rst) != 0",
        "ip6",
        "vlan and udp",
        "vlan 200 and ip6",
        "greater 1000",
        "less 80",
        "ip[6:2] & 0x1fff != 0",
        "ip6 and ip6[6] == 44",
        "sctp",
        "port 443",
        "src host 198.19.1.2 or dst host fd00:198:18:1::2",
        "ip6 net fd00:198:18::/64",
        "arp",
        "ether proto 0x88cc",
        "ip proto 4 or ip proto 47",
        "not tcp port 443",
        "tcp port 0",
        "udp[8:2] == 0x3333",
    ];
    let mut failures = Vec::new();
    for expr in expressions {
        let filter = PcapFilter::compile(expr).unwrap_or_else(|e| panic!("{expr:?}: {e}"));
        let ours = (0..frames.len())
            .filter(|&i| filter.matches(&frames[i].data, frames[i].orig_len))
            .collect();
        failures.extend(report(
            &frames,
            &format!("expression {expr:?}"),
            &ours,
            &tcpdump_keeps(&file, expr),
        ));
    }
    check_all(failures, expressions.len());
}

#[test]
fn bad_expressions_get_tcpdumps_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_pcap(dir.path(), &frames()[..1]);
    for expr in [
        "tcp port",
        "tcp port 70000",
        "vlan and and",
        "net 198.18.0.1/24",
    ] {
        let ours = PcapFilter::compile(expr)
            .expect_err("a bad expression")
            .to_string();
        let out = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&file)
            .arg(expr)
            .output()
            .expect("tcpdump runs (`cargo xtask setup` installs it)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "tcpdump accepted {expr:?}");
        assert!(
            stderr.contains(&ours),
            "{expr:?}: ours {ours:?}, tcpdump said {stderr:?}"
        );
        let body = PolicyBody::from_yaml("web", &format!("filter: '{expr}'"));
        let e = body.expect_err("refused").to_string();
        assert_eq!(e, format!("policy \"web\": filter: {ours}"));
    }
}

#[test]
fn rules_match_tcpdump() {
    let mut frames = frames();
    frames.extend(stacked_frames());
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_pcap(dir.path(), &frames);
    let mut failures = Vec::new();
    for (yaml, expr) in RULE_SETS {
        let rules = PolicyBody::from_yaml("t", yaml)
            .unwrap_or_else(|e| panic!("{e}"))
            .rules;
        let ours = (0..frames.len())
            .filter(|&i| rules.evaluate_frame(&frames[i].data).mirrors())
            .collect();
        let theirs = if expr.is_empty() {
            String::new()
        } else {
            through_tags(expr)
        };
        failures.extend(report(
            &frames,
            &format!("rules {yaml}\n  as {theirs:?}"),
            &ours,
            &tcpdump_keeps(&file, &theirs),
        ));
    }
    check_all(failures, RULE_SETS.len());
}

#[test]
fn rules_then_expression_match_tcpdump() {
    let frames = frames();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_pcap(dir.path(), &frames);
    let bodies = [
        (
            "rules: [{action: Accept, protocol: TCP, destinationPorts: [{from: 443}]}]\nfilter: 'tcp[tcpflags] & tcp-syn != 0'",
            "tcp dst port 443",
            "tcp[tcpflags] & tcp-syn != 0",
        ),
        (
            "rules: [{action: Reject, protocol: ICMP}, {action: Accept}]\nfilter: 'greater 1000 or arp'",
            "not icmp",
            "greater 1000 or arp",
        ),
    ];
    let mut failures = Vec::new();
    for (yaml, rules_expr, filter_expr) in bodies {
        let filters = PolicyBody::from_yaml("t", yaml)
            .expect("valid")
            .filters()
            .expect("compiles");
        let ours = (0..frames.len())
            .filter(|&i| {
                filters
                    .verdict(&frames[i].data, frames[i].orig_len)
                    .mirrors()
            })
            .collect();
        // The filter first: after `vlan`, tcpdump shifts every later offset.
        let theirs = format!("({filter_expr}) and ({})", through_tags(rules_expr));
        failures.extend(report(
            &frames,
            &format!("policy {yaml:?}\n  as {theirs:?}"),
            &ours,
            &tcpdump_keeps(&file, &theirs),
        ));
    }
    check_all(failures, bodies.len());
}

#[test]
fn filtering_a_packet_allocates_nothing() {
    let mut frames = frames();
    frames.push(cut_inside_ip());
    let body = "\
rules:
  - {action: Reject, sourceCIDRs: [198.18.0.200, 'fd00:198:18::/64'], protocol: UDP}
  - {action: Accept, protocol: TCP, destinationPorts: [{from: 443}, {from: 8000, to: 8100}], tcpFlags: [SYN]}
  - {action: Accept, destinationCIDRs: [198.18.0.0/15]}
filter: 'tcp port 443 or icmp or vlan'
";
    let filters = PolicyBody::from_yaml("t", body)
        .expect("valid")
        .filters()
        .expect("compiles");
    let before = counting::allocations();
    let mirrored = frames
        .iter()
        .filter(|f| filters.verdict(&f.data, f.orig_len).mirrors())
        .count();
    let allocations = counting::allocations() - before;
    assert!(
        mirrored > 0,
        "the filters must let something through to mean anything"
    );
    assert_eq!(
        allocations,
        0,
        "filtering {} frames allocated",
        frames.len()
    );
    // And the counter does count.
    let v = std::hint::black_box(Vec::<u8>::with_capacity(1));
    assert_eq!(counting::allocations() - before, 1);
    drop(v);
}
