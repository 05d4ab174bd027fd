//! Where a pod's hooks go: the attach-point rule, pure logic over the facts
//! discovery found.

use std::fmt;

use super::{HostPeer, LinkKind, PodInterface};
use crate::kernel::tc::TcProgram;
use crate::model::record::IfIndex;
use crate::model::values::{AttachPoint, End};

/// Why [`decide`] chose its end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `host` or `pod` was asked for.
    Requested,
    /// `auto`: a veth whose host end carries the pod's traffic both ways.
    HostEndOnPath,
    /// `auto`: no host end exists (ipvlan, macvlan, a device moved into the
    /// pod, a peer outside the host's namespace).
    NoHostEnd,
    /// `auto`: BPF programs other than ours sit on the host end, so a CNI
    /// datapath may steer traffic past it (`bpf_redirect_peer`).
    HostEndBypassed(Vec<TcProgram>),
    /// `auto`: a netkit pair, which exists so that a BPF datapath can skip
    /// the host end (its programs attach to the device, not to tcx).
    Netkit,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Requested => f.write_str("requested"),
            Self::HostEndOnPath => f.write_str("the host end carries the pod's traffic"),
            Self::NoHostEnd => f.write_str("there is no host end"),
            Self::HostEndBypassed(programs) => {
                f.write_str("other BPF programs on the host end may bypass it: ")?;
                for (i, p) in programs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{p}")?;
                }
                Ok(())
            }
            Self::Netkit => f.write_str("a netkit pair is made for bypassing its host end"),
        }
    }
}

/// The interface to hook, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub end: End,
    /// Its name and index in the namespace `end` names.
    pub interface: String,
    pub index: IfIndex,
    pub reason: Reason,
}

/// `host` was asked for a pod interface that has no host end.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("attach point `host` for {interface}: it is {kind} with no host end in this namespace")]
pub struct NoHostEnd {
    pub interface: String,
    pub kind: LinkKind,
}

