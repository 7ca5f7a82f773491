#!/usr/bin/env python3
"""Probes under stalled scrapers (issue 23, item 3): while CLIENTS connections pipeline
`GET /metrics` on the admin port and never read an answer (reconnecting whenever the bridge
closes them), a kubelet-like prober opens a new connection every 100 ms and asks for `/livez`,
then `/readyz`, with a 1 s timeout. Prints, per binary, how many probes failed (refused, reset
or closed without an answer), how many timed out, the worst and median probe latency, and the
CPU seconds the bridge spent during the stall (what stalled scrapers cost it).

    python3 benches/admin_stall.py [BIN ...]
        BIN defaults to /work/hookbridge-old-b (the base commit) and target/debug/hookbridge.
        Env: CLIENTS (70), SECONDS (15), NATS_URL (nats://127.0.0.1:4222; the bridge starts
        without it too: the admin listener does not need the broker).

Each bridge runs with its defaults (admin.max_connections 64 and, on the new binary, 8 probe
connections, write_timeout 5 s); spool in a fresh temporary directory; ports picked free.
"""
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

CLIENTS = int(os.environ.get("CLIENTS", "70"))
SECONDS = float(os.environ.get("SECONDS", "15"))
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
PROBE_TIMEOUT = 1.0
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(binary: str, spool: str):
    admin, http = free_port(), free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOOKBRIDGE_SPOOL__DIR": spool,
        "HOOKBRIDGE_HTTP__LISTEN": f"127.0.0.1:{http}",
        "HOOKBRIDGE_ADMIN__LISTEN": f"127.0.0.1:{admin}",
        "HOOKBRIDGE_ROUTING__PREFIX": f"stallbench{admin}.",
        "HOOKBRIDGE_SINK__NATS__URL": NATS_URL,
        "HOOKBRIDGE_SINK__NATS__STREAM": f"STALLBENCH{admin}",
        "RUST_LOG": "error",
    }
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if probe(admin, "/livez")[0] == "ok":
            return proc, admin
        if proc.poll() is not None:
            sys.exit(f"{binary} exited: {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"{binary} did not answer /livez within 20 s")


def probe(port: int, path: str):
    """One probe on a new connection: ("ok" | "failed" | "timeout", seconds)."""
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=PROBE_TIMEOUT) as s:
            s.settimeout(max(0.001, PROBE_TIMEOUT - (time.monotonic() - started)))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            head = b""
            while b"\r\n" not in head:
                chunk = s.recv(4096)
                if not chunk:
                    return "failed", time.monotonic() - started
                head += chunk
            ok = head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.1 503")
            return ("ok" if ok else "failed"), time.monotonic() - started
    except socket.timeout:
        return "timeout", time.monotonic() - started
    except OSError:
        return "failed", time.monotonic() - started


def stalled_client(port: int, stop: threading.Event):
    """Pipelines GET /metrics and never reads; reconnects when the bridge closes it."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(0.5)
                while not stop.is_set():
                    try:
                        s.sendall(REQUEST * 64)
                    except socket.timeout:
                        pass  # the bridge stopped reading: keep holding the connection
        except OSError:
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(binary: str) -> None:
    spool = tempfile.mkdtemp(prefix="admin-stall-")
    proc, port = start(binary, spool)
    stop = threading.Event()
    threads = [threading.Thread(target=stalled_client, args=(port, stop), daemon=True)
               for _ in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        cpu_before = cpu_seconds(proc.pid)
        time.sleep(1.0)  # let the stalled clients take the slots
        results = []
        end = time.monotonic() + SECONDS
        while time.monotonic() < end:
            for path in ("/livez", "/readyz"):
                results.append(probe(port, path))
            time.sleep(0.1)
        cpu = cpu_seconds(proc.pid) - cpu_before
    finally:
        stop.set()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(spool, ignore_errors=True)
    failed = sum(1 for r, _ in results if r == "failed")
    timed_out = sum(1 for r, _ in results if r == "timeout")
    latencies = [t for _, t in results]
    print(f"{binary}: {len(results)} probes with {CLIENTS} stalled pipelining clients "
          f"for {SECONDS:.0f} s: failed {failed}, timed out (>{PROBE_TIMEOUT:.0f} s) {timed_out}, "
          f"worst {max(latencies) * 1000:.0f} ms, median {statistics.median(latencies) * 1000:.1f} ms; "
          f"bridge CPU {cpu:.1f} s")


def main() -> None:
    binaries = sys.argv[1:] or ["/work/hookbridge-old-b", "target/debug/hookbridge"]
    for b in binaries:
        run(b)


if __name__ == "__main__":
    main()
