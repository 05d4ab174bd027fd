//! A running mirror: the hooks, the ring-buffer pump, and the fanout to the
//! outputs, set up from a plan and changed in place when a new plan comes
//! (`attach` on SIGHUP; `run` on every policy or pod change). Interfaces in
//! both plans keep their hooks (their config is replaced entry by entry, so
//! their mirror never stops); others are attached or detached; the outputs
//! are opened anew and the old ones finish sending in the background.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use mirror_common::{Counters, IfaceConfig};
use tokio::{
    sync::Notify,
    time::{Interval, MissedTickBehavior},
};
use tracing::{info, warn};

use crate::{
    datapath::{
        fanout::{Fanout, Running},
        metrics::AgentMetrics,
        plan::Planned,
        pump::{HOLDING_POLL, Pump},
    },
    export::{self, ExportError, Exporter, SocketMark, Stats, output::Output},
    kernel::{
        hooks::{Adopted, HookError, Hooks, Interface, Slot},
        pin::PinDir,
    },
    metrics::Family,
    model::{
        record::{IfaceId, WallClock},
        values::AttachMode,
    },
    policy::{kfilter, pcapfilter::PcapFilterError, ratelimit::RateLimiter},
};

/// Even with no wakeup (none is lost, but be sure), the ring is read this often.
const IDLE_DRAIN: Duration = Duration::from_millis(200);

/// Interfaces a new plan adds are hooked this many at a time between turns
/// of the drain loop: each tcx attach waits for an RCU grace period (about
/// 14 ms), and a burst of pods must not keep the ring unread for seconds.
const ATTACH_CHUNK: usize = 4;

/// How long shutdown (or a reload, in the background) waits for each output
/// to send what it holds.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What stays the same from one plan to the next.
pub struct Settings {
    pub node: String,
    pub mark: SocketMark,
    pub queue_bytes: usize,
    pub attach_mode: AttachMode,
    pub clock: WallClock,
}

/// What one policy's mirror has done, for its status: copies sent, cut,
/// and lost by reason (`ringFull`, `copyFailed`, `rateLimited`,
/// `queueFull`, `sendError`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicyTotals {
    /// Its interfaces still waiting to be hooked.
    pub queued: u64,
    pub mirrored: u64,
    pub truncated: u64,
    pub dropped: std::collections::BTreeMap<String, u64>,
}

pub struct Mirror {
    hooks: Hooks,
    pump: Pump,
    fanout: Fanout,
    slots: Vec<(Interface, Slot)>,
    /// Each policy's counter slots, by name.
    policy_slots: HashMap<String, Vec<Slot>>,
    /// The snaplen each policy's pcapng streams were opened with (their
    /// interface blocks carry it), by name: a stream is kept across plans
    /// only if it matches.
    streams: HashMap<String, u32>,
    view: AgentMetrics,
    settings: Settings,
    /// Woken when an output has sent all it was handed.
    progress: Arc<Notify>,
    /// The ring is read this often even with no wakeup, and deleted
    /// interfaces are noticed.
    idle_tick: Interval,
    /// While ring space is held the kernel sends no wakeups: poll.
    holding_tick: Interval,
    /// Interfaces of the current plan still to hook ([`ATTACH_CHUNK`] per turn).
    pending: VecDeque<Pending>,
    /// Interfaces that could not be hooked since [`Mirror::take_left_out`].
    left_out: Vec<IfaceId>,
}

/// An interface to hook, with its hook direction bits and its policy's name.
struct Pending {
    iface: Interface,
    bits: u32,
    policy: String,
}

