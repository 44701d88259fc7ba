"""Signed artifacts (docs/artifacts.md) with real keys made by the `openssl` command line:
`kiln artifacts verify` on archives signed by an independent producer that follows the
documented format (Python's zipfile + openssl), every way verification must fail, and — with
`kiln run` against the GitLab emulator — a job that uploads a signed archive, the stored
archive verified by kiln and by the documented openssl/Python procedure, and a dependent job
that verifies it on download and fails when it was tampered with."""

import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "emulator"))
import harness  # noqa: E402

KILN = os.environ.get("KILN_BIN", os.path.join(ROOT, "build", "release", "runner", "kiln"))
DOCS = os.path.join(os.environ.get("KILN_SOURCE_DIR", ROOT), "docs", "artifacts.md")


def openssl(*args, input=None):
    return subprocess.run(["openssl", *args], input=input, capture_output=True, check=True).stdout


def make_key(directory, name, algorithm):
    """(private PEM path, public PEM path, key id) made as docs/artifacts.md says."""
    private = os.path.join(directory, name + ".pem")
    public = os.path.join(directory, name + ".pub.pem")
    if algorithm == "ed25519":
        openssl("genpkey", "-algorithm", "ed25519", "-out", private)
    else:
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
                private)
    openssl("pkey", "-in", private, "-pubout", "-out", public)
    der = openssl("pkey", "-pubin", "-in", public, "-outform", "DER")
    return private, public, "sha256:" + hashlib.sha256(der).hexdigest()


