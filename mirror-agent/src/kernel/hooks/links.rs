//! Attaching the hooks (tcx first, netlink `cls_bpf` as the fallback)
//! and detaching them.

use aya::programs::{
    LinkOrder, TcAttachType,
    tc::{self, NlOptions, TcAttachOptions, TcError, TcHandle},
};
use mirror_common::{DIR_EGRESS, DIR_INGRESS, PROG_EGRESS, PROG_INGRESS};
use tracing::{debug, warn};

use super::{Attachment, HookError, Hooks, Interface, Mode, load::classifier};
use crate::{
    kernel::{
        pin::LinkKey,
        qdisc::{self, Action, QdiscError},
    },
    model::{record::IfaceId, values::AttachMode},
};

/// Filter priority under netlink: 1 runs before filters added with the
/// default priority, as a CNI's usually are.
const NETLINK_PRIORITY: u16 = 1;

impl Hooks {
    /// Attaches the hooks for `directions` (bits of `DIR_*`) to an interface.
    pub fn attach(
        &mut self,
        iface: &Interface,
        directions: u32,
        mode: AttachMode,
    ) -> Result<Mode, HookError> {
        let mut used = Ok(Mode::Tcx);
        for (bit, prog, kind) in [
            (DIR_INGRESS, PROG_INGRESS, TcAttachType::Ingress),
            (DIR_EGRESS, PROG_EGRESS, TcAttachType::Egress),
        ] {
            if directions & bit != 0 {
                used = self.attach_one(iface, prog, kind, mode);
                if used.is_err() {
                    break;
                }
            }
        }
        // The links hold the namespace's entry programs now; the parsed
        // object (about 100 KiB) is not kept per pod. Another interface of
        // that namespace loads a copy again.
        self.entry = None;
        used
    }

