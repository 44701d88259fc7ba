"""Artifacts in the job, `kiln run` against the GitLab emulator with the shell executor:
which files the uploaded archives hold (paths, globs, exclude, untracked, refused escapes),
how reports arrive (gzip, raw, artifact_type/format, expire_in in the query), which entries
the job result selects, a 413, and dependency artifacts: extracted when sound, refused with a
clear message — and nothing written outside the project directory — when hostile."""

import gzip
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import urllib.parse
import uuid
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
import harness  # noqa: E402

KILN = os.environ.get("KILN_BIN", os.path.join(ROOT, "build", "release", "runner", "kiln"))


def archive_entry(paths, exclude=None, untracked=None, when="on_success", name=None,
                  expire_in="1 week", artifact_type="archive", artifact_format="zip"):
    """One artifacts[] entry as GitLab's BuildRunnerPresenter renders it (§4.6)."""
    e = {"name": name, "paths": paths, "when": when, "expire_in": expire_in,
         "artifact_type": artifact_type, "artifact_format": artifact_format}
    if exclude:
        e["exclude"] = exclude
    if untracked is not None:
        e["untracked"] = untracked
    return e


def report(artifact_type, name, paths, fmt="gzip", expire_in="1 week"):
    return {"name": name, "paths": paths, "when": "always", "expire_in": expire_in,
            "artifact_type": artifact_type, "artifact_format": fmt}


def zip_names(data):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        return sorted(zf.namelist())


def gzip_members(data):
    """(name, comment, content) of each member of a concatenated gzip file."""
    members = []
    rest = data
    while rest:
        assert rest[:2] == b"\x1f\x8b", rest[:10]
        flags = rest[3]
        pos = 10
        name = comment = b""
        if flags & 4:
            xlen = struct.unpack("<H", rest[pos:pos + 2])[0]
            pos += 2 + xlen
        if flags & 8:
            end = rest.index(b"\0", pos)
            name, pos = rest[pos:end], end + 1
        if flags & 16:
            end = rest.index(b"\0", pos)
            comment, pos = rest[pos:end], end + 1
        if flags & 2:
            pos += 2
        d = zlib.decompressobj(-15)
        content = d.decompress(rest[pos:])
        rest = d.unused_data[8:]  # CRC32 + ISIZE
        members.append((name.decode(), comment.decode(), content))
    return members


