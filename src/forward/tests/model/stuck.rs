//! A record that keeps failing while the broker confirms others (ARCHITECTURE.md invariant 10):
//! it holds one slot of the window, is shown as stuck, and is given up after its budget; during
//! an outage nothing is given up.

use super::*;

/// 1 is refused (retryably) forever; 2 has its key and waits behind it. `others` are
/// the records of other keys, each sent with `delay_ms`.
async fn stuck_bed(others: Vec<Delivery>, delay_ms: u64) -> Bed {
    let mut deliveries = vec![delivery(1, "stuck"), delivery(2, "stuck")];
    let ids: Vec<String> = others.iter().map(|d| d.id.clone()).collect();
    deliveries.extend(others);
    let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
    bed.sink
        .script("msg_1", (0..100_000).map(|_| step(Reply::Retryable, 5)));
    for id in ids {
        bed.sink.script(&id, [step(Reply::Ok, delay_ms)]);
    }
    bed
}

/// Ends the run and checks that 1 was given up and everything else published.
async fn check_given_up(
    bed: &Bed,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    others: usize,
) {
    let last = bed.last_seq();
    wait_for("everything settled", || bed.confirmed() == last).await;
    let _ = stop.send(());
    task.await.unwrap();
    bed.check_sink_rules();
    let published = bed.sink.published();
    assert_eq!(published.len(), others + 1);
    assert!(
        published.contains(&"msg_2".to_owned()),
        "2 follows once 1 is settled"
    );
    let (meta, _) = bed.dead_letters.get(1).unwrap().expect("1 dead-lettered");
    assert_eq!(meta.reason, crate::forward::RETRIES_EXHAUSTED);
    assert!(meta.error.contains("scripted"), "{}", meta.error);
    assert_eq!(bed.dead_lettered(crate::forward::RETRIES_EXHAUSTED), 1);
    assert_eq!(bed.metrics.forward_stuck_records.get(), 0);
}

/// Records of other keys flow past a stuck one: it holds one slot of the window, not the
/// window. Without a budget left it stays, shown as the oldest and as stuck.
#[tokio::test(start_paused = true)]
async fn a_stuck_record_holds_one_slot_and_is_shown() {
    let others = (3..=202)
        .map(|i| delivery(i, &format!("k{}", i % 50)))
        .collect();
    let bed = stuck_bed(others, 1).await;
    let cfg = ForwardConfig {
        max_attempts: u32::MAX,
        ..forward_cfg(8)
    };
    let (stop, task) = bed.start(cfg);
    wait_for("the other 200 published", || {
        bed.sink.published().len() == 200
    })
    .await;
    assert_eq!(bed.confirmed(), 0, "1 is not settled: nothing is confirmed");
    assert_eq!(bed.metrics.forward_stuck_records.get(), 1);
    assert_eq!(bed.metrics.forward_in_flight.get(), 2, "1, and 2 behind it");
    let (oldest, stuck) = bed.progress.snapshot();
    let oldest = oldest.expect("an oldest record");
    assert_eq!((oldest.seq, &*oldest.delivery_id, stuck), (1, "msg_1", 1));
    assert!(oldest.attempts >= 1 && oldest.last_error.is_some());
    let _ = stop.send(());
    task.await.unwrap();
    bed.check_sink_rules();
    assert!(bed.dead_letters.is_empty());
    bed.spool.close().await.unwrap();
}

/// With the window full, `forward.max_attempts` strikes are enough.
#[tokio::test(start_paused = true)]
async fn a_stuck_record_is_given_up_after_its_attempts_when_the_window_is_full() {
    let others = (3..=202)
        .map(|i| delivery(i, &format!("k{}", i % 50)))
        .collect();
    let bed = stuck_bed(others, 100).await;
    let cfg = ForwardConfig {
        max_attempts: 4,
        max_retry_age: Duration::from_secs(3600),
        ..forward_cfg(8)
    };
    let (stop, task) = bed.start(cfg);
    check_given_up(&bed, stop, task, 200).await;
    assert!(bed.sink.calls_for("msg_1") >= 4);
    bed.spool.close().await.unwrap();
}

/// With room in the window, the record is given up once it is also
/// `forward.max_retry_age` old (on the forwarder's clock); until then it keeps being retried.
#[tokio::test(start_paused = true)]
async fn a_stuck_record_is_given_up_after_its_retry_age() {
    // One key: its 100 records go one after another, 50 ms each (5 s of confirms).
    let others = (3..=102).map(|i| delivery(i, "k")).collect();
    let bed = stuck_bed(others, 50).await;
    let cfg = ForwardConfig {
        max_attempts: 3,
        max_retry_age: Duration::from_secs(2),
        ..forward_cfg(1024)
    };
    let (stop, task) = bed.start(cfg);
    wait_for("the other 100 published", || {
        bed.sink.published().len() == 100
    })
    .await;
    assert!(
        bed.sink.calls_for("msg_1") > 3,
        "retried past max_attempts while not old enough"
    );
    assert!(bed.dead_letters.is_empty(), "not old enough yet");
    bed.clock.advance(Duration::from_secs(2));
    check_given_up(&bed, stop, task, 100).await;
    bed.spool.close().await.unwrap();
}

/// While nothing confirms, failures are an outage: no record is given up however often
/// it fails, and everything is published once the broker is back.
#[tokio::test(start_paused = true)]
async fn an_outage_dead_letters_nothing() {
    let deliveries = (1..=40)
        .map(|i| delivery(i, &format!("k{}", i % 7)))
        .collect();
    let bed = Bed::new(deliveries, Arc::new(RealFs)).await;
    bed.sink.state().down = true;
    let cfg = ForwardConfig {
        max_attempts: 1,
        max_retry_age: Duration::ZERO,
        ..forward_cfg(16)
    };
    let (stop, task) = bed.start(cfg);
    wait_for("many failed attempts", || {
        bed.sink.state().calls.len() > 500
    })
    .await;
    assert!(bed.dead_letters.is_empty());
    assert_eq!(bed.metrics.forward_stuck_records.get(), 0);
    let (oldest, _) = bed.progress.snapshot();
    assert!(oldest.expect("oldest").attempts > 5);
    bed.sink.state().down = false;
    let last = bed.last_seq();
    wait_for("everything confirmed", || bed.confirmed() == last).await;
    let _ = stop.send(());
    task.await.unwrap();
    bed.check_sink_rules();
    assert_eq!(bed.sink.published().len(), 40);
    assert!(
        bed.dead_letters.is_empty(),
        "an outage dead-letters nothing"
    );
    assert_eq!(bed.progress.snapshot().0.map(|o| o.seq), None);
    bed.spool.close().await.unwrap();
}