    fn attach_one(
        &mut self,
        iface: &Interface,
        prog: &'static str,
        kind: TcAttachType,
        mode: AttachMode,
    ) -> Result<Mode, HookError> {
        let key = LinkKey::new(iface.id(), kind);
        if let Some(a) = self.attachments.iter().find(|a| a.key == key) {
            return Ok(a.mode);
        }
        if let Some(adopted) = self.adopt(iface, prog, key)? {
            self.attachments.push(adopted);
            return Ok(Mode::Tcx);
        }
        let program = self.program(iface, prog)?;
        let netns_err = |source| HookError::Netns {
            interface: iface.to_string(),
            source,
        };
        let attach_err = |mode: Mode| {
            let interface = iface.to_string();
            move |source| HookError::Attach {
                interface,
                mode: mode.as_str(),
                source,
            }
        };
        if mode != AttachMode::Netlink {
            // First in the tcx chain, so no earlier program's verdict can hide packets from us.
            // tcx names the device by index in the calling thread's namespace.
            let tcx = iface
                .run_in_ns(|| {
                    program.attach_with_options(
                        &iface.name,
                        kind,
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                })
                .map_err(netns_err)?;
            match tcx {
                Ok(id) => {
                    let link = program.take_link(id).map_err(attach_err(Mode::Tcx))?;
                    let attachment = self.pin(iface, key, link)?;
                    self.attachments.push(attachment);
                    debug!(interface = %iface, ?kind, "attached with tcx");
                    return Ok(Mode::Tcx);
                }
                Err(source)
                    if mode == AttachMode::Tcx || self.pins.is_some() || iface.ns.is_some() =>
                {
                    return Err(attach_err(Mode::Tcx)(source));
                }
                Err(source) => {
                    warn!(interface = %iface, error = %source, "tcx attach failed; falling back to netlink");
                }
            }
        }
        if iface.ns.is_some() {
            return Err(HookError::ForeignNeedsTcx {
                interface: iface.to_string(),
            });
        }
        if self.pins.is_some() {
            return Err(HookError::PinNeedsTcx {
                interface: iface.to_string(),
            });
        }
        netlink_qdisc(iface, kind)?;
        let program = classifier(&mut self.ebpf, prog)?;
        let id = program
            .attach_with_options(
                &iface.name,
                kind,
                TcAttachOptions::Netlink(NlOptions {
                    priority: NETLINK_PRIORITY,
                    handle: TcHandle::AUTO_ASSIGN,
                    classid: None,
                }),
            )
            .map_err(attach_err(Mode::Netlink))?;
        let link = program.take_link(id).map_err(attach_err(Mode::Netlink))?;
        self.attachments.push(Attachment {
            key,
            mode: Mode::Netlink,
            link,
            pin: None,
        });
        debug!(interface = %iface, ?kind, "attached with netlink cls_bpf");
        Ok(Mode::Netlink)
    }

    /// Detaches every hook (or, keeping pins, lets go of them: they stay
    /// attached), keeping the maps so the ring can still be drained and the
    /// counters read. Failures are logged: the rest still go.
    pub fn detach_all(&mut self) {
        for Attachment { key, link, pin, .. } in self.attachments.drain(..) {
            match pin {
                Some(_) if self.keep_pins => {}
                Some(path) => {
                    if let Err(error) = std::fs::remove_file(&path) {
                        warn!(%error, path = %path.display(), "unpinning failed");
                    }
                }
                None => {}
            }
            // Dropping detaches a link that is no longer pinned.
            drop(link);
            debug!(ifindex = key.iface.index.0, netns = key.iface.netns.0, kind = ?key.kind(), "released hook");
        }
    }

    /// Whether any hook of ours is on the interface.
    pub fn is_attached(&self, iface: IfaceId) -> bool {
        self.attachments.iter().any(|a| a.key.iface == iface)
    }

    /// Stops mirroring one interface: detaches its hooks (unpinning them,
    /// kept pins or not: it is no longer wanted) and removes its config.
    /// An interface that has gone is fine: its hooks went with it.
    pub fn forget(&mut self, iface: IfaceId) -> Result<(), HookError> {
        let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attachments)
            .into_iter()
            .partition(|a| a.key.iface == iface);
        self.attachments = kept;
        for a in gone {
            if let Some(path) = &a.pin
                && let Err(error) = std::fs::remove_file(path)
            {
                warn!(%error, path = %path.display(), "unpinning failed");
            }
        }
        self.remove_config(iface)?;
        self.slots.remove(&iface);
        if let Some(pins) = &self.pins {
            pins.remove_label(iface)?;
        }
        Ok(())
    }
}

/// Makes sure the interface's ingress slot holds a qdisc that serves `kind`
/// before a netlink filter goes there: an `ingress` qdisc would accept an
/// egress filter but run it on inbound packets.
fn netlink_qdisc(iface: &Interface, kind: TcAttachType) -> Result<(), HookError> {
    let qdisc_err = |source| HookError::Qdisc {
        interface: iface.to_string(),
        source,
    };
    let slot = qdisc::ingress_slot(iface.index.0).map_err(qdisc_err)?;
    if qdisc::decide(&slot, kind).map_err(qdisc_err)? == Action::Attach {
        return Ok(());
    }
    match tc::qdisc_add_clsact(&iface.name) {
        Ok(()) => Ok(()),
        // Someone filled the slot since we looked (a CNI, or our own other
        // hook): it may be an `ingress` qdisc, so look again.
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc_eexist()) => {
            let slot = qdisc::ingress_slot(iface.index.0).map_err(qdisc_err)?;
            match qdisc::decide(&slot, kind).map_err(qdisc_err)? {
                Action::Attach => Ok(()),
                Action::AddClsact => Err(qdisc_err(QdiscError::Vanished)),
            }
        }
        Err(source) => Err(HookError::Clsact {
            interface: iface.to_string(),
            source,
        }),
    }
}

fn libc_eexist() -> i32 {
    nix::errno::Errno::EEXIST as i32
}
