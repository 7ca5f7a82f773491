//! Memory and start-up cost of the de-duplication set: `fill` remembers N delivery ids (Svix-like,
//! 31 characters) through `Dedup` itself and reports the RSS it took; `load` reopens the
//! journal as a restart does and reports how long that took and the RSS it took. Run each in a
//! process of its own, so neither sees the other's memory:
//!
//! ```text
//! cargo run --release --example dedup_mem -- fill /tmp/dd 1000000
//! cargo run --release --example dedup_mem -- load /tmp/dd
//! ```
//!
//! The directory then holds a `dedup.journal` that `hookbridge run` with `spool.dir` pointing
//! there loads at start. Uses only the API that hookbridge 0.1 had too, so the same program
//! measures the version before the compact set.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hookbridge::clock::{now_ms, Clock};
use hookbridge::dedup::{Claim, Dedup};
use hookbridge::spool::RealFs;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn open(dir: &Path, max: usize) -> Arc<Dedup> {
    Arc::new(Dedup::open(Arc::new(RealFs), dir, DAY, max, Clock::system()).expect("open"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, dir) = match args.as_slice() {
        [mode, dir, ..] => (mode.as_str(), Path::new(dir)),
        _ => {
            eprintln!("usage: dedup_mem fill DIR [N] | load DIR");
            std::process::exit(2);
        }
    };
    std::fs::create_dir_all(dir).expect("create dir");
    let n: usize = args
        .get(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let (rss0, _) = rss_kib();
    match mode {
        "fill" => {
            let d = open(dir, n);
            let (rss1, _) = rss_kib();
            let start = Instant::now();
            let now = now_ms();
            for i in 0..n {
                // Svix message ids: "msg_" and a 27-character KSUID.
                let id = format!("msg_2{i:026}");
                if let Claim::New(g) = d.claim(&id, now) {
                    g.commit(now);
                }
            }
            let took = start.elapsed();
            let (rss2, hwm) = rss_kib();
            d.close();
            let journal = std::fs::metadata(dir.join("dedup.journal")).map_or(0, |m| m.len());
            println!(
                "fill: {} ids in {:.2} s; RSS growth {:.1} MiB ({:.1} bytes/id), VmRSS {:.1} MiB, VmHWM {:.1} MiB; journal {:.1} MiB",
                d.len(),
                took.as_secs_f64(),
                (rss2 - rss1) as f64 / 1024.0,
                (rss2 - rss1) as f64 * 1024.0 / n as f64,
                rss2 as f64 / 1024.0,
                hwm as f64 / 1024.0,
                journal as f64 / 1048576.0,
            );
        }
        "load" => {
            let start = Instant::now();
            let d = open(dir, n);
            let took = start.elapsed();
            let (rss1, hwm) = rss_kib();
            println!(
                "load: {} ids in {:.3} s; RSS growth {:.1} MiB ({:.1} bytes/id), VmRSS {:.1} MiB, VmHWM {:.1} MiB",
                d.len(),
                took.as_secs_f64(),
                (rss1 - rss0) as f64 / 1024.0,
                (rss1 - rss0) as f64 * 1024.0 / d.len().max(1) as f64,
                rss1 as f64 / 1024.0,
                hwm as f64 / 1024.0,
            );
            d.close();
        }
        _ => {
            eprintln!("unknown mode {mode}: fill or load");
            std::process::exit(2);
        }
    }
}
