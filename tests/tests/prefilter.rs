//! The kernel prefilter held to its promise frame by frame: it never lets
//! through less than a policy's rules accept. The agent's real eBPF object
//! is loaded (nothing is attached) and its mirror programs run once per
//! frame and rule set with `BPF_PROG_TEST_RUN`, on the filter tests' frames
//! plus stacked VLAN tags (QinQ), IPv6 extension chains and fragments.
//!
//! The oracle is tcpdump on the same frames, with each rule set's meaning
//! in tcpdump's language (`filters.rs` holds that translation to the rules
//! on every frame tcpdump can read as the rules do): every frame tcpdump
//! keeps must pass the program. So must every frame the agent's own rules
//! accept, since the hook must never hide a frame from them.
//!
//! What passing means is read from the kernel three ways per run: the
//! interface's counters (`seen` + 1, and `filtered` + 0 or + 1), a record in
//! the ring holding the frame's bytes, and the program's verdict, which must
//! be "next" with the frame unchanged whatever the prefilter decided.
//!
//! Needs root (CAP_BPF); without it the test fails saying so.

use std::collections::BTreeSet;

use frames::{Frame, cut_inside_ip, frames, ipv6_chains, stacked_frames};
use mirror_agent::{
    kernel::{
        hooks::{Hooks, Interface, Slot},
        netns,
        ring::Ring,
    },
    model::{
        direction::Direction,
        record::{IfIndex, PolicyId, Record},
        rings::{RingLayout, RingSlots},
        values::End,
    },
    policy::{PolicyBody, kfilter},
};
use mirror_common::{DIR_EGRESS, DIR_INGRESS, IfaceConfig};
use oracle::{RULE_SETS, tcpdump_keeps, through_tags, write_pcap};

#[path = "filters/frames.rs"]
mod frames;
#[path = "filters/oracle.rs"]
mod oracle;

/// `TC_ACT_UNSPEC`: the next program (tcx) or the default action decides.
const TC_NEXT: i32 = -1;

/// Every frame of the filter tests, as a packet the hook sees whole: a
/// frame cut by a snaplen there is here a short packet, for the oracle too.
fn all_frames() -> Vec<Frame> {
    let mut all = frames();
    all.push(cut_inside_ip());
    all.extend(stacked_frames());
    all.extend(ipv6_chains());
    for f in &mut all {
        f.orig_len = f.data.len() as u32;
    }
    all
}

/// What the kernel did with one frame.
struct Outcome {
    passed: bool,
    problems: Vec<String>,
}

struct Bed {
    hooks: Hooks,
    ring: Ring,
    lo: Interface,
    slot: Option<Slot>,
}

impl Bed {
    fn new() -> Self {
        let own = netns::current_cookie().expect("this thread's network namespace");
        // One ring (ring 0, where the config below sends copies).
        let layout = RingLayout::new("1048576".parse().expect("a size"), RingSlots::ALL);
        let mut hooks = Hooks::load(layout, None).unwrap_or_else(|e| {
            panic!("loading the agent's eBPF object failed (this test needs root, CAP_BPF): {e}")
        });
        let ring = hooks
            .take_rings()
            .expect("the rings")
            .into_iter()
            .next()
            .expect("ring 0");
        // BPF_PROG_TEST_RUN builds its skb on the loopback device (ifindex 1)
        // of the caller's namespace. The program is attached nowhere: only
        // the test's runs reach it.
        let lo = Interface::local("lo".into(), IfIndex(1), own, End::Pod);
        Self {
            hooks,
            ring,
            lo,
            slot: None,
        }
    }

    fn use_policy(&mut self, id: PolicyId, yaml: &str) {
        let rules = PolicyBody::from_yaml("t", yaml)
            .unwrap_or_else(|e| panic!("{e}"))
            .rules;
        let compiled = kfilter::compile(id, Some(&rules));
        self.hooks
            .configure_policy(id, &compiled)
            .expect("write the prefilter");
        let config = IfaceConfig {
            policy_id: id.0,
            directions: DIR_INGRESS | DIR_EGRESS,
            snaplen: 262_144,
            sample_every: 1,
            counter_slot: 0,
            skip_mark: 0,
            skip_mask: 0,
            ring: 0,
        };
        self.slot = Some(
            self.hooks
                .configure(&self.lo, "prefilter", config)
                .expect("configure lo"),
        );
    }

