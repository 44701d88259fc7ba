"""Operating kiln as a service: the listen_address endpoint (/metrics parsed with a strict
Prometheus text-format parser and checked against the jobs that ran, /healthz, /readyz,
/debug/jobs/list), systemd notifications over a real NOTIFY_SOCKET (READY=1, STATUS=,
WATCHDOG=1, STOPPING=1 on SIGQUIT), and `kiln install/uninstall/start/status` with the unit
checked by `systemd-analyze verify` when that tool is installed."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
import harness  # noqa: E402

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # Debian's python3-prometheus-client, when another python3 runs the tests
    sys.path.append("/usr/lib/python3/dist-packages")
    from prometheus_client.parser import text_string_to_metric_families

KILN = os.environ.get("KILN_BIN", os.path.join(ROOT, "build", "release", "runner", "kiln"))
SOURCE = os.environ.get("KILN_SOURCE_DIR", ROOT)

# The exposition format 0.0.4, line by line (what prometheus_client's parser tolerates too).
NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)"
SAMPLE_RE = re.compile(rf"^({NAME})(?:\{{((?:{LABEL})(?:,{LABEL})*)?\}})? ({VALUE})$")
HELP_RE = re.compile(rf"^# HELP ({NAME}) (?:[^\\\n]|\\[\\n])*$")
TYPE_RE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped)$")


def check_exposition_format(test, text):
    """Rules a scraper relies on: every line is HELP, TYPE or a sample; HELP and TYPE come once
    per family, before its samples; a family's samples are contiguous; no series repeats."""
    test.assertTrue(text.endswith("\n"), "the body must end with a line feed")
    families_seen, series_seen = set(), set()
    current, ctype = None, None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            m = HELP_RE.match(line)
            test.assertIsNotNone(m, line)
            test.assertNotIn(m.group(1), families_seen, f"family repeated: {line}")
            families_seen.add(m.group(1))
            current, ctype = m.group(1), None
            continue
        if line.startswith("# TYPE "):
            m = TYPE_RE.match(line)
            test.assertIsNotNone(m, line)
            test.assertEqual(m.group(1), current, f"TYPE without its HELP: {line}")
            ctype = m.group(2)
            continue
        m = SAMPLE_RE.match(line)
        test.assertIsNotNone(m, f"not a valid sample line: {line!r}")
        name = m.group(1)
        allowed = {current}
        if ctype == "histogram":
            allowed = {current + "_bucket", current + "_sum", current + "_count"}
        test.assertIn(name, allowed, f"sample outside its family: {line}")
        test.assertIsNotNone(ctype, f"sample before TYPE: {line}")
        key = (name, m.group(2) or "")
        test.assertNotIn(key, series_seen, f"series repeated: {line}")
        series_seen.add(key)
    names = [l.split(" ")[2] for l in text.split("\n") if l.startswith("# HELP ")]
    test.assertEqual(names, sorted(names), "families are sorted (stable output)")


def parse_metrics(test, text):
    check_exposition_format(test, text)
    samples = {}
    families = set()
    for fam in text_string_to_metric_families(text):
        families.add((fam.name, fam.type))
        for s in fam.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return families, samples


def value(samples, name, **labels):
    total = 0.0
    for l, v in samples.get(name, []):
        if all(l.get(k) == str(val) for k, val in labels.items()):
            total += v
    return total


def http_get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


