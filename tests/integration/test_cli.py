"""End-to-end tests of the `kiln` command line against the GitLab emulator, the way a user of
gitlab-runner drives it: register, list, verify, unregister, reset-token and lint on a real
config.toml, with GitLab's side checked through the emulator's control API.

Run from tests/integration:  python3 -m unittest -v test_cli
The binary is $KILN_BIN (set by ctest), else build/release/runner/kiln.

Every kiln invocation also checks that no full runner or registration token known to the test
shows up in its stdout or stderr (the 9-character short token may).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import tomllib
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))

from harness import Emulator  # noqa: E402

KILN = os.environ.get("KILN_BIN") or os.path.join(ROOT, "build", "release", "runner", "kiln")
COMMAND_TIMEOUT = 60

# Environment variables kiln reads as flag defaults (main.cpp) or for its paths/trust store:
# a test run inside a CI job must not leak CI_SERVER_URL & co. into "missing flag" cases.
SCRUBBED_ENV = (
    "CI_SERVER_URL CI_SERVER_TOKEN CI_SERVER_TLS_CA_FILE CI_SERVER_TLS_CERT_FILE "
    "CI_SERVER_TLS_KEY_FILE REGISTRATION_TOKEN RUNNER_NAME RUNNER_EXECUTOR RUNNER_SHELL "
    "RUNNER_TAG_LIST RUNNER_LIMIT RUNNER_OUTPUT_LIMIT RUNNER_REQUEST_CONCURRENCY "
    "RUNNER_BUILDS_DIR RUNNER_CACHE_DIR DOCKER_IMAGE DOCKER_MEMORY REGISTER_NON_INTERACTIVE "
    "REGISTER_RUN_UNTAGGED REGISTER_LOCKED REGISTER_ACCESS_LEVEL REGISTER_MAXIMUM_TIMEOUT "
    "REGISTER_PAUSED REGISTER_MAINTENANCE_NOTE REGISTER_LEAVE_RUNNER CONFIG_FILE LOG_LEVEL "
    "LOG_FORMAT SSL_CERT_FILE SSL_CERT_DIR"
).split()


def token_body(token: str) -> str:
    """The token without its kind prefixes (glrt-, t1_, GR1348941, ...), as ShortenToken strips."""
    t = re.sub(r"^(glrt-|glrtr-|glcbt-)", "", token)
    t = re.sub(r"^t[123]_", "", t)
    t = re.sub(r"^GR1348941", "", t)
    return t


def short_token(token: str) -> str:
    return token_body(token)[:9]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot(path: str) -> tuple:
    """What a user could notice about a file: content, mtime, inode (rewritten?), mode."""
    st = os.stat(path)
    with open(path, "rb") as f:
        return (f.read(), st.st_mtime_ns, st.st_ino, st.st_mode)


def load_toml(path: str) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def runner_names(path: str) -> list:
    return [r["name"] for r in load_toml(path).get("runners", [])]


def limit_file_size():
    """preexec_fn: writes to regular files beyond 16 bytes fail with EFBIG (a full disk or
    quota, as far as kiln can tell); SIGXFSZ ignored so the write returns the error."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))


