//! `mirror-agent`: the one userspace binary of the mirror.

use std::{io::IsTerminal, process::ExitCode};

use clap::Parser;
use mirror_agent::{
    cli,
    cmd::{attach, collect, run, sidecar, status, uninstall, webhook},
};
use tracing::error;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // clap prints its own usage errors and exits with code 2.
    let cli = cli::Cli::parse();
    // Logs go to stderr: stdout may carry pcapng (`--output pcapng:-`).
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(log_filter())
        .init();
    let result = match cli.command {
        cli::Command::Attach(args) => attach::run(args).map_err(|e| (e.to_string(), e.exit_code())),
        cli::Command::Collect(args) => {
            collect::run(args).map_err(|e| (e.to_string(), e.exit_code()))
        }
        cli::Command::Run(args) => run::run(args).map_err(|e| (e.to_string(), e.exit_code())),
        cli::Command::Status(args) => {
            status::run(&args).map_err(|e| (e.to_string(), e.exit_code()))
        }
        cli::Command::Sidecar(args) => {
            sidecar::run(args).map_err(|e| (e.to_string(), e.exit_code()))
        }
        cli::Command::Webhook(args) => {
            webhook::run(args).map_err(|e| (e.to_string(), e.exit_code()))
        }
        cli::Command::Uninstall(args) => {
            uninstall::run(&args).map_err(|e| (e.to_string(), e.exit_code()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            error!("{message}");
            ExitCode::from(code)
        }
    }
}

/// `$RUST_LOG`, else `info`. kube-runtime's watcher warns of a 403 on every
/// retry; `run`'s watches say it once (controller/retry.rs), so its lines
/// are left out unless `$RUST_LOG` names kube_runtime.
fn log_filter() -> EnvFilter {
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    if wanted.contains("kube_runtime") {
        EnvFilter::new(wanted)
    } else {
        EnvFilter::new(format!("{wanted},kube_runtime::watcher=error"))
    }
}