class KilnServiceBase(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gitlab = harness.Emulator(tls=False, long_poll=5)
        cls.gitlab.start()
        cls.work = tempfile.mkdtemp(prefix="kiln-service-test-")
        cls.repo = os.path.join(cls.work, "widgets.git")
        cls.sha = harness.make_bare_repo(cls.repo, {"README.md": "widgets\n"})
        cls.gitlab.add_repo("acme/widgets", cls.repo)

    @classmethod
    def tearDownClass(cls):
        cls.gitlab.stop()
        cls.gitlab.cleanup()
        shutil.rmtree(cls.work, ignore_errors=True)

    def setUp(self):
        self.gitlab.configure(trace_update_interval=1, final_update_202_count=0)
        self.token = self.gitlab.create_runner(kind="glrt")["token"]
        self.dir = tempfile.mkdtemp(dir=self.work)
        self.config = os.path.join(self.dir, "config.toml")
        self.proc = None
        self.log = None

    def write_config(self, extra=""):
        with open(self.config, "w") as f:
            f.write(
                f"concurrent = 2\ncheck_interval = 1\nshutdown_timeout = 5\n{extra}\n[[runners]]\n"
                f'  name = "metrics-runner"\n  url = "{self.gitlab.url}"\n  token = "{self.token}"\n'
                f'  executor = "shell"\n  builds_dir = "{os.path.join(self.dir, "builds")}"\n')

    def tearDown(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.log:
            self.log.close()

    def start_kiln(self, env=None):
        self.log = open(os.path.join(self.dir, "kiln.log"), "w")
        self.proc = subprocess.Popen([KILN, "run", "--config", self.config, "--log-format", "json"],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def kiln_log(self):
        with open(os.path.join(self.dir, "kiln.log")) as f:
            return f.read()

    def log_entries(self):
        out = []
        for line in self.kiln_log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def enqueue(self, script):
        return self.gitlab.enqueue_job(fixture="job_basic", repo="acme/widgets", sha=self.sha,
                                       runner_token=self.token, script=script, after_script=[])


class MetricsTest(KilnServiceBase):
    def test_metrics_health_and_jobs_list(self):
        self.write_config('listen_address = "127.0.0.1:0"\n')
        self.start_kiln()

        def address():
            for e in self.log_entries():
                if e.get("msg") == "serving metrics and health checks":
                    return e["listen_address"]
            self.assertIsNone(self.proc.poll(), self.kiln_log())
            return None
        base = "http://" + self.gitlab.wait_for(address, timeout=30)
        self.assertEqual(http_get(base + "/healthz")[0], 200)
        self.gitlab.wait_for(lambda: http_get(base + "/readyz")[0] == 200, timeout=30)

        ok = self.enqueue(["echo fine"])
        bad = self.enqueue(["echo failing", "exit 3"])
        for job in (ok, bad):
            self.gitlab.wait_job_state(job["id"], timeout=60)
        self.assertEqual(self.gitlab.job(ok["id"])["state"], "success")
        self.assertEqual(self.gitlab.job(bad["id"])["state"], "failed")

        # A running job shows in /debug/jobs/list and in gitlab_runner_jobs.
        slow = self.enqueue(["echo started-slow", "sleep 4"])
        self.gitlab.wait_for(lambda: "started-slow" in self.gitlab.job_trace(slow["id"]).decode(),
                             timeout=60)
        status, headers, body = http_get(base + "/debug/jobs/list?v=2")
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("X-List-Version"), "2")
        lines = body.splitlines()
        self.assertEqual(len(lines), 1, body)
        self.assertRegex(lines[0], rf"^url=\S+/acme/widgets/-/jobs/{slow['id']} state=running "
                                   r"stage=step_script executor_stage=shell_run duration=\S+s "
                                   r"runner=\S+$")
        self.assertNotIn("gitlab-ci-token", body)
        _, samples = parse_metrics(self, http_get(base + "/metrics")[2])
        self.assertEqual(value(samples, "gitlab_runner_jobs", state="running", stage="step_script"), 1)
        self.gitlab.wait_job_state(slow["id"], timeout=60)

        status, headers, text = http_get(base + "/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers)
        families, samples = parse_metrics(self, text)
        for name, kind in [("gitlab_runner_jobs", "gauge"), ("gitlab_runner_jobs", "counter"),
                           ("gitlab_runner_concurrent", "gauge"), ("gitlab_runner_limit", "gauge"),
                           ("gitlab_runner_errors", "counter"),
                           ("gitlab_runner_api_request_statuses", "counter"),
                           ("gitlab_runner_version_info", "gauge"),
                           ("gitlab_runner_job_duration_seconds", "histogram"),
                           ("gitlab_runner_failed_jobs", "counter"),
                           ("kiln_oom_kills", "counter"), ("kiln_trace_bytes", "counter"),
                           ("kiln_trace_masking_bytes", "counter"),
                           ("kiln_trace_masking_seconds", "counter"),
                           ("kiln_archive_bytes", "counter"), ("kiln_archive_seconds", "counter")]:
            self.assertIn((name, kind), families)
        self.assertEqual(value(samples, "gitlab_runner_jobs_total"), 3)
        self.assertEqual(value(samples, "gitlab_runner_jobs_total", runner_name="metrics-runner"), 3)
        self.assertEqual(value(samples, "gitlab_runner_job_duration_seconds_count"), 3)
        self.assertEqual(value(samples, "gitlab_runner_job_duration_seconds_bucket", le="+Inf"), 3)
        self.assertEqual(value(samples, "gitlab_runner_failed_jobs_total",
                               failure_reason="script_failure"), 1)
        self.assertEqual(value(samples, "kiln_jobs_finished_total", state="success"), 2)
        self.assertEqual(value(samples, "gitlab_runner_jobs"), 0)
        self.assertEqual(value(samples, "gitlab_runner_concurrent"), 2)
        self.assertGreater(value(samples, "kiln_trace_bytes_total"), 100)
        # Masking throughput = rate(bytes) / rate(seconds): every byte of the three logs went
        # through it (each log is at least its trace, less what masking shortened).
        self.assertGreater(value(samples, "kiln_trace_masking_bytes_total"), 100)
        self.assertGreater(value(samples, "kiln_trace_masking_seconds_total"), 0)
        # No job here made or took an archive; both series are there, at zero.
        for op in ("create", "extract"):
            self.assertEqual(value(samples, "kiln_archive_bytes_total", operation=op), 0)
        self.assertEqual(value(samples, "gitlab_runner_api_request_statuses_total",
                               endpoint="request_job", status=201, method="POST"), 3)
        self.assertGreaterEqual(value(samples, "gitlab_runner_api_request_statuses_total",
                                      endpoint="update_job", status=200), 6)  # accept + final
        [(labels, one)] = samples["gitlab_runner_version_info"]
        self.assertEqual(one, 1)
        self.assertRegex(labels["version"], r"^\d+\.\d+\.\d+")
        self.assertIn("revision", labels)
        # No token in the page beyond the short form GitLab itself shows.
        self.assertNotIn(self.token, text)
        short = samples["gitlab_runner_jobs_total"][0][0]["runner"]
        self.assertIn(short, self.token)
        self.assertLess(len(short), len(self.token))

        self.assertEqual(http_get(base + "/nothing-here")[0], 404)
        # HEAD: the headers of a GET, no body; other methods: 405 on a connection kept alive.
        import http.client
        host, port = base[len("http://"):].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("HEAD", "/metrics")
        r = conn.getresponse()
        self.assertEqual((r.status, r.read()), (200, b""))
        self.assertGreater(int(r.getheader("Content-Length")), 1000)
        conn.request("POST", "/metrics", body="x")
        r = conn.getresponse()
        self.assertEqual((r.status, r.getheader("Allow")), (405, "GET, HEAD"))
        r.read()
        conn.request("GET", "/readyz")
        self.assertEqual(conn.getresponse().status, 200)
        conn.close()
        self.proc.send_signal(signal.SIGQUIT)
        self.assertEqual(self.proc.wait(timeout=60), 0, self.kiln_log())

    def test_a_port_in_use_is_a_clear_error(self):
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        try:
            port = blocker.getsockname()[1]
            self.write_config(f'listen_address = "127.0.0.1:{port}"\n')
            self.start_kiln()
            self.assertEqual(self.proc.wait(timeout=60), 1)
            self.assertIn(f"cannot listen on listen_address \\\"127.0.0.1:{port}\\\"", self.kiln_log())
        finally:
            blocker.close()


class NotifyTest(KilnServiceBase):
    def notify_socket(self, abstract):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"kiln-test-{os.getpid()}-{time.monotonic_ns()}"
            s.bind("\0" + name)
            address = "@" + name
        else:
            address = os.path.join(self.dir, "notify.sock")
            s.bind(address)
        s.settimeout(1)
        self.addCleanup(s.close)
        return s, address

    def receive_until(self, sock, wanted, timeout=60):
        got = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = sock.recv(4096).decode()
            except socket.timeout:
                self.assertIsNone(self.proc.poll(), f"kiln exited; got {got}\n{self.kiln_log()}")
                continue
            got.extend(msg.split("\n"))
            if wanted in got:
                return got
        self.fail(f"no {wanted} within {timeout}s; got {got}\n{self.kiln_log()}")

    def listen_address(self):
        for e in self.log_entries():
            if e.get("msg") == "serving metrics and health checks":
                return "http://" + e["listen_address"]
        return None

    def check_ready_then_stopping(self, abstract):
        self.write_config('listen_address = "127.0.0.1:0"\n')
        sock, address = self.notify_socket(abstract)
        self.start_kiln({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000000"})
        before = self.receive_until(sock, "READY=1")
        base = self.gitlab.wait_for(self.listen_address, timeout=30)
        self.assertEqual(http_get(base + "/readyz")[0], 200)
        self.assertNotIn("STOPPING=1", before)
        # Watchdog pings at half of WATCHDOG_USEC.
        self.receive_until(sock, "WATCHDOG=1", timeout=10)

        job = self.enqueue(["echo draining", "sleep 6", "echo done"])
        status = self.receive_until(sock, "STATUS=1 job running, 1 runner")
        self.gitlab.wait_for(lambda: "draining" in self.gitlab.job_trace(job["id"]).decode(),
                             timeout=60)
        self.proc.send_signal(signal.SIGQUIT)
        after = self.receive_until(sock, "STOPPING=1")
        # Draining: not ready for new work, still alive, and the metrics say so.
        ready_status, _, body = http_get(base + "/readyz")
        self.assertEqual((ready_status, body), (503, "stopping\n"))
        self.assertEqual(http_get(base + "/healthz")[0], 200)
        _, samples = parse_metrics(self, http_get(base + "/metrics")[2])
        self.assertEqual(value(samples, "gitlab_runner_process_state_info",
                               state="graceful_shutdown"), 1)
        self.assertEqual(value(samples, "gitlab_runner_jobs", state="running"), 1)
        self.assertEqual(self.proc.wait(timeout=60), 0, self.kiln_log())
        state = self.gitlab.job(job["id"])
        self.assertEqual(state["state"], "success", state["trace"])
        self.assertIn("done", state["trace"])
        self.assertIn("READY=1", before + status)
        # Jobs must not inherit the socket: they could speak for kiln.
        self.assertNotIn("NOTIFY_SOCKET", state["trace"])
        return after

    def test_ready_then_stopping_on_sigquit(self):
        self.check_ready_then_stopping(abstract=False)

    def test_abstract_socket_address(self):
        self.check_ready_then_stopping(abstract=True)

    def test_status_follows_a_reload(self):
        self.write_config()
        sock, address = self.notify_socket(abstract=False)
        self.start_kiln({"NOTIFY_SOCKET": address})
        self.receive_until(sock, "READY=1")
        self.receive_until(sock, "STATUS=0 jobs running, 1 runner", timeout=10)  # sent after READY
        second = self.gitlab.create_runner(kind="glrt")["token"]
        with open(self.config, "a") as f:
            f.write(f'[[runners]]\n  name = "second"\n  url = "{self.gitlab.url}"\n'
                    f'  token = "{second}"\n  executor = "shell"\n'
                    f'  builds_dir = "{os.path.join(self.dir, "builds2")}"\n')
        self.proc.send_signal(signal.SIGHUP)
        self.receive_until(sock, "STATUS=0 jobs running, 2 runners")
        self.proc.send_signal(signal.SIGQUIT)
        self.receive_until(sock, "STOPPING=1")
        self.assertEqual(self.proc.wait(timeout=60), 0, self.kiln_log())

    def test_no_socket_no_change(self):
        self.write_config()
        self.start_kiln({"NOTIFY_SOCKET": ""})
        job = self.enqueue(["echo plain"])
        self.gitlab.wait_job_state(job["id"], timeout=60)
        self.proc.send_signal(signal.SIGQUIT)
        self.assertEqual(self.proc.wait(timeout=60), 0, self.kiln_log())


class ServiceCommandsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kiln-install-test-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.units = os.path.join(self.dir, "units")
        os.mkdir(self.units)

    def read(self, path):
        with open(path) as f:
            return f.read()

    def kiln(self, *args):
        return subprocess.run([KILN, *args], capture_output=True, text=True, timeout=60)

    def verify(self, unit_path):
        if not shutil.which("systemd-analyze"):
            self.skipTest("systemd-analyze is not installed")
        r = subprocess.run(["systemd-analyze", "verify", unit_path], capture_output=True,
                           text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stderr.strip(), "", r.stderr)

    def test_install_writes_a_unit_that_drains_and_uninstall_removes_it(self):
        config = os.path.join(self.dir, "etc", "config.toml")
        os.makedirs(os.path.dirname(config))
        with open(config, "w") as f:
            f.write("concurrent = 1\n")
        work = os.path.join(self.dir, "work dir")
        r = self.kiln("install", "--unit-dir", self.units, "--service", "kiln-ci", "--user",
                      "daemon", "--config", config, "--working-directory", work)
        self.assertEqual(r.returncode, 0, r.stderr)
        path = os.path.join(self.units, "kiln-ci.service")
        unit = self.read(path)
        kiln = os.path.realpath(KILN)
        self.assertIn(f'ExecStart={kiln} run --config {config} --working-directory "{work}"\n', unit)
        for line in ["Type=notify", "KillSignal=SIGQUIT", "KillMode=mixed",
                     "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "User=daemon",
                     f"WorkingDirectory={work}", "NoNewPrivileges=true", "WatchdogSec=60s",
                     f'ReadWritePaths={os.path.dirname(config)} "{work}"']:
            self.assertIn("\n" + line + "\n", unit)
        self.assertNotIn("StateDirectory=", unit)  # only for /var/lib/kiln
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o644)
        self.verify(path)

        again = self.kiln("install", "--unit-dir", self.units, "--service", "kiln-ci",
                          "--config", config)
        self.assertEqual(again.returncode, 1)
        self.assertIn("already exists", again.stderr)

        r = self.kiln("uninstall", "--unit-dir", self.units, "--service", "kiln-ci")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.exists(path))
        r = self.kiln("uninstall", "--unit-dir", self.units, "--service", "kiln-ci")
        self.assertEqual(r.returncode, 1)
        self.assertIn("nothing to uninstall", r.stderr)

    def test_install_as_root_by_default(self):
        r = self.kiln("install", "--unit-dir", self.units, "--config", "/etc/kiln/config.toml")
        self.assertEqual(r.returncode, 0, r.stderr)
        unit = self.read(os.path.join(self.units, "kiln.service"))
        self.assertNotIn("\nUser=", unit)
        self.assertIn("\nWorkingDirectory=/var/lib/kiln\n", unit)
        self.assertIn("\nStateDirectory=kiln\n", unit)

    def test_init_user_starts_the_service_and_jobs_run_as_user(self):
        # gitlab-runner's form: the service starts as root and runs jobs as --user.
        r = self.kiln("install", "--unit-dir", self.units, "--config", "/etc/kiln/config.toml",
                      "--init-user", "root", "--user", "daemon", "--syslog")
        self.assertEqual(r.returncode, 0, r.stderr)
        path = os.path.join(self.units, "kiln.service")
        unit = self.read(path)
        self.assertNotIn("\nUser=", unit)
        kiln = os.path.realpath(KILN)
        self.assertIn(f"\nExecStart={kiln} run --config /etc/kiln/config.toml --working-directory "
                      "/var/lib/kiln --user daemon\n", unit)
        self.verify(path)

    def test_bad_service_name(self):
        r = self.kiln("install", "--unit-dir", self.units, "--service", "../evil")
        self.assertEqual(r.returncode, 1)
        self.assertIn("not a valid unit name", r.stderr)

    def test_packaged_unit_verifies(self):
        # The packaged unit names /usr/bin/kiln; verify checks that ExecStart exists.
        text = self.read(os.path.join(SOURCE, "packaging", "kiln.service"))
        self.assertIn("ExecStart=/usr/bin/kiln run --config /etc/kiln/config.toml", text)
        path = os.path.join(self.units, "kiln.service")
        with open(path, "w") as f:
            f.write(text.replace("/usr/bin/kiln", os.path.realpath(KILN)))
        self.verify(path)

    @unittest.skipIf(os.path.isdir("/run/systemd/system"), "systemd runs here")
    def test_service_control_without_systemd_says_so(self):
        for verb in ("start", "stop", "restart", "status"):
            r = self.kiln(verb, "--service", "kiln")
            self.assertEqual(r.returncode, 1, verb)
            self.assertIn("systemd is not running on this host", r.stderr)


if __name__ == "__main__":
    unittest.main()
