//! `hookbridge run` (the default command): load the configuration, install tracing, and run the
//! [`App`] on a multi-threaded runtime until a shutdown signal.

use std::path::PathBuf;

use anyhow::Context;

use crate::app::{App, Settings};
use crate::config::{Config, LogFormat};

pub fn run(file: Option<PathBuf>) -> anyhow::Result<()> {
    limit_malloc_arenas();
    let settings = Settings::new(Config::load(file.as_deref())?)?;
    init_tracing(settings.raw.log.format, &settings.raw.log.level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = rt.block_on(async {
        let app = App::bind(settings).await?;
        app.run(crate::shutdown::signal()).await?;
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
/// each keeps its own free memory: with librdkafka's threads beside the runtime's, one arena per
/// core lowers peak RSS in Kafka mode (BENCHMARKS.md has the figures). Called before any thread
/// starts; an operator's own `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` wins.
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
