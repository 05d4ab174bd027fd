//! The fanout of a plan: its outputs, filters and rate limits, opened anew
//! or, when a plan replaces another, taken running from the old fanout.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::Notify;

use super::{CLOSE_TIMEOUT, MirrorError, Settings};
use crate::{
    datapath::{
        fanout::{Fanout, Running},
        plan::Planned,
    },
    export::{self, Exporter, output::Output, own::OwnConnections},
    model::record::IfaceId,
};

/// How one output of a new plan is had.
enum Opened {
    New(Box<Exporter>),
    /// Taken, running, from the running fanout.
    Reuse,
    /// A file the running fanout writes: closed there, then opened to append.
    Reopen,
}

/// The snaplen each policy's pcapng streams are opened with, by name.
pub(super) fn stream_keys(plan: &[Planned]) -> HashMap<String, u32> {
    plan.iter()
        .map(|p| (p.name.clone(), p.snaplen.get()))
        .collect()
}

fn listed(p: &Planned) -> Vec<(IfaceId, String)> {
    p.interfaces
        .iter()
        .map(|i| (i.id(), i.label.clone()))
        .collect()
}

/// The outputs, filters and rate limits of a plan, ready to take records.
/// With the running fanout, outputs that would be opened again as they are
/// are taken from it instead (with their policy's counters): a tunnel of
/// the same policy to the same place, or a pcapng stream of the same
/// snaplen, which gets interface blocks for the policy's new interfaces in
/// place. A TCP or TLS collector thus sees no reconnect, and a file no new
/// section, when pods come and go. The agent's own counters (delivered,
/// malformed) go on from the running fanout's. `own`: the mirror's
/// connections to collectors, which its fanouts never mirror.
pub(super) fn open_fanout(
    plan: &[Planned],
    settings: &Settings,
    progress: &Arc<Notify>,
    own: &Arc<OwnConnections>,
    mut running: Option<(&mut Fanout, &HashMap<String, u32>)>,
) -> Result<Fanout, MirrorError> {
    let mut policies = Vec::with_capacity(plan.len());
    let mut routes = HashMap::new();
    for (index, p) in plan.iter().enumerate() {
        let listed = listed(p);
        let ctx = export::Context {
            node: &settings.node,
            interfaces: &listed,
            snaplen: p.snaplen.get(),
            mark: settings.mark,
            queue_bytes: settings.queue_bytes,
            progress: progress.clone(),
            append: running.is_some(),
            own: own.clone(),
        };
        let same_streams = running
            .as_ref()
            .is_some_and(|(_, streams)| streams.get(&p.name) == Some(&p.snaplen.get()));
        let mut old = running
            .as_mut()
            .and_then(|(fanout, _)| fanout.policy_mut(&p.name));
        // Outputs to open anew are opened before any is taken from the
        // running fanout, so a failure leaves it as it was.
        let mut plans = Vec::with_capacity(p.outputs.len());
        for o in &p.outputs {
            let running_one = old.as_ref().is_some_and(|r| r.sends_to(o));
            let reuse = running_one && (matches!(o.base(), Output::Tunnel { .. }) || same_streams);
            plans.push(if reuse {
                Opened::Reuse
            } else if running_one && matches!(o.base(), Output::PcapngFile(_)) {
                Opened::Reopen
            } else {
                Opened::New(Box::new(Exporter::open(o, &ctx)?))
            });
        }
        let mut exporters = Vec::with_capacity(plans.len());
        // Sender CPU time of the outputs closed here, still the policy's.
        let mut retired = Duration::ZERO;
        for (opened, o) in plans.into_iter().zip(&p.outputs) {
            let mut take = || old.as_mut()?.take_exporter(o);
            exporters.push(match opened {
                Opened::New(e) => *e,
                Opened::Reuse => match take() {
                    Some(mut e) => {
                        if e.add_interfaces(&listed) {
                            e
                        } else {
                            // Too many interfaces for one section: a new one.
                            e.close(CLOSE_TIMEOUT);
                            retired += e.sender_cpu();
                            Exporter::open(o, &ctx)?
                        }
                    }
                    None => Exporter::open(o, &ctx)?,
                },
                Opened::Reopen => {
                    // The same file gets a new section: the old writer
                    // finishes first, so the two never interleave.
                    if let Some(mut e) = take() {
                        e.close(CLOSE_TIMEOUT);
                        retired += e.sender_cpu();
                    }
                    Exporter::open(o, &ctx)?
                }
            });
        }
        let body = p.body.as_ref();
        let filters = body
            .map(|b| b.filters())
            .transpose()
            .map_err(|e| MirrorError::Filter(p.name.clone(), e))?;
        for (id, name) in listed {
            routes.insert(id, (name, index));
        }
        let mut stats = old.map(Running::take_stats).unwrap_or_default();
        stats.retired_output_cpu += retired;
        policies.push(
            Running::new(p.name.clone(), filters, exporters, stats)
                .in_namespace(p.namespace().map(str::to_owned)),
        );
    }
    // Nothing can fail from here: the running fanout's counters go on.
    let stats = running
        .map(|(fanout, _)| fanout.take_stats())
        .unwrap_or_default();
    Ok(Fanout::new(policies, routes, settings.clock)
        .with_stats(stats)
        .with_own(own.clone()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use mirror_common::DIR_INGRESS;

    use crate::model::direction::Directions;

    use super::*;
    use crate::{
        datapath::testing::{Written, frame, record, sections, written},
        export::{DEFAULT_QUEUE_BYTES, SocketMark},
        kernel::hooks::Interface,
        model::{
            record::{IfIndex, NetnsCookie, PolicyId, WallClock},
            values::{AttachMode, End, SampleRate},
        },
    };

    fn settings() -> Settings {
        Settings {
            node: "node-a".into(),
            mark: SocketMark { value: 0, mask: 0 },
            queue_bytes: DEFAULT_QUEUE_BYTES,
            attach_mode: AttachMode::Auto,
            clock: WallClock::now().expect("the clocks"),
        }
    }

    fn veth(index: u32) -> Interface {
        Interface::local(
            format!("veth{index}"),
            IfIndex(index),
            NetnsCookie(4096),
            End::Pod,
        )
    }

    /// Policy "web" on `interfaces`, into a pcapng file at `path`.
    fn web(interfaces: Vec<Interface>, snaplen: &str, path: &Path) -> Vec<Planned> {
        vec![Planned {
            id: PolicyId(1),
            name: "web".into(),
            tenant: crate::datapath::plan::Tenant::Policy("web".into()),
            interfaces,
            directions: Directions::Ingress,
            snaplen: snaplen.parse().expect("a snaplen"),
            sample: SampleRate::ALL,
            body: None,
            outputs: vec![Output::PcapngFile(path.to_owned())],
        }]
    }

    fn send(fanout: &mut Fanout, iface: &Interface, payload: usize) -> Vec<u8> {
        let f = frame(true, payload);
        fanout.record(&record(iface.id(), 1, DIR_INGRESS, &f));
        f
    }

    fn got(interface: &str, data: Vec<u8>) -> Written {
        Written {
            interface: interface.into(),
            original_len: data.len() as u32,
            data,
        }
    }

    #[test]
    fn a_stream_of_the_same_snaplen_goes_on_and_learns_the_new_interfaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.pcapng");
        let (a, b) = (veth(7), veth(8));
        let (settings, progress) = (settings(), Arc::new(Notify::new()));
        let own = Arc::default();
        let first = web(vec![a.clone()], "256", &path);
        let mut old = open_fanout(&first, &settings, &progress, &own, None).expect("opens");
        let one = send(&mut old, &a, 10);

        let second = web(vec![a.clone(), b.clone()], "256", &path);
        let streams = stream_keys(&first);
        let mut new = open_fanout(
            &second,
            &settings,
            &progress,
            &own,
            Some((&mut old, &streams)),
        )
        .expect("opens");
        assert_eq!(old.exporters().count(), 0, "the output was taken");
        let two = send(&mut new, &b, 20);
        let three = send(&mut new, &a, 30);
        new.close(CLOSE_TIMEOUT);

        assert_eq!(new.stats().delivered, 3, "counted from the first plan on");
        assert_eq!(sections(&path), 1, "no new section");
        assert_eq!(
            written(&path),
            [got("veth7", one), got("veth8", two), got("veth7", three)]
        );
    }

    #[test]
    fn a_new_snaplen_reopens_the_file_with_a_section_after_the_old() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.pcapng");
        let a = veth(7);
        let (settings, progress) = (settings(), Arc::new(Notify::new()));
        let own = Arc::default();
        let first = web(vec![a.clone()], "256", &path);
        let mut old = open_fanout(&first, &settings, &progress, &own, None).expect("opens");
        let one = send(&mut old, &a, 10);

        let second = web(vec![a.clone()], "128", &path);
        let streams = stream_keys(&first);
        let mut new = open_fanout(
            &second,
            &settings,
            &progress,
            &own,
            Some((&mut old, &streams)),
        )
        .expect("opens");
        let two = send(&mut new, &a, 20);
        new.close(CLOSE_TIMEOUT);

        assert_eq!(sections(&path), 2);
        assert_eq!(written(&path), [got("veth7", one), got("veth7", two)]);
    }

    #[test]
    fn an_output_that_cannot_open_leaves_the_running_fanout_as_it_was() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("web.pcapng");
        let a = veth(7);
        let (settings, progress) = (settings(), Arc::new(Notify::new()));
        let own = Arc::default();
        let first = web(vec![a.clone()], "256", &path);
        let mut old = open_fanout(&first, &settings, &progress, &own, None).expect("opens");

        let mut second = web(vec![a.clone()], "256", &path);
        let nowhere = dir.path().join("no-such-dir").join("x.pcapng");
        second[0].outputs.push(Output::PcapngFile(nowhere));
        let streams = stream_keys(&first);
        let error = open_fanout(
            &second,
            &settings,
            &progress,
            &own,
            Some((&mut old, &streams)),
        )
        .err()
        .expect("a directory that does not exist");
        assert!(matches!(error, MirrorError::Output(_)), "{error}");
        assert_eq!(old.exporters().count(), 1, "the running output stays");
        let one = send(&mut old, &a, 10);
        old.close(CLOSE_TIMEOUT);
        assert_eq!(written(&path), [got("veth7", one)]);
    }
}