class KilnTestCase(unittest.TestCase):
    """Base: a temp dir per test, a scrubbed environment, and the secrets check on every run."""

    emulator_args: dict | None = None  # None: no emulator for this class
    gl: Emulator | None = None

    @classmethod
    def setUpClass(cls):
        if not os.access(KILN, os.X_OK):
            raise RuntimeError(f"kiln binary not found at {KILN} (set KILN_BIN or build it)")
        if cls.emulator_args is not None:
            cls.gl = Emulator(**cls.emulator_args)
            cls.addClassCleanup(cls.gl.cleanup)
            cls.gl.start()

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="kiln-cli-test-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.secrets: set = set()  # tokens the test made up or obtained outside the emulator list
        self.env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        self.env["HOME"] = os.path.join(self.tmp, "home")  # never the user's ~/.kiln/config.toml
        os.makedirs(self.env["HOME"])
        self.config = os.path.join(self.tmp, "etc", "config.toml")

    # -- running kiln ---------------------------------------------------------------------------

    def kiln(self, *args: str, preexec_fn=None) -> subprocess.CompletedProcess:
        proc = subprocess.run([KILN, *args], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, env=self.env, timeout=COMMAND_TIMEOUT,
                              preexec_fn=preexec_fn)
        self.assert_no_secrets(proc)
        return proc

    def known_secrets(self) -> set:
        found = set(self.secrets)
        if self.gl is not None:
            for r in self.gl.runners():
                found.add(r["token"])
                found.update(r["previous_tokens"])
                if r.get("registration_token"):
                    found.add(r["registration_token"])
        return found

    def assert_no_secrets(self, proc: subprocess.CompletedProcess) -> None:
        output = {"stdout": proc.stdout, "stderr": proc.stderr}
        for secret in self.known_secrets():
            for variant in {secret, token_body(secret)}:
                if len(variant) < 12:  # the short token (9 chars) may be shown
                    continue
                for stream, text in output.items():
                    if variant in text:
                        self.fail(f"`kiln {' '.join(proc.args[1:])}` printed the secret token "
                                  f"{variant!r} on {stream}:\n{text}")

    def register(self, *extra: str, token: str | None = None, reg_token: str | None = None,
                 name: str = "n1", config: str | None = None, ca: str | None = "default",
                 url: str | None = None, preexec_fn=None) -> subprocess.CompletedProcess:
        args = ["register", "--non-interactive", "--url", url or self.gl.url,
                "--executor", "shell", "--name", name, "--config", config or self.config]
        if token is not None:
            args += ["--token", token]
        if reg_token is not None:
            args += ["--registration-token", reg_token]
        if ca == "default":
            ca = self.gl.ca_file
        if ca is not None:
            args += ["--tls-ca-file", ca]
        return self.kiln(*args, *extra, preexec_fn=preexec_fn)

    def new_registration_token(self) -> str:
        token = self.gl.add_registration_token()
        self.secrets.add(token)  # the emulator lists it only once a runner used it
        return token

    # -- assertions -----------------------------------------------------------------------------

    def assert_ok(self, proc: subprocess.CompletedProcess) -> None:
        self.assertEqual(proc.returncode, 0,
                         f"`kiln {' '.join(proc.args[1:])}` failed:\n{proc.stdout}{proc.stderr}")

    def assert_one_error(self, proc: subprocess.CompletedProcess) -> str:
        """Non-zero exit and exactly one stderr line, starting with ERROR:; returns it."""
        self.assertNotEqual(proc.returncode, 0,
                            f"`kiln {' '.join(proc.args[1:])}` succeeded:\n{proc.stderr}")
        lines = proc.stderr.splitlines()
        self.assertEqual(len(lines), 1, f"expected one error line, got:\n{proc.stderr}")
        self.assertTrue(lines[0].startswith("ERROR: "), lines[0])
        return lines[0]

    def runner_by_id(self, runner_id: int) -> dict:
        for r in self.gl.runners():
            if r["id"] == runner_id:
                return r
        self.fail(f"emulator has no runner {runner_id}")

    def system_id(self, config: str | None = None) -> str:
        path = os.path.join(os.path.dirname(config or self.config), ".runner_system_id")
        self.assertTrue(os.path.isfile(path), f"{path} missing")
        with open(path) as f:
            sid = f.read().strip()
        self.assertRegex(sid, r"^[sr]_[0-9a-zA-Z]{12}$")
        return sid


# ================================================================================================
# 1-6, 9: registration and runner management against GitLab over HTTPS
# ================================================================================================

