#!/usr/bin/env python3
"""Cost of streaming job logs, measured on the real kiln binary against the GitLab emulator
over HTTPS:

1. CPU: kiln's CPU time (all its threads, from /proc/PID/task/*/schedstat) for one job that
   prints ~100 MB of base64 text, minus the CPU of the same kiln running a job that prints nothing. Reported as
   ms per MB of log.
2. Memory: kiln's RSS with N jobs streaming logs at the same time, against the RSS with one,
   as the growth per additional concurrent job.

usage: bench/trace_streaming.py [--mb 100] [--repeat 3] [--jobs 8] [--kiln build/release/runner/kiln]

The big job runs --repeat times; each run and the median are printed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
import harness  # noqa: E402

NONE = [{"key": "GIT_STRATEGY", "value": "none", "public": True, "masked": False}]


def cpu_seconds(pid):
    """CPU time of every thread of the process, in nanoseconds from the scheduler
    (/proc/PID/task/TID/schedstat), where /proc/PID/stat counts 10 ms ticks. kiln's threads live
    as long as the process, so none of its time is lost with an ended thread."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total / 1e9


def memory_kib(pid):
    """VmRSS and RssAnon (the part that is not code or other file pages) in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(line.split()[1])
    return out


class Kiln:
    def __init__(self, gitlab, kiln_bin, work, concurrent):
        self.gitlab = gitlab
        self.runner = gitlab.create_runner(kind="glrt")
        config = os.path.join(work, "config.toml")
        with open(config, "w") as f:
            f.write(f'concurrent = {concurrent}\ncheck_interval = 1\n\n[[runners]]\n'
                    f'  name = "bench"\n  url = "{gitlab.url}"\n  token = "{self.runner["token"]}"\n'
                    f'  tls-ca-file = "{gitlab.ca_file}"\n  executor = "shell"\n'
                    f'  output_limit = 200000\n  request_concurrency = {concurrent}\n'
                    f'  builds_dir = "{os.path.join(work, "builds")}"\n')
        self.log = open(os.path.join(work, "kiln.log"), "w")
        self.proc = subprocess.Popen([kiln_bin, "run", "--config", config], stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def job(self, script):
        return self.gitlab.enqueue_job(fixture="job_basic", runner_token=self.runner["token"],
                                       script=script, after_script=[], variables=NONE)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)
        self.log.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--plain", action="store_true", help="GitLab over http:// instead of https://")
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "release", "runner", "kiln"))
    args = ap.parse_args()

    with harness.Emulator(tls=not args.plain, long_poll=50) as gitlab:
        gitlab.configure(trace_limit_bytes=1 << 30, trace_update_interval=3)
        work = tempfile.mkdtemp(prefix="kiln-trace-bench-")
        kiln = Kiln(gitlab, args.kiln, work, max(2, args.jobs))
        try:
            # Baseline: the fixed cost of a job (git none, stages, updates) without output.
            idle = kiln.job(["true"])
            gitlab.wait_job_state(idle["id"], timeout=120)
            before = cpu_seconds(kiln.proc.pid)
            empty = kiln.job(["true"])
            gitlab.wait_job_state(empty["id"], timeout=120)
            fixed = cpu_seconds(kiln.proc.pid) - before

            # The random bytes are made once, so the job is base64 alone (one process).
            random_file = os.path.join(work, "random.bin")
            with open(random_file, "wb") as f:
                f.write(os.urandom(args.mb * 1000 * 1000 * 3 // 4))
            per_mb = []
            for _ in range(args.repeat):
                before = cpu_seconds(kiln.proc.pid)
                big = kiln.job([f"base64 -w 100 {random_file}"])
                state = gitlab.wait_job_state(big["id"], timeout=600)
                used = cpu_seconds(kiln.proc.pid) - before - fixed
                size_mb = state["trace_size"] / 1e6
                ok = state["state"] == "success" and state["checksum_ok"]
                per_mb.append(used * 1000 / size_mb)
                print(f"CPU: {used * 1000:.0f} ms for a {size_mb:.1f} MB log = "
                      f"{used * 1000 / size_mb:.2f} ms/MB (job {state['state']}, checksum_ok={ok}; "
                      f"fixed per-job cost {fixed * 1000:.0f} ms subtracted)")
            per_mb.sort()
            print(f"CPU median of {len(per_mb)}: {per_mb[len(per_mb) // 2]:.2f} ms/MB")

            # Memory: jobs that print steadily for a while. The first keeps running while the
            # others are added, so no idle-memory trim (kiln trims 2 s after its last job ends)
            # falls between the two readings and both hold the same code pages.
            script = ["for i in $(seq 1 600); do echo \"line $i $(date +%s%N)\"; sleep 0.05; done"]
            time.sleep(3)
            first = kiln.job(script)
            gitlab.wait_for(lambda: gitlab.job(first["id"])["state"] == "running", timeout=60)
            time.sleep(4)
            one = memory_kib(kiln.proc.pid)
            jobs = [first] + [kiln.job(script) for _ in range(args.jobs - 1)]
            gitlab.wait_for(lambda: all(gitlab.job(j["id"])["state"] == "running" for j in jobs),
                            timeout=60)
            time.sleep(4)
            many = memory_kib(kiln.proc.pid)
            for j in jobs:
                gitlab.wait_job_state(j["id"], timeout=300)
            for key in ("VmRSS", "RssAnon"):
                growth = (many[key] - one[key]) / (args.jobs - 1)
                print(f"{key}: {one[key]} KiB with 1 streaming job, {many[key]} KiB with "
                      f"{args.jobs}: {growth:.0f} KiB per additional concurrent job")
        finally:
            kiln.stop()


if __name__ == "__main__":
    main()
