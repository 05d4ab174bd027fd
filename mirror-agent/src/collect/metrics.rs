//! The families of `collect`: every listener's atomics, read at scrape
//! time from any thread, and the writer's counters as it last published
//! them (once a second, on its flush tick).

use std::sync::{Arc, Mutex};

use crate::collect::{stats::ListenerStats, writer::WriterSummary};

use crate::metrics::{Family, Kind};

pub fn collect_families(
    listeners: &[Arc<ListenerStats>],
    writer: &Mutex<WriterSummary>,
) -> Vec<Family> {
    use Kind::Counter;
    let mut received = Family::new(
        "mirror_collect_received_packets",
        "Datagrams, or stream packet blocks, that arrived at a listener.",
        Counter,
    );
    let mut reads = Family::new(
        "mirror_collect_reads",
        "Receive system calls of a datagram listener that returned datagrams (one \
         recvmmsg call, with UDP GRO, brings many): received_packets / reads is the \
         datagrams per call.",
        Counter,
    );
    let mut decoded = Family::new(
        "mirror_collect_decoded_packets",
        "Packets decoded and handed to the writer.",
        Counter,
    );
    let mut truncated = Family::new(
        "mirror_collect_truncated_packets",
        "Decoded packets the sender marked as cut.",
        Counter,
    );
    let mut connections = Family::new(
        "mirror_collect_connections",
        "Stream connections accepted.",
        Counter,
    );
    let mut refused = Family::new(
        "mirror_collect_refused_connections",
        "Stream connections refused or cut, by reason: limit, source_limit, handshake, \
         idle_timeout, read_timeout.",
        Counter,
    );
    let mut errors = Family::new(
        "mirror_collect_errors",
        "Packets skipped, by reason: short, foreign, garbled.",
        Counter,
    );
    for l in listeners {
        let s = l.snapshot();
        let label = [("listener", l.name.as_str())];
        received.with(&label, s.received);
        reads.with(&label, s.reads);
        decoded.with(&label, s.decoded);
        truncated.with(&label, s.truncated);
        connections.with(&label, s.connections);
        for (reason, value) in s.refused {
            refused.with(&[label[0], ("reason", reason)], value);
        }
        for (reason, value) in s.errors {
            errors.with(&[label[0], ("reason", reason)], value);
        }
    }
    // A poisoned lock still holds the last published numbers.
    let w = *writer.lock().unwrap_or_else(|e| e.into_inner());
    let writer_families = [
        (
            "mirror_collect_written_packets",
            "Packets written to pcapng files.",
            w.packets,
        ),
        (
            "mirror_collect_written_bytes",
            "Bytes written to pcapng files.",
            w.bytes,
        ),
        (
            "mirror_collect_files_written",
            "pcapng files completed.",
            w.files_written,
        ),
        (
            "mirror_collect_files_deleted",
            "Old pcapng files deleted by --max-files or --max-total-bytes (always the \
             writing sender's own), or by --max-age.",
            w.files_deleted,
        ),
        (
            "mirror_collect_write_errors",
            "Packets lost because a file could not be created or written.",
            w.write_errors,
        ),
        (
            "mirror_collect_folded_packets",
            "Packets filed under an other-interfaces interface: their source, or the file, \
             had too many interfaces.",
            w.folded,
        ),
        (
            "mirror_collect_late_packets",
            "Packets written after one with a later time: later than --reorder-ms.",
            w.late,
        ),
    ];
    let mut dropped = Family::new(
        "mirror_collect_dropped_packets",
        "Decoded packets not written, by reason: retention (--max-total-bytes reached and \
         the sender had no closed file of its own to delete), senders (a new sender past \
         --max-senders).",
        Counter,
    );
    dropped.with(&[("reason", "retention")], w.dropped_retention);
    dropped.with(&[("reason", "senders")], w.dropped_senders);
    let mut all = vec![
        received,
        reads,
        decoded,
        truncated,
        connections,
        refused,
        errors,
        dropped,
    ];
    for (name, help, value) in writer_families {
        let mut f = Family::new(name, help, Counter);
        f.with(&[], value);
        all.push(f);
    }
    all
}
