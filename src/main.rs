//! The `hookbridge` binary: parse the command line, load the configuration, install tracing, and
//! hand over to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hookbridge::app::Settings;
use hookbridge::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
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
        #[arg(long, value_name = "BYTES", value_parser = hookbridge::config::parse_bytes)]
        memory_limit: Option<u64>,
    },
    /// Operator tools for the spool and the dead-letter store (stats, verify, inspect,
    /// dead-letter list/requeue, replay). Exit codes: 0 done, 1 damage found or refused, 2 could not run.
    Spool(hookbridge::spoolctl::SpoolArgs),
    /// One-screen summary of a running bridge from its admin listener: readiness, broker,
    /// backlog against the quota, rates, dead letters, errors. Exit codes: 0 ready, 1 not
    /// ready, 2 unreachable.
    Status(hookbridge::status::StatusArgs),
    /// Health check against the running bridge's admin listener (`/readyz` or `/livez`), for a
    /// container HEALTHCHECK or a Kubernetes exec probe. Exit 0 on 200, 1 otherwise.
    Probe(hookbridge::probe::ProbeArgs),
    /// Print the AsyncAPI 3.0 document of what this configuration publishes (servers without
    /// secrets, one channel per action, headers, payload schemas), or the README's tables.
    Asyncapi {
        /// `yaml`, `json`, or `markdown` (the README "Consume" tables).
        #[arg(long, value_enum, default_value_t = AsyncapiFormat::Yaml)]
        format: AsyncapiFormat,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AsyncapiFormat {
    Yaml,
    Json,
    Markdown,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Spool(args) => return spool_main(cli.config, args),
        Command::Status(args) => return status_main(cli.config, args),
        Command::Probe(args) => return probe_main(cli.config, args),
        Command::CheckConfig { memory_limit } => check_config(cli.config, memory_limit),
        Command::Asyncapi { format } => asyncapi(cli.config, format),
        Command::Run => run(cli.config),
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
fn spool_main(config: Option<PathBuf>, args: hookbridge::spoolctl::SpoolArgs) -> ExitCode {
    let result = Config::load(config.as_deref())
        .map_err(hookbridge::spoolctl::Error::from)
        .and_then(|c| hookbridge::spoolctl::run(args, c, &mut std::io::stdout().lock()));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hookbridge: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `hookbridge status`: no tracing, own exit codes.
fn status_main(config: Option<PathBuf>, args: hookbridge::status::StatusArgs) -> ExitCode {
    match hookbridge::status::run(config.as_deref(), &args, &mut std::io::stdout().lock()) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("hookbridge: {e}");
            ExitCode::from(hookbridge::status::UNREACHABLE)
        }
    }
}

/// `hookbridge probe …`: one line on stdout when healthy, one on stderr when not; exit 0 or 1.
fn probe_main(config: Option<PathBuf>, args: hookbridge::probe::ProbeArgs) -> ExitCode {
    let result = Config::load(config.as_deref())
        .map_err(hookbridge::probe::Error::from)
        .and_then(|c| hookbridge::probe::run(&args, &c));
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

fn check_config(file: Option<PathBuf>, memory_limit: Option<u64>) -> anyhow::Result<()> {
    let config = Config::load(file.as_deref())?;
    let redacted = config.redacted_toml();
    let sink = config.sink.clone();
    let estimate = config.memory_estimate();
    Settings::new(config)?;
    print!("{redacted}");
    eprintln!(
        "configuration is valid; publishing to {} with CloudEvents {}",
        match sink.kind {
            hookbridge::config::SinkKind::Nats => "NATS",
            hookbridge::config::SinkKind::Kafka => "Kafka",
        },
        sink.cloudevents.as_str()
    );
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!("memory estimate (the most this configuration allows; README \"Memory\"):");
    for (term, bytes) in estimate.lines() {
        eprintln!("  {term:<44} {:>9.1} MiB", mib(bytes));
    }
    let total = estimate.total();
    if let Some(limit) = hookbridge::config::cgroup_memory_limit() {
        if total > limit {
            eprintln!(
                "warning: the memory estimate ({:.1} MiB) exceeds this cgroup's memory limit ({:.1} MiB)",
                mib(total),
                mib(limit)
            );
        }
    }
    if let Some(limit) = memory_limit {
        anyhow::ensure!(
            total <= limit,
            "the memory estimate ({:.1} MiB) exceeds --memory-limit ({:.1} MiB); lower http.max_buffered_bytes, http.max_connections, forward.max_in_flight or auth.dedup_max_entries",
            mib(total),
            mib(limit)
        );
    }
    Ok(())
}

/// Reads no secret file and no certificate: the document needs the routing and the sink only.
fn asyncapi(file: Option<PathBuf>, format: AsyncapiFormat) -> anyhow::Result<()> {
    let config = Config::load(file.as_deref())?;
    config.validate()?;
    let router = hookbridge::routing::Router::from_config(&config.routing)?;
    let out = match format {
        AsyncapiFormat::Markdown => hookbridge::asyncapi::markdown(&router),
        AsyncapiFormat::Json => {
            let doc = hookbridge::asyncapi::document(&config, &router);
            serde_json::to_string_pretty(&doc)? + "\n"
        }
        AsyncapiFormat::Yaml => {
            hookbridge::asyncapi::to_yaml(&hookbridge::asyncapi::document(&config, &router))
        }
    };
    print!("{out}");
    Ok(())
}

fn run(file: Option<PathBuf>) -> anyhow::Result<()> {
    limit_malloc_arenas();
    let settings = Settings::new(Config::load(file.as_deref())?)?;
    init_tracing(settings.raw.log.format, &settings.raw.log.level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = rt.block_on(async {
        let app = hookbridge::app::App::bind(settings).await?;
        app.run(hookbridge::shutdown::signal()).await?;
        Ok(())
    });
    // Dropping the runtime would wait for every blocking task still running, such as a Kafka
    // producer flush against a broker that does not answer, and so overrun `shutdown.grace`.
    // `App::run` has already closed the spool (persisting the confirmed position); whatever such
    // a task was doing is unconfirmed and replays on the next start, so do not wait for it.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    result
}

/// glibc gives a thread that finds every arena busy a heap of its own, up to 8 per core, and
/// each keeps its own free memory: with librdkafka's threads beside the runtime's, peak RSS in
/// Kafka mode was 52-53 MiB against 49.7 with one arena per core (BENCHMARKS.md). Called before
/// any thread starts; an operator's own `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none()
        && std::env::var_os("GLIBC_TUNABLES").is_none()
    {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = i32::try_from(cores.max(2)).unwrap_or(i32::MAX);
        // SAFETY: mallopt only sets a malloc parameter; no other thread exists yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

fn init_tracing(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
