//! Which BPF programs sit on an interface's TC hooks, asked of the kernel
//! both ways a program gets there: tcx links (`BPF_PROG_QUERY`, through
//! aya) and `cls_bpf` filters under a `clsact` or `ingress` qdisc (an
//! `RTM_GETTFILTER` dump). Runs in the calling thread's namespace.

use std::fmt;

use aya::{
    programs::{ProgramError, SchedClassifier, TcAttachType},
    sys::SyscallError,
};
use mirror_common::{PROG_EGRESS, PROG_INGRESS};
use netlink_packet_route::{
    RouteNetlinkMessage,
    tc::{TcAttribute, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
};
use nix::libc;

use super::netlink::{self, NetlinkError};
use crate::{
    kernel::qdisc::{self, IngressSlot, QdiscError},
    model::record::IfIndex,
};

/// A TC hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    Ingress,
    Egress,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        })
    }
}

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcApi {
    Tcx,
    ClsBpf,
}

/// One BPF program on a TC hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcProgram {
    pub hook: Hook,
    pub api: TcApi,
    /// The program's name (tcx), or the filter's `TCA_BPF_NAME` (cls_bpf);
    /// empty when the kernel reports none.
    pub name: String,
    /// The kernel's program id, where reported.
    pub id: Option<u32>,
}

impl TcProgram {
    /// The mirror's own hooks, known by their program names.
    pub fn is_ours(&self) -> bool {
        self.name == PROG_INGRESS || self.name == PROG_EGRESS
    }
}

impl fmt::Display for TcProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let api = match self.api {
            TcApi::Tcx => "tcx",
            TcApi::ClsBpf => "cls_bpf",
        };
        let name = if self.name.is_empty() {
            "(unnamed)"
        } else {
            &self.name
        };
        write!(f, "{api} {} {name}", self.hook)?;
        if let Some(id) = self.id {
            write!(f, " (id {id})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TcQueryError {
    #[error("querying its tcx {hook} programs: {source}")]
    Tcx { hook: Hook, source: ProgramError },
    #[error("reading its ingress qdisc slot: {0}")]
    Qdisc(#[from] QdiscError),
    #[error("dumping its {hook} cls_bpf filters: {source}")]
    Filters { hook: Hook, source: NetlinkError },
}

/// Every BPF program on both TC hooks of interface `index` (named `name`,
/// which aya's tcx query takes), tcx ones first in their run order.
pub fn programs(index: IfIndex, name: &str) -> Result<Vec<TcProgram>, TcQueryError> {
    let mut out = Vec::new();
    for hook in [Hook::Ingress, Hook::Egress] {
        out.extend(tcx(name, hook)?);
    }
    // Only a clsact qdisc has two hooks; an `ingress` qdisc files every
    // filter in one block that runs on ingress, whatever parent it is
    // asked about, so asking it for egress would list them twice.
    let hooks: &[Hook] = match qdisc::ingress_slot(index.0)? {
        IngressSlot::Clsact => &[Hook::Ingress, Hook::Egress],
        IngressSlot::Ingress => &[Hook::Ingress],
        IngressSlot::Empty | IngressSlot::Other(_) => &[],
    };
    for &hook in hooks {
        out.extend(cls_bpf(index, hook)?);
    }
    Ok(out)
}

fn tcx(name: &str, hook: Hook) -> Result<Vec<TcProgram>, TcQueryError> {
    let kind = match hook {
        Hook::Ingress => TcAttachType::Ingress,
        Hook::Egress => TcAttachType::Egress,
    };
    match SchedClassifier::query_tcx(name, kind) {
        Ok((_, infos)) => Ok(infos
            .iter()
            .map(|info| TcProgram {
                hook,
                api: TcApi::Tcx,
                name: info.name_as_str().unwrap_or_default().to_owned(),
                id: Some(info.id()),
            })
            .collect()),
        // A kernel before 6.6 has no tcx, so nothing can be attached there.
        Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
            if io_error.raw_os_error() == Some(libc::EINVAL) =>
        {
            Ok(Vec::new())
        }
        Err(source) => Err(TcQueryError::Tcx { hook, source }),
    }
}

fn cls_bpf(index: IfIndex, hook: Hook) -> Result<Vec<TcProgram>, TcQueryError> {
    let Ok(ifindex) = i32::try_from(index.0) else {
        // No interface has such an index, so no filter either.
        return Ok(Vec::new());
    };
    let mut request = TcMessage::with_index(ifindex);
    request.header.parent = TcHandle {
        major: TcHandle::INGRESS.major,
        minor: match hook {
            Hook::Ingress => TcHandle::MIN_INGRESS,
            Hook::Egress => TcHandle::MIN_EGRESS,
        },
    };
    let replies = netlink::dump(RouteNetlinkMessage::GetTrafficFilter(request))
        .map_err(|source| TcQueryError::Filters { hook, source })?;
    Ok(replies
        .iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewTrafficFilter(m) => filter_program(m, hook),
            _ => None,
        })
        .collect())
}

/// The program of one cls_bpf filter message. The dump also sends a
/// message per filter list (protocol and priority) without options: skipped.
fn filter_program(m: &TcMessage, hook: Hook) -> Option<TcProgram> {
    let options = m.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(o) => Some(o),
        _ => None,
    })?;
    let bpf = options.iter().filter_map(|o| match o {
        TcOption::Bpf(b) => Some(b),
        _ => None,
    });
    let mut program = None;
    for option in bpf {
        let p = program.get_or_insert_with(|| TcProgram {
            hook,
            api: TcApi::ClsBpf,
            name: String::new(),
            id: None,
        });
        match option {
            TcFilterBpfOption::ProgName(name) => p.name.clone_from(name),
            TcFilterBpfOption::ProgId(id) => p.id = Some(*id),
            _ => {}
        }
    }
    program
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(options: Vec<TcFilterBpfOption>) -> TcMessage {
        let mut m = TcMessage::with_index(3);
        m.attributes.push(TcAttribute::Kind("bpf".into()));
        if !options.is_empty() {
            m.attributes.push(TcAttribute::Options(
                options.into_iter().map(TcOption::Bpf).collect(),
            ));
        }
        m
    }

    #[test]
    fn a_cls_bpf_filter_gives_its_name_and_id() {
        let m = filter(vec![
            TcFilterBpfOption::ProgName("cil_from_container".into()),
            TcFilterBpfOption::ProgId(42),
        ]);
        let p = filter_program(&m, Hook::Ingress).expect("a program");
        assert_eq!(p.name, "cil_from_container");
        assert_eq!(p.id, Some(42));
        assert!(!p.is_ours());
        assert_eq!(p.to_string(), "cls_bpf ingress cil_from_container (id 42)");
    }

    #[test]
    fn a_filter_list_header_is_no_program() {
        assert_eq!(filter_program(&filter(vec![]), Hook::Egress), None);
    }

    #[test]
    fn ours_are_known_by_name() {
        let p = |name: &str| TcProgram {
            hook: Hook::Egress,
            api: TcApi::Tcx,
            name: name.into(),
            id: None,
        };
        assert!(p(PROG_INGRESS).is_ours() && p(PROG_EGRESS).is_ours());
        assert!(!p("mirror").is_ours() && !p("").is_ours());
    }
}
