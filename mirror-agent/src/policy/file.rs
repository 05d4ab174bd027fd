//! The policy file of `mirror-agent attach --policy FILE`.

use std::{collections::HashMap, fs, io::Read, path::Path};

use super::{
    body::PolicyBody,
    error::{PolicyError, Problem, Where},
    spec::{FilePolicySpec, FileSpec},
    tables::PrefixTables,
    types::InterfacePattern,
    yaml,
};

/// One policy of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub name: String,
    /// Names and globs, in place of a pod selector; never empty.
    pub interfaces: Vec<InterfacePattern>,
    /// Collector URIs, parsed by the exporters; never empty, no duplicates.
    pub collectors: Vec<String>,
    pub body: PolicyBody,
}

impl Policy {
    /// Whether this policy asks for interface `name`.
    pub fn wants(&self, name: &str) -> bool {
        self.interfaces.iter().any(|p| p.matches(name))
    }
}

/// A validated policy file: at least one policy, unique names, and no
/// interface name listed by two policies (globs are checked against real
/// names by [`PolicyFile::assign`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFile {
    pub policies: Vec<Policy>,
}

impl PolicyFile {
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let read_err = |source| PolicyError::Read {
            path: path.to_owned(),
            source,
        };
        // Never more than the cap into memory, whatever the file's size.
        let mut text = String::new();
        fs::File::open(path)
            .and_then(|f| f.take(yaml::MAX_FILE_BYTES + 1).read_to_string(&mut text))
            .map_err(read_err)?;
        Self::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let spec: FileSpec = yaml::parse_file(text)?;
        Self::from_spec(&spec)
    }

    pub fn from_spec(spec: &FileSpec) -> Result<Self, PolicyError> {
        if spec.policies.is_empty() {
            return Err(PolicyError::invalid(
                &Where::File,
                "policies",
                Problem::NoPolicies,
            ));
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut owners: HashMap<&str, &str> = HashMap::new();
        let mut policies = Vec::with_capacity(spec.policies.len());
        // Checked before anything is loaded: policies share the tables.
        let mut tables = PrefixTables::default();
        for (index, p) in spec.policies.iter().enumerate() {
            if !valid_name(&p.name) {
                let problem = Problem::BadName(p.name.clone());
                return Err(PolicyError::invalid(&Where::Index(index), "name", problem));
            }
            let at = Where::Policy(p.name.clone());
            if let Some(&first) = names.get(p.name.as_str()) {
                let problem = Problem::DuplicateName {
                    name: p.name.clone(),
                    first,
                };
                return Err(PolicyError::invalid(&Where::Index(index), "name", problem));
            }
            names.insert(&p.name, index);
            for name in &p.interfaces {
                if let Some(other) = owners.insert(name, &p.name).filter(|o| *o != p.name) {
                    let problem = Problem::InterfaceInTwoPolicies {
                        name: name.clone(),
                        other: other.to_owned(),
                    };
                    return Err(PolicyError::invalid(&at, "interfaces", problem));
                }
            }
            let policy = Self::policy(&at, p)?;
            tables = tables
                .add(&policy.body)
                .map_err(|full| PolicyError::invalid(&at, full.field, full.problem))?;
            policies.push(policy);
        }
        Ok(Self { policies })
    }

    fn policy(at: &Where, p: &FilePolicySpec) -> Result<Policy, PolicyError> {
        if p.interfaces.is_empty() {
            return Err(PolicyError::invalid(
                at,
                "interfaces",
                Problem::NoInterfaces,
            ));
        }
        let mut interfaces: Vec<InterfacePattern> = Vec::with_capacity(p.interfaces.len());
        for (i, text) in p.interfaces.iter().enumerate() {
            let field = format!("interfaces[{i}]");
            let pattern = InterfacePattern::parse(text).map_err(|reason| {
                PolicyError::invalid(at, &field, Problem::BadInterface(reason))
            })?;
            if interfaces.contains(&pattern) {
                let problem = Problem::DuplicateInterface(text.clone());
                return Err(PolicyError::invalid(at, field, problem));
            }
            interfaces.push(pattern);
        }
        if p.collectors.is_empty() {
            return Err(PolicyError::invalid(
                at,
                "collectors",
                Problem::NoCollectors,
            ));
        }
        for (i, uri) in p.collectors.iter().enumerate() {
            let field = format!("collectors[{i}]");
            if uri.trim().is_empty() {
                return Err(PolicyError::invalid(at, field, Problem::EmptyCollector));
            }
            if p.collectors[..i].contains(uri) {
                return Err(PolicyError::invalid(
                    at,
                    field,
                    Problem::DuplicateCollector(uri.clone()),
                ));
            }
        }
        Ok(Policy {
            name: p.name.clone(),
            interfaces,
            collectors: p.collectors.clone(),
            body: PolicyBody::validate(at, &p.body())?,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// The policy of each of `interfaces` (existing interface names), in
    /// order, skipping names no policy wants. Fails when two policies want
    /// the same interface: the kernel keeps one policy per interface, and
    /// silently picking one would mirror under the wrong rules.
    pub fn assign<'a, S: AsRef<str>>(
        &self,
        interfaces: &'a [S],
    ) -> Result<Vec<(&'a str, &Policy)>, PolicyError> {
        let mut out = Vec::new();
        for name in interfaces.iter().map(AsRef::as_ref) {
            let mut wanting = self.policies.iter().filter(|p| p.wants(name));
            let Some(first) = wanting.next() else {
                continue;
            };
            if let Some(second) = wanting.next() {
                let problem = Problem::AmbiguousInterface {
                    interface: name.to_owned(),
                    other: first.name.clone(),
                };
                return Err(PolicyError::invalid(
                    &Where::Policy(second.name.clone()),
                    "interfaces",
                    problem,
                ));
            }
            out.push((name, first));
        }
        Ok(out)
    }
}

/// An RFC 1123 subdomain, as Kubernetes object names.
pub fn valid_name(name: &str) -> bool {
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 253
        && ends_ok(name.chars().next())
        && ends_ok(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::types::Protocol;

    const GOOD: &str = "\
policies:
  - name: web
    interfaces: [veth1, 'lxc*']
    collectors: ['pcapng:/tmp/web.pcapng']
    direction: Ingress
    rules:
      - action: Accept
        protocol: TCP
        destinationPorts: [{from: 443}, {from: 8000, to: 8100}]
  - name: dns
    interfaces: [veth2]
    collectors: ['vxlan://198.18.0.9?vni=7']
";

    fn err(text: &str) -> String {
        match PolicyFile::from_yaml(text) {
            Ok(f) => panic!("accepted: {f:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn one(extra: &str) -> String {
        format!("policies:\n  - name: web\n    interfaces: [a]\n    collectors: [x]\n{extra}")
    }

    #[test]
    fn good_file() {
        let file = PolicyFile::from_yaml(GOOD).expect("valid");
        assert_eq!(file.policies.len(), 2);
        let web = file.get("web").expect("web");
        assert!(web.wants("lxc12") && !web.wants("veth2"));
        assert_eq!(web.body.rules.rules()[0].protocol(), Some(Protocol::TCP));
        let names = ["lo", "veth2", "lxcabc"];
        let assigned: Vec<_> = file
            .assign(&names)
            .expect("no overlap")
            .into_iter()
            .map(|(i, p)| (i, p.name.as_str()))
            .collect();
        assert_eq!(assigned, [("veth2", "dns"), ("lxcabc", "web")]);
    }

    #[test]
    fn no_policies() {
        assert_eq!(err("policies: []"), "policies: the file lists no policies");
        assert_eq!(err(""), "policies: the file lists no policies");
    }

    #[test]
    fn duplicate_names() {
        let text = format!(
            "{}  - name: web\n    interfaces: [b]\n    collectors: [x]\n",
            one("")
        );
        assert_eq!(
            err(&text),
            "policies[1]: name: \"web\" is also the name of policies[0]; names must be unique"
        );
    }

    #[test]
    fn bad_name() {
        let e = err("policies:\n  - name: Web\n    interfaces: [a]\n    collectors: [x]\n");
        assert!(
            e.starts_with("policies[0]: name: \"Web\" is not a valid name"),
            "{e}"
        );
    }

    #[test]
    fn empty_interfaces() {
        assert_eq!(
            err("policies:\n  - name: web\n    interfaces: []\n    collectors: [x]\n"),
            "policy \"web\": interfaces: empty; list at least one interface name or glob"
        );
    }

    #[test]
    fn bad_and_duplicate_interfaces() {
        let e = err("policies:\n  - name: web\n    interfaces: [a, 'b c']\n    collectors: [x]\n");
        assert!(
            e.starts_with("policy \"web\": interfaces[1]: \"b c\" has ' '"),
            "{e}"
        );
        assert_eq!(
            err("policies:\n  - name: web\n    interfaces: [a, a]\n    collectors: [x]\n"),
            "policy \"web\": interfaces[1]: \"a\" is listed twice"
        );
    }

    #[test]
    fn interface_in_two_policies() {
        let text = format!(
            "{}  - name: db\n    interfaces: [a]\n    collectors: [x]\n",
            one("")
        );
        assert_eq!(
            err(&text),
            "policy \"db\": interfaces: \"a\" is also listed by policy \"web\"; an interface \
             has one policy"
        );
    }

    #[test]
    fn glob_overlap_is_found_on_assign() {
        let text = format!(
            "{}  - name: db\n    interfaces: ['a*']\n    collectors: [x]\n",
            one("")
        );
        let file = PolicyFile::from_yaml(&text).expect("valid until resolved");
        let e = file
            .assign(&["a"])
            .map(|_| ())
            .expect_err("ambiguous")
            .to_string();
        assert_eq!(
            e,
            "policy \"db\": interfaces: interface \"a\" also matches policy \"web\"; an \
             interface has one policy"
        );
    }

    #[test]
    fn empty_and_duplicate_collectors() {
        assert_eq!(
            err("policies:\n  - name: web\n    interfaces: [a]\n    collectors: []\n"),
            "policy \"web\": collectors: empty; list at least one collector URI"
        );
        assert_eq!(
            err("policies:\n  - name: web\n    interfaces: [a]\n    collectors: ['']\n"),
            "policy \"web\": collectors[0]: empty collector URI"
        );
        assert_eq!(
            err("policies:\n  - name: web\n    interfaces: [a]\n    collectors: [x, x]\n"),
            "policy \"web\": collectors[1]: \"x\" is listed twice"
        );
    }

    #[test]
    fn body_errors_name_the_policy() {
        assert_eq!(
            err(&one("    snaplen: 300000\n")),
            "policy \"web\": snaplen: 300000 is not 0 (the whole packet) or 1 to 262144 bytes"
        );
    }

    #[test]
    fn the_example_file_is_valid() {
        let text = include_str!("../../../deploy/examples/policy-web.yaml");
        let file = PolicyFile::from_yaml(text).unwrap_or_else(|e| panic!("{e}"));
        let web = file.get("web").expect("web");
        assert_eq!(web.body.rules.rules().len(), 4);
        assert_eq!(web.body.snaplen.get(), 256);
        assert!(web.body.filter.is_some());
    }

    #[test]
    fn unreadable_file() {
        let e = PolicyFile::load(Path::new("/nonexistent/policy.yaml")).expect_err("missing");
        assert!(
            e.to_string()
                .starts_with("/nonexistent/policy.yaml: cannot read"),
            "{e}"
        );
    }
}
