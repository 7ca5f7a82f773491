//! The `hookbridge` commands: the command line, and one module per command. Each parses nothing
//! itself (clap does) and owns only how its command reads its input and reports: the work is
//! done by the library modules.
//!
//! * `run` ([`run`]): the bridge itself, the default.
//! * `check-config` ([`check_config`]): validate and print the effective configuration.
//! * `spool …` ([`spool`]): operator tools for the spool and the dead-letter store.
//! * `status` ([`status`]) and `probe` ([`probe`]): ask a running bridge's admin listener,
//!   both through [`admin_client`].
//! * `asyncapi` ([`asyncapi`]): the document of what this configuration publishes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

pub mod admin_client;
pub mod asyncapi;
pub mod check_config;
pub mod probe;
pub mod run;
pub mod spool;
pub mod status;

#[derive(Parser)]
#[command(
    name = "hookbridge",
    version,
    about = "Durable webhook ingress for Sessionboard → NATS / Kafka"
)]
struct Cli {
    /// TOML configuration file; environment variables `HOOKBRIDGE_…` override it.
    #[arg(long, short, global = true, env = "HOOKBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the bridge (the default).
    Run,
    /// Validate the configuration and print the effective values, secrets redacted; the memory
    /// estimate goes to stderr, with a warning when it exceeds the cgroup's memory limit.
    CheckConfig {
        /// Fail (exit 1) when the memory estimate exceeds this many bytes (a number, or with a
        /// suffix Ki, Mi, Gi as in a Kubernetes manifest: `256Mi`).
        #[arg(long, value_name = "BYTES", value_parser = crate::config::parse_bytes)]
        memory_limit: Option<u64>,
    },
    /// Operator tools for the spool and the dead-letter store (stats, verify, inspect,
    /// dead-letter list/requeue/purge, replay). Requeue, purge and replay work on a running
    /// bridge too: it does them through its admin API (admin.token_file). Exit codes: 0 done,
    /// 1 damage found or refused, 2 could not run.
    Spool(spool::SpoolArgs),
    /// One-screen summary of a running bridge from its admin listener: readiness, broker,
    /// backlog against the quota, rates, dead letters, errors. Exit codes: 0 ready, 1 not
    /// ready, 2 unreachable.
    Status(status::StatusArgs),
    /// Health check against the running bridge's admin listener (`/readyz` or `/livez`), for a
    /// container HEALTHCHECK or a Kubernetes exec probe. Exit 0 on 200, 1 otherwise.
    Probe(probe::ProbeArgs),
    /// Print the AsyncAPI 3.0 document of what this configuration publishes (servers without
    /// secrets, one channel per action, headers, payload schemas), or the README's tables.
    Asyncapi {
        /// `yaml`, `json`, or `markdown` (the README "Consume" tables).
        #[arg(long, value_enum, default_value_t = asyncapi::Format::Yaml)]
        format: asyncapi::Format,
    },
}

/// Parses the command line and runs the command; the binary's `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Spool(args) => return spool_main(cli.config, args),
        Command::Status(args) => return status_main(cli.config, args),
        Command::Probe(args) => return probe_main(cli.config, args),
        Command::CheckConfig { memory_limit } => {
            check_config::check_config(cli.config, memory_limit)
        }
        Command::Asyncapi { format } => asyncapi::asyncapi(cli.config, format),
        Command::Run => run::run(cli.config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hookbridge: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `hookbridge spool …`: no tracing (the tools print what they find), own exit codes.
fn spool_main(config: Option<PathBuf>, args: spool::SpoolArgs) -> ExitCode {
    let result = Config::load(config.as_deref())
        .map_err(spool::Error::from)
        .and_then(|c| spool::run(args, c, &mut std::io::stdout().lock()));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hookbridge: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `hookbridge status`: no tracing, own exit codes.
fn status_main(config: Option<PathBuf>, args: status::StatusArgs) -> ExitCode {
    match status::run(config.as_deref(), &args, &mut std::io::stdout().lock()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hookbridge: {e}");
            ExitCode::from(status::UNREACHABLE)
        }
    }
}

/// `hookbridge probe …`: one line on stdout when healthy, one on stderr when not; exit 0 or 1.
fn probe_main(config: Option<PathBuf>, args: probe::ProbeArgs) -> ExitCode {
    let result = Config::load(config.as_deref())
        .map_err(probe::Error::from)
        .and_then(|c| probe::run(&args, &c));
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hookbridge probe: {e}");
            ExitCode::FAILURE
        }
    }
}
