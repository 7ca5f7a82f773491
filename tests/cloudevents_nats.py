"""Independent CloudEvents reader for the NATS tests: nats-py (not async-nats, the client the
bridge publishes with) reads a JetStream stream message by message, and the CloudEvents Python
SDK turns each one back into an event. The NATS binding's binary mode carries the attributes as
`ce-` headers and the content type as `content-type`, as the HTTP binding does, so the SDK's HTTP
binding (`cloudevents.core.bindings.http`) decodes it; structured mode is the JSON event format in
the payload.

Waits until the stream holds `--count` messages (at most `--timeout` seconds), then prints one
JSON object per message: seq, subject, headers, payload (hex) and the event the SDK decoded (its
attributes, `time` in ISO 8601, and its data). `--mode binary` decodes with `from_binary_event`,
`--mode structured` with `from_structured_event`; a message the SDK refuses makes the script fail.
"""
import argparse
import asyncio
import json
import sys
import time

import nats
from cloudevents.core.bindings import http as ce_http


def decode(mode, headers, payload):
    message = ce_http.HTTPMessage(headers=headers, body=payload)
    if mode == "binary":
        event = ce_http.from_binary_event(message)
    else:
        event = ce_http.from_structured_event(message)
    attributes = {}
    for name, value in event.get_attributes().items():
        attributes[name] = value.isoformat() if hasattr(value, "isoformat") else value
    return {"attributes": attributes, "data": event.get_data()}


async def run(args):
    nc = await nats.connect(args.url)
    js = nc.jetstream()
    deadline = time.monotonic() + args.timeout
    while True:
        info = await js.stream_info(args.stream)
        if info.state.messages >= args.count or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        m = await js.get_msg(args.stream, seq)
        headers = dict(m.headers or {})
        print(json.dumps({
            "seq": seq,
            "subject": m.subject,
            "headers": headers,
            "payload": m.data.hex(),
            "event": decode(args.mode, headers, m.data),
        }), flush=True)
    await nc.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--mode", choices=["binary", "structured"], required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=30.0)
    args = ap.parse_args()
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