def zip_with(entries):
    """A zip built entry by entry: (name, bytes) files and (name, target, "link") symlinks,
    written as they are, '..' and absolute names included (what a hostile job could upload)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for e in entries:
            if len(e) == 3:
                name, target, _ = e
                info = zipfile.ZipInfo(name)
                info.create_system = 3
                info.external_attr = (0o120777 << 16)
                zf.writestr(info, target)
            else:
                name, content = e
                info = zipfile.ZipInfo(name)
                info.create_system = 3
                info.external_attr = (0o100644 << 16)
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, content)
    return buf.getvalue()


def zip_bomb(declared_mib):
    """One file of `declared_mib` MiB of zeros, honestly declared, about 1/1000 of that in size:
    the same deflate block (1 MiB of zeros after a full flush) repeated."""
    chunk = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush()
    data = first + again * (declared_mib - 1) + tail
    crc = 0
    for _ in range(declared_mib):
        crc = zlib.crc32(chunk, crc)
    size = declared_mib << 20
    name = b"zeros.bin"
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size,
                        len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, 20, 0, 8, 0, 0, crc,
                          len(data), size, len(name), 0, 0, 0, 0, 0o100644 << 16, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central),
                      len(local) + len(data), 0)
    return local + data + central + end


class ArtifactsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.gitlab = harness.Emulator(tls=True, long_poll=5)
        cls.gitlab.start()
        cls.work = tempfile.mkdtemp(prefix="kiln-artifacts-test-")
        cls.repo = os.path.join(cls.work, "widgets.git")
        cls.sha = harness.make_bare_repo(cls.repo, {
            "README.md": "widgets\n", ".gitignore": "*.log\n", "src/main.go": "package main\n"})
        cls.gitlab.add_repo("acme/widgets", cls.repo)

    @classmethod
    def tearDownClass(cls):
        cls.gitlab.stop()
        cls.gitlab.cleanup()
        shutil.rmtree(cls.work, ignore_errors=True)

    def setUp(self):
        self.gitlab.clear_faults()
        self.gitlab.configure(trace_update_interval=1, final_update_202_count=0,
                              max_artifact_size=100 * 1024 * 1024)
        runner = self.gitlab.create_runner(kind="glrt")
        self.token = runner["token"]
        self.dir = tempfile.mkdtemp(dir=self.work)
        self.builds = os.path.join(self.dir, "builds")
        self.config = os.path.join(self.dir, "config.toml")
        with open(self.config, "w") as f:
            f.write(
                "concurrent = 2\ncheck_interval = 1\nshutdown_timeout = 5\n\n[[runners]]\n"
                f'  name = "t"\n  url = "{self.gitlab.url}"\n  token = "{self.token}"\n'
                f'  tls-ca-file = "{self.gitlab.ca_file}"\n  executor = "shell"\n'
                f'  builds_dir = "{self.builds}"\n')

    def enqueue(self, script, artifacts=None, **extra):
        overrides = dict(extra.pop("overrides", {}))
        if artifacts is not None:
            overrides["artifacts"] = artifacts
        return self.gitlab.enqueue_job(fixture="job_basic", repo="acme/widgets", sha=self.sha,
                                       runner_token=self.token, script=script,
                                       after_script=extra.pop("after_script", []),
                                       overrides=overrides, **extra)

    def run_kiln(self, jobs):
        """Runs kiln until it has taken len(jobs) jobs; returns their final states."""
        log_path = os.path.join(self.dir, "kiln.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen([KILN, "run", "--config", self.config, "--max-jobs",
                                     str(len(jobs))], stdout=log, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout=300)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        with open(log_path) as f:
            self.assertEqual(rc, 0, f.read())
        states = [self.gitlab.job(j["id"]) for j in jobs]
        for s in states:
            self.assertEqual(s["protocol_violations"], [], s["trace"])
        return states

    def artifacts_of(self, state):
        return {a["type"]: a for a in state["artifacts"]}

    # -- which files ------------------------------------------------------------------------------

    def test_archive_contents_follow_paths_exclude_and_untracked(self):
        outside = os.path.join(self.dir, "outside-secret.txt")
        with open(outside, "w") as f:
            f.write("not for upload\n")
        mk = "mkdir -p bin/linux sub/deep a b && touch bin/app bin/linux/tool bin/x.tmp " \
             "bin/linux/y.tmp coverage.out a.txt sub/b.txt sub/deep/c.txt a/1.log b/2.log " \
             "a/3.txt build.log"
        cases = [
            # (name, artifacts entry, expected names in the zip, trace lines)
            ("dirs recurse, exclude with **",
             archive_entry(["coverage.out", "bin/"], exclude=["bin/**/*.tmp"]),
             ["bin/", "bin/app", "bin/linux/", "bin/linux/tool", "coverage.out"],
             ["bin/**/*.tmp: excluded 2 files"]),
            ("* stays in one directory", archive_entry(["*.txt"]), ["a.txt"], []),
            ("** crosses directories", archive_entry(["**/*.txt"]),
             ["a.txt", "a/3.txt", "sub/b.txt", "sub/deep/c.txt"], []),
            ("braces", archive_entry(["{a,b}/*.log"]), ["a/1.log", "b/2.log"], []),
            ("paths are cleaned", archive_entry(["./sub//deep/"]),
             ["sub/deep/", "sub/deep/c.txt"], []),
            ("untracked adds ignored and new files, never tracked ones",
             archive_entry([], untracked=True, exclude=["bin/**", "sub/**", "a/**", "b/**"]),
             ["a.txt", "build.log", "coverage.out"], ["untracked: found 3 files"]),
            ("escapes are refused with a warning",
             archive_entry(["a.txt", "../outside-secret.txt", outside, "/etc/passwd",
                            "etc-link/passwd", "etc-link", "up-link"]),
             ["a.txt"],
             ["artifact path is not a subpath of project directory: ../outside-secret.txt",
              "artifact path is not a subpath of project directory: /etc/passwd",
              "etc-link: symbolic link leads outside the project directory",
              "up-link: symbolic link leads outside the project directory"]),
            ("nothing matches", archive_entry(["missing/*.bin"]), None,
             ["missing/*.bin: no matching files", "No files to upload"]),
        ]
        script = [mk, "ln -s /etc etc-link", "ln -s ../.. up-link"]
        jobs = [self.enqueue(script, [entry]) for _, entry, _, _ in cases]
        states = self.run_kiln(jobs)
        for (name, _, expected, lines), state in zip(cases, states):
            with self.subTest(name):
                self.assertEqual(state["state"], "success", state["trace"])
                self.assertIn("section_start:", state["trace"])
                self.assertIn(":upload_artifacts_on_success", state["trace"])
                for text in lines:
                    self.assertIn(text, state["trace"])
                arts = self.artifacts_of(state)
                if expected is None:
                    self.assertEqual(arts, {})
                    continue
                self.assertEqual(arts["archive"]["format"], "zip")
                data = self.gitlab.job_artifact(state["id"], "archive")
                self.assertEqual(zip_names(data), expected)
                self.assertNotIn(b"not for upload", data)
                self.assertIn("Uploaded 1 artifact (archive): ", state["trace"])

    # -- reports and parameters -------------------------------------------------------------------

    def test_reports_arrive_in_their_formats_with_type_and_expire_in(self):
        script = ["mkdir -p reports", "printf '<testsuite name=\"a\"/>' > reports/a.xml",
                  "printf '<testsuite name=\"b\"/>' > reports/b.xml",
                  "printf '<coverage/>' > coverage.xml", "printf 'VERSION=1.2.3\\n' > build.env",
                  "printf '{\"vulnerabilities\":[]}' > gl-sast-report.json",
                  "mkdir -p bin && echo binary > bin/app"]
        artifacts = [
            archive_entry(["bin/"], name="billing-svc-$CI_JOB_ID", expire_in="3 days"),
            report("junit", "junit.xml", ["reports/*.xml"]),
            report("cobertura", "cobertura-coverage.xml", ["coverage.xml"]),
            report("dotenv", ".env", ["build.env"], expire_in="never"),
            report("sast", "gl-sast-report.json", ["gl-sast-report.json"], fmt="raw"),
        ]
        job = self.enqueue(script, artifacts)
        state, = self.run_kiln([job])
        self.assertEqual(state["state"], "success", state["trace"])
        arts = self.artifacts_of(state)
        table = [
            # type, format, filename, expire_in
            ("archive", "zip", f"billing-svc-{job['id']}.zip", "3 days"),
            ("junit", "gzip", "junit.xml.gz", "1 week"),
            ("cobertura", "gzip", "cobertura-coverage.xml.gz", "1 week"),
            ("dotenv", "gzip", ".env.gz", "never"),
            ("sast", "raw", "gl-sast-report.json", "1 week"),
        ]
        self.assertEqual(sorted(arts), sorted(t[0] for t in table))
        for a_type, fmt, filename, expire in table:
            with self.subTest(a_type):
                a = arts[a_type]
                self.assertEqual((a["format"], a["filename"], a["expire_in"]),
                                 (fmt, filename, expire))
                # In the query string, where Workhorse reads them (§7.1).
                q = urllib.parse.parse_qs(a["query"])
                self.assertEqual(q["artifact_type"], [a_type])
                self.assertEqual(q["artifact_format"], [fmt])
                self.assertEqual(q["expire_in"], [expire])
        junit = gzip_members(self.gitlab.job_artifact(job["id"], "junit"))
        self.assertEqual([(m[0], m[1]) for m in junit],
                         [("a.xml", "reports/a.xml"), ("b.xml", "reports/b.xml")])
        self.assertEqual(junit[0][2], b'<testsuite name="a"/>')
        self.assertEqual(gzip.decompress(self.gitlab.job_artifact(job["id"], "dotenv")),
                         b"VERSION=1.2.3\n")
        self.assertEqual(self.gitlab.job_artifact(job["id"], "sast"), b'{"vulnerabilities":[]}')
        self.assertEqual(zip_names(self.gitlab.job_artifact(job["id"], "archive")),
                         ["bin/", "bin/app"])
        self.assertIn("Uploaded 5 artifacts (archive, junit, cobertura, dotenv, sast): 6 files",
                      state["trace"])

    def test_when_follows_the_job_result(self):
        artifacts = [archive_entry(["out.txt"], when="on_success"),
                     report("junit", "junit.xml", ["out.txt"]),  # always
                     dict(report("dotenv", ".env", ["out.txt"]), when="on_failure")]
        ok = self.enqueue(["echo ok > out.txt"], artifacts)
        failed = self.enqueue(["echo failed > out.txt", "exit 3"], artifacts)
        timed_out = self.enqueue(["echo slow > out.txt", "sleep 60"], artifacts, timeout=3)
        ok_state, failed_state, timeout_state = self.run_kiln([ok, failed, timed_out])
        self.assertEqual(ok_state["state"], "success", ok_state["trace"])
        self.assertEqual(sorted(self.artifacts_of(ok_state)), ["archive", "junit"])
        self.assertIn(":upload_artifacts_on_success", ok_state["trace"])
        for state in (failed_state, timeout_state):
            self.assertEqual(state["state"], "failed", state["trace"])
            self.assertEqual(sorted(self.artifacts_of(state)), ["dotenv", "junit"])
            self.assertIn(":upload_artifacts_on_failure", state["trace"])
            self.assertNotIn(":upload_artifacts_on_success", state["trace"])
        self.assertEqual(failed_state["failure_reason"], "script_failure")
        self.assertEqual(timeout_state["failure_reason"], "job_execution_timeout")

    def test_compression_level_is_honoured(self):
        make = ("python3 -c \"import random; r=random.Random(7); "
                "open('log.txt','w').write(''.join('%d %s level=%s\\n' % (i, r.choice(['GET','PUT']),"
                " r.choice(['info','debug','warn'])) for i in range(200000)))\"")
        jobs = [self.enqueue([make], [archive_entry(["log.txt"])],
                             variables=[{"key": "ARTIFACT_COMPRESSION_LEVEL", "value": level,
                                         "public": True, "masked": False}])
                for level in ("fastest", "slowest")]
        fastest, slowest = self.run_kiln(jobs)
        sizes = []
        for state in (fastest, slowest):
            self.assertEqual(state["state"], "success", state["trace"])
            data = self.gitlab.job_artifact(state["id"], "archive")
            self.assertEqual(zip_names(data), ["log.txt"])
            sizes.append(len(data))
        self.assertLess(sizes[1], sizes[0])

    def test_too_large_is_a_clear_failure(self):
        self.gitlab.configure(max_artifact_size=4096)
        try:
            job = self.enqueue(["head -c 200000 /dev/urandom > big.bin"],
                               [archive_entry(["big.bin"])])
            state, = self.run_kiln([job])
        finally:
            self.gitlab.configure(max_artifact_size=100 * 1024 * 1024)
        self.assertEqual(state["state"], "failed", state["trace"])
        self.assertEqual(state["failure_reason"], "script_failure")
        self.assertRegex(state["trace"],
                         r"too large archive: artifacts\.zip is 19\d\.\d KiB and GitLab refused "
                         r"it as over its maximum artifacts size \(HTTP 413")
        self.assertIn("ask a GitLab administrator to raise the maximum artifacts size",
                      state["trace"])
        self.assertEqual(state["artifacts"], [])

    def test_a_503_is_retried_and_a_raw_report_of_two_files_is_refused(self):
        self.gitlab.fault(r"/api/v4/jobs/\d+/artifacts$", method="POST", status=503, count=1)
        retried = self.enqueue(["echo data > out.txt"], [archive_entry(["out.txt"])])
        two_raw = self.enqueue(["echo '{}' > a.json", "echo '{}' > b.json"],
                               [report("sast", "gl-sast-report.json", ["*.json"], fmt="raw")])
        r_state, raw_state = self.run_kiln([retried, two_raw])
        self.assertEqual(r_state["state"], "success", r_state["trace"])
        self.assertEqual(zip_names(self.gitlab.job_artifact(r_state["id"], "archive")), ["out.txt"])
        posts = self.gitlab.requests(path=f"/api/v4/jobs/{retried['id']}/artifacts", method="POST")
        self.assertEqual([p["status"] for p in posts], [503, 201])
        self.assertEqual(raw_state["state"], "failed", raw_state["trace"])
        self.assertIn("a raw artifact must be exactly one file, but the paths select 2",
                      raw_state["trace"])
        self.assertEqual(raw_state["artifacts"], [])

    # -- dependencies -----------------------------------------------------------------------------

    def test_dependency_artifacts_round_trip(self):
        producer = self.enqueue(["mkdir -p dist/lib && echo v1 > dist/app && echo so > dist/lib/x.so"
                                 " && chmod +x dist/app"], [archive_entry(["dist/"])])
        p_state, = self.run_kiln([producer])
        self.assertEqual(p_state["state"], "success", p_state["trace"])
        consumer = self.enqueue(["cat dist/app dist/lib/x.so", "test -x dist/app && echo exec-ok"],
                                dependencies=[producer["id"]])
        c_state, = self.run_kiln([consumer])
        self.assertEqual(c_state["state"], "success", c_state["trace"])
        trace = c_state["trace"]
        self.assertIn(":download_artifacts", trace)
        self.assertIn(f"Downloading artifacts for {p_state['name']} ({producer['id']})...", trace)
        self.assertIn("\nv1\nso\n", trace)
        self.assertIn("exec-ok", trace)
        # The download used the running job's own token (current GitLab, §4.8).
        reqs = self.gitlab.requests(path=f"/api/v4/jobs/{producer['id']}/artifacts", method="GET")
        self.assertTrue(reqs)
        self.assertEqual(reqs[-1]["headers"].get("Job-Token") or reqs[-1]["headers"].get("JOB-TOKEN"),
                         consumer["token"])

    def test_hostile_dependency_archives_are_refused(self):
        victim = os.path.join(self.dir, "victim")
        os.makedirs(victim)
        marker = "kiln-evil-" + uuid.uuid4().hex[:8]
        absolute = os.path.join(tempfile.gettempdir(), marker)
        cases = [
            ("zip-slip", zip_with([("ok.txt", b"fine"), ("../" + marker, b"evil")]), [], ".."),
            ("deep zip-slip", zip_with([("a/../../../" + marker, b"evil")]), [], ".."),
            ("absolute path", zip_with([(absolute, b"evil")]), [], "absolute"),
            ("symlink escape",
             zip_with([("link", victim, "link"), ("link/" + marker, b"evil")]), [], "link"),
            ("relative symlink escape",
             zip_with([("up", "../../../../..", "link"), ("up/" + marker, b"evil")]), [], "up"),
            ("zip bomb", zip_bomb(1200), [], "1.0 GiB"),
            ("zip bomb under a job's lower cap", zip_bomb(64),
             [{"key": "KILN_ARTIFACT_EXTRACT_MAX_SIZE", "value": "16MiB", "public": True,
               "masked": False}], "16.0 MiB"),
        ]
        jobs = []
        for name, data, variables, _ in cases:
            # The dependency: a job no runner here picks (its tag matches none), whose stored
            # archive is the hostile one.
            dep = self.gitlab.enqueue_job(fixture="job_basic", tags=["nobody"])
            self.gitlab.put_job_artifact(dep["id"], data)
            jobs.append(self.enqueue(["echo script-ran"], dependencies=[dep["id"]],
                                     variables=variables))
        states = self.run_kiln(jobs)
        for (name, _, _, detail), state in zip(cases, states):
            with self.subTest(name):
                trace = state["trace"]
                self.assertEqual(state["state"], "failed", trace)
                self.assertEqual(state["failure_reason"], "script_failure")
                self.assertNotIn("script-ran", trace)
                self.assertRegex(trace, r"ERROR: the artifacts archive of .* was refused: ")
                self.assertIn("Nothing was written outside the project directory.", trace)
                self.assertIn(detail, trace.split("was refused: ", 1)[1].split("\n", 1)[0])
        # No hostile file was written anywhere: not outside, and not inside either, since each
        # archive is refused at its hostile entry.
        self.assertFalse(os.path.exists(absolute))
        self.assertEqual(os.listdir(victim), [])
        for root, dirs, files in os.walk(self.dir):
            for f in files + dirs:
                self.assertNotIn(marker, f, root)
        self.assertNotIn(marker, os.listdir(tempfile.gettempdir()))

    def test_docker_jobs_upload_and_receive_artifacts(self):
        # Docker executor: the build directory is bind-mounted at the same path, so what the
        # container writes is what kiln archives on the host, and what kiln extracts is what the
        # next container sees.
        with open(self.config) as f:
            text = f.read().replace('executor = "shell"', 'executor = "docker"')
        with open(self.config, "w") as f:
            f.write(text + '  [runners.docker]\n    image = "local/busybox"\n'
                    '    pull_policy = ["if-not-present"]\n    go_cache = false\n')
        producer = self.enqueue(["mkdir -p out/sub && echo from-container > out/sub/f.txt",
                                 "echo junk > out/x.tmp"],
                                [archive_entry(["out/"], exclude=["out/*.tmp"])])
        p_state, = self.run_kiln([producer])
        self.assertEqual(p_state["state"], "success", p_state["trace"])
        self.assertIn("Using Docker executor with image local/busybox", p_state["trace"])
        self.assertEqual(zip_names(self.gitlab.job_artifact(producer["id"], "archive")),
                         ["out/", "out/sub/", "out/sub/f.txt"])
        consumer = self.enqueue(["cat out/sub/f.txt", "test ! -e out/x.tmp && echo no-tmp"],
                                dependencies=[producer["id"]])
        c_state, = self.run_kiln([consumer])
        self.assertEqual(c_state["state"], "success", c_state["trace"])
        self.assertIn("\nfrom-container\n", c_state["trace"])
        self.assertIn("\nno-tmp\n", c_state["trace"])

    def test_missing_dependency_archive_fails_clearly(self):
        dep = self.gitlab.enqueue_job(fixture="job_basic", tags=["nobody"])
        self.gitlab.put_job_artifact(dep["id"], zip_with([("x.txt", b"x")]))
        job = self.enqueue(["echo script-ran"], dependencies=[dep["id"]])
        # GitLab answers 404 once the archive is gone (expired or deleted, §7.4).
        self.gitlab.fault(f"/api/v4/jobs/{dep['id']}/artifacts", status=404, count=None)
        state, = self.run_kiln([job])
        self.assertEqual(state["state"], "failed", state["trace"])
        self.assertIn("Downloading artifacts from coordinator... not found (HTTP 404)",
                      state["trace"])
        self.assertNotIn("script-ran", state["trace"])


if __name__ == "__main__":
    unittest.main()
