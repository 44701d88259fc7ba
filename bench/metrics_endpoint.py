#!/usr/bin/env python3
"""The cost of the listen_address endpoint: idle RSS of `kiln run` with and without it, and
the latency, kiln CPU time and size of /metrics scrapes over one kept-alive connection.

Each variant: the emulator (plain HTTP, requests held 10 s), one shell runner with 10 finished
jobs behind it (so the histograms and API counters have series), then two long-poll cycles of
idling before VmRSS is read from /proc. The scrape loop runs only for the listening variant.

usage: bench/metrics_endpoint.py [--kiln build/release/runner/kiln] [--scrapes 2000]
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
import harness  # noqa: E402


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_variant(kiln, listen, scrapes):
    work = tempfile.mkdtemp(prefix="kiln-metrics-bench-")
    config = os.path.join(work, "config.toml")
    with harness.Emulator(tls=False, long_poll=10) as gitlab:
        repo = os.path.join(work, "r.git")
        sha = harness.make_bare_repo(repo, {"README.md": "x\n"})
        gitlab.add_repo("acme/r", repo)
        token = gitlab.create_runner(kind="glrt")["token"]
        with open(config, "w") as f:
            f.write(("listen_address = \"127.0.0.1:0\"\n" if listen else "") +
                    "concurrent = 2\ncheck_interval = 1\n[[runners]]\n  name = \"bench\"\n"
                    f"  url = \"{gitlab.url}\"\n  token = \"{token}\"\n  executor = \"shell\"\n"
                    f"  builds_dir = \"{work}/builds\"\n")
        log_path = os.path.join(work, "kiln.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen([kiln, "run", "--config", config, "--log-format", "json"],
                                    stdout=log, stderr=subprocess.STDOUT)
        try:
            jobs = [gitlab.enqueue_job(fixture="job_basic", repo="acme/r", sha=sha,
                                       runner_token=token, script=["echo hi"], after_script=[])
                    for _ in range(10)]
            for j in jobs:
                gitlab.wait_job_state(j["id"], timeout=120)
            time.sleep(2 * 10 + 3)  # two long-poll cycles, past the idle trim
            result = {"VmRSS_KiB": status_kib(proc.pid, "VmRSS"),
                      "VmHWM_KiB": status_kib(proc.pid, "VmHWM")}
            if listen:
                address = None
                with open(log_path) as f:
                    for line in f:
                        e = json.loads(line) if line.startswith("{") else {}
                        if e.get("msg") == "serving metrics and health checks":
                            address = e["listen_address"]
                host, port = address.rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                times = []
                cpu0 = cpu_seconds(proc.pid)
                for _ in range(scrapes):
                    t0 = time.perf_counter()
                    conn.request("GET", "/metrics")
                    r = conn.getresponse()
                    body = r.read()
                    times.append(time.perf_counter() - t0)
                cpu = cpu_seconds(proc.pid) - cpu0
                times.sort()
                result.update({
                    "scrapes": scrapes, "body_bytes": len(body),
                    "series": sum(1 for l in body.decode().splitlines() if not l.startswith("#")),
                    "p50_ms": round(statistics.median(times) * 1e3, 3),
                    "p99_ms": round(times[int(len(times) * 0.99)] * 1e3, 3),
                    "kiln_cpu_us_per_scrape": round(cpu / scrapes * 1e6, 1),
                    "VmRSS_after_scrapes_KiB": status_kib(proc.pid, "VmRSS"),
                })
            return result
        finally:
            proc.kill()
            proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "release", "runner", "kiln"))
    ap.add_argument("--scrapes", type=int, default=2000)
    args = ap.parse_args()
    without = run_variant(args.kiln, False, 0)
    with_ep = run_variant(args.kiln, True, args.scrapes)
    print(json.dumps({"without_listen_address": without, "with_listen_address": with_ep}, indent=2))


if __name__ == "__main__":
    main()
