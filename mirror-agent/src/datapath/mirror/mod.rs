//! A running mirror: the hooks, the ring-buffer pump, and the fanout to the
//! outputs, set up from a plan and changed in place when a new plan comes
//! (`attach` on SIGHUP; `run` on every policy or pod change). Interfaces in
//! both plans keep their hooks (their config is replaced entry by entry, so
//! their mirror never stops); others are attached or detached; the outputs
//! are opened anew and the old ones finish sending in the background.
//!
//! Here the mirror's life (start, apply, drain, stop); around it: hooking
//! interfaces a few at a time ([`attach`]), the kernel config ([`configure`]),
//! opening or reusing outputs ([`open`]), the per-policy totals ([`totals`])
//! and the summary logged at the end ([`summary`]).

mod attach;
mod configure;
mod error;
mod open;
mod summary;
mod totals;

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::Notify,
    time::{Interval, MissedTickBehavior},
};
use tracing::{info, warn};

use self::{
    attach::Pending,
    configure::{configure, policy_slots},
    error::io_err,
    open::{open_fanout, stream_keys},
    summary::{close_in_background, summarize},
};
pub use self::{
    error::MirrorError,
    totals::{Loss, PolicyTotals},
};
use crate::{
    datapath::{
        fanout::Fanout,
        metrics::AgentMetrics,
        plan::Planned,
        pump::{HOLDING_POLL, Pump},
        tenants::Tenants,
    },
    export::{SocketMark, own::OwnConnections},
    kernel::{
        hooks::{Adopted, Hooks, Interface, Slot},
        pin::PinDir,
        ring::{Ring, largest},
    },
    metrics::Family,
    model::{
        record::{IfaceId, WallClock},
        rings::RingLayout,
        values::AttachMode,
    },
};

/// Even with no wakeup (none is lost, but be sure), the ring is read this often.
const IDLE_DRAIN: Duration = Duration::from_millis(200);

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

pub struct Mirror {
    hooks: Hooks,
    pump: Pump,
    /// Each tenant's ring.
    tenants: Tenants,
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
    /// The outputs' connections to collectors, never mirrored.
    own: Arc<OwnConnections>,
    /// The ring is read this often even with no wakeup, and deleted
    /// interfaces are noticed.
    idle_tick: Interval,
    /// While ring space is held the kernel sends no wakeups: poll.
    holding_tick: Interval,
    /// Interfaces of the current plan still to hook (a few per turn).
    pending: VecDeque<Pending>,
    /// Interfaces that could not be hooked since [`Mirror::take_left_out`].
    left_out: Vec<IfaceId>,
}

impl Mirror {
    /// Outputs first (a bad path or an unresolvable collector attaches
    /// nothing), then the kernel config, then the hooks: all of them before
    /// it returns, so that pins left by an earlier agent are adopted before
    /// the rest are removed. `strict`: an interface that cannot be hooked
    /// fails it all (`attach`, where it is bad input); otherwise it is left
    /// out (`run`, where a pod may go at any time).
    ///
    /// `interrupted` is asked before each step and between interfaces (a
    /// stop signal, say): once it says so, what was hooked is let go as
    /// [`Mirror::stop`] does, pins an earlier agent left are not touched,
    /// and it returns `None`.
    pub fn start(
        plan: &[Planned],
        settings: Settings,
        rings: RingLayout,
        pins: Option<PinDir>,
        keep_pins: bool,
        strict: bool,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Option<(Self, Adopted)>, MirrorError> {
        if interrupted() {
            return Ok(None);
        }
        let progress = Arc::new(Notify::new());
        let own = Arc::default();
        let fanout = open_fanout(plan, &settings, &progress, &own, None)?;
        let layout = rings;
        let mut hooks = Hooks::load(layout, pins)?;
        hooks.keep_pins(keep_pins);
        let rings = hooks.take_rings()?;
        let mut tenants = Tenants::new(tenant_rings(&rings, layout));
        let slots = configure(&mut hooks, plan, &mut tenants, settings.mark)?;
        let pump = Pump::new(rings).map_err(io_err("polling the ring buffer"))?;
        let mut mirror = Self {
            tenants,
            view: AgentMetrics::new(plan, &slots),
            policy_slots: policy_slots(plan, &slots),
            streams: stream_keys(plan),
            hooks,
            pump,
            fanout,
            slots,
            settings,
            progress,
            own,
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
            if interrupted() {
                info!(
                    hooked = mirror.slots.len().saturating_sub(mirror.pending.len() + 1),
                    not_yet = mirror.pending.len() + 1,
                    "start-up interrupted; letting go of what was hooked"
                );
                mirror.stop();
                return Ok(None);
            }
            match mirror.attach_one(&p) {
                Ok(()) => {}
                Err(error) if !strict => mirror.leave_out(&p, &error),
                Err(error) => return Err(error.into()),
            }
        }
        let adopted = mirror.hooks.settle_pins()?;
        Ok(Some((mirror, adopted)))
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
            &self.own,
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
        self.slots = configure(&mut self.hooks, plan, &mut self.tenants, self.settings.mark)?;
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

    /// Bytes in the ring buffers not yet released.
    pub fn ring_pending(&self) -> u64 {
        self.pump.fill().pending()
    }

    /// How many tenants share the busiest ring (1: none shares).
    pub fn tenants_per_ring(&self) -> usize {
        self.tenants.most_per_ring()
    }

    pub fn families(&self) -> Vec<Family> {
        self.view.families(
            &self.hooks,
            &self.fanout,
            &self.pump.fill(),
            // Hooked, not merely planned: a new plan's interfaces are
            // hooked a few per drain turn, and wait in `pending` until then.
            self.slots.len().saturating_sub(self.pending.len()),
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
                lost_rate_limit = c.rate_limited,
                lost_ring_full = c.ring_full,
                "interface gone; no longer mirrored"
            );
            if let Err(error) = self.hooks.forget(iface.id()) {
                warn!(interface = %iface, %error, "forgetting the interface failed");
            }
            self.slots.retain(|(i, _)| i.id() != iface.id());
        }
    }

    /// Detaches (or, keeping pins, lets go of the hooks, which go on filling
    /// the ring for the next agent), takes what is left in the ring, lets
    /// the outputs send it, releases it, and logs the summary.
    pub fn stop(mut self) {
        self.hooks.detach_all();
        self.pump.poll(&mut self.fanout);
        self.fanout.close(CLOSE_TIMEOUT);
        self.pump.progress(&mut self.fanout);
        summarize(&self.hooks, &self.slots, &self.fanout);
        self.hooks.remove_pins();
    }
}

/// The rings tenants may use: the layout's slots, if the rings are as it
/// sized them; else (rings adopted from pins keep their sizes) the
/// largest, which are those the agent that made them sized.
fn tenant_rings(rings: &[Ring], layout: RingLayout) -> Vec<u32> {
    let as_laid_out = rings
        .iter()
        .map(|r| r.size())
        .eq(layout.sizes().iter().map(|s| u64::from(*s)));
    if as_laid_out {
        return (0..layout.slots()).collect();
    }
    let sizes: Vec<u64> = rings.iter().map(Ring::size).collect();
    largest(&sizes).map(|i| i as u32).collect()
}
