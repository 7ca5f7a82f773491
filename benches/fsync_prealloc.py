#!/usr/bin/env python3
"""What a group commit's fdatasync costs when the segment grows with every commit (what the
spool does today) against writing into a file preallocated and zero-filled ahead of time (a
possible spool change, not made): 4,000 commits of 32 x 1,232-byte records, the spool's shape
at 64 connections, alternating the two three times. Prints wall time, CPU time and voluntary
context switches per commit.

    python3 benches/fsync_prealloc.py [DIR]     # DIR on the spool's filesystem; default target/bench/work
"""
import os
import resource
import sys
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "target/bench/work"
RECORD, PER_COMMIT, COMMITS = 1232, 32, 4000


def run(kind: str, data: bytes) -> None:
    path = os.path.join(DIR, f"fsync-{kind}.seg")
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if kind == "prealloc":
            zeros = bytes(1 << 20)
            for _ in range(len(data) * COMMITS // len(zeros) + 1):
                os.write(fd, zeros)
            os.fsync(fd)
        offset = 0
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(COMMITS):
            os.pwrite(fd, data, offset)
            offset += len(data)
            os.fdatasync(fd)
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
        os.unlink(path)
    cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / COMMITS * 1e6
    switches = (r1.ru_nvcsw - r0.ru_nvcsw) / COMMITS
    print(f"{kind:9s} {(t1 - t0) / COMMITS * 1e3:.3f} ms per commit, {cpu:.0f} us CPU per commit, "
          f"{switches:.1f} voluntary context switches per commit")


def main() -> None:
    os.makedirs(DIR, exist_ok=True)
    data = os.urandom(RECORD * PER_COMMIT)
    for _ in range(3):
        run("append", data)
        run("prealloc", data)


if __name__ == "__main__":
    main()
