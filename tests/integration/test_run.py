"""`kiln run` against the GitLab emulator with the shell executor: what GitLab ends up with
(final state, failure reason, exit code, the stored trace and its checksum) for jobs that
succeed, fail, time out, are canceled, or run while GitLab misbehaves."""

import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
import harness  # noqa: E402

KILN = os.environ.get("KILN_BIN", os.path.join(ROOT, "build", "release", "runner", "kiln"))

SECRET = "s3cr3t-Passw0rd"  # DEPLOY_PASSWORD in fixtures/job_basic.json, masked


class RunTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gitlab = harness.Emulator(tls=True, long_poll=5)
        cls.gitlab.start()
        cls.work = tempfile.mkdtemp(prefix="kiln-run-test-")
        cls.repo = os.path.join(cls.work, "widgets.git")
        cls.sha = harness.make_bare_repo(cls.repo, {"README.md": "widgets\n", "VERSION": "1.2.3\n"})
        cls.gitlab.add_repo("acme/widgets", cls.repo)

    @classmethod
    def tearDownClass(cls):
        cls.gitlab.stop()
        cls.gitlab.cleanup()
        shutil.rmtree(cls.work, ignore_errors=True)

    def setUp(self):
        self.gitlab.clear_faults()
        self.gitlab.configure(trace_update_interval=1, final_update_202_count=1)
        runner = self.gitlab.create_runner(kind="glrt")
        self.token = runner["token"]
        self.dir = tempfile.mkdtemp(dir=self.work)
        self.config = os.path.join(self.dir, "config.toml")
        with open(self.config, "w") as f:
            f.write(
                "concurrent = 2\ncheck_interval = 1\nshutdown_timeout = 5\n\n[[runners]]\n"
                f'  name = "t"\n  url = "{self.gitlab.url}"\n  token = "{self.token}"\n'
                f'  tls-ca-file = "{self.gitlab.ca_file}"\n  executor = "shell"\n'
                f'  builds_dir = "{os.path.join(self.dir, "builds")}"\n')
        self.proc = None

    def tearDown(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "log", None):
            self.log.close()

    def start_kiln(self, *args):
        self.log = open(os.path.join(self.dir, "kiln.log"), "w")
        self.proc = subprocess.Popen([KILN, "run", "--config", self.config, *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def run_one(self, script, after_script=None, timeout=None, **extra):
        job = self.gitlab.enqueue_job(fixture="job_basic", repo="acme/widgets", sha=self.sha,
                                      runner_token=self.token, script=script,
                                      after_script=after_script or [], **extra)
        if timeout is not None:
            self.gitlab.set_job_timeout(job["id"], timeout)
        self.start_kiln("--max-jobs", "1")
        self.assertEqual(self.proc.wait(timeout=120), 0, self.kiln_log())
        return self.gitlab.job(job["id"])

    def kiln_log(self):
        with open(os.path.join(self.dir, "kiln.log")) as f:
            return f.read()

    def assert_consistent_trace(self, state):
        self.assertTrue(state["checksum_ok"], state)
        self.assertEqual(state["protocol_violations"], [])
        self.assertNotIn(SECRET, state["trace"])
        self.assertNotIn(self.token, state["trace"])

    def test_success_reports_state_checksum_and_output(self):
        state = self.run_one(["echo \"version $(cat VERSION)\"", "echo \"pw=$DEPLOY_PASSWORD\""])
        self.assertEqual(state["state"], "success", state["trace"])
        self.assertIn("version 1.2.3", state["trace"])
        self.assertIn("pw=[MASKED]", state["trace"])
        self.assertIn("Job succeeded", state["trace"])
        self.assertIn("section_start:", state["trace"])
        # Timestamps only when the job asks for them.
        self.assertIn("\nversion 1.2.3\n", state["trace"])
        self.assertNotRegex(state["trace"], r"(?m)^\d{4}-\d\d-\d\dT\d\d:")
        self.assert_consistent_trace(state)

    def test_script_failure_reports_exit_code(self):
        state = self.run_one(["echo failing", "exit 3", "echo never"],
                             after_script=["echo \"after: $CI_JOB_STATUS\""])
        self.assertEqual(state["state"], "failed")
        self.assertEqual(state["failure_reason"], "script_failure")
        self.assertEqual(state["exit_code"], 3)
        self.assertNotIn("\nnever\n", state["trace"])
        self.assertIn("after: failed", state["trace"])
        self.assertIn("ERROR: Job failed: exit code 3", state["trace"])
        self.assert_consistent_trace(state)

    def test_timeout_kills_the_script(self):
        started = time.monotonic()
        state = self.run_one(["sleep 60"], timeout=2)
        self.assertLess(time.monotonic() - started, 45)
        self.assertEqual(state["state"], "failed")
        self.assertEqual(state["failure_reason"], "job_execution_timeout")
        self.assertIn("execution took longer than 2s seconds", state["trace"])
        self.assert_consistent_trace(state)

    def test_secret_split_across_writes_and_patches_never_reaches_gitlab(self):
        # The secret is printed one byte at a time with pauses, so it spans writes and
        # (with a 1 s update interval) PATCH requests.
        script = [f"for c in $(echo \"$DEPLOY_PASSWORD\" | sed 's/./& /g'); do printf %s \"$c\"; "
                  "sleep 0.4; done; echo", "echo done"]
        state = self.run_one(script)
        self.assertEqual(state["state"], "success", state["trace"])
        self.assertIn("[MASKED]\n", state["trace"])
        self.assertGreater(len(state["patches"]), 1)
        self.assert_consistent_trace(state)

    def test_file_variables_and_the_gitlab_ca_are_files(self):
        state = self.run_one(
            ["cat \"$MY_CONFIG\"", "grep -q 'BEGIN CERTIFICATE' \"$CI_SERVER_TLS_CA_FILE\" && echo ca-ok",
             "echo \"dir=$CI_PROJECT_DIR\"", "test \"$(pwd)\" = \"$CI_PROJECT_DIR\" && echo in-project"],
            variables=[{"key": "MY_CONFIG", "value": "from-a-file-variable", "public": False,
                        "masked": False, "file": True}])
        self.assertEqual(state["state"], "success", state["trace"])
        self.assertIn("\nfrom-a-file-variable", state["trace"])
        self.assertIn("\nca-ok\n", state["trace"])
        self.assertIn("\nin-project\n", state["trace"])
        # builds_dir/<short token>/<concurrent id>/<namespace>/<project>
        self.assertRegex(state["trace"], r"dir=.*/builds/[A-Za-z0-9_-]+/0/acme/widgets\n")

    def test_submodules_are_fetched_recursively(self):
        lib = os.path.join(self.dir, "lib.git")
        lib_sha = harness.make_bare_repo(lib, {"lib.txt": "library content\n"})
        self.gitlab.add_repo("acme/lib", lib)
        work = os.path.join(self.dir, "app-work")
        harness.git("init", "-q", "-b", "main", work)
        harness.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", lib, "lib", cwd=work)
        with open(os.path.join(work, ".gitmodules"), "w") as f:
            f.write('[submodule "lib"]\n\tpath = lib\n\turl = ../lib.git\n')
        harness.git("add", "-A", cwd=work)
        harness.git("-c", "commit.gpgsign=false", "-c", "user.name=t", "-c", "user.email=t@t",
                    "commit", "-q", "-m", "app with submodule", cwd=work)
        sha = harness.git("rev-parse", "HEAD", cwd=work)
        app = os.path.join(self.dir, "app.git")
        harness.git("clone", "-q", "--bare", work, app)
        self.gitlab.add_repo("acme/app", app)
        job = self.gitlab.enqueue_job(
            fixture="job_basic", repo="acme/app", sha=sha, runner_token=self.token,
            script=["cat lib/lib.txt"],
            variables=[{"key": "GIT_SUBMODULE_STRATEGY", "value": "recursive", "public": True,
                        "masked": False}])
        self.start_kiln("--max-jobs", "1")
        self.assertEqual(self.proc.wait(timeout=120), 0, self.kiln_log())
        state = self.gitlab.job(job["id"])
        self.assertEqual(state["state"], "success", state["trace"])
        self.assertIn("\nlibrary content\n", state["trace"])
        self.assertEqual(lib_sha, harness.git("rev-parse", "HEAD", cwd=lib))

    def test_a_failed_fetch_fails_the_job_clearly(self):
        job = self.gitlab.enqueue_job(fixture="job_basic", repo="acme/widgets", sha="0" * 40,
                                      runner_token=self.token, script=["echo never"])
        self.start_kiln("--max-jobs", "1")
        self.assertEqual(self.proc.wait(timeout=120), 0, self.kiln_log())
        state = self.gitlab.job(job["id"])
        self.assertEqual(state["state"], "failed")
        self.assertIn("could not fetch the sources", state["trace"])
        self.assertNotIn("\nnever\n", state["trace"])
        self.assert_consistent_trace(state)

    def test_secret_split_at_every_offset_across_patches(self):
        secret = "Zq8-x7Lm"
        # Print the secret in two pieces around a pause longer than the update interval, for
        # every cut point, so the pieces would land in different PATCHes if kiln let them go.
        # (The first PATCH goes out after the initial 3 s interval; GitLab then asks for 1 s.)
        script = ["echo warming up; sleep 3.5",
                  f'for k in $(seq 1 {len(secret) - 1}); do printf "%s" "${{SPLIT_SECRET:0:$k}}"; '
                  f'sleep 1.3; printf "%s\\n" "${{SPLIT_SECRET:$k}}"; done']
        state = self.run_one(script, variables=[{"key": "SPLIT_SECRET", "value": secret,
                                                 "public": False, "masked": True}])
        self.assertEqual(state["state"], "success", state["trace"])
        self.assertNotIn(secret, state["trace"])
        self.assertEqual(state["trace"].splitlines().count("[MASKED]"), len(secret) - 1,
                         state["trace"])
        self.assertGreaterEqual(len([p for p in state["patches"] if p["status"] == 202]),
                                len(secret) - 1)
        self.assert_consistent_trace(state)

    def test_timestamps_when_the_job_asks_for_them(self):
        # FF_TIMESTAMPS (protocol.md §6.4 item 4): every line is prefixed with its time, the
        # stream id (00 kiln, 01 the job) and O/E for stdout/stderr; masking still works per
        # stream, also for a value split across writes with the other stream writing between.
        started = time.time()
        state = self.run_one(
            ["echo to-stdout", "echo to-stderr >&2",
             'printf "pw=%s" "${DEPLOY_PASSWORD:0:5}" >&2; echo between; sleep 0.3; '
             'printf "%s end\\n" "${DEPLOY_PASSWORD:5}" >&2',
             "printf 'no newline at the end'"],
            variables=[{"key": "FF_TIMESTAMPS", "value": "true", "public": True,
                        "masked": False}])
        finished = time.time()
        self.assertEqual(state["state"], "success", state["trace"])
        self.assert_consistent_trace(state)
        trace = state["trace"]
        self.assertTrue(trace.endswith("\n"), trace)
        entry = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})Z ([0-9a-f]{2})([OE])([ +])(.*)",
                           re.S)
        lines = []
        last = {}
        for text in trace.split("\n")[:-1]:
            m = entry.fullmatch(text)
            self.assertIsNotNone(m, f"line without a timestamp prefix: {text!r}")
            stamp, stream, kind, flag, content = m.groups()
            when = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            self.assertGreaterEqual(when, started - 1, text)
            self.assertLessEqual(when, finished + 1, text)
            # Within one stream, lines go out in order.
            self.assertGreaterEqual(when, last.get((stream, kind), 0), text)
            last[(stream, kind)] = when
            lines.append((stream + kind, flag, content))
        self.assertIn(("01O", " ", "to-stdout"), lines)
        self.assertIn(("01E", " ", "to-stderr"), lines)
        self.assertIn(("01O", " ", "between"), lines)
        self.assertIn(("01E", " ", "pw=[MASKED] end"), lines)
        self.assertIn(("01O", " ", "no newline at the end"), lines)
        self.assertFalse([c for s, _, c in lines if s == "01E" and "to-stdout" in c], lines)
        # kiln's own lines are stream 00. A section marker ends with \r, so it is flushed as its
        # own entry and what follows on that line is a continuation ('+'), as gitlab-runner does.
        self.assertTrue(any(s == "00O" and "Job succeeded" in c for s, _, c in lines), lines)
        for i, (s, flag, content) in enumerate(lines):
            if content.startswith("section_start:"):
                self.assertEqual(s, "00O", lines[i])
                self.assertTrue(content.endswith("\r\x1b[0K"), lines[i])
                self.assertEqual(lines[i + 1][:2], ("00O", "+"), lines[i + 1])

    def test_token_prefixes_from_gitlab_and_the_defaults_are_masked(self):
        features = {"trace_sections": True, "failure_reasons": ["script_failure"],
                    "token_mask_prefixes": ["acme-tok-"]}
        state = self.run_one(["echo 'custom acme-tok-a1B2c3D4e5 end'",
                              "echo 'default glpat-Zz9Yy8Xx7Ww6 end'",
                              "echo 'url https://x/?private_token=hunter2secret&a=b'"],
                             overrides={"features": features})
        self.assertEqual(state["state"], "success", state["trace"])
        self.assertIn("custom acme-tok-[MASKED] end", state["trace"])
        self.assertIn("default glpat-[MASKED] end", state["trace"])
        self.assertIn("private_token=[MASKED]&a=b", state["trace"])
        self.assert_consistent_trace(state)

    def wait_running(self, job_id, text=None):
        def ready():
            j = self.gitlab.job(job_id)
            return j["state"] == "running" and (text is None or text in j["trace"])
        self.gitlab.wait_for(ready, timeout=30)

    def test_graceful_cancel_runs_after_script(self):
        job = self.gitlab.enqueue_job(fixture="job_basic", repo="acme/widgets", sha=self.sha,
                                      runner_token=self.token,
                                      script=["echo started", "sleep 60"],
                                      after_script=["echo \"after: $CI_JOB_STATUS\""])
        self.start_kiln("--max-jobs", "1")
        self.wait_running(job["id"], "started")
        self.gitlab.cancel(job["id"], "graceful")
        self.assertEqual(self.proc.wait(timeout=60), 0, self.kiln_log())
        state = self.gitlab.job(job["id"])
        self.assertEqual(state["state"], "canceled", state)
        self.assertIn("after: canceled", state["trace"])

    def test_hard_cancel_kills_without_after_script(self):
        job = self.gitlab.enqueue_job(fixture="job_basic", repo="acme/widgets", sha=self.sha,
                                      runner_token=self.token,
                                      script=["echo started", "sleep 60"],
                                      after_script=["echo after-ran"])
        self.start_kiln("--max-jobs", "1")
        self.wait_running(job["id"], "started")
        self.gitlab.cancel(job["id"], "hard")
        self.assertEqual(self.proc.wait(timeout=60), 0, self.kiln_log())
        state = self.gitlab.job(job["id"])
        self.assertEqual(state["state"], "canceled", state)
        self.assertNotIn("after-ran", state["trace"])

    def test_faults_do_not_change_the_final_trace(self):
        script = ["for i in $(seq 1 40); do echo line $i; sleep 0.15; done"]
        clone = [{"key": "GIT_STRATEGY", "value": "clone", "public": True, "masked": False}]
        clean = self.run_one(script, variables=clone)
        self.assertEqual(clean["state"], "success", clean["trace"])

        self.log.close()
        self.gitlab.fault(path=r"/trace$", action="status", status=503, count=3)
        self.gitlab.fault(path=r"/trace$", action="drop", count=1)
        self.gitlab.fault(path=r"/api/v4/jobs/\d+$", method="PUT", action="status", status=429,
                          retry_after=1, count=1)
        job = self.gitlab.enqueue_job(fixture="job_basic", repo="acme/widgets", sha=self.sha,
                                      runner_token=self.token, script=script, after_script=[],
                                      variables=clone)
        self.start_kiln("--max-jobs", "1")
        # Once GitLab holds part of the log, it loses it (its length drops to 0): the next
        # PATCH gets 416 with "Range: 0-0" and kiln must resend everything from the start.
        self.gitlab.wait_for(lambda: self.gitlab.job(job["id"])["trace_size"] > 0, timeout=60)
        self.gitlab.fault(path=r"/trace$", action="reset_trace", count=1)
        self.assertEqual(self.proc.wait(timeout=120), 0, self.kiln_log())
        faulty = self.gitlab.job(job["id"])
        self.assertEqual(faulty["state"], "success", faulty["trace"])
        self.assert_consistent_trace(faulty)
        self.assertIn(416, [p["status"] for p in faulty["patches"]])

        def normalised(trace):
            # Section markers carry the time of day; everything else must be identical.
            return re.sub(r"section_(start|end):\d+:", r"section_\1:T:", trace)
        self.assertEqual(normalised(clean["trace"]), normalised(faulty["trace"]))
        self.assertEqual(len([l for l in faulty["trace"].splitlines() if l.startswith("line ")]), 40)

    def test_sigterm_cancels_the_running_job_and_reports_it(self):
        job = self.gitlab.enqueue_job(fixture="job_basic", repo="acme/widgets", sha=self.sha,
                                      runner_token=self.token, script=["echo started", "sleep 60"])
        self.start_kiln()
        self.wait_running(job["id"], "started")
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(timeout=60), 0, self.kiln_log())
        state = self.gitlab.job(job["id"])
        self.assertEqual(state["state"], "failed", state)


if __name__ == "__main__":
    unittest.main()
