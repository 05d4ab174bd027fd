//! What one `attach` run mirrors: the command-line flags make a one-policy
//! plan; a policy file (`--policy`) makes one per policy, against the
//! interfaces that exist now.

use std::path::Path;

use crate::{
    cli::AttachArgs,
    datapath::plan::Planned,
    export::output::{Output, OutputError},
    kernel::{
        hooks::Interface,
        netns::{self, NetnsError},
    },
    model::{
        record::{IfIndex, PolicyId},
        values::End,
    },
    policy::{PolicyError, PolicyFile},
};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("--interface {0}: no such interface in this network namespace")]
    UnknownInterface(String),
    #[error("--interface {0}: given more than once")]
    DuplicateInterface(String),
    #[error("--policy {path}: {source}")]
    Policy {
        path: String,
        source: Box<PolicyError>,
    },
    #[error("--policy {path}: policy \"{policy}\": collectors[{index}]: {source}")]
    Collector {
        path: String,
        policy: String,
        index: usize,
        source: OutputError,
    },
    #[error("--policy {0}: no interface of this network namespace matches any policy")]
    NothingToMirror(String),
    #[error("listing this namespace's interfaces: {0}")]
    List(nix::Error),
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// The plan of the flags: every `--interface`, every `--output`.
pub fn from_flags(args: &AttachArgs) -> Result<Vec<Planned>, PlanError> {
    let own = netns::current_cookie()?;
    let mut interfaces: Vec<Interface> = Vec::with_capacity(args.interfaces.len());
    for name in &args.interfaces {
        if interfaces.iter().any(|i| &i.name == name) {
            return Err(PlanError::DuplicateInterface(name.clone()));
        }
        let index = nix::net::if_::if_nametoindex(name.as_str())
            .map_err(|_| PlanError::UnknownInterface(name.clone()))?;
        // The named interface is taken as it is: its own directions.
        interfaces.push(Interface::local(
            name.clone(),
            IfIndex(index),
            own,
            End::Pod,
        ));
    }
    Ok(vec![Planned {
        id: PolicyId(1),
        name: "command-line".into(),
        interfaces,
        directions: args.direction,
        snaplen: args.snaplen,
        sample: args.sample,
        body: None,
        outputs: args.outputs.clone(),
    }])
}

/// The plan of a policy file, against the interfaces that exist now.
pub fn from_file(path: &Path) -> Result<Vec<Planned>, PlanError> {
    let shown = path.display().to_string();
    let own = netns::current_cookie()?;
    let file = PolicyFile::load(path).map_err(|source| PlanError::Policy {
        path: shown.clone(),
        source: Box::new(source),
    })?;
    let existing: Vec<(String, u32)> = nix::net::if_::if_nameindex()
        .map_err(PlanError::List)?
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .collect();
    let names: Vec<&str> = existing.iter().map(|(n, _)| n.as_str()).collect();
    let assigned = file.assign(&names).map_err(|source| PlanError::Policy {
        path: shown.clone(),
        source: Box::new(source),
    })?;
    let mut plan = Vec::new();
    for (i, policy) in file.policies.iter().enumerate() {
        let outputs = policy
            .collectors
            .iter()
            .enumerate()
            .map(|(index, uri)| {
                uri.parse::<Output>()
                    .map_err(|source| PlanError::Collector {
                        path: shown.clone(),
                        policy: policy.name.clone(),
                        index,
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let interfaces: Vec<Interface> = assigned
            .iter()
            .filter(|(_, p)| p.name == policy.name)
            .filter_map(|(name, _)| {
                let (_, index) = existing.iter().find(|(n, _)| n == name)?;
                Some(Interface::local(
                    (*name).to_owned(),
                    IfIndex(*index),
                    own,
                    End::Pod,
                ))
            })
            .collect();
        if interfaces.is_empty() {
            tracing::warn!(policy = %policy.name, "no interface matches this policy");
            continue;
        }
        let body = &policy.body;
        plan.push(Planned {
            // Ids start at 1; 0 stays free to mean "none" in the kernel.
            id: PolicyId(i as u32 + 1),
            name: policy.name.clone(),
            interfaces,
            // The named interface stands in for the pod's own.
            directions: body.direction,
            snaplen: body.snaplen,
            sample: body.sampling,
            body: Some(body.clone()),
            outputs,
        });
    }
    if plan.is_empty() {
        return Err(PlanError::NothingToMirror(shown));
    }
    Ok(plan)
}