impl Mirror {
    /// Outputs first (a bad path or an unresolvable collector attaches
    /// nothing), then the kernel config, then the hooks: all of them before
    /// it returns, so that pins left by an earlier agent are adopted before
    /// the rest are removed. `strict`: an interface that cannot be hooked
    /// fails it all (`attach`, where it is bad input); otherwise it is left
    /// out (`run`, where a pod may go at any time).
    pub fn start(
        plan: &[Planned],
        settings: Settings,
        ring_bytes: u32,
        pins: Option<PinDir>,
        keep_pins: bool,
        strict: bool,
    ) -> Result<(Self, Adopted), MirrorError> {
        let progress = Arc::new(Notify::new());
        let fanout = open_fanout(plan, &settings, &progress, None)?;
        let mut hooks = Hooks::load(ring_bytes, pins)?;
        hooks.keep_pins(keep_pins);
        let slots = configure(&mut hooks, plan, settings.mark)?;
        let pump = Pump::new(hooks.take_ring()?).map_err(io_err("polling the ring buffer"))?;
        let mut mirror = Self {
            view: AgentMetrics::new(plan, &slots),
            policy_slots: policy_slots(plan, &slots),
            streams: stream_keys(plan),
            hooks,
            pump,
            fanout,
            slots,
            settings,
            progress,
            idle_tick: tokio::time::interval(IDLE_DRAIN),
            holding_tick: {
                let mut tick = tokio::time::interval(HOLDING_POLL);
                tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
                tick
            },
            pending: VecDeque::new(),
            left_out: Vec::new(),
        };
        mirror.queue(plan);
        while let Some(p) = mirror.pending.pop_front() {
            match mirror.attach_one(&p) {
                Ok(()) => {}
                Err(error) if !strict => mirror.leave_out(&p, &error),
                Err(error) => return Err(error.into()),
            }
        }
        let adopted = mirror.hooks.settle_pins()?;
        Ok((mirror, adopted))
    }

    /// Queues every interface of the plan not attached yet.
    fn queue(&mut self, plan: &[Planned]) {
        self.pending = plan
            .iter()
            .flat_map(|p| {
                p.interfaces.iter().map(|iface| Pending {
                    iface: iface.clone(),
                    bits: iface.hook_bits(p.directions),
                    policy: p.name.clone(),
                })
            })
            .filter(|p| !self.hooks.is_attached(p.iface.id()))
            .collect();
    }

    fn attach_one(&mut self, p: &Pending) -> Result<(), HookError> {
        let mode = self
            .hooks
            .attach(&p.iface, p.bits, self.settings.attach_mode)?;
        info!(interface = %p.iface, ifindex = p.iface.index.0, policy = %p.policy, mode = mode.as_str(), "attached");
        Ok(())
    }

    /// Hooks the next few queued interfaces. One that fails (deleted since
    /// the plan was made, its pod's sandbox replaced) is logged, left out,
    /// and reported by [`Mirror::take_left_out`]; the rest go on.
    fn attach_pending(&mut self) {
        for _ in 0..ATTACH_CHUNK {
            let Some(p) = self.pending.pop_front() else {
                return;
            };
            if let Err(error) = self.attach_one(&p) {
                self.leave_out(&p, &error);
            }
        }
    }

    fn leave_out(&mut self, p: &Pending, error: &HookError) {
        warn!(interface = %p.iface, policy = %p.policy, %error, "attaching failed; left out");
        let id = p.iface.id();
        if let Err(error) = self.hooks.forget(id) {
            warn!(interface = %p.iface, %error, "forgetting the interface failed");
        }
        self.slots.retain(|(i, _)| i.id() != id);
        self.left_out.push(id);
    }

