//! A damaged spool on disk before the real binary starts.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::common::*;
use super::ACTION;

/// Damage on disk before the real binary starts: a flipped bit in a record in the middle, a
/// segment with a garbage header, a corrupt `confirmed` file. The bridge starts anyway, publishes
/// every intact record, moves the damaged files aside, and counts the corrupt record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_spool_starts_keeps_every_intact_record_and_moves_damage_aside() {
    if !require(&[Tier::Nats]) {
        return;
    }
    use hookbridge::delivery::Delivery;
    use hookbridge::spool::{Spool, SpoolConfig};
    let dir = tempfile::tempdir().unwrap();
    let prefix = unique("dmg");
    let stream = prefix.to_uppercase();
    // 60 deliveries over several small segments, written by the library, nothing confirmed.
    let cfg = SpoolConfig {
        dir: dir.path().to_owned(),
        segment_bytes: 4096,
        max_bytes: 64 << 20,
        max_append_bytes: 1 << 20,
        max_batch_bytes: 1 << 20,
        preallocate_bytes: 1 << 20,
        confirm_interval: Duration::from_millis(50),
        min_free_bytes: 0,
        retain_confirmed: Duration::ZERO,
    };
    let (spool, _) = Spool::open(cfg, Arc::new(hookbridge::metrics::Metrics::new())).unwrap();
    for n in 0..60u64 {
        let d = Delivery {
            id: format!("{prefix}-{n}"),
            timestamp: None,
            action: ACTION.into(),
            resource_id: format!("r{}", n % 5),
            org_id: None,
            event_id: None,
            received_at_ms: 0,
            reject_reason: None,
            copied: None,
            endpoint: None,
            trace: None,
            body: body(ACTION, &format!("r{}", n % 5), n).into(),
        };
        spool.append(d.encode()).await.unwrap();
    }
    spool.close().await.unwrap();
    let mut segments: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 4, "{segments:?}");
    // Flip a bit inside the first record's payload of the second segment (header 24 bytes,
    // frame header 24 bytes).
    let victim = &segments[1];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[24 + 24 + 40] ^= 0x10;
    std::fs::write(victim, &bytes).unwrap();
    let victim_seq: u64 = victim
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // A segment whose header is garbage, and a corrupt confirmed position.
    let garbage = dir.path().join(format!("{:020}.seg", 1_000_000));
    std::fs::write(&garbage, vec![0xAB; 100]).unwrap();
    std::fs::write(dir.path().join("confirmed"), b"not a confirmed file").unwrap();

    let env = bridge_env(dir.path(), &prefix, &stream);
    let bridge = BridgeProcess::spawn(&env).await;
    let client = http_client();
    let corrupt = metric(
        &client,
        bridge.admin,
        "hookbridge_spool_corrupt_records_total",
        "",
    )
    .await;
    let js = jetstream(&nats_url()).await;
    let got = read_stream(&js, &stream, 59, Duration::from_secs(30)).await;
    let ids: HashSet<String> = got
        .iter()
        .filter_map(|m| m.header("webhook-id").map(str::to_owned))
        .collect();
    let expected: HashSet<String> = (0..60u64)
        .filter(|n| n + 1 != victim_seq)
        .map(|n| format!("{prefix}-{n}"))
        .collect();
    assert_eq!(ids, expected, "every intact record, and only those");
    assert_eq!(corrupt, 1.0, "the flipped record is reported");
    let damaged: Vec<String> = std::fs::read_dir(dir.path().join("damaged"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        damaged
            .iter()
            .any(|n| n.starts_with(&format!("{:020}.seg", 1_000_000))),
        "{damaged:?}"
    );
    assert!(
        damaged.iter().any(|n| n.starts_with("confirmed")),
        "{damaged:?}"
    );
    eprintln!(
        "RESULT damaged spool: 60 records, 1 flipped bit, garbage segment, corrupt confirmed file -> {} published, {corrupt} corrupt record reported, moved aside: {damaged:?}",
        ids.len()
    );
    drop(bridge);
    delete_stream(&js, &stream).await;
}
