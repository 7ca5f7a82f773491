#!/usr/bin/env python3
"""Peak RSS of a hookbridge binary under an unauthenticated slow-body flood (issue 23, item 2).

For each binary given, starts it (loopback listeners on free ports, a fresh spool directory, a
signing secret so that nothing the flood sends can be valid), opens CONNECTIONS connections that
each send a chunked POST of 1-byte chunks up to just under http.max_body_bytes and then never
finish it, holds them for HOLD seconds, and prints the bridge's RSS before the flood and its peak
(VmHWM) and final RSS during it. Nothing is asserted: this prints figures.

    benches/ingress_flood.py [--connections 64] [--hold 5] [--env KEY=VALUE ...] BINARY...

Each binary is run in turn with the same flood; --env adds configuration (HOOKBRIDGE_...), for
example --env HOOKBRIDGE_HTTP__MAX_BUFFERED_BYTES=1048576. The sink is NATS on 127.0.0.1:4222
(HOOKBRIDGE_TEST_NATS_URL overrides); nothing is published, since nothing is accepted.
"""

import argparse
import os
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def start(binary, spool, extra_env):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOOKBRIDGE_HTTP__LISTEN": "127.0.0.1:0",
        "HOOKBRIDGE_ADMIN__LISTEN": "127.0.0.1:0",
        "HOOKBRIDGE_SPOOL__DIR": spool,
        "HOOKBRIDGE_AUTH__SECRETS": f'["{SECRET}"]',
        "HOOKBRIDGE_SINK__NATS__URL": os.environ.get(
            "HOOKBRIDGE_TEST_NATS_URL", "nats://127.0.0.1:4222"
        ),
        "HOOKBRIDGE_SINK__NATS__STREAM": f"FLOOD{os.getpid()}",
        "HOOKBRIDGE_ROUTING__PREFIX": f"flood{os.getpid()}.",
        "RUST_LOG": "warn,hookbridge::app=info",
        "HOOKBRIDGE_LOG__FORMAT": "text",
    }
    env.update(extra_env)
    proc = subprocess.Popen(
        [binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 30
    for line in proc.stderr:
        m = re.search(r"hookbridge serving.*listen=(\S+).*admin=(\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            host, port = m.group(1).rsplit(":", 1)
            return proc, (host, int(port))
        if time.time() > deadline:
            break
    proc.kill()
    sys.exit(f"{binary} did not start")


def flood(addr, connections, body_limit, hold, pid, samples):
    """Opens the connections and trickles 1-byte chunks on all of them, round robin, until each
    has sent body_limit - 1 bytes; then holds them open. Returns the answers seen (status lines)."""
    head = (
        "POST /webhooks/sessionboard HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        "webhook-id: msg_flood\r\nwebhook-timestamp: 1\r\n"
        "webhook-signature: v1,AAAA\r\n\r\n"
    ).encode()
    socks = []
    for _ in range(connections):
        s = socket.create_connection(addr)
        s.sendall(head)
        s.setblocking(False)
        socks.append(s)
    target = body_limit - 1
    sent = [0] * connections
    answers = {}
    burst = b"1\r\nx\r\n" * 1024
    open_socks = set(range(connections))
    while open_socks:
        for i in list(open_socks):
            s = socks[i]
            n = min(1024, target - sent[i])
            if n <= 0:
                open_socks.discard(i)
                continue
            try:
                wrote = s.send(burst[: 6 * n])
                sent[i] += wrote // 6
                # A partial chunk: finish it so the framing stays valid.
                if wrote % 6:
                    s.setblocking(True)
                    s.sendall(burst[wrote % 6 : 6])
                    s.setblocking(False)
                    sent[i] += 1
            except BlockingIOError:
                pass
            except OSError:
                open_socks.discard(i)
        readable, _, _ = select.select(socks, [], [], 0)
        for s in readable:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            i = socks.index(s)
            if data and i not in answers:
                answers[i] = data.split(b"\r\n", 1)[0].decode(errors="replace")
            if i in open_socks and (not data or i in answers):
                open_socks.discard(i)
        samples.append(status_kib(pid, "VmRSS"))
    end = time.time() + hold
    while time.time() < end:
        samples.append(status_kib(pid, "VmRSS"))
        time.sleep(0.1)
    for s in socks:
        s.close()
    return answers, sum(sent)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--hold", type=float, default=5.0)
    ap.add_argument("--body-limit", type=int, default=1 << 20)
    ap.add_argument("--env", action="append", default=[])
    args = ap.parse_args()
    # Long enough for the whole flood to arrive: the point is the bodies held, not the timeout.
    extra = {"HOOKBRIDGE_HTTP__REQUEST_TIMEOUT": "600s"}
    extra.update(kv.split("=", 1) for kv in args.env)
    extra["HOOKBRIDGE_HTTP__MAX_BODY_BYTES"] = str(args.body_limit)
    print(
        f"flood: {args.connections} connections, chunked bodies of 1-byte chunks up to "
        f"{args.body_limit - 1} bytes, never finished, held {args.hold} s; extra env {args.env or 'none'}"
    )
    for binary in args.binaries:
        with tempfile.TemporaryDirectory() as spool:
            proc, addr = start(binary, spool, extra)
            try:
                time.sleep(0.5)
                before = status_kib(proc.pid, "VmRSS")
                samples = []
                t0 = time.time()
                answers, sent = flood(addr, args.connections, args.body_limit, args.hold, proc.pid, samples)
                took = time.time() - t0
                peak = status_kib(proc.pid, "VmHWM")
                final = status_kib(proc.pid, "VmRSS")
                codes = {}
                for a in answers.values():
                    codes[a] = codes.get(a, 0) + 1
                print(
                    f"{binary}: RSS before {before / 1024:.1f} MiB, peak (VmHWM) {peak / 1024:.1f} MiB, "
                    f"at the end {final / 1024:.1f} MiB, rise {(peak - before) / 1024:.1f} MiB; "
                    f"{sent / 2**20:.1f} MiB of 1-byte chunks sent in {took:.1f} s; answers during the flood: {codes or 'none'}"
                )
            finally:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
