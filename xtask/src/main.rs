//! `cargo xtask <command>`: the project's developer and CI tasks.

mod bench;
mod build;
mod crds;
mod demo;
mod fuzz;
mod layers;
mod manifests;
mod paths;
mod run;
mod scale;
mod setup;
mod stop;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Project tasks for the eBPF traffic mirror."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need (rust-src, bpf-linker, Debian
    /// packages); quick when all is there already.
    Setup,
    /// Set up, then build the release agent at target/release/mirror-agent.
    Build,
    /// Set up, build, and run the whole test suite (as root).
    Test {
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true, value_name = "CARGO_TEST_ARGS")]
        extra: Vec<String>,
    },
    /// Mirror real traffic between three pods on a simulated node into
    /// target/demo/demo.pcapng, then remove everything it made (as root).
    Demo,
    /// Measure what mirroring costs and whether it keeps up, against no hook,
    /// tcpdump and the kernel's own mirror; writes target/bench/report.md
    /// and chart.png (as root).
    Bench {
        /// One short repetition of a reduced plan: checks the harness, not speed.
        #[arg(long)]
        smoke: bool,
        /// Interleaved repetitions.
        #[arg(long, default_value_t = bench::DEFAULT_REPS)]
        reps: usize,
        /// Seconds of each TCP and full-rate UDP run.
        #[arg(long, default_value_t = bench::DEFAULT_SECONDS)]
        seconds: u64,
        /// Another build of mirror-agent (an earlier commit's release
        /// binary) whose hook runs beside this one's, interleaved in the
        /// same repetitions, as extra rows: a change's before and after.
        #[arg(long, value_name = "AGENT_BINARY")]
        baseline: Option<std::path::PathBuf>,
        /// Only these configurations (keys as in samples.csv: nothing,
        /// vxlan, pcapng, tcpdump, sidecar, budget-open...), beside no hook.
        #[arg(long, value_name = "KEY,...", value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Check that the agent's modules use only layers below their own
    /// (xtask/src/layers.rs lists the ranks; part of `cargo xtask test`).
    Layers,
    /// Write deploy/crds/ from the Rust types of mirror_agent::k8s.
    Crds {
        /// Write nothing; fail if deploy/crds/ differs from what would be written.
        #[arg(long)]
        check: bool,
    },
    /// Check deploy/: the CRDs are up to date, the plain manifests pass
    /// kubernetes-validate, and the examples pass check-jsonschema against
    /// the CRDs' schemas (part of `cargo xtask test`).
    Manifests,
    /// Run every decoder's cargo-fuzz target (installs cargo-fuzz if missing).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::SHORT_SECONDS)]
        seconds: u64,
    },
    /// Mirror steady traffic for minutes with the release agent (bench
    /// configuration 3: VXLAN to `mirror-agent collect`), sampling its RSS
    /// and /metrics every 5 s; fails unless RSS grew by less than 10% after
    /// warm-up and no interval stalled. Writes target/soak/report.md (as
    /// root; not run in CI).
    Soak {
        /// Minutes of mirrored traffic.
        #[arg(long, default_value_t = bench::soak::DEFAULT_MINUTES, value_parser = clap::value_parser!(u64).range(1..))]
        minutes: u64,
        /// Mirror this many 64-byte packets/s. Without it, a quick knee
        /// search first (the bench's sweep of configuration 3, 2 s per
        /// point, about a minute) finds the highest rate mirrored ≥ 99.9%
        /// complete, and the soak runs at half of it.
        #[arg(long, value_name = "PPS", value_parser = clap::value_parser!(u64).range(1..))]
        rate: Option<u64>,
    },
    /// Issue #4's scale measurement: N pod namespaces on one node, a
    /// MirrorPolicy selecting them all, the release `mirror-agent run`
    /// against the fake API server; times until every pod is attached and
    /// detached, and the idle agent's RSS. Fails unless all are attached
    /// within 10 s and RSS stays under 100 MiB. Writes target/scale/report.md
    /// (as root; not run in CI).
    Scale {
        /// Pods (network namespaces) on the node.
        #[arg(long, default_value_t = scale::DEFAULT_PODS)]
        pods: usize,
        /// `--ring-size` for the agent (bytes, a power of two); default: the agent's.
        #[arg(long, value_name = "BYTES")]
        ring_size: Option<u64>,
        /// `--attach-point` for the agent: `host`, the pods' host veths;
        /// `pod`, each pod's own eth0 inside its namespace (the agent loads
        /// programs for each pod namespace); `auto`, the agent decides (the
        /// host ends on this node). Default: the agent's (`auto`).
        #[arg(long, value_name = "WHERE")]
        attach_point: Option<scale::AttachPoint>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build => setup::run().and_then(|()| build::agent(build::Profile::Release)),
        Command::Test { extra } => test::run(&extra),
        Command::Demo => demo::run(),
        Command::Bench {
            smoke,
            reps,
            seconds,
            baseline,
            only,
        } => bench::run(&bench::Options {
            smoke,
            reps,
            seconds,
            baseline,
            only,
        }),
        Command::Fuzz { seconds } => fuzz::run(seconds),
        Command::Crds { check } => crds::run(check),
        Command::Manifests => manifests::run(),
        Command::Layers => layers::run(),
        Command::Soak { minutes, rate } => {
            bench::soak::run(&bench::soak::Options { minutes, rate })
        }
        Command::Scale {
            pods,
            ring_size,
            attach_point,
        } => scale::run(&scale::Options {
            pods,
            ring_size,
            attach_point,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<stop::Interrupted>() => {
            eprintln!("{e}");
            // As a shell reports a process ended by SIGINT.
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
