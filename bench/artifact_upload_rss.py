#!/usr/bin/env python3
"""kiln's memory while it archives and uploads a ~300 MB artifact (target: RSS <= 32 MiB).

A release kiln runs one shell job against the GitLab emulator over HTTPS. The job writes
`--mb` files of 1 MiB of random bytes (incompressible, so the zip and the upload are as big as
the tree) under data/ and declares `artifacts: paths: [data/]`. While the job runs, VmRSS of
the kiln process is sampled every 10 ms from /proc/PID/status; VmHWM (the kernel's own peak)
is read at the end. The sampler also watches the zip in the job's .tmp directory: while it
grows kiln is zipping, while it has its final size kiln is uploading it (it is removed after
the upload), so the peak during the upload itself is reported apart from the peak while
zipping.

usage: bench/artifact_upload_rss.py [--mb 300] [--kiln build/release/runner/kiln]
"""

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
import harness  # noqa: E402

MIB = 1024 * 1024


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=300)
    ap.add_argument("--kiln", default=os.path.join(ROOT, "build", "release", "runner", "kiln"))
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="kiln-bench-artifacts-")
    gitlab = harness.Emulator(tls=True, long_poll=5, workdir=os.path.join(work, "emulator"))
    os.makedirs(gitlab.workdir, exist_ok=True)
    gitlab.start()
    proc = None
    try:
        gitlab.configure(max_artifact_size=(args.mb + 64) * MIB, trace_update_interval=1,
                         final_update_202_count=0)
        runner = gitlab.create_runner(kind="glrt")
        config = os.path.join(work, "config.toml")
        with open(config, "w") as f:
            f.write(f'concurrent = 1\ncheck_interval = 1\n\n[[runners]]\n'
                    f'  name = "bench"\n  url = "{gitlab.url}"\n  token = "{runner["token"]}"\n'
                    f'  tls-ca-file = "{gitlab.ca_file}"\n  executor = "shell"\n'
                    f'  builds_dir = "{os.path.join(work, "builds")}"\n')
        script = [f"mkdir -p data && for i in $(seq 1 {args.mb}); do "
                  "head -c 1048576 /dev/urandom > data/f$i.bin; done"]
        job = gitlab.enqueue_job(
            fixture="job_basic", runner_token=runner["token"], script=script, after_script=[],
            variables=[{"key": "GIT_STRATEGY", "value": "none", "public": True, "masked": False}],
            overrides={"artifacts": [{"name": "bench", "paths": ["data/"], "when": "on_success",
                                      "expire_in": "1 hour", "artifact_type": "archive",
                                      "artifact_format": "zip"}]})
        log = open(os.path.join(work, "kiln.log"), "w")
        proc = subprocess.Popen([args.kiln, "run", "--config", config, "--max-jobs", "1"],
                                stdout=log, stderr=subprocess.STDOUT)
        samples = []  # (monotonic, VmRSS KiB, size of the zip being written or uploaded)
        done = threading.Event()
        tmp = os.path.join(work, "builds")

        def zip_size():
            # <builds>/<token>/<slot>/<project>.tmp/artifacts-1-archive.zip while zipping and
            # uploading; removed once the upload is done.
            for root, _, files in os.walk(tmp):
                for f in files:
                    if f.startswith("artifacts-") and f.endswith(".zip"):
                        try:
                            return os.stat(os.path.join(root, f)).st_size
                        except OSError:
                            return None
            return None

        def sample():
            while not done.is_set():
                samples.append((time.monotonic(), status_kib(proc.pid, "VmRSS"), zip_size()))
                time.sleep(0.01)
        t = threading.Thread(target=sample)
        t.start()
        started = time.monotonic()
        hwm = 0
        while proc.poll() is None:
            hwm = max(hwm, status_kib(proc.pid, "VmHWM"))
            time.sleep(0.2)
        done.set()
        t.join()
        elapsed = time.monotonic() - started
        state = gitlab.job(job["id"])
        if state["state"] != "success":
            print(state["trace"])
            raise SystemExit("the job failed")
        archive = gitlab.job_artifact(job["id"], "archive")
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            entries = len(zf.namelist())
        reqs = gitlab.requests(path=f"/api/v4/jobs/{job['id']}/artifacts", method="POST")
        upload_s = sum(r.get("duration") or 0 for r in reqs)
        peak = max(r for _, r, _ in samples)
        # Zipping: the file exists and is smaller than the final archive; uploading: it has its
        # final size (the central directory is written last) until kiln removes it.
        first_zip = next((i for i, (_, _, z) in enumerate(samples) if z is not None),
                         len(samples))
        before = [r for _, r, _ in samples[:first_zip]]
        zipping = [r for _, r, z in samples if z is not None and z < len(archive)]
        uploading = [r for _, r, z in samples if z == len(archive)]
        m = re.search(r"\S+\.zip: (\d+) files, ([\d.]+ \w+) in ([\d.]+ \w+)", state["trace"])
        print(f"artifact: {args.mb} MiB of random files -> {len(archive) / MIB:.1f} MiB zip "
              f"({entries} entries; kiln says {m.group(0) if m else '?'})")
        print(f"job: {elapsed:.1f} s in all; upload request {upload_s:.1f} s (emulator side)")
        def peak_of(xs):
            return f"{max(xs) / 1024:.1f} MiB ({len(xs)} samples)" if xs else "n/a (no samples)"
        print(f"kiln VmRSS: peak {peak / 1024:.1f} MiB over the job ({len(samples)} samples "
              f"every 10 ms); before the artifact stage {peak_of(before)}; while zipping "
              f"{peak_of(zipping)}; while uploading "
              f"{peak_of(uploading)}")
        print(f"kiln VmHWM: {hwm / 1024:.1f} MiB (kernel peak, includes start-up)")
        verdict = "met" if hwm <= 32 * 1024 else "NOT met"
        print(f"target RSS <= 32 MiB during a {args.mb} MB upload: {verdict}")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        gitlab.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
