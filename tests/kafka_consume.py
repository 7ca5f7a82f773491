"""Independent Kafka client for the tests (kafka-python, a pure-Python protocol implementation).

Reads every partition of the given topics from the beginning and prints one JSON object per
message: topic, partition, offset, key, headers and value (hex), until `--count` messages were
read or `--timeout` seconds passed.
"""
import argparse
import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("topics", nargs="+")
    args = ap.parse_args()

    consumer = KafkaConsumer(
        bootstrap_servers=args.brokers,
        enable_auto_commit=False,
        consumer_timeout_ms=500,
    )
    deadline = time.monotonic() + args.timeout
    # Topics may appear late (created by the bridge on first use): wait for their metadata, for
    # at most half the time, then read whatever exists.
    metadata_deadline = time.monotonic() + args.timeout / 2
    while True:
        parts = {t: consumer.partitions_for_topic(t) for t in args.topics}
        if all(parts.values()) or time.monotonic() > metadata_deadline:
            break
        time.sleep(0.2)
        consumer.topics()  # refresh metadata
    wanted = [TopicPartition(t, p) for t, ps in parts.items() for p in (ps or ())]
    consumer.assign(wanted)
    consumer.seek_to_beginning(*wanted)
    seen = 0
    while seen < args.count and time.monotonic() < deadline:
        for m in consumer:
            print(json.dumps({
                "topic": m.topic,
                "partition": m.partition,
                "offset": m.offset,
                "key": m.key.decode("utf-8") if m.key is not None else None,
                "headers": [[k, v.decode("utf-8")] for k, v in (m.headers or [])],
                "value": m.value.hex(),
            }), flush=True)
            seen += 1
            if seen >= args.count:
                break
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
