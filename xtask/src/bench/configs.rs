//! The configurations the bench compares: what each runs, as a user would
//! type it, and how the report names it. Defaults first (whole packets, the
//! default ring and URI options, a collector behind an ordinary MTU), then
//! the tuned variants, budgets, the sidecar, and an earlier build's rows.

/// Snaplen of the tuned rows, as the tcpdump line they are compared with.
pub const SNAPLEN: u32 = 128;
/// An ordinary link to the collector.
pub const DEFAULT_MTU: u32 = 1500;
/// The tuned rows' collector link: whole copies plus 50 bytes of VXLAN fit.
pub const JUMBO_MTU: u32 = 9000;
/// The budget that allows everything: the most packets/s a policy takes.
pub const OPEN_BUDGET_PPS: u64 = 1_000_000_000;
/// The budget that limits.
pub const TIGHT_BUDGET_PPS: u64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Config {
    NoHook,
    HookNothing,
    /// `attach -i IF --output vxlan://COLLECTOR?vni=42`, to `collect`, MTU 1500.
    Vxlan,
    /// `attach -i IF --output pcapng:FILE` on tmpfs.
    Pcapng,
    /// `tcpdump -s 0 -B RING_KIB -w FILE` on tmpfs: the same buffer as our ring.
    TcpdumpWhole,
    KernelMirror,
    /// Snaplen 128, `gso=true`, collector MTU 9000.
    VxlanTuned,
    /// Snaplen 128.
    PcapngTuned,
    /// `tcpdump -s 128 -w /dev/null`.
    Tcpdump128,
    /// A policy whose budget allows everything, into pcapng, snaplen 128.
    BudgetOpen,
    /// The same with a budget of [`TIGHT_BUDGET_PPS`].
    BudgetTight,
    /// `mirror-agent sidecar` in the server's namespace (the pod's), on the
    /// pod's own interface, into pcapng: beside [`Config::Pcapng`].
    Sidecar,
    /// Configurations 2 to 4 and 7 with `--baseline`'s agent.
    BaselineNothing,
    BaselineVxlan,
    BaselinePcapng,
    BaselineBudgetOpen,
}

impl Config {
    /// Every configuration but the baseline's.
    pub const ALL: [Self; 12] = [
        Self::NoHook,
        Self::HookNothing,
        Self::Vxlan,
        Self::Pcapng,
        Self::TcpdumpWhole,
        Self::KernelMirror,
        Self::VxlanTuned,
        Self::PcapngTuned,
        Self::Tcpdump128,
        Self::BudgetOpen,
        Self::BudgetTight,
        Self::Sidecar,
    ];
    /// What `--baseline` adds: the hook's rows run by the earlier build.
    pub const BASELINE: [Self; 4] = [
        Self::BaselineNothing,
        Self::BaselineVxlan,
        Self::BaselinePcapng,
        Self::BaselineBudgetOpen,
    ];
    /// Every configuration, in the report's order: ours, then the
    /// baseline's (the two lists above, joined, not listed a third time).
    pub const EVERY: [Self; Self::ALL.len() + Self::BASELINE.len()] = {
        let mut every = [Self::NoHook; Self::ALL.len() + Self::BASELINE.len()];
        let mut i = 0;
        while i < every.len() {
            every[i] = if i < Self::ALL.len() {
                Self::ALL[i]
            } else {
                Self::BASELINE[i - Self::ALL.len()]
            };
            i += 1;
        }
        every
    };

    /// What the configuration sets up: a baseline one, the same as ours.
    pub fn role(self) -> Self {
        match self {
            Self::BaselineNothing => Self::HookNothing,
            Self::BaselineVxlan => Self::Vxlan,
            Self::BaselinePcapng => Self::Pcapng,
            Self::BaselineBudgetOpen => Self::BudgetOpen,
            c => c,
        }
    }

    pub fn is_baseline(self) -> bool {
        self.role() != self
    }