class RegisterAndManageTest(KilnTestCase):
    emulator_args = {"tls": True}

    def test_register_list_verify_unregister_with_authentication_token(self):
        runner = self.gl.create_runner(kind="glrt")
        token = runner["token"]
        config = os.path.join(self.tmp, "missing", "dir", "config.toml")  # created by kiln

        before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.assert_ok(self.register(token=token, config=config))
        after = dt.datetime.now(dt.timezone.utc)

        st = os.stat(config)
        self.assertEqual(st.st_mode & 0o777, 0o600, oct(st.st_mode))
        entries = load_toml(config)["runners"]
        self.assertEqual(len(entries), 1)
        e = entries[0]
        self.assertEqual(e["name"], "n1")
        self.assertEqual(e["url"], self.gl.url)
        self.assertEqual(e["token"], token)
        self.assertEqual(e["executor"], "shell")
        self.assertEqual(e["tls-ca-file"], self.gl.ca_file)
        self.assertEqual(e["id"], runner["id"])
        obtained = e["token_obtained_at"]
        self.assertIsInstance(obtained, dt.datetime)
        self.assertTrue(before <= obtained <= after, f"{before} <= {obtained} <= {after}")

        # GitLab got a runner manager for this host's system ID, which kiln kept next to F.
        sid = self.system_id(config)
        managers = [m["system_id"] for m in self.runner_by_id(runner["id"])["managers"]]
        self.assertIn(sid, managers)

        listed = self.kiln("list", "--config", config)
        self.assert_ok(listed)
        line = next((ln for ln in listed.stdout.splitlines() if ln.startswith("n1 ")), None)
        self.assertIsNotNone(line, f"n1 not listed:\n{listed.stdout}")
        self.assertIn("Executor=shell", line)
        self.assertIn("URL=" + self.gl.url, line)
        self.assertIn("Token=" + short_token(token), line)
        self.assertNotIn(token, listed.stdout)

        verified = self.kiln("verify", "--config", config)
        self.assert_ok(verified)
        self.assertRegex(verified.stderr, r"is valid.*runner=" + short_token(token))

        unreg = self.kiln("unregister", "--name", "n1", "--config", config)
        self.assert_ok(unreg)
        self.assertEqual(runner_names(config), [])
        gl_runner = self.runner_by_id(runner["id"])
        self.assertNotIn(sid, [m["system_id"] for m in gl_runner["managers"]])
        # A runner created in GitLab only loses this host's manager; it is not deleted.
        self.assertFalse(gl_runner["deleted"])
        deletes = self.gl.requests(path="^/api/v4/runners/managers$", method="DELETE")
        self.assertTrue(any(d["status"] == 204 for d in deletes), deletes)

    # -- 2. TLS trust ---------------------------------------------------------------------------

    def test_wrong_ca_fails_without_creating_the_config(self):
        runner = self.gl.create_runner(kind="glrt")
        proc = self.register(token=runner["token"], ca=self.gl.other_ca_file)
        err = self.assert_one_error(proc)
        self.assertIn("certificate verify failed", err)
        self.assertIn("unable to get local issuer certificate", err)  # OpenSSL's reason
        self.assertFalse(os.path.exists(self.config))
        self.assertEqual(self.runner_by_id(runner["id"])["managers"], [])

    def test_wrong_ca_leaves_an_existing_config_untouched(self):
        other = self.gl.create_runner(kind="glrt")
        self.assert_ok(self.register(token=other["token"], name="other"))
        before = snapshot(self.config)

        runner = self.gl.create_runner(kind="glrt")
        err = self.assert_one_error(self.register(token=runner["token"],
                                                  ca=self.gl.other_ca_file))
        self.assertIn("certificate verify failed", err)
        self.assertEqual(snapshot(self.config), before)
        self.assertEqual(runner_names(self.config), ["other"])

    def test_missing_ca_file_is_named(self):
        runner = self.gl.create_runner(kind="glrt")
        missing = os.path.join(self.tmp, "no-such-ca.pem")
        err = self.assert_one_error(self.register(token=runner["token"], ca=missing))
        self.assertIn(missing, err)
        self.assertFalse(os.path.exists(self.config))

    # -- 3. rejected tokens, unreachable servers, bad input --------------------------------------

    def test_unknown_token_is_rejected_and_config_untouched(self):
        other = self.gl.create_runner(kind="glrt")
        self.assert_ok(self.register(token=other["token"], name="other"))
        before = snapshot(self.config)

        bogus = "glrt-t1_NeverIssuedByGitLab0"
        self.secrets.add(bogus)
        err = self.assert_one_error(self.register(token=bogus, name="n2"))
        self.assertIn("403", err)
        self.assertIn("rejected", err)
        self.assertEqual(snapshot(self.config), before)

    def test_unreachable_server(self):
        runner = self.gl.create_runner(kind="glrt")
        url = f"https://127.0.0.1:{closed_port()}"
        err = self.assert_one_error(self.register(token=runner["token"], url=url))
        self.assertIn("cannot connect", err)
        self.assertIn(url, err)
        self.assertFalse(os.path.exists(self.config))

    def test_bad_urls(self):
        runner = self.gl.create_runner(kind="glrt")
        for url in ("ftp://x", "not a url"):
            with self.subTest(url=url):
                err = self.assert_one_error(self.register(token=runner["token"], url=url))
                self.assertIn(url, err)
                self.assertIn("https", err)  # says what is expected
                self.assertFalse(os.path.exists(self.config))

    def test_missing_required_flags(self):
        token = self.gl.create_runner(kind="glrt")["token"]
        base = ["register", "--non-interactive", "--config", self.config]
        cases = {
            "--url": ["--token", token, "--executor", "shell"],
            "--token": ["--url", self.gl.url, "--executor", "shell"],
            "--executor": ["--url", self.gl.url, "--token", token,
                           "--tls-ca-file", self.gl.ca_file],
        }
        for flag, args in cases.items():
            with self.subTest(missing=flag):
                err = self.assert_one_error(self.kiln(*base, *args))
                self.assertIn("pass " + flag, err)
                self.assertFalse(os.path.exists(self.config))

    def test_unsupported_executor(self):
        token = self.gl.create_runner(kind="glrt")["token"]
        err = self.assert_one_error(self.kiln(
            "register", "--non-interactive", "--url", self.gl.url, "--token", token,
            "--executor", "kubernetes", "--tls-ca-file", self.gl.ca_file,
            "--config", self.config))
        self.assertIn("kubernetes", err)
        self.assertIn("shell", err)
        self.assertFalse(os.path.exists(self.config))

    # -- 4. legacy registration tokens ----------------------------------------------------------

    def legacy_runners(self, reg_token: str) -> list:
        return [r for r in self.gl.runners() if r["registration_token"] == reg_token]

    def test_legacy_registration_and_unregister(self):
        reg = self.new_registration_token()
        proc = self.register("--tag-list", "go,linux", "--run-untagged", "--locked",
                             reg_token=reg, name="legacy-1")
        self.assert_ok(proc)
        created = self.legacy_runners(reg)
        self.assertEqual(len(created), 1)
        r = created[0]
        self.assertEqual(r["tags"], ["go", "linux"])
        self.assertTrue(r["run_untagged"])
        self.assertTrue(r["locked"])
        self.assertEqual(r["description"], "legacy-1")
        entry = load_toml(self.config)["runners"][0]
        self.assertEqual(entry["token"], r["token"])
        self.assertEqual(entry["id"], r["id"])

        self.assert_ok(self.kiln("unregister", "--name", "legacy-1", "--config", self.config))
        self.assertTrue(self.runner_by_id(r["id"])["deleted"])
        deletes = self.gl.requests(path="^/api/v4/runners$", method="DELETE")
        self.assertTrue(any(d["status"] == 204 for d in deletes), deletes)
        self.assertEqual(runner_names(self.config), [])

    def test_registration_tokens_disabled(self):
        reg = self.new_registration_token()
        self.gl.configure(registration_tokens_disabled=True)
        self.addCleanup(self.gl.configure, registration_tokens_disabled=False)
        err = self.assert_one_error(self.register(reg_token=reg))
        self.assertIn("410", err)
        self.assertIn("authentication token", err)
        self.assertIn("--token", err)
        self.assertFalse(os.path.exists(self.config))
        self.assertEqual(self.legacy_runners(reg), [])

    def test_config_under_a_regular_file(self):
        reg = self.new_registration_token()
        blocker = os.path.join(self.tmp, "blocker")
        with open(blocker, "w") as f:
            f.write("not a directory\n")
        config = os.path.join(blocker, "config.toml")
        err = self.assert_one_error(self.register(reg_token=reg, config=config))
        self.assertIn(config, err)
        # Either nothing was created in GitLab or it was deleted again: no live orphan.
        self.assertEqual([r for r in self.legacy_runners(reg) if not r["deleted"]], [])

    def test_failed_save_deletes_the_legacy_runner_again(self):
        reg = self.new_registration_token()
        os.makedirs(os.path.dirname(self.config))
        # The config cannot be written (file size limit: like a full disk or quota).
        err = self.assert_one_error(self.register(reg_token=reg, preexec_fn=limit_file_size))
        self.assertIn(self.config, err)
        self.assertIn("deleted", err)
        created = self.legacy_runners(reg)
        self.assertEqual(len(created), 1, "the registration reached GitLab")
        self.assertTrue(created[0]["deleted"])
        self.assertFalse(os.path.exists(self.config))
        leftovers = [n for n in os.listdir(os.path.dirname(self.config))
                     if n.startswith("config.toml")]
        self.assertEqual(leftovers, [])

    def test_failed_save_with_leave_runner_keeps_it(self):
        reg = self.new_registration_token()
        os.makedirs(os.path.dirname(self.config))
        self.assert_one_error(self.register("--leave-runner", reg_token=reg,
                                            preexec_fn=limit_file_size))
        created = self.legacy_runners(reg)
        self.assertEqual(len(created), 1)
        self.assertFalse(created[0]["deleted"])

    # -- 5. verify --delete ---------------------------------------------------------------------

    def test_verify_delete_drops_only_runners_gitlab_no_longer_knows(self):
        valid = self.gl.create_runner(kind="glrt")
        self.assert_ok(self.register(token=valid["token"], name="valid"))
        reg = self.new_registration_token()
        self.assert_ok(self.register(reg_token=reg, name="deleted-in-gitlab"))
        legacy = self.legacy_runners(reg)[0]
        # Deleted through the API behind kiln's back.
        res = self.gl.api("DELETE", "/runners", {"token": legacy["token"]})
        self.assertEqual(res.status, 204)
        # A runner whose token GitLab never issued, added to the file by hand.
        ghost = "glrt-t1_GhostTokenNeverIssued"
        self.secrets.add(ghost)
        with open(self.config, "a") as f:
            f.write(f'\n[[runners]]\n  name = "ghost"\n  url = "{self.gl.url}"\n'
                    f'  token = "{ghost}"\n  executor = "shell"\n'
                    f'  tls-ca-file = "{self.gl.ca_file}"\n')
        self.assertEqual(runner_names(self.config), ["valid", "deleted-in-gitlab", "ghost"])
        before = snapshot(self.config)

        proc = self.kiln("verify", "--config", self.config)
        self.assertNotEqual(proc.returncode, 0, proc.stderr)
        self.assertIn("--delete", proc.stderr)
        self.assertEqual(snapshot(self.config), before)

        proc = self.kiln("verify", "--delete", "--config", self.config)
        self.assert_ok(proc)
        self.assertEqual(runner_names(self.config), ["valid"])
        self.assertEqual(load_toml(self.config)["runners"][0]["token"], valid["token"])
        self.assertEqual(os.stat(self.config).st_mode & 0o777, 0o600)
        self.assert_ok(self.kiln("verify", "--config", self.config))

    # -- 6. reset-token -------------------------------------------------------------------------

    def test_reset_token(self):
        runner = self.gl.create_runner(kind="glrt")
        old_token = runner["token"]
        self.assert_ok(self.register(token=old_token))
        old_copy = os.path.join(self.tmp, "old", "config.toml")
        os.makedirs(os.path.dirname(old_copy))
        shutil.copy2(self.config, old_copy)

        proc = self.kiln("reset-token", "--name", "n1", "--config", self.config)
        self.assert_ok(proc)
        new_token = load_toml(self.config)["runners"][0]["token"]
        self.assertNotEqual(new_token, old_token)
        self.assertEqual(self.runner_by_id(runner["id"])["token"], new_token)
        self.assertIn(short_token(new_token), proc.stderr)
        self.assertEqual(os.stat(self.config).st_mode & 0o777, 0o600)

        stale = self.kiln("verify", "--config", old_copy)
        self.assertNotEqual(stale.returncode, 0, stale.stderr)
        self.assertIn("removed", stale.stderr)
        self.assert_ok(self.kiln("verify", "--config", self.config))

    # -- 9. secrets in error paths --------------------------------------------------------------

    def test_selectors_and_errors_show_only_short_tokens(self):
        runner = self.gl.create_runner(kind="glrt")
        self.assert_ok(self.register(token=runner["token"]))
        # Selecting by a token that is not in the file: the error may name it only shortened.
        absent = "glrt-t1_AbsentFromConfigFile"
        self.secrets.add(absent)
        err = self.assert_one_error(self.kiln("unregister", "--url", self.gl.url, "--token",
                                              absent, "--config", self.config))
        self.assertIn(short_token(absent), err)
        # Debug logging must not reveal them either (checked by kiln() on every run).
        self.assert_ok(self.kiln("verify", "--log-level", "debug", "--config", self.config))
        self.assert_ok(self.kiln("reset-token", "--name", "n1", "--log-level", "debug",
                                 "--config", self.config))
        self.assert_ok(self.kiln("list", "--log-level", "debug", "--config", self.config))
        self.assert_ok(self.kiln("unregister", "--all-runners", "--log-level", "debug",
                                 "--config", self.config))