    /// Whether interfaces of the current plan are still being hooked.
    pub fn attaching(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The interfaces that could not be hooked since the last call.
    pub fn take_left_out(&mut self) -> Vec<IfaceId> {
        std::mem::take(&mut self.left_out)
    }

    /// Moves to a new plan. Fails, changing nothing, if its outputs or
    /// filters cannot be opened; a kernel failure part-way leaves what was
    /// done in place (every hook still belongs to this mirror). Interfaces
    /// it adds are configured now and hooked a few at a time by
    /// [`Mirror::drain`]; those that cannot be are reported by
    /// [`Mirror::take_left_out`].
    pub fn apply(&mut self, plan: &[Planned]) -> Result<(), MirrorError> {
        // What the old outputs were handed is theirs to finish; read what is
        // ready into them first.
        self.pump.poll(&mut self.fanout);
        let fanout = open_fanout(
            plan,
            &self.settings,
            &self.progress,
            Some((&mut self.fanout, &self.streams)),
        )?;
        let wanted: HashMap<IfaceId, &Interface> = plan
            .iter()
            .flat_map(|p| &p.interfaces)
            .map(|i| (i.id(), i))
            .collect();
        for (iface, _) in &self.slots {
            if !wanted.contains_key(&iface.id()) {
                self.hooks.forget(iface.id())?;
                info!(interface = %iface, "detached: no longer in the policy");
            }
        }
        let old = std::mem::replace(&mut self.fanout, fanout);
        self.pump.forget_holds();
        close_in_background(old);
        self.slots = configure(&mut self.hooks, plan, self.settings.mark)?;
        self.view = AgentMetrics::new(plan, &self.slots);
        self.policy_slots = policy_slots(plan, &self.slots);
        self.streams = stream_keys(plan);
        self.queue(plan);
        self.left_out.clear();
        self.attach_pending();
        Ok(())
    }

    /// Waits for the next thing the ring or the outputs need, and does it:
    /// records arrived, an output caught up, the poll while ring space is
    /// held, or the idle tick (which also notices deleted interfaces); and
    /// between those, hooks the next few queued interfaces. The drain loop
    /// of `attach` and of `run` alike.
    pub async fn drain(&mut self) -> std::io::Result<()> {
        if self.attaching() {
            // Whatever is ready first, then the next chunk.
            self.pump.progress(&mut self.fanout);
            self.attach_pending();
            tokio::task::yield_now().await;
            return Ok(());
        }
        let (pump, fanout) = (&mut self.pump, &mut self.fanout);
        let holding = pump.holding();
        tokio::select! {
            batch = pump.wait(fanout) => {
                batch?;
            }
            () = self.progress.notified() => pump.progress(fanout),
            _ = self.holding_tick.tick(), if holding => pump.progress(fanout),
            _ = self.idle_tick.tick() => {
                pump.progress(fanout);
                self.prune_vanished();
            }
        }
        Ok(())
    }

    /// Bytes in the ring buffer not yet released.
    pub fn ring_pending(&self) -> u64 {
        self.pump.ring().pending()
    }

    pub fn families(&self) -> Vec<Family> {
        self.view.families(
            &self.hooks,
            &self.fanout,
            self.pump.ring(),
            self.slots.len(),
        )
    }

    pub fn interfaces(&self) -> usize {
        self.slots.len()
    }

    /// Stops mirroring interfaces of the agent's namespace that have been
    /// deleted (their hooks went with them), logging their last counters.
    /// Interfaces in pods' namespaces are left to `run`, which sees their
    /// pods go: looking into every pod's namespace this often would cost
    /// more than the mirror.
    pub fn prune_vanished(&mut self) {
        let gone: Vec<(Interface, Slot)> = self
            .slots
            .iter()
            .filter(|(i, _)| i.ns.is_none() && !i.exists())
            .cloned()
            .collect();
        for (iface, slot) in gone {
            let c = self.hooks.counters(slot).unwrap_or_default();
            warn!(
                interface = %iface,
                ifindex = iface.index.0,
                seen = c.seen_packets,
                mirrored = c.mirrored_packets,
                lost_ring_full = c.ring_full,
                "interface gone; no longer mirrored"
            );
            if let Err(error) = self.hooks.forget(iface.id()) {
                warn!(interface = %iface, %error, "forgetting the interface failed");
            }
            self.slots.retain(|(i, _)| i.id() != iface.id());
        }
    }

    /// One policy's totals (zero for a policy not in the plan).
    pub fn policy_totals(&self, name: &str) -> PolicyTotals {
        let mut kernel = Counters::default();
        for slot in self.policy_slots.get(name).into_iter().flatten() {
            if let Ok(c) = self.hooks.counters(*slot) {
                kernel.add(&c);
            }
        }
        let mut t = PolicyTotals {
            queued: self.pending.iter().filter(|p| p.policy == name).count() as u64,
            truncated: kernel.truncated,
            ..PolicyTotals::default()
        };
        let (mut queue_full, mut send_error, mut rate_limited) = (0, 0, 0);
        for p in self.fanout.policies.iter().filter(|p| p.name == name) {
            rate_limited += p.stats.rate_limited;
            for e in &p.exporters {
                let s = e.stats();
                t.mirrored += Stats::get(&s.sent_packets);
                t.truncated += Stats::get(&s.mtu_truncated);
                queue_full += Stats::get(&s.queue_full);
                send_error += Stats::get(&s.send_errors);
            }
        }
        for (reason, n) in [
            ("ringFull", kernel.ring_full),
            ("copyFailed", kernel.load_failed),
            ("rateLimited", rate_limited),
            ("queueFull", queue_full),
            ("sendError", send_error),
        ] {
            if n > 0 {
                t.dropped.insert(reason.to_owned(), n);
            }
        }
        t
    }

    /// Detaches (or, keeping pins, lets go of the hooks, which go on filling
    /// the ring for the next agent), takes what is left in the ring, lets
    /// the outputs send it, releases it, and logs the summary.
    pub fn stop(mut self) {
        self.hooks.detach_all();
        self.pump.poll(&mut self.fanout);
        for exporter in self
            .fanout
            .policies
            .iter_mut()
            .flat_map(|p| &mut p.exporters)
        {
            exporter.close(CLOSE_TIMEOUT);
        }
        self.pump.progress(&mut self.fanout);
        summarize(&self.hooks, &self.slots, &self.fanout);
        self.hooks.remove_pins();
    }
}

fn io_err(context: &'static str) -> impl FnOnce(std::io::Error) -> MirrorError {
    move |source| MirrorError::Io { context, source }
}

/// What can stop a mirror from starting or from moving to a new plan.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("--output {0}")]
    Output(#[from] ExportError),
    #[error("policy \"{0}\": filter: {1}")]
    Filter(String, PcapFilterError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
}

impl MirrorError {
    /// 2 for bad input (an output that cannot be opened), as clap does for
    /// usage errors; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Output(_) => 2,
            Self::Hook(_) | Self::Io { .. } | Self::Filter(..) => 1,
        }
    }
}