    /// `None` when the kernel refuses to make an skb of the frame (this
    /// kernel refuses IPv4 cut inside its header, with EINVAL).
    fn run(&mut self, direction: Direction, frame: &Frame) -> Option<Outcome> {
        let slot = self.slot.expect("a policy in use");
        let before = self.hooks.counters(slot).expect("counters");
        let run = match self.hooks.run_frame(direction, &frame.data) {
            Ok(run) => run,
            Err(e) if frame.data.len() < 34 => {
                eprintln!("{:?}: the kernel refused to run it: {e:?}", frame.name);
                return None;
            }
            Err(e) => panic!("BPF_PROG_TEST_RUN on {:?}: {e}", frame.name),
        };
        let after = self.hooks.counters(slot).expect("counters");
        let mut records = Vec::new();
        self.ring.read(|bytes| {
            let r = Record::parse(bytes).expect("a record the agent can parse");
            records.push((r.data.to_vec(), r.orig_len, r.direction));
        });
        self.ring.release(self.ring.position());

        let mut problems = Vec::new();
        if run.verdict != TC_NEXT {
            problems.push(format!("verdict {} instead of next", run.verdict));
        }
        if run.frame != frame.data {
            problems.push("the program changed the frame".into());
        }
        if after.seen_packets != before.seen_packets + 1 {
            problems.push("not counted as seen".into());
        }
        let filtered = after.filtered - before.filtered;
        let mirrored = after.mirrored_packets - before.mirrored_packets;
        if filtered + mirrored != 1 {
            problems.push(format!("filtered {filtered}, mirrored {mirrored}"));
        }
        match records.as_slice() {
            [] if mirrored == 0 => {}
            [(data, orig_len, dir)] if mirrored == 1 => {
                if *data != frame.data || *orig_len != frame.orig_len || *dir != direction {
                    problems.push("the record does not hold the frame".into());
                }
            }
            _ => problems.push(format!("{} records for {mirrored} mirrored", records.len())),
        }
        Some(Outcome {
            passed: mirrored == 1,
            problems,
        })
    }
}

#[test]
fn prefilter_never_passes_less_than_the_rules_accept() {
    let frames = all_frames();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write_pcap(dir.path(), &frames);
    let mut bed = Bed::new();
    let mut failures = Vec::new();
    let (mut runs, mut dropped) = (0, 0);
    for (n, (yaml, expr)) in RULE_SETS.iter().enumerate() {
        let id = PolicyId(n as u32);
        bed.use_policy(id, yaml);
        let rules = PolicyBody::from_yaml("t", yaml).expect("valid").rules;
        let tcpdump: BTreeSet<usize> = if expr.is_empty() {
            (0..frames.len()).collect()
        } else {
            tcpdump_keeps(&file, &through_tags(expr))
        };
        assert!(
            expr.is_empty() || tcpdump.len() < frames.len(),
            "tcpdump keeps every frame for {expr:?}: the oracle means nothing"
        );
        for (i, frame) in frames.iter().enumerate() {
            let rules_accept = rules.evaluate_frame(&frame.data).mirrors();
            for direction in [Direction::Ingress, Direction::Egress] {
                let Some(out) = bed.run(direction, frame) else {
                    continue;
                };
                runs += 1;
                let what = format!("rules {yaml}, {direction:?}, frame {:?}", frame.name);
                for p in out.problems {
                    failures.push(format!("{what}: {p}"));
                }
                if out.passed {
                    continue;
                }
                dropped += 1;
                if tcpdump.contains(&i) {
                    failures.push(format!(
                        "{what}: tcpdump keeps it, the prefilter dropped it"
                    ));
                }
                if rules_accept {
                    failures.push(format!(
                        "{what}: the rules accept it, the prefilter dropped it"
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures in {runs} runs:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // A prefilter that passed everything would keep the promise and be
    // useless: it must drop some of what no rule accepts.
    assert!(dropped > 0, "the prefilter dropped nothing in {runs} runs");
    eprintln!(
        "{runs} runs over {} frames and {} rule sets: {dropped} dropped by the prefilter",
        frames.len(),
        RULE_SETS.len()
    );
}
