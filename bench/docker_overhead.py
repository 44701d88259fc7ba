#!/usr/bin/env python3
"""kiln's own time per Docker job: from receiving the job to GitLab accepting its final state,
minus the time the Docker engine was working on kiln's requests for it (image inspect,
container create, attach, start, wait, inspect, remove).

kiln measures both and logs them with each finished job (`duration_ms`, `engine_ms`; the
engine time is the union of the intervals in which any request or attach stream of the job
was open, so a stage's attach stream and its concurrent `wait` count once). The difference is
what kiln adds: its PUTs and PATCHes to GitLab (the emulator, over HTTPS), script generation,
trace handling, bookkeeping. For scale, `docker run --rm IMAGE true` (the docker CLI doing
create + attach + start + wait + remove) is timed in the same run.

Jobs run one after another (script `true`, GIT_STRATEGY none, no services) on the local
busybox image made by scripts/docker-setup.sh.

usage: bench/docker_overhead.py [--jobs 30] [--kiln build/release/runner/kiln]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
import harness  # noqa: E402

IMAGE = "local/busybox"


def percentile(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def summary(name, values):
    return (f"  {name:<34} p50 {percentile(values, 0.5):7.1f} ms   p90 {percentile(values, 0.9):7.1f} ms"
            f"   max {max(values):7.1f} ms   mean {statistics.mean(values):7.1f} ms")


def job_lines(log_path):
    out = {}
    with open(log_path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("msg") in ("Job succeeded", "Job failed") and "engine_ms" in rec:
                out[int(rec["job"])] = rec
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "release", "runner", "kiln"))
    args = ap.parse_args()

    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        sys.exit(f"{IMAGE} is missing: run scripts/docker-setup.sh first")

    # The reference: the docker CLI's create + attach + start + wait + remove.
    subprocess.run(["docker", "run", "--rm", IMAGE, "true"], check=True)  # warm-up
    docker_run = []
    for _ in range(args.jobs):
        t = time.monotonic()
        subprocess.run(["docker", "run", "--rm", IMAGE, "true"], check=True)
        docker_run.append((time.monotonic() - t) * 1000)

    work = tempfile.mkdtemp(prefix="kiln-docker-bench-")
    config = os.path.join(work, "config.toml")
    log_path = os.path.join(work, "kiln.log")
    with harness.Emulator(tls=True, long_poll=50) as gitlab:
        gitlab.configure(final_update_202_count=0)
        runner = gitlab.create_runner(kind="glrt")
        with open(config, "w") as f:
            f.write(f'concurrent = 1\ncheck_interval = 3\nlog_format = "json"\n\n[[runners]]\n'
                    f'  name = "bench"\n  url = "{gitlab.url}"\n  token = "{runner["token"]}"\n'
                    f'  tls-ca-file = "{gitlab.ca_file}"\n  executor = "docker"\n'
                    f'  builds_dir = "{os.path.join(work, "builds")}"\n'
                    f'  [runners.docker]\n    image = "{IMAGE}"\n'
                    '    pull_policy = ["if-not-present"]\n')
        log = open(log_path, "w")
        kiln = subprocess.Popen([args.kiln, "run", "--config", config], stdout=log,
                                stderr=subprocess.STDOUT)
        ids = []
        try:
            for i in range(args.jobs + 1):  # the first job warms up (engine negotiation, caches)
                job = gitlab.enqueue_job(fixture="job_basic", runner_token=runner["token"],
                                         overrides={"image": {"name": IMAGE}, "services": []},
                                         script=["true"], after_script=[],
                                         variables=[{"key": "GIT_STRATEGY", "value": "none",
                                                     "public": True, "masked": False}])
                state = gitlab.wait_job_state(job["id"], timeout=120)
                if state["state"] != "success":
                    sys.exit(f"job {job['id']} ended {state['state']}:\n{state.get('trace', '')}")
                if i > 0:
                    ids.append(job["id"])
            deadline = time.time() + 10
            while time.time() < deadline and not set(ids) <= set(job_lines(log_path)):
                time.sleep(0.1)
        finally:
            kiln.terminate()
            kiln.wait(timeout=30)
            log.close()
    lines = job_lines(log_path)
    missing = [i for i in ids if i not in lines]
    if missing:
        sys.exit(f"no finish line in kiln's log for jobs {missing}; log: {log_path}")
    duration = [float(lines[i]["duration_ms"]) for i in ids]
    engine = [float(lines[i]["engine_ms"]) for i in ids]
    own = [d - e for d, e in zip(duration, engine)]

    print(f"Docker jobs, one at a time, image {IMAGE}, script `true` ({len(ids)} jobs):")
    print(summary("kiln: pickup -> final update", duration))
    print(summary("  of which the engine", engine))
    print(summary("  kiln's own time (difference)", own))
    print(summary("docker run --rm (CLI, same image)", docker_run))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
