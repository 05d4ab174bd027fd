//! What one `attach` run mirrors: the command-line flags make a one-policy
//! plan; a policy file (`--policy`) makes one per policy, against the
//! interfaces that exist now.

use std::path::Path;

use crate::{
    cli::AttachArgs,
    datapath::plan::{Planned, Tenant},
    export::{
        output::{Output, OutputError},
        wire::Wire,
    },
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
        tenant: Tenant::Policy("command-line".into()),
        interfaces,
        directions: args.direction,
        snaplen: args.snaplen,
        sample: args.sample,
        body: None,
        outputs: args.outputs.clone(),
    }])
}

/// The plan with every file output doing `wire` to the bytes (`--segment`,
/// `--checksums`); other outputs keep what their URI says.
pub fn with_file_wire(plan: Vec<Planned>, wire: Wire) -> Vec<Planned> {
    plan.into_iter()
        .map(|p| Planned {
            outputs: p
                .outputs
                .into_iter()
                .map(|o| o.with_file_wire(wire))
                .collect(),
            ..p
        })
        .collect()
}

/// The plan of a policy file, against the interfaces that exist now.
pub fn from_file(path: &Path) -> Result<Vec<Planned>, PlanError> {
    let shown = path.display().to_string();
    let file = PolicyFile::load(path).map_err(|source| PlanError::Policy {
        path: shown.clone(),
        source: Box::new(source),
    })?;
    from_policy(&file, &shown, existing()?)
}

/// Every interface of this network namespace, by name and index.
pub fn existing() -> Result<Vec<(String, u32)>, PlanError> {
    Ok(nix::net::if_::if_nameindex()
        .map_err(PlanError::List)?
        .iter()
        .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
        .collect())
}