def sign_bytes(data, private, algorithm, directory):
    path = os.path.join(directory, "to-sign")
    with open(path, "wb") as f:
        f.write(data)
    if algorithm == "ed25519":
        return openssl("pkeyutl", "-sign", "-inkey", private, "-rawin", "-in", path)
    return openssl("dgst", "-sha256", "-sign", private, path)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build_zip(entries):
    """entries: (name, bytes) in order; written deflated with Unix file modes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, content)
    return buf.getvalue()


def zip_entries(data):
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def third_party_signed(files, key, algorithm, directory, manifest_files=None):
    """An archive signed by a producer that is not kiln, following docs/artifacts.md."""
    private, _, key_id = key
    listed = files if manifest_files is None else manifest_files
    manifest = canonical({
        "version": 1, "algorithm": "ed25519" if algorithm == "ed25519" else "ecdsa-p256-sha256",
        "key_id": key_id, "created": "2026-11-25T03:00:00Z",
        "job": {"id": 99, "url": "https://gitlab.example.com/g/p/-/jobs/99"},
        "project": "g/p", "commit_sha": "ab" * 20, "ref": "main", "pipeline_id": "7",
        "image": "", "runner": "t1_abcdef", "symlinks": [],
        "files": sorted(({"name": n, "size": len(c), "sha256": hashlib.sha256(c).hexdigest()}
                         for n, c in listed), key=lambda f: f["name"]),
    })
    signature = sign_bytes(manifest, private, algorithm, directory)
    return build_zip(list(files) + [(".kiln/manifest.json", manifest),
                                    (".kiln/manifest.sig", signature)])


def kiln_verify(archive_bytes, directory, *keys):
    path = os.path.join(directory, "artifacts.zip")
    with open(path, "wb") as f:
        f.write(archive_bytes)
    args = [KILN, "artifacts", "verify", path]
    for k in keys:
        args += ["--key", k]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def documented_check_files():
    """The check_files.py of docs/artifacts.md, as written there."""
    with open(DOCS) as f:
        text = f.read()
    block = re.search(r"```python\n(# check_files\.py.*?)```", text, re.S)
    assert block, "docs/artifacts.md has no check_files.py block"
    return block.group(1)


FILES = [("bin/app", b"\x7fELF" + bytes(range(256)) * 40), ("README.md", b"built by kiln\n"),
         ("lib/libx.so", b"shared object " * 500)]


class VerifyCommandTest(unittest.TestCase):
    """`kiln artifacts verify` on archives made outside kiln."""

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="kiln-signing-test-")
        cls.ed = make_key(cls.dir, "ed", "ed25519")
        cls.ec = make_key(cls.dir, "ec", "p256")
        cls.other = make_key(cls.dir, "other", "ed25519")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def assert_fails(self, result, pattern):
        self.assertEqual(result.returncode, 1, result.stdout + result.stderr)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertTrue(lines[0].startswith("ERROR: "), lines[0])
        self.assertRegex(lines[0], pattern)
        self.assertEqual(result.stdout, "")

    def test_archives_of_both_key_types_verify(self):
        for name, key, algorithm in [("ed25519", self.ed, "ed25519"), ("p256", self.ec, "p256")]:
            with self.subTest(name):
                data = third_party_signed(FILES, key, algorithm, self.dir)
                r = kiln_verify(data, self.dir, key[1])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stderr, "")
                first = r.stdout.splitlines()[0]
                self.assertRegex(first, r"^OK: .*artifacts\.zip: 3 file\(s\), ")
                self.assertIn("signed by key " + key[2], first)
                self.assertIn("job 99 https://gitlab.example.com/g/p/-/jobs/99", r.stdout)
                self.assertIn("commit " + "ab" * 20 + " on main", r.stdout)
                # The private key file serves as well (its public half).
                self.assertEqual(kiln_verify(data, self.dir, key[0]).returncode, 0)

    def test_a_changed_byte_fails(self):
        data = third_party_signed(FILES, self.ed, "ed25519", self.dir)
        entries = zip_entries(data)
        name, content = entries[0]
        flipped = bytearray(content)
        flipped[1000] ^= 0x01
        entries[0] = (name, bytes(flipped))
        r = kiln_verify(build_zip(entries), self.dir, self.ed[1])
        self.assert_fails(r, r"file bin/app changed: sha256 " +
                          hashlib.sha256(bytes(flipped)).hexdigest() + " != " +
                          hashlib.sha256(content).hexdigest() + "$")

    def test_a_flipped_byte_in_the_stored_archive_fails(self):
        data = bytearray(third_party_signed(FILES, self.ed, "ed25519", self.dir))
        # A byte inside bin/app's compressed data: the archive no longer reads back as signed.
        offset = data.index(b"bin/app") + len(b"bin/app") + 50
        data[offset] ^= 0x01
        r = kiln_verify(bytes(data), self.dir, self.ed[1])
        self.assert_fails(r, r"bin/app|cannot read the archive")

    def test_a_wrong_key_fails(self):
        data = third_party_signed(FILES, self.ed, "ed25519", self.dir)
        r = kiln_verify(data, self.dir, self.other[1])
        self.assert_fails(r, r"signature does not match key " + self.other[2] +
                          r" \(.*other\.pub\.pem\); the archive names key " + self.ed[2])
        r = kiln_verify(data, self.dir, self.ec[1])
        self.assert_fails(r, r"signature does not match key " + self.ec[2])
        # Any one of several keys is enough (rotation).
        self.assertEqual(kiln_verify(data, self.dir, self.other[1], self.ed[1]).returncode, 0)

    def test_a_changed_signature_or_manifest_fails(self):
        data = third_party_signed(FILES, self.ec, "p256", self.dir)
        entries = zip_entries(data)
        truncated = entries[:-1] + [(".kiln/manifest.sig", entries[-1][1][:-3])]
        self.assert_fails(kiln_verify(build_zip(truncated), self.dir, self.ec[1]),
                          r"signature does not match key .*changed after signing")
        manifest = json.loads(entries[-2][1])
        manifest["files"][0]["size"] += 1
        edited = entries[:-2] + [(".kiln/manifest.json", canonical(manifest)), entries[-1]]
        self.assert_fails(kiln_verify(build_zip(edited), self.dir, self.ec[1]),
                          r"signature does not match key .*changed after signing")

    def test_added_missing_and_unsigned(self):
        added = third_party_signed(FILES, self.ed, "ed25519", self.dir)
        entries = zip_entries(added)
        entries.insert(1, ("bin/backdoor", b"evil"))
        self.assert_fails(kiln_verify(build_zip(entries), self.dir, self.ed[1]),
                          r"file bin/backdoor not in manifest$")

        missing = third_party_signed(FILES[1:], self.ed, "ed25519", self.dir, manifest_files=FILES)
        self.assert_fails(kiln_verify(missing, self.dir, self.ed[1]),
                          r"file bin/app is in the manifest but not in the archive$")

        self.assert_fails(kiln_verify(build_zip(FILES), self.dir, self.ed[1]),
                          r"the archive is not signed: it has no \.kiln/manifest\.json")
        self.assert_fails(kiln_verify(b"not a zip at all", self.dir, self.ed[1]),
                          r"artifacts\.zip: cannot read the archive: ")

    def test_unusable_keys_are_named(self):
        data = third_party_signed(FILES, self.ed, "ed25519", self.dir)
        missing = os.path.join(self.dir, "nope.pem")
        self.assert_fails(kiln_verify(data, self.dir, missing),
                          r"^ERROR: cannot read verification key .*nope\.pem: No such file or "
                          r"directory$")
        rsa = os.path.join(self.dir, "rsa.pem")
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", rsa)
        self.assert_fails(kiln_verify(data, self.dir, rsa),
                          r"cannot read verification key .*rsa\.pem: a RSA key; kiln signs with "
                          r"Ed25519 or ECDSA P-256 keys")

    def test_the_documented_procedure_accepts_and_rejects(self):
        """docs/artifacts.md's openssl + check_files.py steps, run as written."""
        script = os.path.join(self.dir, "check_files.py")
        with open(script, "w") as f:
            f.write(documented_check_files())
        good = third_party_signed(FILES, self.ed, "ed25519", self.dir)
        entries = zip_entries(good)
        entries.insert(0, ("extra.txt", b"x"))
        for name, data, ok in [("good", good, True), ("extra file", build_zip(entries), False)]:
            with self.subTest(name):
                path = os.path.join(self.dir, "doc.zip")
                with open(path, "wb") as f:
                    f.write(data)
                manifest = os.path.join(self.dir, "manifest.json")
                with open(manifest, "wb") as f:
                    f.write(subprocess.run(["unzip", "-p", path, ".kiln/manifest.json"],
                                           capture_output=True, check=True).stdout)
                r = subprocess.run([sys.executable, script, path, manifest], capture_output=True,
                                   text=True)
                self.assertEqual(r.returncode == 0, ok, r.stdout + r.stderr)


