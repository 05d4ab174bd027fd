//! Policy errors. Each names the policy, the field path and the reason, and,
//! for YAML syntax and type errors, the line and column, so a person can go
//! straight to the mistake.

use std::{fmt, io, path::PathBuf};

/// Which policy an error is in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Where {
    /// The file as a whole.
    File,
    /// A policy, by name.
    Policy(String),
    /// A policy whose name is missing or is itself the error: its index.
    Index(usize),
}

impl fmt::Display for Where {
    /// The message prefix: empty, `policy "web": ` or `policies[2]: `.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File => Ok(()),
            Self::Policy(name) => write!(f, "policy \"{name}\": "),
            Self::Index(i) => write!(f, "policies[{i}]: "),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: cannot read the policy file: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },

    /// A YAML syntax error, or a value of the wrong type, found by the parser.
    #[error("{at}{}{message}{}", Field(.field), Location(*.location))]
    Yaml {
        at: Where,
        /// Field path, e.g. `rules[0].protocol`; empty at the top.
        field: String,
        message: String,
        /// Line and column, from 1.
        location: Option<(usize, usize)>,
    },

    /// A file refused before parsing: too large, nested too deep, or with
    /// YAML aliases (which can expand a small file into gigabytes).
    #[error("refused before parsing: {0}")]
    Refused(String),

    /// A well-formed value that breaks a rule of the policy.
    #[error("{at}{field}: {problem}")]
    Invalid {
        at: Where,
        field: String,
        problem: Problem,
    },
}

impl PolicyError {
    pub(super) fn invalid(at: &Where, field: impl Into<String>, problem: Problem) -> Self {
        Self::Invalid {
            at: at.clone(),
            field: field.into(),
            problem,
        }
    }
}

struct Field<'a>(&'a str);

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

struct Location(Option<(usize, usize)>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some((line, column)) => write!(f, " (line {line}, column {column})"),
            None => Ok(()),
        }
    }
}

/// Why a value was refused; one variant per kind of mistake.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("the file lists no policies")]
    NoPolicies,
    #[error(
        "{entries} distinct prefixes here bring the kernel's {map} table to {total}, past its \
         {max} entries (shared by every policy): list fewer or wider CIDRs"
    )]
    PrefixTableFull {
        map: &'static str,
        entries: usize,
        total: usize,
        max: u32,
    },
    #[error(
        "\"{0}\" is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 bytes (as Kubernetes object names)"
    )]
    BadName(String),
    #[error("\"{name}\" is also the name of policies[{first}]; names must be unique")]
    DuplicateName { name: String, first: usize },
    #[error("empty; list at least one interface name or glob")]
    NoInterfaces,
    #[error("{0}")]
    BadInterface(String),
    #[error("\"{0}\" is listed twice")]
    DuplicateInterface(String),
    #[error("\"{name}\" is also listed by policy \"{other}\"; an interface has one policy")]
    InterfaceInTwoPolicies { name: String, other: String },
    #[error(
        "interface \"{interface}\" also matches policy \"{other}\"; an interface has one policy"
    )]
    AmbiguousInterface { interface: String, other: String },
    #[error("empty; list at least one collector URI")]
    NoCollectors,
    #[error("empty collector URI")]
    EmptyCollector,
    #[error("\"{0}\" is listed twice")]
    DuplicateCollector(String),
    #[error(
        "\"{0}\" is not an IPv4 or IPv6 CIDR (like 198.18.0.0/15 or fd00:198:18::/48) or address"
    )]
    BadCidr(String),
    #[error("\"{text}\" has host bits set; did you mean {network}?")]
    HostBits { text: String, network: String },
    #[error("{which} {value} is greater than 65535")]
    PortTooLarge { which: &'static str, value: u64 },
    #[error("from {from} is greater than to {to}")]
    PortRangeReversed { from: u64, to: u64 },
    #[error("ports need protocol TCP, UDP or SCTP (or none), but the rule says {0}")]
    PortsWithoutPorts(String),
    #[error("TCP flags need protocol TCP (or none), but the rule says {0}")]
    FlagsWithoutTcp(String),
    #[error("{0} is not 0 (the whole packet) or 1 to 262144 bytes")]
    Snaplen(u64),
    #[error("{0} is not from 1 (every packet) to 4294967295")]
    Sampling(u64),
    #[error("a burst needs {0} (0 or absent is no limit, which has no burst)")]
    BurstWithoutRate(&'static str),
    #[error("{value} is more than a budget takes ({max})")]
    RateTooHigh { value: u64, max: u64 },
    #[error("{value} is more than an hour's worth at {rate_field} ({most})")]
    BurstTooLarge {
        value: u64,
        rate_field: &'static str,
        most: u64,
    },
    /// libpcap's own message, verbatim.
    #[error("{0}")]
    Filter(String),
}