/// The plan of a loaded policy file (`shown` names it in errors) against
/// the interfaces `existing`, as [`existing`] lists them (or fewer).
pub fn from_policy(
    file: &PolicyFile,
    shown: &str,
    existing: Vec<(String, u32)>,
) -> Result<Vec<Planned>, PlanError> {
    let shown = shown.to_owned();
    let own = netns::current_cookie()?;
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
            tenant: Tenant::Policy(policy.name.clone()),
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

#[cfg(test)]
mod tests {
    //! `lo` is in every network namespace, always with index 1, and reading
    //! interfaces needs no privilege: these run anywhere.

    use std::path::PathBuf;

    use crate::model::direction::Directions;
    use clap::Parser;

    use super::*;
    use crate::{
        cli::{Cli, Command},
        policy::Problem,
    };

    fn flags(argv: &[&str]) -> AttachArgs {
        let argv = ["mirror-agent", "attach"].iter().chain(argv);
        match Cli::try_parse_from(argv).expect("valid flags").command {
            Command::Attach(args) => args,
            other => panic!("not attach: {other:?}"),
        }
    }

    fn policy_file(yaml: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, yaml).expect("writing the policy file");
        (dir, path)
    }

    fn assert_loopback(interfaces: &[Interface]) {
        let [lo] = interfaces else {
            panic!("one interface: {interfaces:?}");
        };
        assert_eq!((lo.name.as_str(), lo.label.as_str()), ("lo", "lo"));
        assert_eq!(lo.index, IfIndex(1));
        assert_eq!(lo.end, End::Pod);
        assert!(lo.ns.is_none(), "the agent's own namespace");
        assert_eq!(lo.netns, netns::current_cookie().expect("own cookie"));
    }

    #[test]
    fn the_flags_make_one_policy_of_the_named_interfaces() {
        let args = flags(&[
            "-i",
            "lo",
            "-d",
            "ingress",
            "-s",
            "128",
            "--sample",
            "4",
            "-o",
            "pcapng:/tmp/lo.pcapng",
            "-o",
            "vxlan://198.18.0.9?vni=7",
        ]);
        let plan = from_flags(&args).expect("a plan");
        let [p] = plan.as_slice() else {
            panic!("one policy: {plan:?}");
        };
        assert_eq!((p.id, p.name.as_str()), (PolicyId(1), "command-line"));
        assert_loopback(&p.interfaces);
        assert_eq!(p.directions, Directions::Ingress);
        assert_eq!((p.snaplen.get(), p.sample.get()), (128, 4));
        assert!(p.body.is_none());
        let vxlan: Output = "vxlan://198.18.0.9?vni=7".parse().expect("a tunnel");
        assert_eq!(
            p.outputs,
            [Output::PcapngFile("/tmp/lo.pcapng".into()), vxlan]
        );
    }

    #[test]
    fn an_unknown_interface_is_named() {
        let args = flags(&["-i", "lo", "-i", "no-such-if0", "-o", "pcapng:-"]);
        let error = from_flags(&args).expect_err("no such interface");
        assert!(
            matches!(&error, PlanError::UnknownInterface(n) if n == "no-such-if0"),
            "{error:?}"
        );
        assert!(error.to_string().contains("no-such-if0"), "{error}");
    }

    #[test]
    fn an_interface_given_twice_is_refused() {
        let args = flags(&["-i", "lo", "-i", "lo", "-o", "pcapng:-"]);
        let error = from_flags(&args).expect_err("twice");
        assert!(
            matches!(&error, PlanError::DuplicateInterface(n) if n == "lo"),
            "{error:?}"
        );
    }

    #[test]
    fn a_policy_file_plans_the_policies_that_match_interfaces_here() {
        let (_dir, path) = policy_file(
            "\
policies:
  - name: elsewhere
    interfaces: ['no-such-if*']
    collectors: ['pcapng:/tmp/elsewhere.pcapng']
  - name: loopback
    interfaces: [lo]
    collectors: ['pcapng:/tmp/lo.pcapng', 'vxlan://198.18.0.9?vni=7']
    direction: Egress
    snaplen: 128
    sampling: 3
    filter: 'tcp port 443'
",
        );
        let plan = from_file(&path).expect("a plan");
        let [p] = plan.as_slice() else {
            panic!("one policy: {plan:?}");
        };
        // The id is the policy's place in the file: the same on every reload.
        assert_eq!((p.id, p.name.as_str()), (PolicyId(2), "loopback"));
        assert_loopback(&p.interfaces);
        assert_eq!(p.directions, Directions::Egress);
        assert_eq!((p.snaplen.get(), p.sample.get()), (128, 3));
        let body = p.body.as_ref().expect("the file's body");
        assert_eq!(
            body.filter.as_ref().map(|f| f.as_str()),
            Some("tcp port 443")
        );
        assert_eq!(p.outputs.len(), 2);
        assert_eq!(p.outputs[0], Output::PcapngFile("/tmp/lo.pcapng".into()));
        // --segment reaches the file's writer, and leaves the tunnel alone.
        let vxlan = p.outputs[1].clone();
        let segmented = with_file_wire(plan, Wire::WIRE);
        assert_eq!(segmented[0].outputs[0].wire(), Wire::WIRE);
        assert_eq!(
            segmented[0].outputs[0].base(),
            &Output::PcapngFile("/tmp/lo.pcapng".into())
        );
        assert_eq!(segmented[0].outputs[1], vxlan);
    }

    #[test]
    fn a_policy_file_that_matches_nothing_here_is_refused() {
        let (_dir, path) = policy_file(
            "policies:\n  - name: none\n    interfaces: ['no-such-if*']\n    collectors: ['pcapng:-']\n",
        );
        let error = from_file(&path).expect_err("nothing to mirror");
        assert!(matches!(error, PlanError::NothingToMirror(_)), "{error:?}");
    }

    #[test]
    fn an_interface_two_policies_match_is_refused() {
        let (_dir, path) = policy_file(
            "\
policies:
  - name: exact
    interfaces: [lo]
    collectors: ['pcapng:-']
  - name: glob
    interfaces: ['l*']
    collectors: ['pcapng:/tmp/l.pcapng']
",
        );
        let error = from_file(&path).expect_err("ambiguous");
        let PlanError::Policy { source, .. } = &error else {
            panic!("{error:?}");
        };
        assert!(
            matches!(
                source.as_ref(),
                PolicyError::Invalid {
                    problem: Problem::AmbiguousInterface { interface, other },
                    ..
                } if interface == "lo" && other == "exact"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_bad_collector_is_named_by_policy_and_place() {
        let (_dir, path) = policy_file(
            "policies:\n  - name: loopback\n    interfaces: [lo]\n    collectors: ['pcapng:-', 'bogus://198.18.0.9']\n",
        );
        let error = from_file(&path).expect_err("bad collector");
        assert!(
            matches!(&error, PlanError::Collector { policy, index: 1, .. } if policy == "loopback"),
            "{error:?}"
        );
    }

    #[test]
    fn a_missing_policy_file_is_a_policy_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let error = from_file(&dir.path().join("absent.yaml")).expect_err("no file");
        assert!(
            matches!(&error, PlanError::Policy { source, .. } if matches!(**source, PolicyError::Read { .. })),
            "{error:?}"
        );
    }
}
