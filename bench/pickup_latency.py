#!/usr/bin/env python3
"""Pickup latency: from a job being queued in a long-polling GitLab (the emulator, over HTTPS,
holding requests for 50 s) to kiln's first `PUT state=running` for it, over N jobs.

Each job is queued while kiln's request for work is held, which is the normal state of an idle
runner. Times are wall-clock on this machine: the client's time just before it queues the job,
and the emulator's receive time of kiln's PUT (millisecond resolution).

With --runners 2 (issue 6) the config has two [[runners]] entries and every job is for the
second one, queued while both hold their polls; the script also checks that the first entry's
held poll was still held when the second's job was picked up (no starvation).

usage: bench/pickup_latency.py [--jobs 100] [--runners 1] [--kiln build/release/runner/kiln]
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
    ap.add_argument("--runners", type=int, default=1)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "release", "runner", "kiln"))
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="kiln-pickup-")
    config = os.path.join(work, "config.toml")
    with harness.Emulator(tls=True, long_poll=50) as gitlab:
        runners = [gitlab.create_runner(kind="glrt") for _ in range(args.runners)]
        runner = runners[-1]  # every job is for the last entry
        with open(config, "w") as f:
            f.write("concurrent = 4\ncheck_interval = 3\n")
            for i, r in enumerate(runners):
                f.write(f'\n[[runners]]\n  name = "bench-{i}"\n'
                        f'  url = "{gitlab.url}"\n  token = "{r["token"]}"\n'
                        f'  tls-ca-file = "{gitlab.ca_file}"\n  executor = "shell"\n'
                        f'  builds_dir = "{os.path.join(work, "builds")}"\n')
        log = open(os.path.join(work, "kiln.log"), "w")
        kiln = subprocess.Popen([args.kiln, "run", "--config", config], stdout=log,
                                stderr=subprocess.STDOUT)
        latencies = []
        starved = 0  # pickups for which another entry's held poll had ended first
        try:
            for _ in range(args.jobs):
                # Wait until each entry's request for work is being held by GitLab.
                def held_by(token):
                    return [r for r in gitlab.requests(path="/api/v4/jobs/request")
                            if (r.get("json") or {}).get("token") == token
                            and r["status"] is None]
                gitlab.wait_for(lambda: all(held_by(r["token"]) for r in runners), timeout=30)
                others_held = [held_by(r["token"])[-1]["seq"] for r in runners[:-1]]
                time.sleep(0.02)  # let the held request settle in the emulator's long poll
                queued = time.time()
                job = gitlab.enqueue_job(fixture="job_basic", runner_token=runner["token"],
                                         script=["true"], after_script=[],
                                         variables=[{"key": "GIT_STRATEGY", "value": "none",
                                                     "public": True, "masked": False}])
                state = gitlab.wait_job_state(job["id"], timeout=60)
                running = [p for p in state["puts"] if p["state"] == "running"]
                picked = parse_iso(running[0]["time"])
                latencies.append(picked - queued)
                # The other entries' polls: still held, or answered only after the pickup.
                for seq in others_held:
                    r = [x for x in gitlab.requests(path="/api/v4/jobs/request")
                         if x["seq"] == seq][0]
                    if r["duration"] is not None and parse_iso(r["time"]) + r["duration"] < picked:
                        starved += 1
        finally:
            kiln.terminate()
            kiln.wait(timeout=30)
            log.close()
    ms = sorted(x * 1000 for x in latencies)
    p = lambda q: ms[min(len(ms) - 1, int(round(q * (len(ms) - 1))))]  # noqa: E731
    print(f"pickup latency over {len(ms)} jobs (queued -> first running PUT), long poll held, "
          f"{args.runners} runner entries:")
    print(f"  p50 {p(0.50):.1f} ms  p90 {p(0.90):.1f} ms  p99 {p(0.99):.1f} ms  "
          f"max {ms[-1]:.1f} ms  mean {statistics.mean(ms):.1f} ms")
    if args.runners > 1:
        print(f"  the other entries' polls were held through every pickup: "
              f"{'yes' if starved == 0 else f'no ({starved} pickups)'}")


if __name__ == "__main__":
    main()
