#!/usr/bin/env python3
"""kiln's main job, end to end on loopback: start the GitLab emulator over HTTPS, register a
runner with `kiln register`, queue a job that builds a small repository, run `kiln run` until
the job is done, and print the job's trace as GitLab stored it."""

import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
import harness  # noqa: E402

KILN = os.environ.get("KILN_BIN", os.path.join(ROOT, "build", "release", "runner", "kiln"))

REPO_FILES = {
    "Makefile": "deps:\n\t@echo 'resolving dependencies'\n\ntest:\n\t@sh ./check.sh\n",
    "check.sh": "#!/bin/sh\nset -e\necho \"testing $(cat VERSION)\"\n"
                "echo \"the deploy password is $DEPLOY_PASSWORD\"\necho 'ok'\n",
    "VERSION": "1.0.0\n",
}


def main() -> int:
    work = tempfile.mkdtemp(prefix="kiln-demo-")
    config = os.path.join(work, "config.toml")
    with harness.Emulator(tls=True, long_poll=10) as gitlab:
        runner = gitlab.create_runner(kind="glrt")
        subprocess.run([KILN, "register", "--non-interactive", "--url", gitlab.url,
                        "--token", runner["token"], "--executor", "shell", "--name", "demo",
                        "--tls-ca-file", gitlab.ca_file, "--builds-dir", os.path.join(work, "builds"),
                        "--config", config], check=True)
        subprocess.run([KILN, "list", "--config", config], check=True)

        sha = harness.make_bare_repo(os.path.join(work, "widgets.git"), REPO_FILES)
        gitlab.add_repo("acme/widgets", os.path.join(work, "widgets.git"))
        job = gitlab.enqueue_job(fixture="job_basic", repo="acme/widgets", sha=sha)
        print(f"queued job {job['id']} for {job['repo_url'].split('@')[-1]}", flush=True)

        subprocess.run([KILN, "run", "--config", config, "--max-jobs", "1"], check=True,
                       timeout=300)
        state = gitlab.job(job["id"])
        sys.stdout.write("\n----- job trace as GitLab stored it -----\n")
        sys.stdout.write(gitlab.job_trace(job["id"]).decode("utf-8", "replace"))
        sys.stdout.write("-----------------------------------------\n")
        print(json.dumps({k: state.get(k) for k in
                          ("state", "failure_reason", "exit_code", "checksum_ok", "bytesize_ok")}))
        return 0 if state.get("state") == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
