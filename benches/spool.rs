//! Micro-benchmark of the spool alone (no HTTP, no broker), so a regression in the write-ahead
//! log shows before the end-to-end figures move:
//!
//! * appends/s with 1, 16, 64 and 256 concurrent appenders of a 1.2 KB payload (each append
//!   resolves after the group-commit `fdatasync` covering it), with the records per fsync and the
//!   mean fsync time from the spool's own metrics, and the process's CPU time per append;
//! * reopening a spool holding N records (recovery scans every frame), then reading them all in
//!   order with a `Reader`: MB/s. The segments were just written, so this reads the page cache.
//!
//! ```text
//! cargo bench --bench spool [-- --smoke] [-- --json target/bench/spool.json] [-- --dir DIR]
//!                           [-- --preallocate BYTES]
//! ```
//! The spool lives under `--dir` (default `target/bench/work`): put it on a real disk.
//! `--preallocate` sets `spool.preallocate_bytes` (default the bridge's, 1 MiB); `0` shows what
//! growing the file with every commit costs on the same disk.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookbridge::metrics::Metrics;
use hookbridge::spool::{Spool, SpoolConfig};
use serde_json::json;

const PAYLOAD: usize = 1200;

fn config(dir: PathBuf, preallocate_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        dir,
        segment_bytes: 64 << 20,
        max_bytes: 16 << 30,
        max_append_bytes: 1 << 20,
        max_batch_bytes: 4 << 20,
        preallocate_bytes,
        confirm_interval: Duration::from_millis(100),
        min_free_bytes: 256 << 20,
        retain_confirmed: Duration::ZERO,
    }
}