# ================================================================================================
# 8. mutual TLS
# ================================================================================================

class MutualTLSTest(KilnTestCase):
    emulator_args = {"tls": True, "client_ca": True}

    def test_register_with_client_certificate(self):
        runner = self.gl.create_runner(kind="glrt")
        proc = self.register("--tls-cert-file", self.gl.client_cert,
                             "--tls-key-file", self.gl.client_key, token=runner["token"])
        self.assert_ok(proc)
        entry = load_toml(self.config)["runners"][0]
        self.assertEqual(entry["tls-cert-file"], self.gl.client_cert)
        self.assertEqual(entry["tls-key-file"], self.gl.client_key)
        self.assertIn(self.system_id(), [m["system_id"]
                                         for m in self.runner_by_id(runner["id"])["managers"]])
        # The saved entry keeps working: verify presents the certificate from config.toml.
        self.assert_ok(self.kiln("verify", "--config", self.config))

    def test_register_without_client_certificate_fails(self):
        runner = self.gl.create_runner(kind="glrt")
        err = self.assert_one_error(self.register(token=runner["token"]))
        # TLS 1.3 servers reject the missing certificate after the handshake: depending on
        # timing kiln sees the alert or only a connection reset, and must explain both.
        self.assertIn("TLS", err)
        self.assertIn("client certificate", err)
        self.assertIn("tls-cert-file", err)
        self.assertFalse(os.path.exists(self.config))
        self.assertEqual(self.runner_by_id(runner["id"])["managers"], [])


