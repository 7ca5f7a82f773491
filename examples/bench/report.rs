//! What the benchmark writes: a JSON document of every result with the machine and run context,
//! and the markdown table on stdout.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use crate::{load, table, Run};

/// Writes the JSON file and prints the table.
pub fn report(run: &Run, load_before: &str, started: Instant) {
    let ceiling = match (
        run.get("ceiling_before", "per_s"),
        run.get("ceiling_after", "per_s"),
    ) {
        (Some(b), Some(a)) => Some((a + b) / 2.0),
        (b, a) => b.or(a),
    };
    let ratios = json!({
        "ceiling_mean_per_s": ceiling,
        "spool_only": ceiling.and_then(|c| Some(run.get("spool_only", "per_s")? / c)),
        "spool_signed": ceiling.and_then(|c| Some(run.get("spool_signed", "per_s")? / c)),
    });
    let table = table::table(run, ceiling);
    let doc = json!({
        "smoke": run.args.params.smoke,
        "machine": machine(&run.args.work),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "run_seconds": started.elapsed().as_secs_f64(),
        "hookbridge": run.args.bin.display().to_string(),
        "fixture": run.args.fixture.display().to_string(),
        "body_bytes": run.fixture.len(),
        "resources": load::RESOURCES,
        "ratios_to_ceiling": ratios,
        "results": Value::Object(run.results.clone()),
        "table": table,
    });
    if let Some(p) = run.args.out.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    std::fs::write(&run.args.out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    println!("{table}");
    println!(
        "ratios use the mean of the ceiling before and after; load average {} before, {} after; \
         {:.0} s; JSON: {}",
        load_before,
        loadavg(),
        started.elapsed().as_secs_f64(),
        run.args.out.display()
    );
}

/// The output of a shell command, whitespace runs folded to one space.
fn sh(cmd: &str) -> String {
    std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default()
}

fn machine(work: &Path) -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let manifest = env!("CARGO_MANIFEST_DIR");
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "memory_mib": sh("awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo"),
        "work_dir": work.display().to_string(),
        "work_fs": sh(&format!("findmnt -n -o FSTYPE,SOURCE -T '{}' || stat -f -c %T '{}'", work.display(), work.display())),
        "git_rev": sh(&format!("git -C '{manifest}' rev-parse --short HEAD")),
        "git_dirty": !sh(&format!("git -C '{manifest}' status --porcelain --untracked-files=no")).is_empty(),
        "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
    })
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
