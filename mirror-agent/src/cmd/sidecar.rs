//! `mirror-agent sidecar`: inside one pod's network namespace, mirror the
//! pod's own interfaces by the policy the webhook put in the pod spec. The
//! same plan, datapath and stop as `attach` ([`super::attach`]); what
//! differs is wired here: where the policy comes from, which interfaces
//! (every one but `lo`), and the memory the ring and queues get.

use std::{path::Path, sync::Arc};

use tracing::info;

use super::{
    attach::{
        self, AttachError, Local, needs_raw_sockets,
        plan::{self, PlanError},
        stopped_early,
    },
    stop::StopSignals,
};
use crate::{
    cli::SidecarArgs,
    datapath::plan::{Planned, tenants},
    export::SocketMark,
    kernel::{
        cgroup::{self, CgroupError},
        privileges,
    },
    metrics,
    model::{
        budget::MemoryBudget,
        rings::{RingLayout, RingSlots},
    },
    policy::{InterfacePattern, PolicyError, PolicyFile},
};

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("no policy: give --policy FILE or set $MIRROR_POLICY (the webhook sets it)")]
    NoPolicy,
    #[error("{shown}: {source}")]
    Policy {
        shown: String,
        source: Box<PolicyError>,
    },
    #[error("the memory limit: {0} (give --memory-limit or --ring-size)")]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Run(#[from] AttachError),
}

impl SidecarError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NoPolicy | Self::Policy { .. } | Self::Plan(_) => 2,
            Self::Cgroup(_) => 1,
            Self::Run(e) => e.exit_code(),
        }
    }
}

pub fn run(args: SidecarArgs) -> Result<(), SidecarError> {
    let stop = StopSignals::install().map_err(|source| AttachError::Io {
        context: "installing SIGINT and SIGTERM",
        source,
    })?;
    privileges::check(false).map_err(AttachError::from)?;
    let args = Arc::new(args);
    let reading = args.clone();
    let plan = match stop.unless_stopped(move || sidecar_plan(&reading)) {
        Some(plan) => plan?,
        None => {
            stopped_early();
            return Ok(());
        }
    };
    privileges::check(needs_raw_sockets(&plan)).map_err(AttachError::from)?;
    let limit = match args.memory_limit {
        Some(bytes) => Some(bytes),
        None => cgroup::memory_limit()?,
    };
    let budget = MemoryBudget::of(limit);
    let ring = args.ring_size.unwrap_or(budget.ring);
    let queue_bytes = args.queue_bytes.unwrap_or(budget.queue_bytes);
    info!(
        memory_limit = limit.map_or_else(|| "none".to_owned(), |l| l.to_string()),
        ring_bytes = ring.get(),
        queue_bytes,
        "sized from the memory limit"
    );
    let (endpoint, requests) = metrics::start(args.metrics_addr).map_err(AttachError::from)?;
    let local = Local {
        node: args.node_name.clone().unwrap_or_default(),
        mark: SocketMark {
            value: args.socket_mark.value,
            mask: args.socket_mark.mask,
        },
        queue_bytes,
        attach_mode: args.attach_mode,
        ring: RingLayout::new(ring, RingSlots::ALL.at_most(tenants(&plan))),
        pin_dir: None,
        keep: false,
    };
    // A file given with --policy is read again on SIGHUP; $MIRROR_POLICY
    // cannot change under a running process (see the README: a policy edit
    // reaches a pod when the pod is made anew).
    let reload = || {
        args.policy
            .as_ref()
            .map(|_| sidecar_plan(&args).map_err(reload_error))
    };
    attach::block_on(local, plan, endpoint.as_ref(), requests, reload, &stop)?;
    Ok(())
}

/// A refused reload keeps the running plan; only its message matters.
fn reload_error(e: SidecarError) -> PlanError {
    match e {
        SidecarError::Plan(p) => p,
        other => PlanError::NothingToMirror(other.to_string()),
    }
}

