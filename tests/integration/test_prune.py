"""`kiln prune`: builds checkouts, local cache files and Docker cache volumes unused for longer
than an age go; anything a running job holds (its slot lock, a mounted volume) stays."""

import fcntl
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
TEN_DAYS = 10 * 86400


def short_token(token):
    return token.removeprefix("glrt-")[:9]


def make_checkout(path, age_seconds=0):
    os.makedirs(os.path.join(path, ".git"), exist_ok=True)
    for name in ("README.md", ".git/index", ".git/HEAD", ".git/FETCH_HEAD"):
        with open(os.path.join(path, name), "w") as f:
            f.write("x\n")
    if age_seconds:
        age_tree(path, age_seconds)


def age_tree(path, age_seconds):
    t = time.time() - age_seconds
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.utime(os.path.join(root, n), (t, t), follow_symlinks=False)
    os.utime(path, (t, t))


class PruneTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="kiln-prune-test-")
        self.builds = os.path.join(self.dir, "builds")
        self.cache = os.path.join(self.dir, "cache")
        self.token = "glrt-prunetest0123456789"
        self.config = os.path.join(self.dir, "config.toml")
        with open(self.config, "w") as f:
            f.write("concurrent = 1\n\n[[runners]]\n"
                    '  name = "p"\n  url = "https://gitlab.invalid"\n'
                    f'  token = "{self.token}"\n  executor = "shell"\n'
                    f'  builds_dir = "{self.builds}"\n  cache_dir = "{self.cache}"\n')

    def tearDown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def prune(self, *args):
        return subprocess.run([KILN, "prune", "--config", self.config, *args],
                              capture_output=True, text=True, timeout=60)

    def test_old_checkouts_and_cache_files_go_fresh_and_locked_ones_stay(self):
        slot0 = os.path.join(self.builds, short_token(self.token), "0")
        slot1 = os.path.join(self.builds, short_token(self.token), "1")
        old = os.path.join(slot0, "acme", "old")
        fresh = os.path.join(slot0, "acme", "fresh")
        locked = os.path.join(slot1, "acme", "old")
        make_checkout(old, TEN_DAYS)
        make_checkout(fresh)
        make_checkout(locked, TEN_DAYS)
        old_cache = os.path.join(self.cache, "acme", "old", "default", "cache.zip")
        new_cache = os.path.join(self.cache, "acme", "new", "default", "cache.zip")
        for p in (old_cache, new_cache):
            os.makedirs(os.path.dirname(p))
            with open(p, "w") as f:
                f.write("zip")
        age_tree(os.path.join(self.cache, "acme", "old"), TEN_DAYS)

        # A job holds slot 1 (the daemon's lock).
        lock = open(os.path.join(self.builds, short_token(self.token), "1.lock"), "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            dry = self.prune("--older-than", "7d", "--dry-run")
            self.assertEqual(dry.returncode, 0, dry.stdout + dry.stderr)
            self.assertIn(f"would remove builds {old} (unused for 10d)", dry.stdout)
            self.assertIn(f"would remove cache {old_cache}", dry.stdout)
            self.assertTrue(os.path.isdir(old) and os.path.isfile(old_cache))

            real = self.prune("--older-than", "7d")
            self.assertEqual(real.returncode, 0, real.stdout + real.stderr)
            self.assertIn(f"removed builds {old}", real.stdout)
            self.assertIn(f"kept (in use by a running job) {slot1}", real.stdout)
            self.assertFalse(os.path.exists(old))
            self.assertFalse(os.path.exists(old_cache))
            self.assertFalse(os.path.exists(os.path.join(self.cache, "acme", "old")))
            self.assertTrue(os.path.isdir(fresh))
            self.assertTrue(os.path.isfile(new_cache))
            self.assertTrue(os.path.isdir(locked))
        finally:
            lock.close()
        # Once the job is over, the slot's old checkout goes too.
        again = self.prune("--older-than", "7d")
        self.assertIn(f"removed builds {locked}", again.stdout)

    def test_bad_age_is_a_clear_error(self):
        r = self.prune("--older-than", "soon")
        self.assertEqual(r.returncode, 1)
        self.assertIn("is not an age: use e.g. 7d", r.stderr)


class PruneRunningJobTest(unittest.TestCase):
    """The daemon locks a running job's slot: even a checkout aged by hand survives prune."""

    def test_running_job_checkout_is_never_pruned(self):
        gl = harness.Emulator(tls=True, long_poll=5)
        gl.start()
        work = tempfile.mkdtemp(prefix="kiln-prune-run-")
        try:
            repo = os.path.join(work, "w.git")
            sha = harness.make_bare_repo(repo, {"README.md": "w\n"})
            gl.add_repo("acme/widgets", repo)
            token = gl.create_runner(kind="glrt")["token"]
            builds = os.path.join(work, "builds")
            config = os.path.join(work, "config.toml")
            with open(config, "w") as f:
                f.write("concurrent = 1\ncheck_interval = 1\n\n[[runners]]\n"
                        f'  name = "r"\n  url = "{gl.url}"\n  token = "{token}"\n'
                        f'  tls-ca-file = "{gl.ca_file}"\n  executor = "shell"\n'
                        f'  builds_dir = "{builds}"\n')
            job = gl.enqueue_job(fixture="job_basic", repo="acme/widgets", sha=sha,
                                 runner_token=token, script=["echo started", "sleep 6"],
                                 after_script=[])
            log = open(os.path.join(work, "kiln.log"), "w")
            proc = subprocess.Popen([KILN, "run", "--config", config, "--max-jobs", "1"],
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                gl.wait_for(lambda: "started" in gl.job(job["id"])["trace"], timeout=30)
                import glob
                [checkout] = glob.glob(os.path.join(builds, "*", "0", "acme", "widgets"))
                self.assertTrue(os.path.isdir(os.path.join(checkout, ".git")))
                age_tree(checkout, TEN_DAYS)
                r = subprocess.run([KILN, "prune", "--config", config, "--older-than", "1d"],
                                   capture_output=True, text=True, timeout=60)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn("kept (in use by a running job)", r.stdout)
                self.assertTrue(os.path.isdir(checkout))
                self.assertEqual(proc.wait(timeout=60), 0)
                self.assertEqual(gl.job(job["id"])["state"], "success")
                # Finished, and its files aged again: now it goes.
                age_tree(checkout, TEN_DAYS)
                r = subprocess.run([KILN, "prune", "--config", config, "--older-than", "1d"],
                                   capture_output=True, text=True, timeout=60)
                self.assertIn(f"removed builds {checkout}", r.stdout)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        finally:
            gl.stop()
            gl.cleanup()
            shutil.rmtree(work, ignore_errors=True)


class PruneVolumesTest(unittest.TestCase):
    """Docker cache volumes against the real engine."""

    def setUp(self):
        import test_docker
        self.engine = test_docker.engine
        status, _ = self.engine("GET", "/_ping")
        if status != 200:
            raise AssertionError("no Docker engine: run `bash scripts/docker-setup.sh`")
        self.dir = tempfile.mkdtemp(prefix="kiln-prune-vol-")
        self.token = "glrt-volprune" + str(os.getpid()) + "abcdefgh"
        self.short = short_token(self.token)
        self.config = os.path.join(self.dir, "config.toml")
        with open(self.config, "w") as f:
            f.write("concurrent = 1\n\n[[runners]]\n"
                    '  name = "v"\n  url = "https://gitlab.invalid"\n'
                    f'  token = "{self.token}"\n  executor = "docker"\n'
                    f'  builds_dir = "{self.dir}/builds"\n  cache_dir = "{self.dir}/cache"\n'
                    '  [runners.docker]\n    image = "local/busybox"\n')
        self.volumes = []
        self.containers = []

    def tearDown(self):
        for c in self.containers:
            self.engine("DELETE", f"/containers/{c}?force=1")
        for v in self.volumes:
            self.engine("DELETE", "/volumes/" + urllib.parse.quote(v))
        shutil.rmtree(self.dir, ignore_errors=True)

    def volume(self, project, runner=None):
        name = f"kiln-test-prune-{self.short}-{project}"
        labels = {"kiln.managed": "true", "kiln.type": "cache",
                  "kiln.runner.id": runner or self.short, "kiln.project.id": str(project)}
        status, _ = self.engine("POST", "/volumes/create", {"Name": name, "Labels": labels})
        self.assertIn(status, (200, 201))
        self.volumes.append(name)
        return name

    def exists(self, name):
        status, _ = self.engine("GET", "/volumes/" + urllib.parse.quote(name))
        return status == 200

    def test_unused_cache_volumes_go_mounted_and_recently_used_stay(self):
        unused = self.volume(1)
        mounted = self.volume(2)
        recent = self.volume(3)
        others = self.volume(4, runner="someoneelse")
        status, c = self.engine("POST", "/containers/create", {
            "Image": "local/busybox", "Cmd": ["true"],
            "HostConfig": {"Binds": [f"{mounted}:/cache"]}})
        self.assertEqual(status, 201, c)
        self.containers.append(c["Id"])
        time.sleep(3)
        marks = os.path.join(self.dir, "volume-use")
        os.makedirs(marks)
        open(os.path.join(marks, f"{self.short}-3"), "w").close()  # a job used it just now
        r = subprocess.run([KILN, "prune", "--config", self.config, "--older-than", "2s"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn(f"removed volume {unused}", r.stdout)
        self.assertIn(f"kept (in use by a running job) volume {mounted}", r.stdout)
        self.assertFalse(self.exists(unused))
        self.assertTrue(self.exists(mounted))
        self.assertTrue(self.exists(recent))
        self.assertTrue(self.exists(others))


if __name__ == "__main__":
    unittest.main()
