//! The log lines a mirror leaves when it stops, and those of the outputs
//! of a replaced plan, which finish sending in the background.

use mirror_common::Counters;
use tracing::{info, warn};

use super::CLOSE_TIMEOUT;
use crate::{
    datapath::fanout::Fanout,
    export::Stats,
    kernel::hooks::{Hooks, Interface, Slot},
};

/// The outputs of a replaced plan send what they hold and report, without
/// holding up the drain loop.
pub(super) fn close_in_background(mut old: Fanout) {
    let spawned = std::thread::Builder::new()
        .name("old-outputs".into())
        .spawn(move || {
            old.close(CLOSE_TIMEOUT);
            summarize_outputs(&old);
        });
    if let Err(error) = spawned {
        // The outputs then stop when dropped here, unsent copies uncounted.
        warn!(%error, "closing the old outputs in the background failed");
    }
}

/// One line per interface, per policy and per output, and the total.
pub(super) fn summarize(hooks: &Hooks, slots: &[(Interface, Slot)], fanout: &Fanout) {
    let mut total = Counters::default();
    for (iface, slot) in slots {
        match hooks.counters(*slot) {
            Ok(c) => {
                info!(
                    interface = %iface,
                    seen = c.seen_packets,
                    mirrored = c.mirrored_packets,
                    truncated = c.truncated,
                    sampled_out = c.sampled_out,
                    own_traffic = c.own_traffic,
                    filtered = c.filtered,
                    lost_rate_limit = c.rate_limited,
                    lost_ring_full = c.ring_full,
                    lost_copy_failed = c.load_failed,
                    "summary"
                );
                total.add(&c);
            }
            Err(error) => warn!(interface = %iface, %error, "reading counters failed"),
        }
    }
    for p in fanout.policies() {
        let stats = p.stats();
        info!(
            policy = %p.name(),
            rejected_by_rules = stats.rejected_by_rules,
            rejected_by_filter = stats.rejected_by_filter,
            "policy summary"
        );
    }
    let lost_output = summarize_outputs(fanout);
    let stats = fanout.stats();
    let lost =
        total.rate_limited + total.ring_full + total.load_failed + stats.malformed + lost_output;
    info!(
        seen = total.seen_packets,
        mirrored = total.mirrored_packets,
        written = stats.delivered,
        truncated = total.truncated,
        sampled_out = total.sampled_out,
        own_traffic = total.own_traffic,
        own_connections = stats.own_traffic,
        filtered = total.filtered,
        lost,
        lost_rate_limit = total.rate_limited,
        lost_ring_full = total.ring_full,
        lost_copy_failed = total.load_failed,
        lost_malformed = stats.malformed,
        lost_output,
        "summary total"
    );
    if stats.unknown_interface > 0 {
        warn!(
            records = stats.unknown_interface,
            "records from interfaces not asked for"
        );
    }
}

/// One line per output; returns the copies they lost.
fn summarize_outputs(fanout: &Fanout) -> u64 {
    let mut lost = 0;
    for e in fanout.exporters() {
        let s = e.stats();
        let (queue_full, send_errors) = (Stats::get(&s.queue_full), Stats::get(&s.send_errors));
        lost += queue_full + send_errors;
        info!(
            output = e.name(),
            sent = Stats::get(&s.sent_packets),
            sent_bytes = Stats::get(&s.sent_bytes),
            mtu_truncated = Stats::get(&s.mtu_truncated),
            super_packets = Stats::get(&s.super_packets),
            segments = Stats::get(&s.segments),
            checksums_finished = Stats::get(&s.checksums_finished),
            lost_queue_full = queue_full,
            lost_send_error = send_errors,
            "output summary"
        );
    }
    lost
}