    /// The name in the report's tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::NoHook => "1 no hook",
            Self::HookNothing => "2 hook, rules match nothing",
            Self::Vxlan => "3 mirror-agent -> VXLAN -> collect (defaults, MTU 1500)",
            Self::Pcapng => "4 mirror-agent -> pcapng (defaults, tmpfs)",
            Self::TcpdumpWhole => "5 tcpdump -s 0 -B <ring> -w tmpfs",
            Self::KernelMirror => "6 tc mirred -> kernel VXLAN (MTU 9000)",
            Self::VxlanTuned => "3t mirror-agent -> VXLAN (snaplen 128, gso, MTU 9000)",
            Self::PcapngTuned => "4t mirror-agent -> pcapng (snaplen 128)",
            Self::Tcpdump128 => "5t tcpdump -s 128 -w /dev/null",
            Self::BudgetOpen => "7 budget allows all -> pcapng (snaplen 128)",
            Self::BudgetTight => "7l budget 1,000 pps -> pcapng (snaplen 128)",
            Self::Sidecar => "8 mirror-agent sidecar in the pod -> pcapng (defaults)",
            Self::BaselineNothing => "2b baseline agent: hook, rules match nothing",
            Self::BaselineVxlan => "3b baseline agent -> VXLAN (defaults)",
            Self::BaselinePcapng => "4b baseline agent -> pcapng (defaults)",
            Self::BaselineBudgetOpen => {
                "7b baseline agent: budget allows all -> pcapng (snaplen 128)"
            }
        }
    }

    /// A short name for the chart, the CSV and `--only`.
    pub fn key(self) -> &'static str {
        match self {
            Self::NoHook => "no-hook",
            Self::HookNothing => "nothing",
            Self::Vxlan => "vxlan",
            Self::Pcapng => "pcapng",
            Self::TcpdumpWhole => "tcpdump",
            Self::KernelMirror => "kernel",
            Self::VxlanTuned => "vxlan-tuned",
            Self::PcapngTuned => "pcapng-tuned",
            Self::Tcpdump128 => "tcpdump-128",
            Self::BudgetOpen => "budget-open",
            Self::BudgetTight => "budget-tight",
            Self::Sidecar => "sidecar",
            Self::BaselineNothing => "base-nothing",
            Self::BaselineVxlan => "base-vxlan",
            Self::BaselinePcapng => "base-pcapng",
            Self::BaselineBudgetOpen => "base-budget-open",
        }
    }

    /// Whether copies go somewhere, so completeness means something.
    pub fn mirrors(self) -> bool {
        !matches!(self.role(), Self::NoHook | Self::HookNothing)
    }

    /// Whether its completeness is the mirror keeping up: not so for a
    /// budget, which drops copies on purpose.
    pub fn complete_by_design(self) -> bool {
        self.mirrors() && self.role() != Self::BudgetTight
    }

    /// Whether it copies whole packets (so bytes captured ÷ bytes at the
    /// hook means completeness, not the snaplen).
    pub fn whole_packets(self) -> bool {
        matches!(
            self.role(),
            Self::Vxlan | Self::Pcapng | Self::TcpdumpWhole | Self::KernelMirror | Self::Sidecar
        )
    }

    /// Whether our eBPF programs are attached (so they have a run time).
    pub fn our_hook(self) -> bool {
        !matches!(
            self.role(),
            Self::NoHook | Self::TcpdumpWhole | Self::KernelMirror | Self::Tcpdump128
        )
    }

    /// The MTU of the collector's link while it runs.
    pub fn collector_mtu(self) -> u32 {
        match self.role() {
            Self::VxlanTuned | Self::KernelMirror => JUMBO_MTU,
            _ => DEFAULT_MTU,
        }
    }

    /// Whether `BPF_PROG_TEST_RUN` measures its program alone: the hook
    /// that copies nothing, and the one whose budget refuses.
    pub fn prog_run(self) -> bool {
        matches!(self.role(), Self::HookNothing | Self::BudgetTight)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::bench::{Options, Plan};

    #[test]
    fn a_baseline_row_sets_up_what_its_own_row_does() {
        for c in Config::EVERY {
            assert!(!c.role().is_baseline(), "{c:?}");
            assert_eq!(c.mirrors(), c.role().mirrors());
            assert_eq!(c.our_hook(), c.role().our_hook());
        }
        assert!(
            Config::BASELINE
                .iter()
                .all(|c| c.is_baseline() && c.our_hook())
        );
        assert!(Config::ALL.iter().all(|c| !c.is_baseline()));
        let mut keys: Vec<&str> = Config::EVERY.iter().map(|c| c.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), Config::EVERY.len());
    }

    #[test]
    fn baseline_rows_run_only_when_asked_and_beside_ours() {
        let options = |baseline: Option<&str>| Options {
            smoke: false,
            reps: 1,
            seconds: 1,
            baseline: baseline.map(PathBuf::from),
            only: Vec::new(),
        };
        let without = Plan::new(&options(None)).expect("plan");
        let with = Plan::new(&options(Some("/old/mirror-agent"))).expect("plan");
        for plan in [&without, &with] {
            for c in Config::ALL {
                assert!(plan.udp_configs.contains(&c), "{c:?}");
            }
        }
        for c in Config::BASELINE {
            assert!(!without.udp_configs.contains(&c), "{c:?}");
            for set in [&with.tcp_configs, &with.udp_configs, &with.cost_configs] {
                assert!(set.contains(&c), "{c:?}");
            }
            assert!(!with.sweep_configs.contains(&c), "{c:?}");
        }
    }

    #[test]
    fn only_keeps_no_hook_for_the_ratios_and_refuses_unknown_keys() {
        let options = |only: &[&str]| Options {
            smoke: false,
            reps: 1,
            seconds: 1,
            baseline: None,
            only: only.iter().map(|s| (*s).to_owned()).collect(),
        };
        let plan = Plan::new(&options(&["nothing"])).expect("plan");
        assert_eq!(plan.udp_configs, [Config::NoHook, Config::HookNothing]);
        assert!(plan.sweep_configs.is_empty());
        let e = Plan::new(&options(&["nope"])).err().expect("an error");
        assert!(e.to_string().contains("--only nope"), "{e}");
    }
}
