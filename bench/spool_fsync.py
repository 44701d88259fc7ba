#!/usr/bin/env python3
"""What the write-ahead spool costs per job: the syscalls runner/spool.cpp makes for one entry
(trace and JSON each written to a temporary file, fsynced and renamed, then the directory
fsynced), timed on the file system holding DIR (put it where the spool lives: next to the
config file, or spool_dir).

    python3 bench/spool_fsync.py [DIR] [--rounds 20]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time


def write_entry(d: str, trace: bytes, meta: bytes) -> None:
    for name, payload in (("job-1.trace", trace), ("job-1.json", meta)):
        tmp = os.path.join(d, name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(d, name))
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default=".")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir)
    meta = b"x" * 400  # a spool JSON is ~400 bytes
    try:
        for size in (10_000, 1_000_000, 4 << 20):  # a small log .. output_limit's default
            trace = os.urandom(size)
            times = []
            for _ in range(args.rounds):
                t = time.perf_counter()
                write_entry(d, trace, meta)
                times.append((time.perf_counter() - t) * 1000)
                for name in ("job-1.json", "job-1.trace"):  # removal: unlinks, not synced
                    os.unlink(os.path.join(d, name))
            print(f"trace {size:>8} bytes: median {statistics.median(times):6.2f} ms, "
                  f"max {max(times):6.2f} ms ({args.rounds} rounds)")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
