//! `hookbridge check-config`: validate the configuration, print the effective values with
//! secrets redacted, and the memory estimate on stderr.

use std::path::PathBuf;

use crate::app::Settings;
use crate::config::{self, Config, SinkKind};

/// Exit 1 (an `Err`) when the configuration is invalid or, with `--memory-limit`, when the
/// memory estimate exceeds it.
pub fn check_config(file: Option<PathBuf>, memory_limit: Option<u64>) -> anyhow::Result<()> {
    let config = Config::load(file.as_deref())?;
    let redacted = config.redacted_toml();
    let sink = config.sink.clone();
    let estimate = config.memory_estimate();
    Settings::new(config)?;
    print!("{redacted}");
    eprintln!(
        "configuration is valid; publishing to {} with CloudEvents {}",
        match sink.kind {
            SinkKind::Nats => "NATS",
            SinkKind::Kafka => "Kafka",
        },
        sink.cloudevents.as_str()
    );
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!("memory estimate (the most this configuration allows; README \"Memory\"):");
    for (term, bytes) in estimate.lines() {
        eprintln!("  {term:<44} {:>9.1} MiB", mib(bytes));
    }
    let total = estimate.total();
    if let Some(limit) = config::cgroup_memory_limit() {
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
