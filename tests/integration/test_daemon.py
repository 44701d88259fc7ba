"""`kiln run` as a daemon with several [[runners]] entries: no starvation between entries that
hold long polls, never more running jobs than `concurrent`, signals (SIGQUIT drains, SIGTERM
cancels and cleans up, SIGHUP reloads) and live reload of the config file."""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
sys.path.insert(0, HERE)
import harness  # noqa: E402

KILN = os.environ.get("KILN_BIN", os.path.join(ROOT, "build", "release", "runner", "kiln"))


def parse_time(iso):
    # "2026-11-25T03:01:02.123Z" -> seconds
    import datetime as dt
    return dt.datetime.strptime(iso.rstrip("Z"), "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=dt.timezone.utc).timestamp()


class DaemonTestBase(unittest.TestCase):
    long_poll = 50

    @classmethod
    def setUpClass(cls):
        cls.gitlab = harness.Emulator(tls=True, long_poll=cls.long_poll)
        cls.gitlab.start()
        cls.work = tempfile.mkdtemp(prefix="kiln-daemon-test-")
        cls.repo = os.path.join(cls.work, "widgets.git")
        cls.sha = harness.make_bare_repo(cls.repo, {"README.md": "widgets\n"})
        cls.gitlab.add_repo("acme/widgets", cls.repo)

    @classmethod
    def tearDownClass(cls):
        cls.gitlab.stop()
        cls.gitlab.cleanup()
        shutil.rmtree(cls.work, ignore_errors=True)

    def setUp(self):
        self.gitlab.clear_faults()
        self.gitlab.configure(trace_update_interval=1, final_update_202_count=0)
        self.dir = tempfile.mkdtemp(dir=self.work)
        self.config = os.path.join(self.dir, "config.toml")
        self.proc = None
        self.log = None

    def tearDown(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.log:
            self.log.close()

    def runner_block(self, name, token, executor="shell", extra=""):
        return ("\n[[runners]]\n"
                f'  name = "{name}"\n  url = "{self.gitlab.url}"\n  token = "{token}"\n'
                f'  tls-ca-file = "{self.gitlab.ca_file}"\n  executor = "{executor}"\n'
                f'  builds_dir = "{os.path.join(self.dir, "builds")}"\n' + extra)

    def write_config(self, runners, concurrent=1, head="", shutdown_timeout=5):
        text = (f"concurrent = {concurrent}\ncheck_interval = 1\n"
                f"shutdown_timeout = {shutdown_timeout}\n" + head)
        text += "".join(runners)
        tmp = self.config + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config)

    def start_kiln(self, *args):
        if self.log:
            self.log.close()
        self.log = open(os.path.join(self.dir, "kiln.log"), "a")
        self.proc = subprocess.Popen([KILN, "run", "--config", self.config, *args],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def kiln_log(self):
        with open(os.path.join(self.dir, "kiln.log")) as f:
            return f.read()

    def enqueue(self, token, script, **extra):
        return self.gitlab.enqueue_job(fixture="job_basic", repo="acme/widgets", sha=self.sha,
                                       runner_token=token, script=script, after_script=[],
                                       **extra)

    def job_requests(self, token):
        return [r for r in self.gitlab.requests(path="/api/v4/jobs/request")
                if (r.get("json") or {}).get("token") == token]

    def held_request(self, token):
        """The runner's request GitLab is holding right now (sent with last_update)."""
        for r in self.job_requests(token):
            if r["status"] is None and (r.get("json") or {}).get("last_update"):
                return r
        return None

    def wait_running(self, job_id, text=None):
        def ready():
            j = self.gitlab.job(job_id)
            return j["state"] == "running" and (text is None or text in j["trace"])
        try:
            self.gitlab.wait_for(ready, timeout=30, message=f"job {job_id} running")
        except AssertionError:
            print(self.gitlab.job(job_id), self.kiln_log(), file=sys.stderr)
            raise


class PollingTest(DaemonTestBase):
    """Two entries, concurrent = 1, GitLab holding long polls for 50 s."""

    def test_second_runner_is_served_while_the_first_holds_its_poll(self):
        a = self.gitlab.create_runner(kind="glrt")["token"]
        b = self.gitlab.create_runner(kind="glrt")["token"]
        self.write_config([self.runner_block("a", a), self.runner_block("b", b)], concurrent=1)
        self.start_kiln()
        held_a = self.gitlab.wait_for(lambda: self.held_request(a), timeout=20,
                                      message="runner a's held long poll")
        self.gitlab.wait_for(lambda: self.held_request(b), timeout=20,
                             message="runner b's held long poll")
        job = self.enqueue(b, ["echo picked"])
        state = self.gitlab.wait_job_state(job["id"], timeout=60)
        self.assertEqual(state["state"], "success", state["trace"])
        pickup = [r for r in self.job_requests(b) if r["status"] == 201]
        self.assertEqual(len(pickup), 1)
        picked_at = parse_time(pickup[0]["time"])
        # The pickup happened while a's long poll was still held: it started before and
        # GitLab answered it only later (or is still holding it).
        a_now = [r for r in self.job_requests(a) if r["seq"] == held_a["seq"]][0]
        self.assertLess(parse_time(a_now["time"]), picked_at)
        if a_now["duration"] is not None:
            self.assertGreater(parse_time(a_now["time"]) + a_now["duration"], picked_at)
        self.proc.send_signal(signal.SIGQUIT)
        self.assertEqual(self.proc.wait(timeout=30), 0, self.kiln_log())

    def test_jobs_answered_at_once_never_run_beyond_concurrent(self):
        a = self.gitlab.create_runner(kind="glrt")["token"]
        b = self.gitlab.create_runner(kind="glrt")["token"]
        self.write_config([self.runner_block("a", a), self.runner_block("b", b)], concurrent=1)
        self.start_kiln()
        self.gitlab.wait_for(lambda: self.held_request(a) and self.held_request(b), timeout=20,
                             message="both long polls held")
        # Both re-polls (after the queue change releases the held ones) sit in a slow GitLab
        # long enough for both jobs to be queued: both answers carry a job at once.
        self.gitlab.fault(r"^/api/v4/jobs/request$", action="delay", delay=2, count=2)
        marks = os.path.join(self.dir, "marks")
        script = [f'echo "start $(date +%s.%N)" >> {marks}', "sleep 2",
                  f'echo "end $(date +%s.%N)" >> {marks}']
        ja = self.enqueue(a, script)
        jb = self.enqueue(b, script)
        for j in (ja, jb):
            state = self.gitlab.wait_job_state(j["id"], timeout=60)
            self.assertEqual(state["state"], "success", state["trace"])
        self.assertIn("it waits for one", self.kiln_log())
        with open(marks) as f:
            events = [line.split() for line in f.read().splitlines()]
        self.assertEqual([e[0] for e in events], ["start", "end", "start", "end"], events)
        self.proc.send_signal(signal.SIGQUIT)
        self.assertEqual(self.proc.wait(timeout=30), 0, self.kiln_log())


class SignalTest(DaemonTestBase):
    long_poll = 5

    def test_sigquit_lets_the_running_job_finish_and_exits_0(self):
        token = self.gitlab.create_runner(kind="glrt")["token"]
        self.write_config([self.runner_block("q", token)])
        job = self.enqueue(token, ["echo started", "sleep 3", "echo finished"])
        self.start_kiln()
        self.wait_running(job["id"], "started")
        self.proc.send_signal(signal.SIGQUIT)
        self.assertEqual(self.proc.wait(timeout=60), 0, self.kiln_log())
        state = self.gitlab.job(job["id"])
        self.assertEqual(state["state"], "success", state)
        self.assertIn("finished", state["trace"])
        # No new job was asked for after the signal.
        later = self.enqueue(token, ["echo never"])
        time.sleep(1)
        self.assertEqual(self.gitlab.job(later["id"])["state"], "pending")
        self.gitlab.delete_job(later["id"])

    def test_second_sigterm_aborts_the_cleanup_at_once_and_still_reports(self):
        token = self.gitlab.create_runner(kind="glrt")["token"]
        # shutdown_timeout far beyond the test: only the second signal can end after_script.
        self.write_config([self.runner_block("t", token)], shutdown_timeout=600)
        pid_file = os.path.join(self.dir, "after_script.pid")
        job = self.gitlab.enqueue_job(
            fixture="job_basic", repo="acme/widgets", sha=self.sha, runner_token=token,
            script=["echo started", "sleep 120"],
            after_script=[f"echo $$ > {pid_file}", "echo cleanup-begins", "sleep 120",
                          "echo cleanup-ends"])
        self.start_kiln()
        self.wait_running(job["id"], "started")
        self.proc.send_signal(signal.SIGTERM)
        # The first SIGTERM is graceful: the script stops, after_script starts.
        def cleanup_pid():
            try:
                with open(pid_file) as f:
                    return int(f.read())
            except (OSError, ValueError):
                return None
        self.gitlab.wait_for(cleanup_pid, timeout=30, message="after_script to start")
        time.sleep(1)
        self.assertIsNone(self.proc.poll(), "kiln must wait for after_script")
        self.proc.send_signal(signal.SIGTERM)
        # The second aborts: kiln reports the job and exits long before after_script's sleep.
        self.proc.wait(timeout=30)
        state = self.gitlab.job(job["id"])
        self.assertIn(state["state"], ("canceled", "failed"), state)
        self.assertIn("cleanup-begins", state["trace"])
        self.assertNotIn("cleanup-ends", state["trace"])
        self.assertTrue(state["checksum_ok"], state)
        self.assertFalse(os.path.exists(f"/proc/{cleanup_pid()}"),
                         "after_script's shell must not outlive kiln")
        self.assertIn("second signal", self.kiln_log())

    def test_sighup_adding_a_runner_leaves_the_running_job_alone(self):
        a = self.gitlab.create_runner(kind="glrt")["token"]
        b = self.gitlab.create_runner(kind="glrt")["token"]
        self.write_config([self.runner_block("a", a)], concurrent=2)
        first = self.enqueue(a, ["echo started", "sleep 4", "echo first-done"])
        self.start_kiln()
        self.wait_running(first["id"], "started")
        self.write_config([self.runner_block("a", a), self.runner_block("b", b)], concurrent=2)
        self.proc.send_signal(signal.SIGHUP)
        second = self.enqueue(b, ["echo second"])
        s2 = self.gitlab.wait_job_state(second["id"], timeout=30)
        self.assertEqual(s2["state"], "success", s2["trace"])
        # The new runner's job ran while the first was still running.
        self.assertEqual(self.gitlab.job(first["id"])["state"], "running")
        s1 = self.gitlab.wait_job_state(first["id"], timeout=30)
        self.assertEqual(s1["state"], "success", s1["trace"])
        self.assertIn("first-done", s1["trace"])
        self.assertIn("config reloaded", self.kiln_log())
        self.proc.send_signal(signal.SIGQUIT)
        self.assertEqual(self.proc.wait(timeout=30), 0, self.kiln_log())

    def test_edited_config_reloads_and_an_invalid_one_is_kept_out(self):
        a = self.gitlab.create_runner(kind="glrt")["token"]
        b = self.gitlab.create_runner(kind="glrt")["token"]
        self.write_config([self.runner_block("a", a)])
        self.start_kiln()
        self.gitlab.wait_for(lambda: self.job_requests(a), timeout=20, message="a polling")
        # A broken file: logged with its error, the running config stays.
        with open(self.config, "a") as f:
            f.write("\nconcurrent = many\n")
        self.gitlab.wait_for(lambda: "config not reloaded" in self.kiln_log(), timeout=20,
                             message="the invalid config to be reported")
        self.assertIn("config.toml:", self.kiln_log())
        ja = self.enqueue(a, ["echo still-serving"])
        self.assertEqual(self.gitlab.wait_job_state(ja["id"], timeout=30)["state"], "success")
        # Replace runner a by runner b without any signal: the watcher picks the change up.
        self.write_config([self.runner_block("b", b)])
        self.gitlab.wait_for(lambda: "config reloaded" in self.kiln_log(), timeout=20,
                             message="the edited config to be loaded")
        jb = self.enqueue(b, ["echo served-by-b"])
        self.assertEqual(self.gitlab.wait_job_state(jb["id"], timeout=30)["state"], "success")
        ja2 = self.enqueue(a, ["echo nobody"])
        time.sleep(2)
        self.assertEqual(self.gitlab.job(ja2["id"])["state"], "pending")
        self.gitlab.delete_job(ja2["id"])
        self.proc.send_signal(signal.SIGQUIT)
        self.assertEqual(self.proc.wait(timeout=30), 0, self.kiln_log())


class OutageTest(DaemonTestBase):
    """The acceptance case: GitLab unreachable (connections refused, state kept) for 2 minutes
    around a job's final update. Two kiln daemons share the one outage, each with its own
    runner and job: one stays up throughout, the other is restarted while GitLab is down.
    Both final states (and whole traces) must arrive once GitLab listens again, and the
    daemon that stayed up must have kept polling with a capped backoff and resume at once."""
    long_poll = 5
    outage_seconds = 120

    class Daemon:
        """One kiln process with its own config, log and spool directory."""

        def __init__(self, test, name):
            self.test = test
            self.dir = tempfile.mkdtemp(dir=test.work)
            self.config = os.path.join(self.dir, "config.toml")
            self.log_path = os.path.join(self.dir, "kiln.log")
            self.token = test.gitlab.create_runner(kind="glrt")["token"]
            self.name = name
            self.proc = None
            test.addCleanup(self.kill)
            block = test.runner_block(name, self.token).replace(
                os.path.join(test.dir, "builds"), os.path.join(self.dir, "builds"))
            with open(self.config, "w") as f:
                f.write("concurrent = 1\ncheck_interval = 1\nshutdown_timeout = 5\n" + block)

        def start(self):
            with open(self.log_path, "a") as log:
                self.proc = subprocess.Popen([KILN, "run", "--config", self.config],
                                             stdout=log, stderr=subprocess.STDOUT)

        def quit(self):
            self.proc.send_signal(signal.SIGQUIT)
            self.test.assertEqual(self.proc.wait(timeout=30), 0, self.log())

        def kill(self):
            if self.proc and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

        def log(self):
            with open(self.log_path) as f:
                return f.read()

        def spool_files(self):
            d = os.path.join(self.dir, "spool")
            return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def assert_delivered(self, d, job):
        state = self.gitlab.wait_job_state(job["id"], ("success", "failed", "canceled"),
                                           timeout=90)
        self.assertEqual(state["state"], "success", state)
        self.assertIn("after-outage", state["trace"])
        self.assertIn("Job succeeded", state["trace"])
        self.assertTrue(state["checksum_ok"], state)
        self.gitlab.wait_for(lambda: d.spool_files() == [], timeout=10,
                             message="the spool entry to be removed")
        self.assertNotIn(d.token, d.log())
        self.assertNotIn(job["token"], d.log())

    def test_two_minute_outage_around_the_final_update_with_and_without_a_restart(self):
        stays = self.Daemon(self, "stays")
        restarts = self.Daemon(self, "restarts")
        script = ["echo before-outage", "sleep 5", "echo after-outage"]
        jobs = {d: self.enqueue(d.token, script) for d in (stays, restarts)}
        for d in (stays, restarts):
            d.start()
        for d, job in jobs.items():
            self.wait_running(job["id"], "before-outage")
        self.gitlab.outage(self.outage_seconds)
        down_at = time.time()
        for d in (stays, restarts):
            self.gitlab.wait_for(lambda: "spooled" in d.log(), timeout=60,
                                 message=f"{d.name}: the final state to be spooled")
        # The restarted daemon: its state is on disk (0600 files in a 0700 directory), it stops
        # while GitLab is still down and starts again.
        job = jobs[restarts]
        names = restarts.spool_files()
        self.assertEqual(names, [f"job-{job['id']}.json", f"job-{job['id']}.trace"])
        for n in names:
            mode = os.stat(os.path.join(restarts.dir, "spool", n)).st_mode & 0o777
            self.assertEqual(mode, 0o600, n)
        self.assertEqual(os.stat(os.path.join(restarts.dir, "spool")).st_mode & 0o777, 0o700)
        self.assertFalse(self.gitlab.is_up())
        restarts.quit()
        restarts.start()
        self.gitlab.wait_for(lambda: "delivering a spooled final job state" in restarts.log(),
                             timeout=30, message="the restarted kiln to pick up its spool")
        self.assertFalse(self.gitlab.is_up(), "the outage ended before the restart was done")
        self.gitlab.wait_until_up(timeout=self.outage_seconds + 30)
        up_at = time.time()
        self.assertGreaterEqual(up_at - down_at, self.outage_seconds - 1)
        for d, job in jobs.items():
            self.assert_delivered(d, job)

        # The daemon that stayed up kept asking while GitLab was down, with a capped backoff
        # (never more than 60 s between attempts), and asked again within a few seconds of
        # GitLab listening again rather than after its backoff ran out.
        failures = [line for line in stays.log().splitlines()
                    if "checking for jobs failed" in line]
        self.assertGreaterEqual(len(failures), 3, stays.log())
        waits = [int(line.split("retry_in_ms=")[1].split()[0].strip('",')) for line in failures
                 if "retry_in_ms=" in line]
        self.assertEqual(len(waits), len(failures), failures)
        self.assertLessEqual(max(waits), 60000, waits)
        def asked_again():
            return [parse_time(r["time"]) for r in self.job_requests(stays.token)
                    if parse_time(r["time"]) >= up_at - 1]
        # The deliveries above may all be done before the poller's next probe or wake-up.
        back = self.gitlab.wait_for(asked_again, timeout=15,
                                    message="a job request after the outage")
        self.assertLess(min(back) - up_at, 10,
                        f"polling did not resume soon after the outage (listening again at "
                        f"{time.strftime('%H:%M:%S', time.gmtime(up_at))}"
                        f".{int(up_at % 1 * 1000):03d}Z):\n" + stays.log())
        # Not disabled: a new job for it is picked up and runs.
        later = self.enqueue(stays.token, ["echo after-the-outage"])
        state = self.gitlab.wait_job_state(later["id"], timeout=60)
        self.assertEqual(state["state"], "success", state)
        for d in (stays, restarts):
            d.quit()


class SigkillTest(DaemonTestBase):
    """Nothing lost when kiln dies (SIGKILL, power loss) after a job ended but before GitLab
    confirmed its final state: the spool is written ahead of the first final update."""
    long_poll = 5

    def spool_files(self):
        d = os.path.join(self.dir, "spool")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def test_sigkill_while_gitlab_holds_the_final_update_loses_nothing(self):
        token = self.gitlab.create_runner(kind="glrt")["token"]
        self.write_config([self.runner_block("k", token)])
        job = self.enqueue(token, ["echo start-marker", "sleep 3", "seq 1 30000",
                                   "echo end-marker"])
        self.start_kiln()
        self.wait_running(job["id"], "start-marker")
        # GitLab refuses the rest of the trace and holds the final PUT without applying it.
        self.gitlab.fault(rf"^/api/v4/jobs/{job['id']}/trace$", method="PATCH", status=503,
                          count=None)
        self.gitlab.fault(rf"^/api/v4/jobs/{job['id']}$", method="PUT", action="drop",
                          delay=120, count=None)

        def held_final_put():
            return [r for r in self.gitlab.requests(path=f"/api/v4/jobs/{job['id']}",
                                                    method="PUT")
                    if r["status"] is None and (r.get("json") or {}).get("state") == "success"]
        self.gitlab.wait_for(held_final_put, timeout=90, message="the final PUT, held")
        # Written before the first attempt, not after a failure (none has come back yet).
        self.assertEqual(self.spool_files(),
                         [f"job-{job['id']}.json", f"job-{job['id']}.trace"], self.kiln_log())
        self.proc.kill()
        self.assertEqual(self.proc.wait(timeout=10), -signal.SIGKILL)
        self.gitlab.clear_faults()
        before = self.gitlab.job(job["id"])
        self.assertEqual(before["state"], "running")
        self.assertNotIn("end-marker", before["trace"])  # the tail never reached GitLab

        self.start_kiln()
        state = self.gitlab.wait_job_state(job["id"], timeout=60)
        self.assertEqual(state["state"], "success", state)
        self.assertTrue(state["checksum_ok"], state)
        trace = state["trace"]
        for marker in ("start-marker", "\n29999\n30000\n", "end-marker", "Job succeeded"):
            self.assertIn(marker, trace)
        self.assertIn("delivering a spooled final job state", self.kiln_log())
        self.gitlab.wait_for(lambda: self.spool_files() == [], timeout=10,
                             message="the spool entry to be removed")
        self.assertNotIn(job["token"], self.kiln_log())
        self.proc.send_signal(signal.SIGQUIT)
        self.assertEqual(self.proc.wait(timeout=30), 0, self.kiln_log())

    def test_a_job_gitlab_took_leaves_no_spool_entry(self):
        token = self.gitlab.create_runner(kind="glrt")["token"]
        self.write_config([self.runner_block("k", token)])
        job = self.enqueue(token, ["echo fine"])
        self.start_kiln()
        state = self.gitlab.wait_job_state(job["id"], timeout=60)
        self.assertEqual(state["state"], "success", state)
        self.gitlab.wait_for(lambda: self.spool_files() == [], timeout=10,
                             message="the written-ahead entry to be removed")
        self.assertNotIn("spooled", self.kiln_log())
        self.proc.send_signal(signal.SIGQUIT)
        self.assertEqual(self.proc.wait(timeout=30), 0, self.kiln_log())


class DockerSignalTest(DaemonTestBase):
    long_poll = 5

    def test_sigterm_during_a_long_docker_job_fails_it_and_removes_its_containers(self):
        import test_docker  # the Engine API helpers
        status, _ = test_docker.engine("GET", "/images/local/busybox/json")
        if status != 200:
            raise AssertionError("image local/busybox is missing: run `bash scripts/docker-setup.sh`")
        token = self.gitlab.create_runner(kind="glrt")["token"]
        self.write_config([self.runner_block(
            "d", token, "docker",
            '  [runners.docker]\n    image = "local/busybox"\n'
            '    pull_policy = ["if-not-present"]\n    go_cache = false\n')])
        job = self.gitlab.enqueue_job(fixture="job_basic", repo="acme/widgets", sha=self.sha,
                                      runner_token=token, after_script=[],
                                      script=["echo started", "sleep 300"],
                                      overrides={"services": []})
        labels = [f"kiln.job.id={job['id']}"]
        self.start_kiln()
        self.gitlab.wait_for(lambda: test_docker.labelled("containers", labels), timeout=60,
                             message="the job's container")
        self.wait_running(job["id"], "started")
        self.proc.send_signal(signal.SIGTERM)
        self.assertEqual(self.proc.wait(timeout=60), 0, self.kiln_log())
        state = self.gitlab.job(job["id"])
        self.assertIn(state["state"], ("failed", "canceled"), state)
        self.assertEqual(test_docker.labelled("containers", labels), [])


if __name__ == "__main__":
    unittest.main()
