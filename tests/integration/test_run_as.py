"""`user` in config.toml and `kiln run --user`: started as root, kiln becomes that user before
any job, so the checkout, extracted artifacts and everything the scripts make belong to it, and
no job runs as root. A user who cannot write where jobs work is refused at start, by path."""

import io
import os
import pwd
import shutil
import subprocess
import tempfile
import unittest
import uuid
import zipfile

from test_daemon import KILN, DaemonTestBase


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("useradd"),
                     "needs root and useradd to make a user for the jobs")
class RunAsUserTest(DaemonTestBase):
    long_poll = 5

    def setUp(self):
        super().setUp()
        self.name = "kiln" + uuid.uuid4().hex[:8]
        # A place the user owns, as its home would be; the config's directory stays root's
        # but can be passed through.
        self.jobs_dir = tempfile.mkdtemp(prefix="kiln-run-as-")
        self.addCleanup(shutil.rmtree, self.jobs_dir, ignore_errors=True)
        subprocess.run(["useradd", "--system", "--home-dir", self.jobs_dir, "--shell", "/bin/sh",
                        self.name], check=True)
        self.addCleanup(subprocess.run, ["userdel", self.name], check=False)
        self.uid = pwd.getpwnam(self.name).pw_uid
        for d in (self.work, self.dir):
            os.chmod(d, 0o711)
        # kiln, as the user, must read the CA that verifies GitLab.
        self.ca = os.path.join(self.jobs_dir, "ca.pem")
        shutil.copy(self.gitlab.ca_file, self.ca)
        os.chmod(self.ca, 0o644)
        # The emulator serves the whole class: only this test's requests count.
        self.requests_before = len(self.gitlab.requests(path="/api/v4/jobs/request"))

    def block(self, token, builds):
        return ("\n[[runners]]\n"
                f'  name = "as-user"\n  url = "{self.gitlab.url}"\n  token = "{token}"\n'
                f'  tls-ca-file = "{self.ca}"\n  executor = "shell"\n'
                f'  builds_dir = "{builds}"\n'
                f'  cache_dir = "{os.path.join(self.jobs_dir, "cache")}"\n')

    def refused(self, *expected):
        self.assertEqual(self.proc.wait(timeout=30), 1, self.kiln_log())
        log = self.kiln_log()
        for text in expected:
            self.assertIn(text, log)
        self.assertEqual(self.gitlab.requests(path="/api/v4/jobs/request")[self.requests_before:],
                         [])
        return log

    def test_directories_root_left_are_not_given_away_but_named(self):
        # An earlier root kiln's builds, and a spool_dir pointing at a directory of root's:
        # kiln gives away only what it makes itself, and says what to chown.
        token = self.gitlab.create_runner(kind="glrt")["token"]
        builds = os.path.join(self.dir, "builds")
        os.makedirs(os.path.join(builds, "old"))
        spool = os.path.join(self.dir, "roots")
        os.makedirs(spool)
        secret = os.path.join(spool, "secret")
        with open(secret, "w") as f:
            f.write("root's\n")
        self.write_config([self.block(token, builds)],
                          head=f'user = "{self.name}"\nspool_dir = "{spool}"\n')
        self.start_kiln()
        self.refused(f"{builds} exists and belongs to uid 0: give it to {self.name} "
                     f"(chown -R {self.name} {builds})",
                     f"{spool} exists and belongs to uid 0")
        for p in (builds, os.path.join(builds, "old"), spool, secret):
            self.assertEqual(os.stat(p).st_uid, 0, p)

    def config_in_users_home(self):
        """A runner and a config with `user` set, both in the user's own directory; returns the
        runner's token."""
        os.chown(self.jobs_dir, self.uid, -1)
        token = self.gitlab.create_runner(kind="glrt")["token"]
        self.config = os.path.join(self.jobs_dir, "config.toml")
        self.write_config([self.block(token, os.path.join(self.jobs_dir, "builds"))],
                          head=f'user = "{self.name}"\n')
        return token

    def test_a_config_the_user_could_change_is_refused_by_a_root_start(self):
        self.config_in_users_home()
        self.start_kiln()
        self.refused(f"{self.jobs_dir} can be changed by users other than root")

    def test_another_user_cannot_switch(self):
        token = self.gitlab.create_runner(kind="glrt")["token"]
        self.write_config([self.block(token, os.path.join(self.jobs_dir, "builds"))])
        os.chmod(self.config, 0o644)
        self.start_kiln_as_user("--user", "root")
        self.refused(f"jobs are to run as user root, but kiln runs as uid {self.uid} and cannot "
                     "switch")

    def start_kiln_as_user(self, *args, **popen):
        """kiln started by the user itself (not by root), as the package's unit does."""
        self.log = open(os.path.join(self.dir, "kiln.log"), "a")
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={self.uid}", f"--regid={pwd.getpwnam(self.name).pw_gid}",
             "--init-groups", KILN, "run", "--config", self.config, *args],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.jobs_dir, **popen)

    def test_jobs_run_as_the_user_and_own_what_they_make(self):
        os.chown(self.jobs_dir, self.uid, -1)
        token = self.gitlab.create_runner(kind="glrt")["token"]
        builds = os.path.join(self.jobs_dir, "builds")
        self.write_config([self.block(token, builds)])
        # A dependency whose archive kiln downloads and extracts before the script.
        dep = self.gitlab.enqueue_job(fixture="job_basic", tags=["nobody"])
        data = io.BytesIO()
        with zipfile.ZipFile(data, "w") as z:
            z.writestr("dist/app", "v1\n")
        self.gitlab.put_job_artifact(dep["id"], data.getvalue())
        job = self.enqueue(token, [
            "echo \"whoami=$(id -un) uid=$(id -u) home=$HOME\"",
            "echo made > made-by-job",
            "echo \"checkout=$(stat -c %U README.md) artifact=$(stat -c %U dist/app)\"",
            "if touch /etc/kiln-run-as-test 2>/dev/null; then echo ROOT; else echo not-root; fi",
        ], dependencies=[dep["id"]])
        # The flag, as gitlab-runner's own unit passes it (with --service and --syslog).
        self.start_kiln("--user", self.name, "--service", "gitlab-runner", "--syslog")
        state = self.gitlab.wait_job_state(job["id"], timeout=60)
        log = self.kiln_log()
        self.assertEqual(state["state"], "success", state["trace"] + log)
        trace = state["trace"]
        self.assertIn(f"whoami={self.name} uid={self.uid} home={self.jobs_dir}", trace)
        self.assertIn(f"checkout={self.name} artifact={self.name}", trace)
        self.assertIn("not-root", trace)
        self.assertFalse(os.path.exists("/etc/kiln-run-as-test"))
        made = [os.path.join(r, "made-by-job") for r, _, files in os.walk(builds)
                if "made-by-job" in files]
        self.assertEqual(len(made), 1, made)
        self.assertEqual(os.stat(made[0]).st_uid, self.uid)
        # kiln itself runs as the user: no root process is left to touch the build tree.
        with open(f"/proc/{self.proc.pid}/status") as f:
            uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        self.assertEqual(set(uids), {str(self.uid)})
        self.assertIn(f"running as user {self.name}", log)
        # The config stays root's (0644): kiln says what that means for renewed tokens.
        self.assertIn(f"{self.config} stays root's: reloads work, but a runner token GitLab "
                      "renews cannot be saved to it", log)
        # What kiln made for the user: its spool (the final state went through it).
        self.assertEqual(os.stat(os.path.join(self.dir, "spool")).st_uid, self.uid)
        self.proc.send_signal(subprocess.signal.SIGQUIT)
        self.assertEqual(self.proc.wait(timeout=30), 0, log)

    def test_a_reload_takes_only_entries_whose_directories_the_user_can_write(self):
        # kiln hands directories over only at start, as root; after a reload it is the user
        # and cannot. An entry whose builds_dir the user cannot make is left out, by path,
        # instead of picking up jobs that fail; the other new entry is taken.
        os.chown(self.jobs_dir, self.uid, -1)
        a = self.gitlab.create_runner(kind="glrt")["token"]
        b = self.gitlab.create_runner(kind="glrt")["token"]
        c = self.gitlab.create_runner(kind="glrt")["token"]
        first = self.block(a, os.path.join(self.jobs_dir, "builds-a"))
        self.write_config([first], head=f'user = "{self.name}"\n')
        self.start_kiln()
        self.gitlab.wait_for(lambda: self.job_requests(a), timeout=20, message="a polling")
        roots = os.path.join(self.dir, "roots-only")
        os.makedirs(roots)
        os.chmod(roots, 0o755)
        bad = os.path.join(roots, "builds")
        self.write_config([first, self.block(b, bad),
                           self.block(c, os.path.join(self.jobs_dir, "builds-c"))],
                          head=f'user = "{self.name}"\n')
        self.proc.send_signal(subprocess.signal.SIGHUP)
        self.gitlab.wait_for(lambda: self.job_requests(c), timeout=20, message="c polling")
        self.gitlab.wait_for(lambda: "the entry is not added" in self.kiln_log(), timeout=20,
                             message="the entry kiln cannot serve to be reported")
        log = self.kiln_log()
        self.assertIn(f"user {self.name} cannot write where runner as-user's jobs work "
                      f"({bad}: Permission denied): give the directories to {self.name}", log)
        self.assertEqual(self.job_requests(b), [])
        self.assertFalse(os.path.exists(bad))
        job = self.enqueue(c, ["echo \"c as $(id -un)\""])
        state = self.gitlab.wait_job_state(job["id"], timeout=60)
        self.assertEqual(state["state"], "success", state["trace"] + log)
        self.assertIn(f"c as {self.name}", state["trace"])
        self.proc.send_signal(subprocess.signal.SIGQUIT)
        self.assertEqual(self.proc.wait(timeout=30), 0, self.kiln_log())

    def test_started_as_the_user_kiln_keeps_its_memory_from_jobs(self):
        # As the package runs it (User=kiln): nothing to switch, and the jobs, which run as the
        # same user, must not read the runner tokens out of kiln (ptrace, /proc/PID/mem).
        token = self.config_in_users_home()
        os.chown(self.config, self.uid, -1)
        job = self.enqueue(token, [
            "echo \"whoami=$(id -un)\"",
            # The script's parent is kiln.
            "if head -c1 /proc/$PPID/environ >/dev/null 2>&1; then echo kiln-readable; "
            "else echo kiln-protected; fi",
        ])
        self.start_kiln_as_user(
            env={**os.environ, "HOME": self.jobs_dir, "USER": self.name, "LOGNAME": self.name})
        state = self.gitlab.wait_job_state(job["id"], timeout=60)
        self.assertEqual(state["state"], "success", state["trace"] + self.kiln_log())
        self.assertIn(f"whoami={self.name}", state["trace"])
        self.assertIn("kiln-protected", state["trace"])
        self.assertNotIn("running as user", self.kiln_log())  # nothing to switch

    def test_docker_jobs_leave_the_checkout_to_the_user(self):
        # Containers run as root and write into the bind-mounted checkout; the next job's
        # get_sources runs on the host as the user and must still be able to remove it all.
        subprocess.run(["usermod", "-aG", "docker", self.name], check=True)
        os.chown(self.jobs_dir, self.uid, -1)
        token = self.gitlab.create_runner(kind="glrt")["token"]
        builds = os.path.join(self.jobs_dir, "builds")
        self.write_config([self.block(token, builds).replace('executor = "shell"',
                                                             'executor = "docker"') +
                           '  [runners.docker]\n    image = "local/busybox"\n'
                           '    pull_policy = ["if-not-present"]\n'])
        self.start_kiln("--user", self.name)
        first = self.enqueue(token, ["id -u", "mkdir -p out/deep && echo x > out/deep/f"])
        state = self.gitlab.wait_job_state(first["id"], timeout=120)
        self.assertEqual(state["state"], "success", state["trace"] + self.kiln_log())
        self.assertIn("\n0\n", state["trace"])  # the container's user is root
        made = [r for r, dirs, _ in os.walk(builds) if r.endswith("/out/deep")]
        self.assertEqual(len(made), 1, made)
        self.assertEqual(os.stat(made[0]).st_uid, self.uid)
        self.assertEqual(os.stat(os.path.join(made[0], "f")).st_uid, self.uid)
        second = self.enqueue(token, ["test ! -e out && echo fresh-checkout"], variables=[
            {"key": "GIT_STRATEGY", "value": "clone", "public": True, "masked": False}])
        state = self.gitlab.wait_job_state(second["id"], timeout=120)
        self.assertEqual(state["state"], "success", state["trace"] + self.kiln_log())
        self.assertIn("fresh-checkout", state["trace"])


if __name__ == "__main__":
    unittest.main()