/// `appenders` tasks append for `duration`; returns (appends/s, records per fsync, mean fsync ms).
async fn append_run(
    dir: PathBuf,
    preallocate: u64,
    appenders: usize,
    duration: Duration,
) -> serde_json::Value {
    let metrics = Arc::new(Metrics::new());
    let (spool, _) = Spool::open(config(dir, preallocate), metrics.clone()).expect("open spool");
    let cpu_before = cpu_seconds();
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let (spool, payload, stop, count) =
                (spool.clone(), payload.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    spool.append(payload.clone()).await.expect("append");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    spool.close().await.expect("close");
    let n = count.load(Ordering::Relaxed) as f64;
    let batches = metrics.spool_batch_records.get_sample_count() as f64;
    let fsyncs = metrics.spool_fsync.get_sample_count() as f64;
    json!({
        "appenders": appenders,
        "appends": n,
        "appends_per_s": n / elapsed,
        "mib_per_s": n * PAYLOAD as f64 / elapsed / (1 << 20) as f64,
        "records_per_fsync": n / batches.max(1.0),
        "fsync_mean_ms": metrics.spool_fsync.get_sample_sum() / fsyncs.max(1.0) * 1e3,
        "cpu_us_per_append": cpu / n.max(1.0) * 1e6,
    })
}

/// User + system CPU time of this process so far (every thread: the appenders' runtime and the
/// spool writer).
fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF cannot fail.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Appends `records` (256 appenders), closes, reopens (timed: recovery) and reads all back.
async fn read_run(dir: PathBuf, preallocate: u64, records: u64) -> serde_json::Value {
    {
        let metrics = Arc::new(Metrics::new());
        let (spool, _) =
            Spool::open(config(dir.clone(), preallocate), metrics).expect("open spool");
        let payload = Bytes::from(vec![b'y'; PAYLOAD]);
        let next = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..256)
            .map(|_| {
                let (spool, payload, next) = (spool.clone(), payload.clone(), next.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, Ordering::Relaxed) < records {
                        spool.append(payload.clone()).await.expect("append");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        spool.close().await.expect("close");
    }
    let t = Instant::now();
    let (spool, report) =
        Spool::open(config(dir, preallocate), Arc::new(Metrics::new())).expect("reopen spool");
    let open_s = t.elapsed().as_secs_f64();
    assert_eq!(report.records, records);
    let mut reader = spool.reader();
    let (mut n, mut bytes) = (0u64, 0usize);
    let t = Instant::now();
    while n < records {
        let batch = reader.next_batch(1024).await.expect("read");
        n += batch.len() as u64;
        bytes += batch.iter().map(|r| r.payload.len()).sum::<usize>();
    }
    let read_s = t.elapsed().as_secs_f64();
    spool.close().await.expect("close");
    json!({
        "records": records,
        "reopen_s": open_s,
        "read_s": read_s,
        "read_records_per_s": n as f64 / read_s,
        "read_mib_per_s": bytes as f64 / read_s / (1 << 20) as f64,
    })
}

/// The command line.
struct Args {
    smoke: bool,
    json_out: Option<PathBuf>,
    base: PathBuf,
    preallocate: u64,
}

fn parse_args() -> Args {
    let mut a = Args {
        smoke: false,
        json_out: None,
        base: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench/work"),
        preallocate: hookbridge::config::Config::default()
            .spool
            .preallocate_bytes,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--smoke" => a.smoke = true,
            "--json" => a.json_out = args.next().map(PathBuf::from),
            "--dir" => a.base = args.next().map(PathBuf::from).expect("--dir DIR"),
            "--preallocate" => {
                a.preallocate = args
                    .next()
                    .and_then(|b| b.parse().ok())
                    .expect("--preallocate BYTES")
            }
            "--bench" => {} // added by `cargo bench`
            other => {
                eprintln!("spool bench: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    a
}

/// The filesystem type and source holding `dir`, as findmnt says.
fn filesystem(dir: &std::path::Path) -> String {
    std::process::Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE", "-T"])
        .arg(dir)
        .output()
        .map(|o| {
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            out.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .unwrap_or_default()
}

fn main() {
    let Args {
        smoke,
        json_out,
        base,
        preallocate,
    } = parse_args();
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::Builder::new()
        .prefix("spool-bench-")
        .tempdir_in(&base)
        .unwrap();
    let (duration, records) = if smoke {
        (Duration::from_millis(300), 10_000)
    } else {
        (Duration::from_secs(3), 300_000)
    };
    // The bridge's runtime: multi-thread, one worker per core.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let fs = filesystem(tmp.path());
    let mut appends = Vec::new();
    println!(
        "spool micro-benchmark ({PAYLOAD} B payloads, spool on {fs}, preallocate_bytes {preallocate})\n"
    );
    println!("| appenders | appends/s | MiB/s | records per fsync | mean fsync | CPU per append |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (i, n) in [1, 16, 64, 256].into_iter().enumerate() {
        let dir = tmp.path().join(format!("a{i}"));
        let r = rt.block_on(append_run(dir, preallocate, n, duration));
        println!(
            "| {n} | {:.0} | {:.1} | {:.1} | {:.2} ms | {:.1} µs |",
            r["appends_per_s"].as_f64().unwrap(),
            r["mib_per_s"].as_f64().unwrap(),
            r["records_per_fsync"].as_f64().unwrap(),
            r["fsync_mean_ms"].as_f64().unwrap(),
            r["cpu_us_per_append"].as_f64().unwrap()
        );
        appends.push(r);
    }
    let read = rt.block_on(read_run(tmp.path().join("read"), preallocate, records));
    println!(
        "\nreopen with {records} records: {:.2} s; sequential read: {:.0} records/s, {:.0} MiB/s (page cache)",
        read["reopen_s"].as_f64().unwrap(),
        read["read_records_per_s"].as_f64().unwrap(),
        read["read_mib_per_s"].as_f64().unwrap()
    );
    if let Some(p) = json_out {
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        let doc = json!({"smoke": smoke, "fs": fs, "payload_bytes": PAYLOAD, "preallocate_bytes": preallocate, "append": appends, "read": read});
        std::fs::write(&p, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}
