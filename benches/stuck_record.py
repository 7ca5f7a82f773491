#!/usr/bin/env python3
"""One record the broker will never take, then 400 that it will (issue 23, item 1).

For each binary given: creates a JetStream stream with max_msg_size 2 KiB on the NATS at
127.0.0.1:4222 (HOOKBRIDGE_TEST_NATS_URL overrides), starts the bridge (loopback, no auth,
forward.max_in_flight 64, create_stream false), posts one 4 KiB delivery and then 400 small ones
(40 resources), waits up to WAIT seconds for 400 messages in the stream, and prints how many
arrived, how long the last one took, and what /readyz says (dead letters, stuck records).
Nothing is asserted: this prints figures. Needs nats-py.

    benches/stuck_record.py [--wait 20] BINARY...
"""

import argparse
import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

import nats

NATS_URL = os.environ.get("HOOKBRIDGE_TEST_NATS_URL", "nats://127.0.0.1:4222")


def start(binary, spool, tag):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOOKBRIDGE_HTTP__LISTEN": "127.0.0.1:0",
        "HOOKBRIDGE_ADMIN__LISTEN": "127.0.0.1:0",
        "HOOKBRIDGE_SPOOL__DIR": spool,
        "HOOKBRIDGE_SINK__NATS__URL": NATS_URL,
        "HOOKBRIDGE_SINK__NATS__STREAM": tag.upper(),
        "HOOKBRIDGE_SINK__NATS__CREATE_STREAM": "false",
        "HOOKBRIDGE_ROUTING__PREFIX": f"{tag}.",
        "HOOKBRIDGE_FORWARD__MAX_IN_FLIGHT": "64",
        "RUST_LOG": "error,hookbridge::app=info",
        "HOOKBRIDGE_LOG__FORMAT": "text",
    }
    proc = subprocess.Popen(
        [binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    for line in proc.stderr:
        m = re.search(r"hookbridge serving.*listen=(\S+).*admin=(\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1), m.group(2)
    sys.exit(f"{binary} did not start")


def request(addr, method, path, body=None, headers=None):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    c.request(method, path, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def post(addr, delivery_id, body):
    status, _ = request(
        addr,
        "POST",
        "/webhooks/sessionboard",
        body.encode(),
        {"content-type": "application/json", "webhook-id": delivery_id},
    )
    return status


def body(rid, n, pad=""):
    data = {"id": rid, "n": n}
    if pad:
        data["pad"] = pad
    return json.dumps({"data": data, "metadata": {"action": "session.updated"}})


async def run(binary, wait):
    tag = f"stuck{os.getpid()}x{int(time.time() * 1000) % 100000}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await js.add_stream(name=tag.upper(), subjects=[f"{tag}.>"], max_msg_size=2048)
    with tempfile.TemporaryDirectory() as spool:
        proc, http_addr, admin = start(binary, spool, tag)
        try:
            assert post(http_addr, f"{tag}-big", body("big", 0, "x" * 4096)) == 200
            started = time.time()
            for i in range(400):
                assert post(http_addr, f"{tag}-{i}", body(f"r{i % 40}", i // 40)) == 200
            count, last_change, last = 0, started, -1
            while time.time() - started < wait:
                count = (await js.stream_info(tag.upper())).state.messages
                if count != last:
                    last, last_change = count, time.time()
                if count >= 400:
                    break
                await asyncio.sleep(0.2)
            _, ready = request(admin, "GET", "/readyz")
            ready = json.loads(ready)
            print(
                f"{binary}: {count}/400 in the stream (last arrival {last_change - started:.1f} s "
                f"after the first post, waited up to {wait} s); dead letters "
                f"{ready.get('dead_letters')}, stuck records {ready.get('stuck_records', 'n/a')}, "
                f"backlog {ready.get('backlog_records')}"
            )
        finally:
            proc.kill()
            proc.wait()
            await js.delete_stream(tag.upper())
            await nc.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wait", type=float, default=20)
    ap.add_argument("binaries", nargs="+")
    a = ap.parse_args()
    for b in a.binaries:
        asyncio.run(run(b, a.wait))


if __name__ == "__main__":
    main()