def rezip(data, change=None, drop=(), add=()):
    """The archive rewritten entry by entry with the same metadata (modes, symlinks), with
    change(name, bytes) -> bytes applied, `drop` names left out and `add` (name, bytes) appended."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, \
            zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename in drop:
                continue
            content = src.read(info)
            if change is not None:
                content = change(info.filename, content)
            dst.writestr(info, content)
        for name, content in add:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            dst.writestr(info, content)
    return out.getvalue()


def flip_byte(target, offset):
    def change(name, content):
        if name != target:
            return content
        b = bytearray(content)
        b[offset] ^= 0x01
        return bytes(b)
    return change


class JobSigningTest(unittest.TestCase):
    """`kiln run` against the emulator: signed upload, verified download."""

    @classmethod
    def setUpClass(cls):
        cls.gitlab = harness.Emulator(tls=True, long_poll=5)
        cls.gitlab.start()
        cls.work = tempfile.mkdtemp(prefix="kiln-signing-job-test-")
        cls.repo = os.path.join(cls.work, "service.git")
        cls.sha = harness.make_bare_repo(cls.repo, {"README.md": "service\n"})
        cls.gitlab.add_repo("acme/service", cls.repo)
        cls.key = make_key(cls.work, "signing", "ed25519")
        cls.other = make_key(cls.work, "other", "p256")

    @classmethod
    def tearDownClass(cls):
        cls.gitlab.stop()
        cls.gitlab.cleanup()
        shutil.rmtree(cls.work, ignore_errors=True)

    def setUp(self):
        self.gitlab.clear_faults()
        self.gitlab.configure(trace_update_interval=1, final_update_202_count=0)
        self.token = self.gitlab.create_runner(kind="glrt")["token"]
        self.dir = tempfile.mkdtemp(dir=self.work)

    def write_config(self, signing):
        path = os.path.join(self.dir, "config.toml")
        with open(path, "w") as f:
            f.write(
                "concurrent = 1\ncheck_interval = 1\nshutdown_timeout = 5\n\n[[runners]]\n"
                f'  name = "t"\n  url = "{self.gitlab.url}"\n  token = "{self.token}"\n'
                f'  tls-ca-file = "{self.gitlab.ca_file}"\n  executor = "shell"\n'
                f'  builds_dir = "{os.path.join(self.dir, "builds")}"\n'
                f"  [runners.signing]\n{signing}")
        return path

    def enqueue(self, script, **extra):
        return self.gitlab.enqueue_job(fixture="job_basic", repo="acme/service", sha=self.sha,
                                       runner_token=self.token, script=script, after_script=[],
                                       **extra)

    def run_kiln(self, config, jobs):
        log_path = os.path.join(self.dir, "kiln.log")
        with open(log_path, "w") as log:
            proc = subprocess.Popen([KILN, "run", "--config", config, "--max-jobs",
                                     str(len(jobs))], stdout=log, stderr=subprocess.STDOUT)
            try:
                rc = proc.wait(timeout=300)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        with open(log_path) as f:
            self.assertEqual(rc, 0, f.read())
        return [self.gitlab.job(j["id"]) for j in jobs]

    def verify(self, data, *keys):
        return kiln_verify(data, self.dir, *keys)

    def test_sign_upload_download_verify_round_trip(self):
        config = self.write_config(f'    key_file = "{self.key[0]}"\n'
                                   f'    verify_key_files = ["{self.key[1]}"]\n')
        producer = self.enqueue(
            ["mkdir -p dist/lib", "printf 'service v1\\n' > dist/app", "chmod +x dist/app",
             "head -c 100000 /dev/urandom > dist/lib/libx.so.1",
             "ln -s libx.so.1 dist/lib/libx.so"],
            overrides={"artifacts": [{"name": "dist", "paths": ["dist/"], "when": "on_success",
                                      "expire_in": "1 day", "artifact_type": "archive",
                                      "artifact_format": "zip"}]})
        p_state, = self.run_kiln(config, [producer])
        self.assertEqual(p_state["state"], "success", p_state["trace"])
        self.assertIn(f"Signed with key {self.key[2]} (ed25519): .kiln/manifest.json",
                      p_state["trace"])

        # The archive as GitLab stores and serves it.
        stored = self.gitlab.job_artifact(producer["id"])
        with zipfile.ZipFile(io.BytesIO(stored)) as zf:
            self.assertIsNone(zf.testzip())
            names = zf.namelist()
            manifest = json.loads(zf.read(".kiln/manifest.json"))
        self.assertEqual(names[-2:], [".kiln/manifest.json", ".kiln/manifest.sig"])
        self.assertEqual(manifest["job"]["id"], producer["id"])
        self.assertEqual(manifest["commit_sha"], self.sha)
        self.assertEqual(manifest["project"], "acme/service")
        self.assertEqual(manifest["key_id"], self.key[2])
        self.assertEqual(manifest["symlinks"], [{"name": "dist/lib/libx.so",
                                                 "target": "libx.so.1"}])
        self.assertIn({"name": "dist/app", "size": 11,
                       "sha256": hashlib.sha256(b"service v1\n").hexdigest()}, manifest["files"])

        r = self.verify(stored, self.key[1])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"job {producer['id']}", r.stdout)
        self.assertIn(f"commit {self.sha}", r.stdout)
        self.assertIn("with provenance", r.stdout)

        # The documented procedure without kiln: openssl for the signatures, check_files.py.
        path = os.path.join(self.dir, "stored.zip")
        with open(path, "wb") as f:
            f.write(stored)
        for entry in (".kiln/manifest.json", ".kiln/manifest.sig", ".kiln/provenance.json",
                      ".kiln/provenance.sig"):
            with open(os.path.join(self.dir, os.path.basename(entry)), "wb") as f:
                f.write(subprocess.run(["unzip", "-p", path, entry], capture_output=True,
                                       check=True).stdout)
        for doc in ("manifest", "provenance"):
            out = openssl("pkeyutl", "-verify", "-pubin", "-inkey", self.key[1], "-rawin",
                          "-in", os.path.join(self.dir, doc + ".json"),
                          "-sigfile", os.path.join(self.dir, doc + ".sig"))
            self.assertIn(b"Signature Verified Successfully", out)
        script = os.path.join(self.dir, "check_files.py")
        with open(script, "w") as f:
            f.write(documented_check_files())
        r = subprocess.run([sys.executable, script, path, os.path.join(self.dir, "manifest.json")],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        with open(os.path.join(self.dir, "provenance.json")) as f:
            statement = json.load(f)
        self.assertEqual(statement["_type"], "https://in-toto.io/Statement/v1")
        self.assertIn({"name": "dist/app",
                       "digest": {"sha256": hashlib.sha256(b"service v1\n").hexdigest()}},
                      statement["subject"])

        # One flipped byte, or another key: verification fails.
        tampered = rezip(stored, flip_byte("dist/lib/libx.so.1", 5000))
        r = self.verify(tampered, self.key[1])
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr, r"^ERROR: .*: file dist/lib/libx\.so\.1 changed: sha256 "
                                   r"[0-9a-f]{64} != [0-9a-f]{64}\n$")
        r = self.verify(stored, self.other[1])
        self.assertEqual(r.returncode, 1)
        self.assertIn("signature does not match key " + self.other[2], r.stderr)

        # A job that depends on it verifies the archive before extracting it ...
        # It uploads what it got again, .kiln/ included: the producer's manifest is left out
        # and the archive carries the consumer's own.
        consumer = self.enqueue(
            ["cat dist/app", "readlink dist/lib/libx.so"], dependencies=[producer["id"]],
            overrides={"artifacts": [{"name": "again", "paths": ["dist/", ".kiln/"],
                                      "when": "on_success", "expire_in": "1 day",
                                      "artifact_type": "archive", "artifact_format": "zip"}]})
        # ... and one whose dependency's archive was tampered with, or is not signed, fails
        # before its script runs.
        cases = [("changed byte", tampered, "file dist/lib/libx.so.1 changed: sha256 "),
                 ("added file", rezip(stored, add=[("dist/evil.sh", b"rm -rf ~\n")]),
                  "file dist/evil.sh not in manifest"),
                 ("unsigned", rezip(stored, drop=(".kiln/manifest.json", ".kiln/manifest.sig")),
                  "the archive is not signed")]
        bad_jobs = []
        for _, data, _ in cases:
            dep = self.gitlab.enqueue_job(fixture="job_basic", tags=["nobody"])
            self.gitlab.put_job_artifact(dep["id"], data)
            bad_jobs.append(self.enqueue(["echo script-ran"], dependencies=[dep["id"]]))
        states = self.run_kiln(config, [consumer] + bad_jobs)

        c_trace = states[0]["trace"]
        self.assertEqual(states[0]["state"], "success", c_trace)
        self.assertIn(f"Verified the artifacts of {p_state['name']} ({producer['id']}): "
                      f"3 files signed by key {self.key[2]}, job {producer['id']}, "
                      f"commit {self.sha}", c_trace)
        self.assertRegex(c_trace, r"\$ cat dist/app.*\nservice v1\n.*\$ readlink dist/lib/libx\.so"
                                  r".*\nlibx\.so\.1\n")
        again = self.gitlab.job_artifact(consumer["id"])
        r = self.verify(again, self.key[1])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"job {consumer['id']}", r.stdout)
        with zipfile.ZipFile(io.BytesIO(again)) as zf:
            self.assertEqual(sum(n == ".kiln/manifest.json" for n in zf.namelist()), 1)
        for (name, _, detail), state in zip(cases, states[1:]):
            with self.subTest(name):
                trace = state["trace"]
                self.assertEqual(state["state"], "failed", trace)
                self.assertEqual(state["failure_reason"], "script_failure")
                self.assertNotIn("script-ran", trace)
                self.assertRegex(trace, r"ERROR: the artifacts archive of .* does not verify: ")
                self.assertIn(detail, trace)
        # Nothing of a refused archive was extracted.
        for root, _, files in os.walk(os.path.join(self.dir, "builds")):
            self.assertNotIn("evil.sh", files, root)

    def test_an_unusable_key_fails_the_job_with_its_file(self):
        missing = os.path.join(self.dir, "missing.pem")
        config = self.write_config(f'    key_file = "{missing}"\n')
        job = self.enqueue(["echo script-ran"])
        state, = self.run_kiln(config, [job])
        self.assertEqual(state["state"], "failed", state["trace"])
        self.assertEqual(state["failure_reason"], "runner_system_failure")
        self.assertNotIn("script-ran", state["trace"])
        self.assertIn(f"cannot read signing key {missing}: No such file or directory",
                      state["trace"])


if __name__ == "__main__":
    unittest.main()