/// The attach-point rule.
///
/// - `pod`: the pod's interface, always possible.
/// - `host`: the host end of the pod's veth; an error where there is none.
/// - `auto`: the host end if it exists and the pod's traffic passes through
///   it both ways, else the pod end:
///   - ipvlan, macvlan, or any link without a peer in the host's namespace
///     has no host end: pod end;
///   - netkit exists to let a BPF datapath skip its host end: pod end;
///   - a veth whose host end carries a TC program that isn't ours (tcx or
///     cls_bpf, either hook) is under a BPF datapath, which may deliver to
///     the pod with `bpf_redirect_peer` straight into the pod's interface,
///     so the host end's egress hook never sees those packets (as under
///     Cilium): pod end. Its ingress still sees what the pod sends, but
///     half a conversation is no mirror;
///   - otherwise (bridge or routed veths, as flannel or calico): host end.
///
/// The pod end is the safe side: a hook there sees every packet the pod
/// sends and receives, whatever the CNI does on the host side. The host end
/// is preferred where it is sound because it needs no entry into the pod's
/// namespace and outlives the pod's processes.
pub fn decide(
    wanted: AttachPoint,
    pod: &PodInterface,
    host: Option<&HostPeer>,
) -> Result<Decision, NoHostEnd> {
    let at_pod = |reason| Decision {
        end: End::Pod,
        interface: pod.name.clone(),
        index: pod.index,
        reason,
    };
    let at_host = |peer: &HostPeer, reason| Decision {
        end: End::Host,
        interface: peer.name.clone(),
        index: peer.index,
        reason,
    };
    match (wanted, host) {
        (AttachPoint::Pod, _) => Ok(at_pod(Reason::Requested)),
        (AttachPoint::Host, Some(peer)) => Ok(at_host(peer, Reason::Requested)),
        (AttachPoint::Host, None) => Err(NoHostEnd {
            interface: pod.name.clone(),
            kind: pod.kind.clone(),
        }),
        (AttachPoint::Auto, None) => Ok(at_pod(Reason::NoHostEnd)),
        (AttachPoint::Auto, Some(_)) if pod.kind == LinkKind::Netkit => Ok(at_pod(Reason::Netkit)),
        (AttachPoint::Auto, Some(peer)) => {
            let foreign: Vec<TcProgram> = peer.foreign_programs().cloned().collect();
            if foreign.is_empty() {
                Ok(at_host(peer, Reason::HostEndOnPath))
            } else {
                Ok(at_pod(Reason::HostEndBypassed(foreign)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tc::{Hook, TcApi};

    fn pod(kind: LinkKind) -> PodInterface {
        PodInterface {
            index: IfIndex(2),
            name: "eth0".into(),
            kind,
            addresses: vec!["198.18.0.2".parse().expect("ip")],
            link: None,
        }
    }

    fn peer(programs: &[&str]) -> HostPeer {
        HostPeer {
            index: IfIndex(17),
            name: "veth1234".into(),
            programs: programs
                .iter()
                .map(|name| TcProgram {
                    hook: Hook::Ingress,
                    api: TcApi::Tcx,
                    name: (*name).into(),
                    id: Some(9),
                })
                .collect(),
        }
    }

    #[test]
    fn auto_takes_a_plain_veth_at_its_host_end() {
        let d = decide(AttachPoint::Auto, &pod(LinkKind::Veth), Some(&peer(&[]))).expect("ok");
        assert_eq!(d.end, End::Host);
        assert_eq!((d.interface.as_str(), d.index), ("veth1234", IfIndex(17)));
        assert_eq!(d.reason, Reason::HostEndOnPath);
    }

    #[test]
    fn our_own_hooks_on_the_host_end_do_not_count() {
        let p = peer(&[mirror_common::PROG_INGRESS, mirror_common::PROG_EGRESS]);
        let d = decide(AttachPoint::Auto, &pod(LinkKind::Veth), Some(&p)).expect("ok");
        assert_eq!(d.end, End::Host);
    }

    #[test]
    fn auto_goes_to_the_pod_end_under_a_foreign_datapath() {
        let p = peer(&[mirror_common::PROG_INGRESS, "cil_from_container"]);
        let d = decide(AttachPoint::Auto, &pod(LinkKind::Veth), Some(&p)).expect("ok");
        assert_eq!(d.end, End::Pod);
        assert_eq!((d.interface.as_str(), d.index), ("eth0", IfIndex(2)));
        let Reason::HostEndBypassed(foreign) = &d.reason else {
            panic!("reason {:?}", d.reason);
        };
        assert_eq!(foreign.len(), 1);
        assert!(d.reason.to_string().contains("cil_from_container"));
    }

    #[test]
    fn auto_goes_to_the_pod_end_without_a_host_end() {
        for kind in [
            LinkKind::IpVlan,
            LinkKind::MacVlan,
            LinkKind::Veth,
            LinkKind::Other(String::new()),
        ] {
            let d = decide(AttachPoint::Auto, &pod(kind), None).expect("ok");
            assert_eq!((d.end, d.reason), (End::Pod, Reason::NoHostEnd));
        }
    }

    #[test]
    fn auto_goes_to_the_pod_end_of_netkit() {
        let d = decide(AttachPoint::Auto, &pod(LinkKind::Netkit), Some(&peer(&[]))).expect("ok");
        assert_eq!((d.end, d.reason), (End::Pod, Reason::Netkit));
    }

    #[test]
    fn explicit_points_are_obeyed_where_they_exist() {
        let p = peer(&["cil_from_container"]);
        let d = decide(AttachPoint::Host, &pod(LinkKind::Veth), Some(&p)).expect("ok");
        assert_eq!((d.end, d.reason), (End::Host, Reason::Requested));
        let d = decide(AttachPoint::Pod, &pod(LinkKind::Veth), Some(&peer(&[]))).expect("ok");
        assert_eq!((d.end, d.reason), (End::Pod, Reason::Requested));
        let d = decide(AttachPoint::Pod, &pod(LinkKind::IpVlan), None).expect("ok");
        assert_eq!(d.end, End::Pod);
    }

    #[test]
    fn host_without_a_host_end_is_refused_by_name() {
        let err = decide(AttachPoint::Host, &pod(LinkKind::IpVlan), None).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("eth0") && text.contains("ipvlan"), "{text}");
    }

    #[test]
    fn attach_points_parse_and_print() {
        for p in [AttachPoint::Host, AttachPoint::Pod, AttachPoint::Auto] {
            assert_eq!(p.to_string().parse::<AttachPoint>(), Ok(p));
        }
        assert!("hots".parse::<AttachPoint>().is_err());
        assert_eq!(AttachPoint::default(), AttachPoint::Auto);
    }
}
