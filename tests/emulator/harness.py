"""Test-side helpers for the GitLab emulator (standard library only).

    import sys; sys.path.insert(0, "<repo>/tests/emulator")
    from harness import Emulator

    with Emulator(tls=True, long_poll=5) as gl:
        runner = gl.create_runner(tags=["docker"])
        job = gl.enqueue_job(fixture="job_basic", tags=["docker"])
        ... run kiln against gl.url with gl.ca_file ...
        gl.wait_for(lambda: gl.job(job["id"])["state"] == "success", timeout=30)

The emulator runs as a subprocess; its stdout/stderr go to `<workdir>/emulator.log`.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
EMULATOR = os.path.join(HERE, "gitlab_emulator.py")
MAKE_CERTS = os.path.join(HERE, "make_certs.sh")
FIXTURES_DIR = os.path.normpath(os.path.join(HERE, "..", "fixtures"))

_shared_certs_dir: str | None = None


def certs_dir() -> str:
    """TLS material from make_certs.sh, generated once per test process."""
    global _shared_certs_dir
    if _shared_certs_dir is None:
        d = tempfile.mkdtemp(prefix="kiln-test-certs-")
        subprocess.run(["bash", MAKE_CERTS, d], check=True, capture_output=True)
        atexit.register(shutil.rmtree, d, True)
        _shared_certs_dir = d
    return _shared_certs_dir


class HTTPResult:
    """A finished HTTP exchange; non-2xx statuses are results too, not exceptions."""

    def __init__(self, status: int, headers: Any, body: bytes):
        self.status = status
        self.headers = headers            # http.client.HTTPMessage (case-insensitive .get)
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    def __repr__(self) -> str:
        return f"<HTTPResult {self.status} {self.body[:200]!r}>"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def http_request(method: str, url: str, body: Any = None, headers: dict | None = None,
                 context: ssl.SSLContext | None = None, timeout: float = 30,
                 follow_redirects: bool = False) -> HTTPResult:
    """One request the way a runner would make it. dict/list bodies are sent as JSON."""
    hdrs = dict(headers or {})
    data = body
    if isinstance(body, (dict, list)):
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    elif isinstance(body, str):
        data = body.encode()
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    handlers: list = [urllib.request.HTTPSHandler(context=context)]
    if not follow_redirects:
        handlers.append(_NoRedirect())
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return HTTPResult(resp.status, resp.headers, resp.read())
    except urllib.error.HTTPError as e:
        return HTTPResult(e.code, e.headers, e.read())


class Emulator:
    """Runs gitlab_emulator.py in a subprocess for the duration of a `with` block."""

    def __init__(self, tls: bool = False, client_ca: bool = False, long_poll: float = 5,
                 host: str = "127.0.0.1", extra_args: list | tuple = (),
                 workdir: str | None = None, startup_timeout: float = 15,
                 verbose: bool = False):
        self.tls = tls or client_ca
        self.mtls = client_ca
        self.long_poll = long_poll
        self.host = host
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.verbose = verbose
        self._own_workdir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="kiln-emulator-")
        self.state_dir = os.path.join(self.workdir, "state")
        self.log_path = os.path.join(self.workdir, "emulator.log")
        certs = certs_dir()
        self.certs_dir = certs
        self.ca_file = os.path.join(certs, "ca.pem")
        self.other_ca_file = os.path.join(certs, "other-ca.pem")
        self.server_cert = os.path.join(certs, "server.pem")
        self.server_key = os.path.join(certs, "server-key.pem")
        self.client_cert = os.path.join(certs, "client.pem")
        self.client_key = os.path.join(certs, "client-key.pem")
        self.url: str = ""
        self.proc: subprocess.Popen | None = None
        self._log = None

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> "Emulator":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        ready = os.path.join(self.workdir, "ready")
        if os.path.exists(ready):
            os.unlink(ready)
        cmd = [sys.executable, EMULATOR, "--host", self.host, "--port", "0",
               "--ready-file", ready, "--long-poll", str(self.long_poll),
               "--state-dir", self.state_dir]
        if self.tls:
            cmd += ["--tls-cert", self.server_cert, "--tls-key", self.server_key]
        if self.mtls:
            cmd += ["--tls-client-ca", self.ca_file]
        if self.verbose:
            cmd.append("--verbose")
        cmd += self.extra_args
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while not os.path.exists(ready):
            if self.proc.poll() is not None:
                raise RuntimeError(f"emulator exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"emulator did not become ready:\n{self.log()}")
            time.sleep(0.02)
        with open(ready) as f:
            self.url = f.read().strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def cleanup(self) -> None:
        """Remove the work directory (logs, state) unless the caller supplied it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- clients --------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return self.url + "/api/v4"

    def ssl_context(self, ca_file: str | None = None, client_cert: bool | None = None
                    ) -> ssl.SSLContext | None:
        """Client context trusting the test CA (and presenting the client cert under mTLS)."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=ca_file or self.ca_file)
        if client_cert if client_cert is not None else self.mtls:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None,
                timeout: float = 30, **kw) -> HTTPResult:
        """A request to the emulator, `path` relative to the base URL (e.g. /api/v4/…)."""
        return http_request(method, self.url + path, body, headers,
                            context=self.ssl_context(), timeout=timeout, **kw)

    def api(self, method: str, path: str, body: Any = None, headers: dict | None = None,
            timeout: float = 30, **kw) -> HTTPResult:
        """A request to /api/v4<path>."""
        return self.request(method, "/api/v4" + path, body, headers, timeout, **kw)

    def control(self, method: str, path: str, body: Any = None) -> Any:
        res = self.request(method, "/__emulator" + path,
                           body if body is not None else ({} if method != "GET" else None))
        if res.status >= 300:
            raise RuntimeError(f"control {method} {path} -> {res.status}: "
                               f"{res.body.decode(errors='replace')}")
        ctype = res.header("Content-Type") or ""
        return res.json() if ctype.startswith("application/json") else res.body

    # -- control API wrappers -------------------------------------------------------------------

    def reset(self) -> None:
        self.control("POST", "/reset")

    def create_runner(self, token: str | None = None, kind: str = "glrt",
                      tags: list | None = None, run_untagged: bool = True,
                      token_expires_at: str | None = None, **extra) -> dict:
        body: dict = {"kind": kind, "tags": list(tags or []), "run_untagged": run_untagged}
        if token:
            body["token"] = token
        if token_expires_at:
            body["token_expires_at"] = token_expires_at
        body.update(extra)
        return self.control("POST", "/runners", body)

    def add_registration_token(self, token: str | None = None, disabled: bool = False,
                               **extra) -> str:
        body = {"disabled": disabled, **extra}
        if token:
            body["token"] = token
        return self.control("POST", "/registration_tokens", body)["token"]

    def outage(self, seconds: float) -> None:
        """GitLab unreachable (connections refused) for `seconds`, state kept; returns once
        the listener is closed."""
        self.control("POST", "/outage", {"seconds": seconds})
        deadline = time.monotonic() + 10
        while self.is_up():
            if time.monotonic() > deadline:
                raise RuntimeError("the emulator did not go down")
            time.sleep(0.05)

    def is_up(self) -> bool:
        try:
            self.request("GET", "/__emulator/health", timeout=2)
            return True
        except (OSError, urllib.error.URLError):
            return False

    def wait_until_up(self, timeout: float = 120) -> None:
        self.wait_for(self.is_up, timeout, 0.1, "the emulator to listen again")

    def runners(self) -> list:
        return self.control("GET", "/runners")

    def enqueue_job(self, payload: dict | None = None, fixture: str | None = None,
                    tags: list | None = None, runner_token: str | None = None,
                    variables: list | None = None, repo: str | None = None, **extra) -> dict:
        body: dict = dict(extra)
        for k, v in (("payload", payload), ("fixture", fixture), ("tags", tags),
                     ("runner_token", runner_token), ("variables", variables), ("repo", repo)):
            if v is not None:
                body[k] = v
        return self.control("POST", "/jobs", body)

    def jobs(self) -> list:
        return self.control("GET", "/jobs")

    def job(self, job_id: int) -> dict:
        return self.control("GET", f"/jobs/{job_id}")

    def job_trace(self, job_id: int) -> bytes:
        return self.control("GET", f"/jobs/{job_id}/trace")

    def job_artifact(self, job_id: int, artifact_type: str = "archive") -> bytes:
        return self.control("GET", f"/jobs/{job_id}/artifacts/{artifact_type}")

    def put_job_artifact(self, job_id: int, data: bytes, artifact_type: str = "archive",
                         filename: str | None = None) -> dict:
        """Make `data` the job's stored artifact (served to dependants as it is)."""
        q = "?" + urllib.parse.urlencode({"filename": filename}) if filename else ""
        res = self.request("PUT", f"/__emulator/jobs/{job_id}/artifacts/{artifact_type}{q}", data,
                           {"Content-Type": "application/octet-stream"})
        if res.status >= 300:
            raise RuntimeError(f"put_job_artifact -> {res.status}: {res.body!r}")
        return res.json()

    def cancel(self, job_id: int, mode: str = "graceful") -> dict:
        return self.control("POST", f"/jobs/{job_id}/cancel", {"mode": mode})

    def expire_token(self, job_id: int) -> dict:
        return self.control("POST", f"/jobs/{job_id}/expire_token")

    def fail_job(self, job_id: int, failure_reason: str = "job_execution_server_timeout") -> dict:
        return self.control("POST", f"/jobs/{job_id}/fail", {"failure_reason": failure_reason})

    def delete_job(self, job_id: int) -> dict:
        return self.control("DELETE", f"/jobs/{job_id}")

    def set_job_timeout(self, job_id: int, timeout: int) -> dict:
        return self.control("POST", f"/jobs/{job_id}/timeout", {"timeout": timeout})

    def fault(self, path: str, action: str = "status", method: str | None = None,
              status: int = 503, count: int | None = 1, retry_after: float | None = None,
              delay: float | None = None, headers: dict | None = None, body: Any = None) -> dict:
        """Matching requests get `status` (action "status"), are answered late ("delay": then
        handled normally), lose their connection unanswered and unapplied ("drop", after
        `delay` seconds when given), or reset the job's stored trace ("reset_trace")."""
        spec: dict = {"path": path, "action": action, "status": status, "count": count}
        for k, v in (("method", method), ("retry_after", retry_after), ("delay", delay),
                     ("headers", headers), ("body", body)):
            if v is not None:
                spec[k] = v
        return self.control("POST", "/faults", spec)

    def faults(self) -> list:
        return self.control("GET", "/faults")

    def clear_faults(self) -> None:
        self.control("DELETE", "/faults")

    def configure(self, **config) -> dict:
        return self.control("POST", "/config", config)

    def config(self) -> dict:
        return self.control("GET", "/config")

    def requests(self, path: str | None = None, method: str | None = None,
                 since: int = 0) -> list:
        q = {"since": since}
        if path:
            q["path"] = path
        if method:
            q["method"] = method
        return self.control("GET", "/requests?" + urllib.parse.urlencode(q))

    def clear_requests(self) -> None:
        self.control("DELETE", "/requests")

    def violations(self) -> list:
        return self.control("GET", "/violations")

    def add_repo(self, name: str, path: str) -> dict:
        return self.control("POST", "/repos", {"name": name, "path": os.path.abspath(path)})

    # -- waiting --------------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10,
                 interval: float = 0.05, message: str = "condition") -> Any:
        """Poll `predicate` until it returns something truthy; return that value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {message}")
            time.sleep(interval)

    def wait_job_state(self, job_id: int, states: str | tuple | list = ("success", "failed",
                                                                         "canceled"),
                       timeout: float = 30) -> dict:
        wanted = (states,) if isinstance(states, str) else tuple(states)

        def check() -> dict | None:
            j = self.job(job_id)
            return j if j["state"] in wanted else None
        return self.wait_for(check, timeout, 0.1, f"job {job_id} in {wanted}")


# -- git helpers ----------------------------------------------------------------------------------

def git(*args: str, cwd: str | None = None, env: dict | None = None) -> str:
    full_env = dict(os.environ)
    full_env.update({"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.com",
                     "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.com",
                     "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"})
    full_env.update(env or {})
    r = subprocess.run(["git", *args], cwd=cwd, env=full_env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed ({r.returncode}): {r.stderr}")
    return r.stdout.strip()


def make_bare_repo(path: str, files: dict | None = None, branch: str = "main",
                   message: str = "initial commit") -> str:
    """Create a bare repository at `path` with one commit on `branch`; returns its sha."""
    files = files or {"README.md": "hello from the emulator\n"}
    work = tempfile.mkdtemp(prefix="kiln-repo-work-")
    try:
        git("init", "-q", "-b", branch, work)
        for name, content in files.items():
            full = os.path.join(work, name)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(full, mode) as f:
                f.write(content)
        git("add", "-A", cwd=work)
        git("-c", "commit.gpgsign=false", "commit", "-q", "-m", message, cwd=work)
        sha = git("rev-parse", "HEAD", cwd=work)
        git("clone", "-q", "--bare", work, path)
        return sha
    finally:
        shutil.rmtree(work, ignore_errors=True)


def basic_auth_header(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
