#!/usr/bin/env python3
"""What a group commit's fdatasync costs on this disk, three ways: growing the file with every
commit (`spool.preallocate_bytes = 0`); writing zeros ahead of the data whenever a commit
reaches past them, under the same fdatasync (what the spool does, 1 MiB by default); and a file
zero-filled in full before the first commit (the floor: no zeros written while it runs).
4,000 commits of 32 x 1,232-byte records, the spool's shape at 64 connections, the three
alternated three times. Prints wall time, CPU time and voluntary context switches per commit.

    python3 benches/fsync_prealloc.py [DIR] [CHUNK_BYTES]
        DIR on the spool's filesystem (default target/bench/work); CHUNK_BYTES default 1048576
"""
import os
import resource
import sys
import time

DIR = sys.argv[1] if len(sys.argv) > 1 else "target/bench/work"
CHUNK = int(sys.argv[2]) if len(sys.argv) > 2 else 1 << 20
RECORD, PER_COMMIT, COMMITS = 1232, 32, 4000


def run(kind: str, data: bytes) -> None:
    path = os.path.join(DIR, f"fsync-{kind}.seg")
    if os.path.exists(path):
        os.unlink(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        allocated = 0
        if kind == "zero-filled":
            zeros = bytes(1 << 20)
            for _ in range(len(data) * COMMITS // len(zeros) + 1):
                os.write(fd, zeros)
            os.fsync(fd)
            allocated = os.fstat(fd).st_size
        chunk = bytes(CHUNK) if kind == "ahead" else b""
        offset = 0
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(COMMITS):
            os.pwrite(fd, data, offset)
            offset += len(data)
            if chunk and offset > allocated:
                os.pwrite(fd, chunk, offset)
                allocated = offset + len(chunk)
            os.fdatasync(fd)
        t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    finally:
        os.close(fd)
        os.unlink(path)
    cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / COMMITS * 1e6
    switches = (r1.ru_nvcsw - r0.ru_nvcsw) / COMMITS
    print(f"{kind:11s} {(t1 - t0) / COMMITS * 1e3:.3f} ms per commit, {cpu:.0f} us CPU per commit, "
          f"{switches:.1f} voluntary context switches per commit", flush=True)


def main() -> None:
    os.makedirs(DIR, exist_ok=True)
    data = os.urandom(RECORD * PER_COMMIT)
    for _ in range(3):
        run("grow", data)
        run("ahead", data)
        run("zero-filled", data)


if __name__ == "__main__":
    main()
