#!/usr/bin/env python3
"""Pickup latency: from a job being queued in a long-polling GitLab (the emulator, over HTTPS,
holding requests for 50 s) to kiln's first `PUT state=running` for it, over N jobs.

Each job is queued while kiln's request for work is held, which is the normal state of an idle
runner. Times are wall-clock on this machine: the client's time just before it queues the job,
and the emulator's receive time of kiln's PUT (millisecond resolution).

usage: bench/pickup_latency.py [--jobs 100] [--kiln build/release/runner/kiln]
"""

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
import harness  # noqa: E402


def parse_iso(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "release", "runner", "kiln"))
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="kiln-pickup-")
    config = os.path.join(work, "config.toml")
    with harness.Emulator(tls=True, long_poll=50) as gitlab:
        runner = gitlab.create_runner(kind="glrt")
        with open(config, "w") as f:
            f.write(f'concurrent = 4\ncheck_interval = 3\n\n[[runners]]\n  name = "bench"\n'
                    f'  url = "{gitlab.url}"\n  token = "{runner["token"]}"\n'
                    f'  tls-ca-file = "{gitlab.ca_file}"\n  executor = "shell"\n'
                    f'  builds_dir = "{os.path.join(work, "builds")}"\n')
        log = open(os.path.join(work, "kiln.log"), "w")
        kiln = subprocess.Popen([args.kiln, "run", "--config", config], stdout=log,
                                stderr=subprocess.STDOUT)
        latencies = []
        try:
            for _ in range(args.jobs):
                # Wait until kiln's request for work is being held by GitLab.
                def held():
                    reqs = gitlab.requests(path="/api/v4/jobs/request")
                    return reqs and reqs[-1]["status"] is None
                gitlab.wait_for(held, timeout=30)
                time.sleep(0.02)  # let the held request settle in the emulator's long poll
                queued = time.time()
                job = gitlab.enqueue_job(fixture="job_basic", runner_token=runner["token"],
                                         script=["true"], after_script=[],
                                         variables=[{"key": "GIT_STRATEGY", "value": "none",
                                                     "public": True, "masked": False}])
                state = gitlab.wait_job_state(job["id"], timeout=60)
                running = [p for p in state["puts"] if p["state"] == "running"]
                latencies.append(parse_iso(running[0]["time"]) - queued)
        finally:
            kiln.terminate()
            kiln.wait(timeout=30)
            log.close()
    ms = sorted(x * 1000 for x in latencies)
    p = lambda q: ms[min(len(ms) - 1, int(round(q * (len(ms) - 1))))]  # noqa: E731
    print(f"pickup latency over {len(ms)} jobs (queued -> first running PUT), long poll held:")
    print(f"  p50 {p(0.50):.1f} ms  p90 {p(0.90):.1f} ms  p99 {p(0.99):.1f} ms  "
          f"max {ms[-1]:.1f} ms  mean {statistics.mean(ms):.1f} ms")


if __name__ == "__main__":
    main()
