"""The job cache (restore_cache / archive_cache) of `kiln run` with the shell executor, against
the GitLab emulator and a real S3-compatible server on loopback (s3rver from the npm registry,
installed by scripts/s3-setup.sh): push then pull byte-identical, fallback_keys and
CACHE_FALLBACK_KEY, policy pull, a server that is down, the local cache without
[runners.cache], and tar.zst archives.

s3rver checks a presigned URL's form, credential and expiry but not its signature, so every
request kiln sends it is also checked here with an independent SigV4 implementation."""

import filecmp
import glob
import hashlib
import hmac
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
import harness  # noqa: E402

KILN = os.environ.get("KILN_BIN", os.path.join(ROOT, "build", "release", "runner", "kiln"))
SOURCE = os.environ.get("KILN_SOURCE_DIR", ROOT)
BUCKET = "kiln-cache"
ACCESS_KEY = SECRET_KEY = "S3RVER"  # s3rver's built-in account
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


# -- SigV4, written from AWS's description, to check kiln's presigned URLs and to read objects

def _enc(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


def _sign(secret, date8, region, string_to_sign):
    key = ("AWS4" + secret).encode()
    for part in (date8, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _canonical(method, path, params, host):
    query = "&".join(f"{k}={v}" for k, v in sorted((_enc(k), _enc(v)) for k, v in params))
    uri = _enc(urllib.parse.unquote(path), safe="/-_.~")
    return f"{method}\n{uri}\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD"


def signature_problem(method, url, host, secret=SECRET_KEY):
    """None when `url` (origin form) is a valid presigned URL for `method` on `host`."""
    path, _, query = url.partition("?")
    params = urllib.parse.parse_qsl(query, keep_blank_values=True)
    given = dict(params)
    for k in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
              "X-Amz-SignedHeaders", "X-Amz-Signature"):
        if k not in given:
            return f"{k} missing"
    if given["X-Amz-SignedHeaders"] != "host":
        return "signed headers: " + given["X-Amz-SignedHeaders"]
    access, date8, region, service, term = given["X-Amz-Credential"].split("/")
    if (access, service, term) != (ACCESS_KEY, "s3", "aws4_request"):
        return "credential " + given["X-Amz-Credential"]
    amz_date = given["X-Amz-Date"]
    if not amz_date.startswith(date8):
        return "date mismatch"
    rest = [(k, v) for k, v in params if k != "X-Amz-Signature"]
    canonical = _canonical(method, path, rest, host)
    scope = f"{date8}/{region}/s3/aws4_request"
    sts = "AWS4-HMAC-SHA256\n" + amz_date + "\n" + scope + "\n" + \
        hashlib.sha256(canonical.encode()).hexdigest()
    want = _sign(secret, date8, region, sts)
    if want != given["X-Amz-Signature"]:
        return f"signature {given['X-Amz-Signature']} != {want}"
    return None


def presign_get(host, obj, region="us-east-1"):
    now = time.gmtime()
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", now)
    date8 = amz_date[:8]
    path = "/" + BUCKET + "/" + _enc(obj, safe="/-_.~")
    params = [("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
              ("X-Amz-Credential", f"{ACCESS_KEY}/{date8}/{region}/s3/aws4_request"),
              ("X-Amz-Date", amz_date), ("X-Amz-Expires", "300"),
              ("X-Amz-SignedHeaders", "host")]
    sts = "AWS4-HMAC-SHA256\n" + amz_date + "\n" + f"{date8}/{region}/s3/aws4_request\n" + \
        hashlib.sha256(_canonical("GET", path, params, host).encode()).hexdigest()
    sig = _sign(SECRET_KEY, date8, region, sts)
    query = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in params)
    return f"http://{host}{path}?{query}&X-Amz-Signature={sig}"


def s3_get(host, obj):
    """(status, body) of an object, read with our own presigned GET."""
    try:
        with urllib.request.urlopen(presign_get(host, obj), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class S3Server:
    """s3rver on 127.0.0.1 with a fresh data directory, recording the requests it gets."""

    def __init__(self, workdir):
        setup = subprocess.run(["bash", os.path.join(SOURCE, "scripts", "s3-setup.sh")],
                               check=True, capture_output=True, text=True)
        binary = setup.stdout.strip().splitlines()[-1]
        self.node_modules = os.path.dirname(os.path.dirname(binary))
        self.dir = os.path.join(workdir, "s3")
        os.makedirs(self.dir)
        self.requests_log = os.path.join(workdir, "s3-requests.jsonl")
        self.out = open(os.path.join(workdir, "s3rver.log"), "w+")
        env = dict(os.environ, NODE_PATH=self.node_modules)
        self.proc = subprocess.Popen(
            ["node", os.path.join(SOURCE, "tests", "s3rver", "serve.js"), self.dir, BUCKET,
             self.requests_log], stdout=self.out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        self.address = None
        while time.monotonic() < deadline and self.proc.poll() is None:
            self.out.seek(0)
            m = re.search(r"listening (\S+:\d+)", self.out.read())
            if m:
                self.address = m.group(1)
                break
            time.sleep(0.1)
        if not self.address:
            self.out.seek(0)
            raise RuntimeError("s3rver did not start: " + self.out.read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()

    def requests(self):
        if not os.path.exists(self.requests_log):
            return []
        with open(self.requests_log) as f:
            return [json.loads(line) for line in f if line.strip()]


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class CacheTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.work = tempfile.mkdtemp(prefix="kiln-cache-test-")
        cls.s3 = S3Server(cls.work)
        cls.gitlab = harness.Emulator(tls=True, long_poll=5)
        cls.gitlab.start()
        cls.repo = os.path.join(cls.work, "widgets.git")
        cls.sha = harness.make_bare_repo(cls.repo, {"README.md": "widgets\n"})
        cls.gitlab.add_repo("acme/widgets", cls.repo)
        # What the jobs put in the cache: binary data, nested directories, an empty file,
        # names with spaces, a relative symlink.
        cls.src = os.path.join(cls.work, "src")
        os.makedirs(os.path.join(cls.src, "sub dir", "deeper"))
        with open(os.path.join(cls.src, "blob.bin"), "wb") as f:
            f.write(os.urandom(3 * 1024 * 1024 + 17))
        with open(os.path.join(cls.src, "sub dir", "deeper", "notes.txt"), "w") as f:
            f.write("cached notes\n" * 1000)
        open(os.path.join(cls.src, "sub dir", "empty"), "w").close()
        os.symlink("deeper/notes.txt", os.path.join(cls.src, "sub dir", "link"))

    @classmethod
    def tearDownClass(cls):
        cls.gitlab.stop()
        cls.gitlab.cleanup()
        cls.s3.stop()
        shutil.rmtree(cls.work, ignore_errors=True)

    def setUp(self):
        self.gitlab.configure(trace_update_interval=1, final_update_202_count=0)
        runner = self.gitlab.create_runner(kind="glrt")
        self.token = runner["token"]
        self.dir = tempfile.mkdtemp(dir=self.work)
        self.builds = os.path.join(self.dir, "builds")
        self.cache_dir = os.path.join(self.dir, "cache")
        self.proc = None

    def tearDown(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def write_config(self, s3_address=None, path="ci", shared=False, executor="shell"):
        text = ("concurrent = 1\ncheck_interval = 1\nshutdown_timeout = 5\n\n[[runners]]\n"
                f'  name = "cache"\n  url = "{self.gitlab.url}"\n  token = "{self.token}"\n'
                f'  tls-ca-file = "{self.gitlab.ca_file}"\n  executor = "{executor}"\n'
                f'  builds_dir = "{self.builds}"\n  cache_dir = "{self.cache_dir}"\n')
        if executor == "docker":
            text += ('  [runners.docker]\n    image = "local/busybox"\n'
                     '    pull_policy = ["if-not-present"]\n')
        if s3_address:
            text += (f'  [runners.cache]\n    Type = "s3"\n    Path = "{path}"\n'
                     f'    Shared = {"true" if shared else "false"}\n'
                     f'    [runners.cache.s3]\n      ServerAddress = "{s3_address}"\n'
                     f'      AccessKey = "{ACCESS_KEY}"\n      SecretKey = "{SECRET_KEY}"\n'
                     f'      BucketName = "{BUCKET}"\n      BucketLocation = "us-east-1"\n'
                     f'      Insecure = true\n')
        self.config = os.path.join(self.dir, "config.toml")
        with open(self.config, "w") as f:
            f.write(text)

    def run_job(self, cache, script, variables=()):
        job = self.gitlab.enqueue_job(
            fixture="job_basic", repo="acme/widgets", sha=self.sha, runner_token=self.token,
            script=script, after_script=[], overrides={"cache": cache, "artifacts": []},
            variables=[{"key": "CACHE_SRC", "value": self.src}] + list(variables))
        log_path = os.path.join(self.dir, "kiln.log")
        with open(log_path, "a") as log:
            self.proc = subprocess.Popen([KILN, "run", "--config", self.config, "--max-jobs", "1"],
                                         stdout=log, stderr=subprocess.STDOUT)
            try:
                rc = self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.fail(f"kiln did not finish the job: {self.gitlab.job(job['id'])}")
        with open(log_path) as f:
            self.assertEqual(rc, 0, f.read())
        state = self.gitlab.job(job["id"])
        self.assertEqual(state["protocol_violations"], [])
        return state

    def project_dir(self):
        dirs = glob.glob(os.path.join(self.builds, "*", "*", "acme", "widgets"))
        self.assertEqual(len(dirs), 1, dirs)
        return dirs[0]

    def assert_same_tree(self, got):
        def walk(d):
            out = {}
            for base, dirnames, files in os.walk(d):
                for name in dirnames + files:
                    p = os.path.join(base, name)
                    rel = os.path.relpath(p, d)
                    if os.path.islink(p):
                        out[rel] = ("link", os.readlink(p))
                    elif os.path.isdir(p):
                        out[rel] = ("dir",)
                    else:
                        with open(p, "rb") as f:
                            out[rel] = ("file", hashlib.sha256(f.read()).hexdigest())
            return out
        self.assertEqual(walk(got), walk(self.src))

    def assert_signed_requests(self):
        reqs = self.s3.requests()
        self.assertTrue(reqs)
        for r in reqs:
            self.assertIsNone(signature_problem(r["method"], r["url"], r["host"]), r)

    @staticmethod
    def plain(trace):
        return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", trace)

    def short_token(self, trace):
        return re.search(r"on cache (\S+), system ID", trace).group(1)

    # -- tests ----------------------------------------------------------------------------

    def test_s3_push_then_pull_restores_identical_files(self):
        self.write_config(self.s3.address)
        key = "deps-$CI_PROJECT_NAME-non_protected"
        push = self.run_job([{"key": key, "paths": ["vendor"], "policy": "pull-push",
                              "when": "on_success"}],
                            ['cp -a "$CACHE_SRC" vendor', "ls -R vendor | head -3"])
        trace = self.plain(push["trace"])
        self.assertEqual(push["state"], "success", trace)
        self.assertIn("section_start:", push["trace"])
        self.assertIn("Restoring cache", trace)
        self.assertIn("Checking cache for deps-widgets-non_protected...", trace)
        self.assertIn("WARNING: file does not exist", trace)
        self.assertIn("Failed to extract cache", trace)
        self.assertIn("Saving cache for successful job", trace)
        self.assertIn("Creating cache deps-widgets-non_protected...", trace)
        self.assertIn("vendor: found 7 matching artifact files and directories", trace)
        short = self.short_token(trace)
        obj = f"ci/runner/{short}/project/42/deps-widgets-non_protected"
        self.assertIn(f"Uploading cache.zip to http://{self.s3.address}/{BUCKET}/{obj}", trace)
        self.assertIn("Created cache", trace)
        self.assertNotIn("X-Amz-Signature", trace)  # signed URLs never reach the trace
        # The object is a zip holding the files.
        status, body = s3_get(self.s3.address, obj)
        self.assertEqual(status, 200)
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            self.assertIsNone(z.testzip())
            with open(os.path.join(self.src, "blob.bin"), "rb") as f:
                self.assertEqual(z.read("vendor/blob.bin"), f.read())
        # The next job restores from S3 alone: the local copy is gone.
        shutil.rmtree(self.cache_dir)
        pull = self.run_job([{"key": key, "paths": ["vendor"], "policy": "pull"}],
                            ["test -f vendor/blob.bin && echo restored"])
        trace = self.plain(pull["trace"])
        self.assertEqual(pull["state"], "success", trace)
        self.assertIn(f"Downloading cache from http://{self.s3.address}/{BUCKET}/{obj}", trace)
        self.assertIn("Successfully extracted cache", trace)
        self.assertIn("\nrestored\n", trace)
        # policy pull: no upload
        self.assertIn("Not uploading cache deps-widgets-non_protected due to policy", trace)
        self.assertNotIn("Creating cache", trace)
        self.assert_same_tree(os.path.join(self.project_dir(), "vendor"))
        methods = [(r["method"], r["status"]) for r in self.s3.requests()
                   if obj in urllib.parse.unquote(r["url"]) and "X-Amz-Credential" in r["url"]
                   and "X-Amz-Expires=300&" not in r["url"]]  # not the test's own reads
        self.assertEqual(methods, [("GET", 404), ("PUT", 200), ("GET", 200)])
        self.assert_signed_requests()

    def test_policy_pull_never_uploads(self):
        self.write_config(self.s3.address)
        state = self.run_job([{"key": "pull-only", "paths": ["vendor"], "policy": "pull"}],
                             ['cp -a "$CACHE_SRC" vendor'])
        trace = self.plain(state["trace"])
        self.assertEqual(state["state"], "success", trace)
        self.assertIn("Not uploading cache pull-only due to policy", trace)
        short = self.short_token(trace)
        self.assertEqual(s3_get(self.s3.address, f"ci/runner/{short}/project/42/pull-only")[0],
                         404)
        self.assertFalse(any(r["method"] == "PUT" and "pull-only" in r["url"]
                             for r in self.s3.requests()))

    def test_fallback_keys_then_cache_fallback_key(self):
        self.write_config(self.s3.address, path="", shared=True)
        base = self.run_job([{"key": "fb-base", "paths": ["vendor"]}],
                            ['cp -a "$CACHE_SRC" vendor'])
        self.assertEqual(base["state"], "success", base["trace"])
        self.assertIn("Created cache", base["trace"])
        shutil.rmtree(self.cache_dir)

        state = self.run_job([{"key": "fb-missing", "paths": ["vendor"], "policy": "pull",
                               "fallback_keys": ["fb-none", "fb-base"]}],
                             ["test -f vendor/blob.bin && echo restored"])
        trace = self.plain(state["trace"])
        self.assertEqual(state["state"], "success", trace)
        order = [m.group(1) for m in re.finditer(r"Checking cache for (\S+)\.\.\.", trace)]
        self.assertEqual(order, ["fb-missing", "fb-none", "fb-base"])
        self.assertEqual(trace.count("Failed to extract cache"), 2)
        self.assertIn(f"Downloading cache from http://{self.s3.address}/{BUCKET}/project/42/fb-base",
                      trace)
        self.assertIn("Successfully extracted cache", trace)
        self.assertIn("\nrestored\n", trace)
        self.assert_same_tree(os.path.join(self.project_dir(), "vendor"))

        state = self.run_job([{"key": "cfk-missing", "paths": ["vendor"], "policy": "pull"}],
                             ["test -f vendor/blob.bin && echo restored"],
                             variables=[{"key": "CACHE_FALLBACK_KEY", "value": "fb-base"}])
        trace = self.plain(state["trace"])
        order = [m.group(1) for m in re.finditer(r"Checking cache for (\S+)\.\.\.", trace)]
        self.assertEqual(order, ["cfk-missing", "fb-base"])
        self.assertIn("\nrestored\n", trace)

        # A CACHE_FALLBACK_KEY ending in -protected would let an unprotected ref read a
        # protected ref's cache: refused.
        state = self.run_job([{"key": "cfk-missing", "paths": ["vendor"], "policy": "pull"}],
                             ["test -f vendor/blob.bin && echo restored || echo absent"],
                             variables=[{"key": "CACHE_FALLBACK_KEY",
                                         "value": "fb-base-protected"}])
        trace = self.plain(state["trace"])
        self.assertEqual(state["state"], "success", trace)
        self.assertIn('CACHE_FALLBACK_KEY "fb-base-protected" not allowed to end in "-protected"',
                      trace)
        order = [m.group(1) for m in re.finditer(r"Checking cache for (\S+)\.\.\.", trace)]
        self.assertEqual(order, ["cfk-missing"])
        self.assertIn("\nabsent\n", trace)
        self.assert_signed_requests()

    def test_server_down_is_a_warning_and_the_job_succeeds(self):
        down = f"127.0.0.1:{closed_port()}"
        self.write_config(down)
        state = self.run_job([{"key": "down", "paths": ["vendor"]}],
                             ['cp -a "$CACHE_SRC" vendor', "echo script ran"])
        trace = self.plain(state["trace"])
        self.assertEqual(state["state"], "success", trace)
        self.assertIn("\nscript ran\n", trace)
        self.assertIn("Checking cache for down...", trace)
        self.assertIn("Failed to extract cache", trace)
        self.assertRegex(trace, r"WARNING: .*127\.0\.0\.1.*(refused|connect)")
        self.assertIn(f"Uploading cache.zip to http://{down}/{BUCKET}/ci/runner/", trace)
        self.assertIn("Failed to create cache", trace)
        self.assertIn("Job succeeded", trace)
        # The archive was still written locally.
        self.assertTrue(glob.glob(os.path.join(self.cache_dir, "acme", "widgets", "down",
                                               "cache.zip")))

    def test_local_cache_without_runners_cache(self):
        self.write_config(None)
        push = self.run_job([{"key": "local/key", "paths": ["vendor"]}],
                            ['cp -a "$CACHE_SRC" vendor'])
        trace = self.plain(push["trace"])
        self.assertEqual(push["state"], "success", trace)
        self.assertIn("No URL provided, cache will not be downloaded from shared cache server. "
                      "Instead a local version of cache will be extracted.", trace)
        self.assertIn("WARNING: Cache file does not exist", trace)
        self.assertIn("No URL provided, cache will be not uploaded to shared cache server. "
                      "Cache will be stored only locally.", trace)
        archive = os.path.join(self.cache_dir, "acme", "widgets", "local", "key", "cache.zip")
        with zipfile.ZipFile(archive) as z:
            self.assertIsNone(z.testzip())
            self.assertIn("vendor/sub dir/deeper/notes.txt", z.namelist())
        self.assertEqual(os.listdir(os.path.dirname(archive)), ["cache.zip"])  # no temp left
        pull = self.run_job([{"key": "local/key", "paths": ["vendor"], "policy": "pull"}],
                            ["test -f vendor/blob.bin && echo restored"])
        trace = self.plain(pull["trace"])
        self.assertIn("Successfully extracted cache", trace)
        self.assertIn("\nrestored\n", trace)
        self.assert_same_tree(os.path.join(self.project_dir(), "vendor"))
        self.assertEqual(self.s3.requests() and [r for r in self.s3.requests()
                                                 if "local" in r["url"]], [])

    def test_a_corrupt_archive_is_a_warning_and_the_next_key_is_tried(self):
        self.write_config(None)
        good = self.run_job([{"key": "good", "paths": ["vendor"]}], ['cp -a "$CACHE_SRC" vendor'])
        self.assertEqual(good["state"], "success", good["trace"])
        bad = os.path.join(self.cache_dir, "acme", "widgets", "bad", "cache.zip")
        os.makedirs(os.path.dirname(bad))
        with open(bad, "wb") as f:
            f.write(b"PK\x03\x04 this is not a zip archive" * 100)
        state = self.run_job([{"key": "bad", "paths": ["vendor"], "policy": "pull",
                               "fallback_keys": ["good"]}],
                             ["test -f vendor/blob.bin && echo restored"])
        trace = self.plain(state["trace"])
        self.assertEqual(state["state"], "success", trace)
        order = [m.group(1) for m in re.finditer(r"Checking cache for (\S+)\.\.\.", trace)]
        self.assertEqual(order, ["bad", "good"])
        self.assertEqual(trace.count("Failed to extract cache"), 1)
        self.assertIn("Successfully extracted cache", trace)
        self.assertIn("\nrestored\n", trace)

    def test_an_unknown_policy_fails_the_job_as_in_gitlab_runner(self):
        self.write_config(None)
        state = self.run_job([{"key": "k", "paths": ["vendor"], "policy": "$POLICY"}],
                             ["echo never"], variables=[{"key": "POLICY", "value": "sometimes"}])
        trace = self.plain(state["trace"])
        self.assertEqual(state["state"], "failed", trace)
        self.assertEqual(state["failure_reason"], "script_failure")
        self.assertIn("unknown cache policy sometimes for k", trace)
        self.assertNotIn("\nnever\n", trace)

    def test_docker_jobs_share_the_s3_cache(self):
        # Needs the test engine and local/busybox (scripts/docker-setup.sh; CI runs it).
        self.write_config(self.s3.address, executor="docker")
        make = ["mkdir -p vendor/sub", "echo docker-cache > vendor/sub/x",
                "head -c 200000 /dev/urandom > vendor/r", "sha256sum vendor/r"]
        push = self.run_job([{"key": "in-docker", "paths": ["vendor"]}], make)
        trace = self.plain(push["trace"])
        self.assertEqual(push["state"], "success", trace)
        self.assertIn("Created cache", trace)
        digest = re.search(r"^([0-9a-f]{64})  vendor/r$", trace, re.M).group(1)
        shutil.rmtree(self.cache_dir)
        pull = self.run_job([{"key": "in-docker", "paths": ["vendor"], "policy": "pull"}],
                            ["sha256sum vendor/r", "cat vendor/sub/x"])
        trace = self.plain(pull["trace"])
        self.assertEqual(pull["state"], "success", trace)
        self.assertIn("Successfully extracted cache", trace)
        self.assertIn(f"{digest}  vendor/r", trace)
        self.assertIn("\ndocker-cache\n", trace)

    def test_an_unchanged_cache_is_not_archived_or_uploaded_again(self):
        self.write_config(self.s3.address)
        cache = [{"key": "steady", "paths": ["vendor"]}]
        first = self.run_job(cache, ['cp -a "$CACHE_SRC" vendor'])
        self.assertIn("Created cache", first["trace"])
        puts = lambda: [r for r in self.s3.requests()
                        if r["method"] == "PUT" and "/steady?" in r["url"]]
        self.assertEqual(len(puts()), 1)
        same = self.run_job(cache, ["ls vendor >/dev/null"])
        trace = self.plain(same["trace"])
        self.assertIn("Successfully extracted cache", trace)
        self.assertIn("Archive is up to date!", trace)
        self.assertIn("Created cache", trace)
        self.assertEqual(len(puts()), 1)
        changed = self.run_job(cache, ["echo more >> 'vendor/sub dir/empty'"])
        trace = self.plain(changed["trace"])
        self.assertNotIn("Archive is up to date!", trace)
        self.assertIn("Uploading cache.zip to", trace)
        self.assertEqual(len(puts()), 2)
        deleted = self.run_job(cache, ["rm 'vendor/sub dir/empty'"])
        self.assertNotIn("Archive is up to date!", self.plain(deleted["trace"]))
        self.assertEqual(len(puts()), 3)

    def test_tar_zstd_archives(self):
        self.write_config(self.s3.address)
        fmt = [{"key": "CACHE_COMPRESSION_FORMAT", "value": "tarzstd"},
               {"key": "CACHE_COMPRESSION_LEVEL", "value": "fastest"}]
        push = self.run_job([{"key": "zstd", "paths": ["vendor"]}],
                            ['cp -a "$CACHE_SRC" vendor'], variables=fmt)
        trace = self.plain(push["trace"])
        self.assertEqual(push["state"], "success", trace)
        self.assertIn("Created cache", trace)
        local = os.path.join(self.cache_dir, "acme", "widgets", "zstd", "cache.zip")
        with open(local, "rb") as f:
            self.assertEqual(f.read(4), ZSTD_MAGIC)
        short = self.short_token(trace)
        status, body = s3_get(self.s3.address, f"ci/runner/{short}/project/42/zstd")
        self.assertEqual(status, 200)
        self.assertEqual(body[:4], ZSTD_MAGIC)
        shutil.rmtree(self.cache_dir)
        pull = self.run_job([{"key": "zstd", "paths": ["vendor"], "policy": "pull"}],
                            ["test -f vendor/blob.bin && echo restored"])
        trace = self.plain(pull["trace"])
        self.assertIn("Successfully extracted cache", trace)
        self.assert_same_tree(os.path.join(self.project_dir(), "vendor"))


if __name__ == "__main__":
    unittest.main()