# ================================================================================================
# 7. lint, 10. version/help
# ================================================================================================

VALID_CONFIG = """\
concurrent = 2
check_interval = 3

[[runners]]
  name = "a"
  url = "https://gitlab.example.com"
  token = "glrt-t1_LintTokenSecretValue"
  executor = "shell"
"""


class LintTest(KilnTestCase):

    def lint(self, text: str) -> tuple[str, subprocess.CompletedProcess]:
        path = os.path.join(self.tmp, "config.toml")
        with open(path, "w") as f:
            f.write(text)
        self.secrets.add("glrt-t1_LintTokenSecretValue")
        return path, self.kiln("lint", "--config", path)

    def test_valid_file(self):
        path, proc = self.lint(VALID_CONFIG)
        self.assert_ok(proc)
        self.assertNotIn("warning:", proc.stderr)
        self.assertNotIn("error:", proc.stderr)

    def test_unknown_key_is_a_warning_with_file_and_line(self):
        text = VALID_CONFIG.replace('  executor = "shell"\n',
                                    '  executor = "shell"\n  exector = "docker"\n')
        path, proc = self.lint(text)
        self.assert_ok(proc)
        self.assertRegex(proc.stderr, re.escape(path) + r":9(:\d+)?: warning: .*exector")

    def test_wrong_type_is_an_error_with_file_and_line(self):
        path, proc = self.lint(VALID_CONFIG.replace("concurrent = 2", 'concurrent = "two"'))
        self.assertNotEqual(proc.returncode, 0, proc.stderr)
        self.assertRegex(proc.stderr, re.escape(path) + r":1(:\d+)?: error: .*concurrent")

    def test_invalid_toml_is_an_error_with_the_line(self):
        text = VALID_CONFIG.replace("[[runners]]", "[[runners]")
        path, proc = self.lint(text)
        self.assertNotEqual(proc.returncode, 0, proc.stderr)
        self.assertRegex(proc.stderr, re.escape(path) + r":4(:\d+)?: error: ")


class BasicsTest(KilnTestCase):
    COMMANDS = ("register", "verify", "unregister", "list", "reset-token", "lint", "run")

    def test_version(self):
        proc = self.kiln("--version")
        self.assert_ok(proc)
        self.assertRegex(proc.stdout.strip(), r"^kiln \d+\.\d+\.\d+\S*$")

    def test_help_lists_the_commands(self):
        proc = self.kiln("--help")
        self.assert_ok(proc)
        for command in self.COMMANDS:
            self.assertRegex(proc.stdout, rf"(?m)^\s+{re.escape(command)}\s")

    def test_unknown_command_fails(self):
        proc = self.kiln("regsiter")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("register", proc.stdout + proc.stderr)  # shows what is available

    def test_unknown_command_is_named_in_the_error(self):
        proc = self.kiln("regsiter")
        self.assertNotEqual(proc.returncode, 0)
        self.assertIn("regsiter", proc.stderr)


if __name__ == "__main__":
    unittest.main()