/// How one output of a new plan is had.
enum Opened {
    New(Box<Exporter>),
    /// Taken, running, from the running fanout.
    Reuse,
    /// A file the running fanout writes: closed there, then opened to append.
    Reopen,
}

fn stream_keys(plan: &[Planned]) -> HashMap<String, u32> {
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
/// section, when pods come and go.
fn open_fanout(
    plan: &[Planned],
    settings: &Settings,
    progress: &Arc<Notify>,
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
        };
        let same_streams = running
            .as_ref()
            .is_some_and(|(_, streams)| streams.get(&p.name) == Some(&p.snaplen.get()));
        let mut old = running
            .as_mut()
            .and_then(|(fanout, _)| fanout.policies.iter_mut().find(|r| r.name == p.name));
        // Outputs to open anew are opened before any is taken from the
        // running fanout, so a failure leaves it as it was.
        let mut plans = Vec::with_capacity(p.outputs.len());
        for o in &p.outputs {
            let running_one = old
                .as_ref()
                .is_some_and(|r| r.exporters.iter().any(|e| e.output() == o));
            let reuse = running_one && (matches!(o, Output::Tunnel { .. }) || same_streams);
            plans.push(if reuse {
                Opened::Reuse
            } else if running_one && matches!(o, Output::PcapngFile(_)) {
                Opened::Reopen
            } else {
                Opened::New(Box::new(Exporter::open(o, &ctx)?))
            });
        }
        let mut exporters = Vec::with_capacity(plans.len());
        for (opened, o) in plans.into_iter().zip(&p.outputs) {
            let mut take = || {
                let policy = old.as_mut()?;
                let at = policy.exporters.iter().position(|e| e.output() == o)?;
                Some(policy.exporters.swap_remove(at))
            };
            exporters.push(match opened {
                Opened::New(e) => *e,
                Opened::Reuse => match take() {
                    Some(mut e) => {
                        if e.add_interfaces(&listed) {
                            e
                        } else {
                            // Too many interfaces for one section: a new one.
                            e.close(CLOSE_TIMEOUT);
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
        let stats = old
            .map(|policy| std::mem::take(&mut policy.stats))
            .unwrap_or_default();
        policies.push(Running {
            name: p.name.clone(),
            filters,
            limiter: body.and_then(|b| RateLimiter::new(&b.rate_limit)),
            exporters,
            stats,
        });
    }
    Ok(Fanout::new(policies, routes, settings.clock))
}

/// Writes each policy's kernel prefilter and each interface's config, before
/// any hook of theirs runs.
fn configure(
    hooks: &mut Hooks,
    plan: &[Planned],
    mark: SocketMark,
) -> Result<Vec<(Interface, Slot)>, MirrorError> {
    let mut slots = Vec::new();
    for p in plan {
        let rules = p.body.as_ref().map(|b| &b.rules);
        hooks.configure_policy(p.id, &kfilter::compile(p.id, rules))?;
        for iface in &p.interfaces {
            let slot = hooks.configure(
                iface,
                IfaceConfig {
                    policy_id: p.id.0,
                    directions: iface.hook_bits(p.directions),
                    snaplen: p.snaplen.get(),
                    sample_every: p.sample.get(),
                    counter_slot: 0,
                    skip_mark: mark.value,
                    skip_mask: mark.mask,
                    _pad: 0,
                },
            )?;
            slots.push((iface.clone(), slot));
        }
    }
    Ok(slots)
}

fn policy_slots(plan: &[Planned], slots: &[(Interface, Slot)]) -> HashMap<String, Vec<Slot>> {
    let mut by = HashMap::new();
    // configure() makes the slots in plan order, interface by interface.
    let mut slots = slots.iter();
    for p in plan {
        let mine: Vec<Slot> = slots
            .by_ref()
            .take(p.interfaces.len())
            .map(|(_, s)| *s)
            .collect();
        by.insert(p.name.clone(), mine);
    }
    by
}

/// The outputs of a replaced plan send what they hold and report, without
/// holding up the drain loop.
fn close_in_background(mut old: Fanout) {
    let spawned = std::thread::Builder::new()
        .name("old-outputs".into())
        .spawn(move || {
            for exporter in old.policies.iter_mut().flat_map(|p| &mut p.exporters) {
                exporter.close(CLOSE_TIMEOUT);
            }
            summarize_outputs(&old);
        });
    if let Err(error) = spawned {
        // The outputs then stop when dropped here, unsent copies uncounted.
        warn!(%error, "closing the old outputs in the background failed");
    }
}

fn summarize(hooks: &Hooks, slots: &[(Interface, Slot)], fanout: &Fanout) {
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
                    lost_ring_full = c.ring_full,
                    lost_copy_failed = c.load_failed,
                    "summary"
                );
                total.add(&c);
            }
            Err(error) => warn!(interface = %iface, %error, "reading counters failed"),
        }
    }
    for p in &fanout.policies {
        info!(
            policy = %p.name,
            rejected_by_rules = p.stats.rejected_by_rules,
            rejected_by_filter = p.stats.rejected_by_filter,
            rate_limited = p.stats.rate_limited,
            "policy summary"
        );
    }
    let lost_output = summarize_outputs(fanout);
    let stats = &fanout.stats;
    let lost = total.ring_full + total.load_failed + stats.malformed + lost_output;
    info!(
        seen = total.seen_packets,
        mirrored = total.mirrored_packets,
        written = stats.delivered,
        truncated = total.truncated,
        sampled_out = total.sampled_out,
        own_traffic = total.own_traffic,
        filtered = total.filtered,
        lost,
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
            lost_queue_full = queue_full,
            lost_send_error = send_errors,
            "output summary"
        );
    }
    lost
}