fn sidecar_plan(args: &SidecarArgs) -> Result<Vec<Planned>, SidecarError> {
    let (file, shown) = load(args.policy.as_deref(), args.policy_text.as_deref())?;
    let existing = interfaces(&file, plan::existing()?, &args.interfaces)?;
    // TCP and TLS collectors are fine: their connections cross the pod's
    // mirrored interface, and the datapath never mirrors them (see
    // export/own.rs).
    Ok(plan::from_policy(&file, &shown, existing)?)
}

fn load(path: Option<&Path>, text: Option<&str>) -> Result<(PolicyFile, String), SidecarError> {
    let (loaded, shown) = match (path, text) {
        (Some(path), _) => (PolicyFile::load(path), path.display().to_string()),
        (None, Some(text)) => (PolicyFile::from_yaml(text), "$MIRROR_POLICY".to_owned()),
        (None, None) => return Err(SidecarError::NoPolicy),
    };
    let file = loaded.map_err(|source| SidecarError::Policy {
        shown: shown.clone(),
        source: Box::new(source),
    })?;
    Ok((file, shown))
}

/// The pod's interfaces the policy's patterns are matched against: those
/// `named` (each must exist, once), else every one but `lo`, which a
/// sidecar mirrors only when a policy names it (a glob such as `*` would
/// otherwise copy the pod's loopback chatter, which never leaves the pod).
fn interfaces(
    file: &PolicyFile,
    existing: Vec<(String, u32)>,
    named: &[String],
) -> Result<Vec<(String, u32)>, PlanError> {
    if named.is_empty() {
        let lo_named = file
            .policies
            .iter()
            .flat_map(|p| &p.interfaces)
            .any(|i| matches!(i, InterfacePattern::Name(n) if n == "lo"));
        return Ok(existing
            .into_iter()
            .filter(|(name, _)| lo_named || name != "lo")
            .collect());
    }
    let mut out: Vec<(String, u32)> = Vec::with_capacity(named.len());
    for name in named {
        if out.iter().any(|(n, _)| n == name) {
            return Err(PlanError::DuplicateInterface(name.clone()));
        }
        let found = existing
            .iter()
            .find(|(n, _)| n == name)
            .ok_or_else(|| PlanError::UnknownInterface(name.clone()))?;
        out.push(found.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(interfaces: &str) -> PolicyFile {
        PolicyFile::from_yaml(&format!(
            "policies:\n  - name: pod\n    interfaces: {interfaces}\n    collectors: ['pcapng:-']\n"
        ))
        .expect("a policy file")
    }

    fn pod() -> Vec<(String, u32)> {
        vec![("lo".into(), 1), ("eth0".into(), 2), ("net1".into(), 3)]
    }

    fn names(v: &[(String, u32)]) -> Vec<&str> {
        v.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn every_interface_but_lo() {
        let got = interfaces(&file("['*']"), pod(), &[]).expect("interfaces");
        assert_eq!(names(&got), ["eth0", "net1"]);
    }

    #[test]
    fn lo_when_a_policy_names_it() {
        let got = interfaces(&file("[lo, eth0]"), pod(), &[]).expect("interfaces");
        assert_eq!(names(&got), ["lo", "eth0", "net1"]);
    }

    #[test]
    fn only_those_named_and_they_must_exist() {
        let got = interfaces(&file("['*']"), pod(), &["net1".into()]).expect("interfaces");
        assert_eq!(got, [("net1".to_owned(), 3)]);
        let e = interfaces(&file("['*']"), pod(), &["eth9".into()]).expect_err("no eth9");
        assert!(
            matches!(&e, PlanError::UnknownInterface(n) if n == "eth9"),
            "{e}"
        );
        let e =
            interfaces(&file("['*']"), pod(), &["eth0".into(), "eth0".into()]).expect_err("twice");
        assert!(
            matches!(&e, PlanError::DuplicateInterface(n) if n == "eth0"),
            "{e}"
        );
    }

    #[test]
    fn no_policy_is_refused_and_a_bad_one_is_named() {
        assert!(matches!(load(None, None), Err(SidecarError::NoPolicy)));
        let e = load(None, Some("policies: []\n")).expect_err("empty");
        assert!(e.to_string().starts_with("$MIRROR_POLICY: "), "{e}");
    }
}
