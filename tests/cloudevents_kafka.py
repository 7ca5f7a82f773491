"""Independent CloudEvents reader for the tests: kafka-python consumes, the CloudEvents Python SDK
(`cloudevents.core.bindings.kafka`) turns each Kafka message back into an event.

Reads every partition of the given topics from the beginning and prints one JSON object per
message: topic, key, headers, value (hex) and the event the SDK decoded (its attributes, `time`
in ISO 8601, and its data), until `--count` messages were read or `--timeout` seconds passed.
`--mode binary` decodes with `from_binary_event`, `--mode structured` with
`from_structured_event`; a message the SDK refuses (a required attribute missing, a malformed
event) makes the script fail.
"""
import argparse
import json
import sys
import time

from cloudevents.core.bindings import kafka as ce_kafka
from kafka import KafkaConsumer, TopicPartition


def decode(mode, m):
    message = ce_kafka.KafkaMessage(
        headers={k: v for k, v in (m.headers or [])},
        key=m.key,
        value=m.value,
    )
    if mode == "binary":
        event = ce_kafka.from_binary_event(message)
    else:
        event = ce_kafka.from_structured_event(message)
    attributes = {}
    for name, value in event.get_attributes().items():
        attributes[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return {"attributes": attributes, "data": event.get_data()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--mode", choices=["binary", "structured"], required=True)
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
                "key": m.key.decode("utf-8") if m.key is not None else None,
                "headers": [[k, v.decode("utf-8")] for k, v in (m.headers or [])],
                "value": m.value.hex(),
                "event": decode(args.mode, m),
            }), flush=True)
            seen += 1
            if seen >= args.count:
                break
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
