"""Tests of the GitLab emulator itself, talking to it the way a runner does.

Run from tests/integration:  python3 -m unittest -v test_emulator
"""

from __future__ import annotations

import copy
import gzip
import http.client
import io
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import zipfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "emulator"))

from harness import Emulator, basic_auth_header, git, http_request, make_bare_repo  # noqa: E402

with open(os.path.join(HERE, "..", "fixtures", "jobs_request_body.json")) as _f:
    REQUEST_BODY = json.load(_f)
ALL_FEATURES = REQUEST_BODY["info"]["features"]
SYSTEM_ID = "s_0a1b2c3d4e5f"


def crc(data: bytes) -> str:
    return "crc32:%08x" % (zlib.crc32(data) & 0xFFFFFFFF)


def make_zip(files: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in files.items():
            zf.writestr(name, content)
    return buf.getvalue()


def multipart(filename: str, data: bytes, boundary: str = "kilnboundary1234",
              field: str = "file", extra_fields: dict | None = None) -> tuple[bytes, str]:
    parts = []
    for k, v in (extra_fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'
                     f"{v}\r\n".encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                 f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
                 .encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class EmulatorTestCase(unittest.TestCase):
    """One HTTPS emulator per class; state reset before each test."""

    gl: Emulator
    emulator_kwargs: dict = {"tls": True, "long_poll": 5}

    @classmethod
    def setUpClass(cls) -> None:
        cls.gl = Emulator(**cls.emulator_kwargs)
        cls.gl.start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.gl.cleanup()

    def setUp(self) -> None:
        self.gl.reset()

    # -- runner-like helpers ----------------------------------------------------------------------

    def info(self, **features) -> dict:
        info = copy.deepcopy(REQUEST_BODY["info"])
        info["features"].update(features)
        return info

    def poll(self, token: str, last_update: str | None = None, features: dict | None = None,
             system_id: str = SYSTEM_ID, timeout: float = 30):
        body = {"info": self.info(**(features or {})), "token": token, "system_id": system_id}
        if last_update is not None:
            body["last_update"] = last_update
        return self.gl.api("POST", "/jobs/request", body,
                           {"Accept": "application/json", "RUNNER-TOKEN": token},
                           timeout=timeout)

    def start_job(self, features: dict | None = None, **job_kwargs) -> tuple[dict, dict]:
        """A runner that has picked a job: returns (runner, payload)."""
        runner = self.gl.create_runner()
        self.gl.enqueue_job(**job_kwargs)
        res = self.poll(runner["token"], features=features)
        self.assertEqual(res.status, 201, res)
        return runner, res.json()

    def put(self, payload: dict, state: str, **extra):
        body = {"info": self.info(), "token": payload["token"], "state": state,
                "output": extra.pop("output", {})}
        body.update(extra)
        return self.gl.api("PUT", f"/jobs/{payload['id']}", body,
                           {"JOB-TOKEN": payload["token"]})

    def patch(self, payload: dict, data: bytes, start: int, content_range: str | None = None,
              token: str | None = None, content_type: str | None = "text/plain"):
        headers = {"JOB-TOKEN": token or payload["token"]}
        if content_type:
            headers["Content-Type"] = content_type
        if content_range is None:
            content_range = f"{start}-{start + len(data) - 1}"
        if content_range != "":
            headers["Content-Range"] = content_range
        return self.gl.api("PATCH", f"/jobs/{payload['id']}/trace?debug_trace=false", data,
                           headers)

    def connection(self) -> http.client.HTTPConnection:
        u = urllib.parse.urlsplit(self.gl.url)
        if u.scheme == "https":
            return http.client.HTTPSConnection(u.hostname, u.port, timeout=30,
                                               context=self.gl.ssl_context())
        return http.client.HTTPConnection(u.hostname, u.port, timeout=30)


# ------------------------------------------------------------------------------------------------

class RegistrationTest(EmulatorTestCase):

    def test_register_with_registration_token(self):
        reg = self.gl.add_registration_token()
        res = self.gl.api("POST", "/runners", {
            "description": "kiln runner", "tag_list": "docker, linux", "run_untagged": False,
            "locked": True, "access_level": "ref_protected", "maximum_timeout": 3600,
            "paused": False, "info": self.info(), "token": reg}, {"Accept": "application/json"})
        self.assertEqual(res.status, 201, res)
        self.assertTrue(res.header("Content-Type").startswith("application/json"))
        body = res.json()
        self.assertEqual(set(body), {"id", "token", "token_expires_at"})
        self.assertIsNone(body["token_expires_at"])
        self.assertRegex(body["token"], r"^t1_")
        (runner,) = self.gl.runners()
        self.assertEqual(runner["id"], body["id"])
        self.assertEqual(runner["tags"], ["docker", "linux"])
        self.assertEqual(runner["description"], "kiln runner")
        self.assertFalse(runner["run_untagged"])
        self.assertEqual(runner["access_level"], "ref_protected")
        self.assertTrue(runner["locked"])
        self.assertEqual(runner["kind"], "legacy")

    def test_register_errors(self):
        reg = self.gl.add_registration_token()
        self.assertEqual(self.gl.api("POST", "/runners", {"token": "nope"}).status, 403)
        res = self.gl.api("POST", "/runners", {"description": "x"})
        self.assertEqual(res.status, 400)
        res = self.gl.api("POST", "/runners", {"token": reg, "run_untagged": False})
        self.assertEqual(res.status, 400)
        self.assertIn("tags_list", res.json()["message"])
        res = self.gl.api("POST", "/runners", {"token": reg, "maximum_timeout": 60})
        self.assertEqual(res.status, 400)
        self.assertIn("maximum_timeout", res.json()["message"])
        disabled = self.gl.add_registration_token(disabled=True)
        self.assertEqual(self.gl.api("POST", "/runners", {"token": disabled}).status, 410)
        self.gl.configure(registration_tokens_disabled=True)
        self.assertEqual(self.gl.api("POST", "/runners", {"token": reg}).status, 410)

    def test_registered_token_expiry(self):
        reg = self.gl.add_registration_token()
        self.gl.configure(runner_token_expiration_interval=3600)
        body = self.gl.api("POST", "/runners", {"token": reg}).json()
        self.assertRegex(body["token_expires_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_verify_creates_managers(self):
        runner = self.gl.create_runner(token_expires_at="2099-01-01T00:00:00Z")
        self.assertTrue(runner["token"].startswith("glrt-"))
        for sid in (SYSTEM_ID, "r_abcdefABCDEF"):
            res = self.gl.api("POST", "/runners/verify",
                              {"info": self.info(), "token": runner["token"], "system_id": sid},
                              {"RUNNER-TOKEN": runner["token"], "Accept": "application/json"})
            self.assertEqual(res.status, 200, res)
            self.assertEqual(res.json(), {"id": runner["id"], "token": runner["token"],
                                          "token_expires_at": "2099-01-01T00:00:00.000Z"})
        managers = self.gl.runners()[0]["managers"]
        self.assertEqual(sorted(m["system_id"] for m in managers),
                         sorted([SYSTEM_ID, "r_abcdefABCDEF"]))
        self.assertTrue(managers[0]["features"]["cancel_gracefully"])
        self.assertEqual(self.gl.api("POST", "/runners/verify", {"token": "glrt-bad"}).status,
                         403)
        self.assertEqual(self.gl.api("POST", "/runners/verify", {"system_id": SYSTEM_ID}).status,
                         400)

    def test_verify_expired_token(self):
        runner = self.gl.create_runner(token_expires_at="2020-01-01T00:00:00Z")
        self.assertEqual(self.gl.api("POST", "/runners/verify",
                                     {"token": runner["token"]}).status, 403)

    def test_unregister_legacy(self):
        runner = self.gl.create_runner(kind="legacy")
        self.assertFalse(runner["token"].startswith("glrt-"))
        self.assertEqual(self.gl.api("DELETE", "/runners", {}).status, 400)
        self.assertEqual(self.gl.api("DELETE", "/runners", {"token": "nope"}).status, 403)
        res = self.gl.api("DELETE", "/runners", {"token": runner["token"]},
                          {"RUNNER-TOKEN": runner["token"]})
        self.assertEqual(res.status, 204)
        self.assertEqual(res.body, b"")
        self.assertTrue(self.gl.runners()[0]["deleted"])
        self.assertEqual(self.gl.api("DELETE", "/runners", {"token": runner["token"]}).status,
                         403)
        self.assertEqual(self.poll(runner["token"]).status, 403)

    def test_unregister_manager(self):
        runner = self.gl.create_runner()
        for sid in (SYSTEM_ID, "s_111111111111"):
            self.gl.api("POST", "/runners/verify", {"token": runner["token"], "system_id": sid})
        url = "/runners/managers"
        self.assertEqual(self.gl.api("DELETE", url, {"token": runner["token"]}).status, 400)
        self.assertEqual(self.gl.api("DELETE", url, {"token": "glrt-x", "system_id": SYSTEM_ID})
                         .status, 403)
        body = {"token": runner["token"], "system_id": SYSTEM_ID}
        self.assertEqual(self.gl.api("DELETE", url, body).status, 204)
        self.assertEqual(self.gl.api("DELETE", url, body).status, 404)
        (r,) = self.gl.runners()
        self.assertFalse(r["deleted"])
        self.assertEqual([m["system_id"] for m in r["managers"]], ["s_111111111111"])

    def test_reset_token(self):
        runner = self.gl.create_runner(token_expires_in=3600)
        res = self.gl.api("POST", "/runners/reset_authentication_token",
                          {"token": runner["token"]}, {"Accept": "application/json"})
        self.assertEqual(res.status, 201, res)
        new = res.json()
        self.assertNotEqual(new["token"], runner["token"])
        self.assertTrue(new["token"].startswith("glrt-"))
        self.assertIsNotNone(new["token_expires_at"])
        self.assertEqual(self.poll(runner["token"]).status, 403)
        self.assertEqual(self.gl.api("POST", "/runners/reset_authentication_token",
                                     {"token": runner["token"]}).status, 403)
        self.assertEqual(self.poll(new["token"]).status, 204)

    def test_reset_token_with_pat(self):
        runner = self.gl.create_runner()
        path = f"/runners/{runner['id']}/reset_authentication_token"
        self.assertEqual(self.gl.api("POST", path, headers={"PRIVATE-TOKEN": "bad"}).status, 401)
        pat = self.gl.config()["private_tokens"][0]
        res = self.gl.api("POST", path, headers={"PRIVATE-TOKEN": pat})
        self.assertEqual(res.status, 201)
        self.assertEqual(self.poll(res.json()["token"]).status, 204)
        self.assertEqual(self.poll(runner["token"]).status, 403)


# ------------------------------------------------------------------------------------------------

class JobRequestTest(EmulatorTestCase):

    def test_auth_and_empty_queue(self):
        self.assertEqual(self.gl.api("POST", "/jobs/request", {"info": self.info()}).status, 400)
        self.assertEqual(self.poll("glrt-unknown").status, 403)
        runner = self.gl.create_runner()
        res = self.poll(runner["token"])
        self.assertEqual(res.status, 204)
        value = res.header("X-GitLab-Last-Update")
        self.assertRegex(value, r"^[0-9a-f]{32}$")
        # A stale value is answered at once with the current one.
        start = time.monotonic()
        res = self.poll(runner["token"], last_update="0" * 32)
        self.assertLess(time.monotonic() - start, 1)
        self.assertEqual(res.header("X-GitLab-Last-Update"), value)
        # Without Workhorse long polling, a current value is echoed.
        self.gl.configure(long_poll=0)
        res = self.poll(runner["token"], last_update=value)
        self.assertEqual(res.status, 204)
        self.assertEqual(res.header("X-GitLab-Last-Update"), value)

    def test_long_poll_released_by_enqueue(self):
        runner = self.gl.create_runner()
        value = self.poll(runner["token"]).header("X-GitLab-Last-Update")
        result: dict = {}

        def held():
            result["res"] = self.poll(runner["token"], last_update=value)
            result["done"] = time.monotonic()
        t = threading.Thread(target=held)
        t.start()
        # In flight = logged without a status yet.
        self.gl.wait_for(lambda: [e for e in self.gl.requests(path="jobs/request")
                                  if e["status"] is None], timeout=5, message="held request")
        time.sleep(0.3)
        self.assertTrue(t.is_alive(), "request with a current last_update must be held")
        enqueued = time.monotonic()
        job = self.gl.enqueue_job()
        t.join(5)
        self.assertFalse(t.is_alive())
        self.assertLess(result["done"] - enqueued, 1.5)   # long poll is 5 s
        self.assertEqual(result["res"].status, 204)
        self.assertIsNone(result["res"].header("X-GitLab-Last-Update"))
        self.assertEqual(result["res"].header("Gitlab-Ci-Builds-Polling"), "yes")
        # The follow-up with the old value goes through to "Rails" and gets the job.
        res = self.poll(runner["token"], last_update=value)
        self.assertEqual(res.status, 201)
        self.assertTrue(res.header("Content-Type").startswith("application/json"))
        self.assertIsNone(res.header("X-GitLab-Last-Update"))
        payload = res.json()
        self.assertEqual(payload["id"], job["id"])
        self.assertEqual(payload["token"], job["token"])
        self.assertTrue(payload["token"].startswith("glcbt-"))
        self.assertEqual(payload["job_info"]["id"], job["id"])
        variables = {v["key"]: v for v in payload["variables"]}
        self.assertEqual(variables["CI_JOB_TOKEN"]["value"], job["token"])
        self.assertEqual(variables["CI_JOB_ID"]["value"], str(job["id"]))
        self.assertEqual(payload["credentials"][0]["password"], job["token"])
        self.assertEqual(payload["git_info"]["repo_url"], job["repo_url"])
        self.assertIn(f"gitlab-ci-token:{job['token']}@", job["repo_url"])
        self.assertTrue(job["repo_url"].startswith(self.gl.url.split("//")[0]))
        self.assertIn(f"+refs/pipelines/{job['pipeline_id']}:", payload["git_info"]["refspecs"][0])
        self.assertIsNone(payload["image"])
        self.assertEqual(self.gl.job(job["id"])["state"], "running")

    def test_long_poll_timeout(self):
        self.gl.configure(long_poll=1)
        runner = self.gl.create_runner()
        value = self.poll(runner["token"]).header("X-GitLab-Last-Update")
        start = time.monotonic()
        res = self.poll(runner["token"], last_update=value)
        elapsed = time.monotonic() - start
        self.assertEqual(res.status, 204)
        self.assertIsNone(res.header("X-GitLab-Last-Update"))
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 3)

    def test_tags_and_run_untagged(self):
        untagged_only = self.gl.create_runner()
        strict = self.gl.create_runner(tags=["docker"], run_untagged=False)
        tagged = self.gl.enqueue_job(tags=["docker"])
        self.assertEqual(self.poll(untagged_only["token"]).status, 204)
        plain = self.gl.enqueue_job()
        self.assertEqual(self.poll(strict["token"], system_id="s_222222222222").json()["id"],
                         tagged["id"])
        self.assertEqual(self.poll(strict["token"], system_id="s_222222222222").status, 204)
        self.assertEqual(self.poll(untagged_only["token"]).json()["id"], plain["id"])

    def test_runner_unsupported(self):
        runner = self.gl.create_runner()
        job = self.gl.enqueue_job(fixture="job_go_module", dependencies=[])
        self.assertIn("upload_multiple_artifacts", job["required_features"])
        res = self.poll(runner["token"], features={"upload_multiple_artifacts": False})
        self.assertEqual(res.status, 204)
        j = self.gl.job(job["id"])
        self.assertEqual((j["state"], j["failure_reason"]), ("failed", "runner_unsupported"))
        job2 = self.gl.enqueue_job(fixture="job_go_module", dependencies=[])
        self.assertEqual(self.poll(runner["token"]).json()["id"], job2["id"])

    def test_two_phase_commit(self):
        self.gl.configure(two_phase_commit=True, two_phase_ack_timeout=1)
        runner = self.gl.create_runner()
        job = self.gl.enqueue_job()
        p = self.poll(runner["token"]).json()
        self.assertEqual(self.gl.job(job["id"])["state"], "pending")
        res = self.patch_trace(p)
        self.assertEqual((res.status, res.header("Job-Status")), (403, "pending"))
        res = self.put_state(p, "pending")
        self.assertEqual((res.status, res.header("Job-Status")), (200, "pending"))
        res = self.put_state(p, "running")
        self.assertEqual((res.status, res.header("Job-Status")), (200, "running"))
        # An unacknowledged pick goes back to the queue after the ack timeout.
        job2 = self.gl.enqueue_job()
        self.assertEqual(self.poll(runner["token"]).json()["id"], job2["id"])
        self.gl.wait_for(lambda: not self.gl.job(job2["id"])["awaiting_ack"], timeout=5)
        self.assertEqual(self.poll(runner["token"]).json()["id"], job2["id"])

    def patch_trace(self, p: dict):
        return self.gl.api("PATCH", f"/jobs/{p['id']}/trace", b"x",
                           {"JOB-TOKEN": p["token"], "Content-Range": "0-0",
                            "Content-Type": "text/plain"})

    def put_state(self, p: dict, state: str):
        return self.gl.api("PUT", f"/jobs/{p['id']}",
                           {"token": p["token"], "state": state, "output": {}})

    def test_chunked_request_body(self):
        runner = self.gl.create_runner()
        conn = self.connection()
        body = json.dumps({"token": runner["token"], "info": self.info()}).encode()
        conn.request("POST", "/api/v4/jobs/request", body=iter([body[:10], body[10:]]),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        res = conn.getresponse()
        res.read()
        self.assertEqual(res.status, 204)
        # Keep-alive: a second request on the same connection.
        conn.request("POST", "/api/v4/runners/verify", body=body,
                     headers={"Content-Type": "application/json"})
        res = conn.getresponse()
        self.assertEqual(res.status, 200)
        res.read()
        conn.close()


# ------------------------------------------------------------------------------------------------

class TraceAndUpdateTest(EmulatorTestCase):

    def test_patch_trace(self):
        _, p = self.start_job()
        res = self.patch(p, b"Running with gitl", 0)
        self.assertEqual(res.status, 202)
        self.assertEqual(res.header("Range"), "0-17")
        self.assertEqual(res.header("Job-Status"), "running")
        self.assertEqual(res.header("X-GitLab-Trace-Update-Interval"), "3")
        gap = self.patch(p, b"0123456789", 20)
        self.assertEqual((gap.status, gap.header("Range")), (416, "0-17"))
        overlap = self.patch(p, b"lab-runner", 10)
        self.assertEqual((overlap.status, overlap.header("Range")), (416, "0-17"))
        self.assertEqual(self.patch(p, b"ab", 17, content_range="").status, 400)
        self.assertEqual(self.patch(p, b"ab", 17, token="glcbt-wrong").status, 403)
        res = self.patch(p, b"ab-runner " + p["token"].encode(), 17)
        self.assertEqual(res.status, 202)
        job = self.gl.job(p["id"])
        self.assertEqual(job["trace"], "Running with gitlab-runner " + "x" * len(p["token"]))
        self.assertTrue(all(x["content_range_ok"] for x in job["patches"] if x["status"] == 202))
        self.assertEqual([x["status"] for x in job["patches"]], [202, 416, 416, 400, 202])
        self.assertEqual(job["protocol_violations"], [])

    def test_patch_protocol_violations(self):
        _, p = self.start_job()
        res = self.patch(p, b"0123456789", 0, content_range="0-10")   # exclusive end
        self.assertEqual(res.status, 202)    # GitLab ignores the end …
        job = self.gl.job(p["id"])           # … but the emulator reports it
        self.assertFalse(job["patches"][0]["content_range_ok"])
        self.assertIn("inclusive", job["protocol_violations"][0])
        conn = self.connection()                # urllib would add a form Content-Type
        conn.request("PATCH", f"/api/v4/jobs/{p['id']}/trace", body=b"a",
                     headers={"JOB-TOKEN": p["token"], "Content-Range": "10-10"})
        res = conn.getresponse()
        res.read()
        conn.close()
        self.assertEqual(res.status, 415)
        big = b"x" * (1024 * 1024 + 1)
        self.assertEqual(self.patch(p, big, 10).status, 413)
        self.assertEqual(len(self.gl.job(p["id"])["protocol_violations"]), 3)

    def test_final_update_202_then_200(self):
        self.gl.configure(final_update_202_count=2)
        _, p = self.start_job()
        self.assertEqual(self.put(p, "running").header("Job-Status"), "running")
        trace = b"hello world\n"
        self.assertEqual(self.patch(p, trace, 0).status, 202)
        output = {"checksum": crc(trace), "bytesize": len(trace)}
        first = self.put(p, "success", output=output, checksum=crc(trace))
        self.assertEqual(first.status, 202)
        self.assertEqual(first.header("Job-Status"), "running")
        self.assertEqual(first.header("X-GitLab-Trace-Update-Interval"), "1")
        self.assertEqual(self.put(p, "success", output=output).status, 202)
        final = self.put(p, "success", output=output)
        self.assertEqual((final.status, final.header("Job-Status")), (200, "success"))
        self.assertIsNone(final.header("X-GitLab-Trace-Update-Interval"))
        job = self.gl.job(p["id"])
        self.assertEqual(job["state"], "success")
        self.assertTrue(job["checksum_ok"])
        self.assertTrue(job["bytesize_ok"])
        self.assertEqual(job["exit_code"], 0)
        self.assertEqual([x["status"] for x in job["puts"]], [200, 202, 202, 200])
        again = self.put(p, "success", output=output)
        self.assertEqual((again.status, again.header("Job-Status")), (403, "success"))
        self.assertEqual(self.patch(p, b"late", len(trace)).status, 403)

    def test_final_update_bytesize_mode_and_crc_mismatch(self):
        self.gl.configure(final_update_mode="bytesize")
        _, p = self.start_job()
        self.patch(p, b"part one ", 0)
        whole = b"part one part two"
        output = {"checksum": "crc32:00000000", "bytesize": len(whole)}
        res = self.put(p, "failed", output=output, failure_reason="script_failure", exit_code=2)
        self.assertEqual(res.status, 202)
        self.patch(p, b"part two", 9)
        res = self.put(p, "failed", output=output, failure_reason="script_failure", exit_code=2)
        self.assertEqual((res.status, res.header("Job-Status")), (200, "failed"))
        job = self.gl.job(p["id"])
        self.assertEqual((job["failure_reason"], job["exit_code"]), ("script_failure", 2))
        self.assertFalse(job["checksum_ok"])
        self.assertTrue(job["bytesize_ok"])
        self.assertTrue(any("checksum mismatch" in v for v in job["protocol_violations"]))

    def test_final_update_applied_after_accept_timeout(self):
        self.gl.configure(final_update_202_count=100, final_update_accept_timeout=0)
        _, p = self.start_job()
        res = self.put(p, "success", output={"checksum": crc(b""), "bytesize": 0})
        self.assertEqual((res.status, res.header("Job-Status")), (200, "success"))

    def test_put_without_checksum_and_errors(self):
        _, p = self.start_job()
        self.assertEqual(self.gl.api("PUT", f"/jobs/{p['id']}", {"state": "running"},
                                     {"JOB-TOKEN": p["token"]}).status, 400)
        self.assertEqual(self.gl.api("PUT", f"/jobs/{p['id']}",
                                     {"token": "glcbt-wrong", "state": "running"}).status, 403)
        self.assertEqual(self.gl.api("PUT", "/jobs/999999",
                                     {"token": p["token"], "state": "running"}).status, 403)
        self.assertEqual(self.put(p, "bogus").status, 400)
        res = self.put(p, "failed", failure_reason="not_a_reason", exit_code=70000)
        self.assertEqual((res.status, res.header("Job-Status")), (200, "failed"))
        job = self.gl.job(p["id"])
        self.assertEqual((job["failure_reason"], job["exit_code"]), ("unknown_failure", 32767))

    def test_trace_size_limit(self):
        self.gl.configure(trace_limit_bytes=10)
        _, p = self.start_job()
        self.assertEqual(self.patch(p, b"12345", 0).status, 202)
        self.assertEqual(self.patch(p, b"678901", 5).status, 403)
        job = self.gl.job(p["id"])
        self.assertEqual((job["state"], job["failure_reason"]), ("failed", "trace_size_exceeded"))

    def test_reset_trace_fault_and_412(self):
        self.gl.configure(final_update_412_count=1, final_update_202_count=0)
        _, p = self.start_job()
        self.patch(p, b"abcdef", 0)
        self.gl.fault(r"/jobs/\d+/trace$", action="reset_trace")
        res = self.patch(p, b"ghi", 6)
        self.assertEqual((res.status, res.header("Range")), (416, "0-0"))
        self.assertEqual(self.patch(p, b"abcdefghi", 0).status, 202)
        output = {"checksum": crc(b"abcdefghi"), "bytesize": 9}
        self.assertEqual(self.put(p, "success", output=output).status, 412)
        self.assertEqual(self.gl.job(p["id"])["trace_size"], 0)
        self.assertEqual(self.patch(p, b"abcdefghi", 0).status, 202)
        self.assertEqual(self.put(p, "success", output=output).status, 200)
        self.assertTrue(self.gl.job(p["id"])["checksum_ok"])


# ------------------------------------------------------------------------------------------------

class CancelTest(EmulatorTestCase):

    def test_graceful_cancel(self):
        _, p = self.start_job()                # runner advertises cancel_gracefully
        self.assertEqual(self.gl.cancel(p["id"], "graceful")["state"], "canceling")
        res = self.patch(p, b"log", 0)
        self.assertEqual((res.status, res.header("Job-Status")), (202, "canceling"))
        res = self.put(p, "running")
        self.assertEqual((res.status, res.header("Job-Status")), (200, "canceling"))
        res = self.put(p, "failed", failure_reason="unknown_failure")
        self.assertEqual((res.status, res.header("Job-Status")), (200, "canceled"))
        self.assertEqual(self.gl.job(p["id"])["state"], "canceled")

    def test_graceful_cancel_without_feature_is_hard(self):
        _, p = self.start_job(features={"cancel_gracefully": False})
        self.assertEqual(self.gl.cancel(p["id"], "graceful")["state"], "canceled")
        res = self.put(p, "running")
        self.assertEqual((res.status, res.header("Job-Status")), (403, "canceled"))

    def test_hard_cancel(self):
        _, p = self.start_job()
        self.gl.cancel(p["id"], "hard")
        res = self.patch(p, b"log", 0)
        self.assertEqual((res.status, res.header("Job-Status")), (403, "canceled"))

    def test_expired_job_token(self):
        _, p = self.start_job()
        self.gl.expire_token(p["id"])
        self.assertEqual(self.put(p, "running").status, 403)
        job = self.gl.job(p["id"])
        self.assertEqual((job["state"], job["failure_reason"]), ("failed", "job_token_expired"))


# ------------------------------------------------------------------------------------------------

class ArtifactTest(EmulatorTestCase):

    def upload(self, p: dict, data: bytes, query: str = "artifact_format=zip&artifact_type="
               "archive&expire_in=1+week", token: str | None = None, filename="artifacts.zip",
               chunked: bool = True, **mp):
        body, ctype = multipart(filename, data, **mp)
        conn = self.connection()
        headers = {"JOB-TOKEN": token or p["token"], "Content-Type": ctype}
        if chunked:
            chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)]
            conn.request("POST", f"/api/v4/jobs/{p['id']}/artifacts?{query}", body=iter(chunks),
                         headers=headers, encode_chunked=True)
        else:
            conn.request("POST", f"/api/v4/jobs/{p['id']}/artifacts?{query}", body=body,
                         headers=headers)
        res = conn.getresponse()
        res.read()
        conn.close()
        return res.status

    def test_upload_and_download(self):
        archive = make_zip({"out/result.txt": "42\n" * 2000})
        _, producer = self.start_job()
        self.assertEqual(self.upload(producer, archive), 201)
        (art,) = self.gl.job(producer["id"])["artifacts"]
        self.assertEqual((art["type"], art["format"], art["expire_in"], art["filename"],
                          art["size"]), ("archive", "zip", "1 week", "artifacts.zip",
                                         len(archive)))
        self.assertEqual(self.upload(producer, archive), 400)   # one per type
        self.put(producer, "success")

        consumer = self.gl.enqueue_job(dependencies=[producer["id"]])
        runner = self.gl.create_runner()
        payload = self.poll(runner["token"]).json()
        self.assertEqual(payload["dependencies"], [{
            "id": producer["id"], "name": "unit-tests", "token": consumer["token"],
            "artifacts_file": {"filename": "artifacts.zip", "size": len(archive)}}])
        path = f"/jobs/{producer['id']}/artifacts"
        hdr = {"JOB-TOKEN": consumer["token"]}
        res = self.gl.api("GET", path, headers=hdr)
        self.assertEqual((res.status, res.body), (200, archive))
        self.assertEqual(self.gl.api("GET", path, headers={"JOB-TOKEN": producer["token"]})
                         .status, 403)         # finished job's token
        res = self.gl.api("GET", path + "?direct_download=true", headers=hdr)
        self.assertEqual(res.status, 302)
        location = res.header("Location")
        ctx = self.gl.ssl_context()
        self.assertEqual(http_request("GET", location, context=ctx).body, archive)
        part = http_request("GET", location, headers={"Range": "bytes=10-19"}, context=ctx)
        self.assertEqual((part.status, part.body), (206, archive[10:20]))
        self.assertEqual(part.header("Content-Range"), f"bytes 10-19/{len(archive)}")
        self.assertEqual(http_request("GET", location.replace("Signature=", "Signature=0"),
                                      context=ctx).status, 403)
        self.assertEqual(self.gl.api("GET", f"/jobs/{consumer['id']}/artifacts",
                                     headers=hdr).status, 404)

    def test_upload_errors(self):
        _, p = self.start_job()
        archive = make_zip({"a": "b"})
        self.assertEqual(self.upload(p, archive, token="glcbt-wrong"), 403)
        self.assertEqual(self.upload(p, archive, query="artifact_type=bogus"), 400)
        self.assertEqual(self.upload(p, archive, query="artifact_type=junit&artifact_format=zip"),
                         400)
        self.assertEqual(self.upload(p, b"not a zip"), 400)
        self.assertEqual(self.upload(p, archive, field="upload"), 400)
        self.gl.configure(max_artifact_size=100)
        self.assertEqual(self.upload(p, b"x" * 1000, query="artifact_type=sast&"
                                     "artifact_format=raw", chunked=False), 413)
        self.gl.configure(max_artifact_size=10 * 1024 * 1024)
        report = gzip.compress(b"<testsuite/>") + gzip.compress(b"<testsuite/>")
        self.assertEqual(self.upload(p, report, filename="junit.xml.gz",
                                     query="artifact_type=junit&artifact_format=gzip"), 201)
        self.assertEqual(self.upload(p, archive, query=""), 201)   # defaults archive/zip
        types = sorted(a["type"] for a in self.gl.job(p["id"])["artifacts"])
        self.assertEqual(types, ["archive", "junit"])


# ------------------------------------------------------------------------------------------------

class GitTest(EmulatorTestCase):

    def test_clone_with_job_token(self):
        tmp = tempfile.mkdtemp(prefix="emu-git-")
        self.addCleanup(shutil.rmtree, tmp, True)
        bare = os.path.join(tmp, "widgets.git")
        sha = make_bare_repo(bare, {"main.c": "int main(void) { return 0; }\n"})
        self.gl.add_repo("acme/widgets", bare)
        _, p = self.start_job(repo="acme/widgets")
        self.assertEqual(p["git_info"]["sha"], sha)
        env = {"GIT_SSL_CAINFO": self.gl.ca_file}
        dest = os.path.join(tmp, "clone")
        git("clone", "-q", p["git_info"]["repo_url"], dest, env=env)
        self.assertEqual(git("rev-parse", "HEAD", cwd=dest), sha)
        refs = git("ls-remote", p["git_info"]["repo_url"], env=env)
        self.assertIn(f"{sha}\trefs/pipelines/", refs)
        # What a runner does: init + fetch the payload's refspecs at the given depth.
        fetched = os.path.join(tmp, "fetched")
        git("init", "-q", fetched)
        git("fetch", "-q", "--depth", str(p["git_info"]["depth"]), p["git_info"]["repo_url"],
            *p["git_info"]["refspecs"], cwd=fetched, env=env)
        self.assertEqual(git("rev-parse", "refs/remotes/origin/main", cwd=fetched), sha)
        anonymous = self.gl.url + "/acme/widgets.git"
        with self.assertRaises(RuntimeError):
            git("ls-remote", anonymous, env=env)
        unauth = self.gl.request("GET", "/acme/widgets.git/info/refs?service=git-upload-pack")
        self.assertEqual(unauth.status, 401)
        self.assertIn("Basic", unauth.header("WWW-Authenticate"))
        missing = self.gl.request("GET", "/acme/nothing.git/info/refs?service=git-upload-pack",
                                  headers=basic_auth_header("gitlab-ci-token", p["token"]))
        self.assertEqual(missing.status, 404)
        self.put(p, "success")
        with self.assertRaises(RuntimeError):     # token of a finished job no longer works
            git("ls-remote", p["git_info"]["repo_url"], env=env)


# ------------------------------------------------------------------------------------------------

class FaultTest(EmulatorTestCase):

    def test_503_burst(self):
        runner = self.gl.create_runner()
        self.gl.fault(r"^/api/v4/jobs/request$", status=503, count=3)
        statuses = [self.poll(runner["token"]).status for _ in range(4)]
        self.assertEqual(statuses, [503, 503, 503, 204])
        log = self.gl.requests(path="jobs/request")
        self.assertEqual([e["status"] for e in log], statuses)
        self.assertEqual([e["fault"] for e in log], ["status"] * 3 + [None])
        self.assertEqual(log[0]["json"]["token"], runner["token"])

    def test_429_retry_after_and_rate_limit_all(self):
        runner = self.gl.create_runner()
        self.gl.fault("/jobs/request", status=429, retry_after=2)
        res = self.poll(runner["token"])
        self.assertEqual((res.status, res.header("Retry-After")), (429, "2"))
        self.assertIn("error", res.json()["message"])
        self.gl.configure(rate_limit_all={"retry_after": 1, "count": 2})
        self.assertEqual(self.poll(runner["token"]).status, 429)
        self.assertEqual(self.gl.api("POST", "/runners/verify",
                                     {"token": runner["token"]}).status, 429)
        self.assertEqual(self.poll(runner["token"]).status, 204)

    def test_drop_and_delay(self):
        runner = self.gl.create_runner()
        self.gl.fault("/jobs/request", action="drop")
        conn = self.connection()
        conn.request("POST", "/api/v4/jobs/request", body=json.dumps({"token": runner["token"]}),
                     headers={"Content-Type": "application/json"})
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
            conn.getresponse()
        conn.close()
        self.gl.fault("/runners/verify", action="delay", delay=0.5)
        start = time.monotonic()
        res = self.gl.api("POST", "/runners/verify", {"token": runner["token"]})
        self.assertEqual(res.status, 200)
        self.assertGreaterEqual(time.monotonic() - start, 0.45)

    def test_mid_flight_job_loss(self):
        _, p = self.start_job()
        self.gl.delete_job(p["id"])
        self.assertEqual(self.put(p, "running").status, 403)


# ------------------------------------------------------------------------------------------------

class TransportTest(unittest.TestCase):

    def test_plain_http(self):
        with Emulator(long_poll=1) as gl:
            self.assertTrue(gl.url.startswith("http://127.0.0.1:"))
            runner = gl.create_runner()
            res = gl.api("POST", "/jobs/request", {"token": runner["token"]})
            self.assertEqual(res.status, 204)
        gl.cleanup()

    def test_mutual_tls(self):
        with Emulator(client_ca=True, long_poll=1) as gl:
            self.assertEqual(gl.control("GET", "/health")["ok"], True)
            no_cert = gl.ssl_context(client_cert=False)
            with self.assertRaises(OSError):
                http_request("GET", gl.url + "/__emulator/health", context=no_cert).status
            wrong_ca = ssl.create_default_context(cafile=gl.other_ca_file)
            with self.assertRaises(OSError):
                http_request("GET", gl.url + "/__emulator/health", context=wrong_ca)
            curl = subprocess.run(
                ["curl", "-sS", "--cacert", gl.ca_file, "--cert", gl.client_cert, "--key",
                 gl.client_key, gl.url + "/__emulator/health"], capture_output=True, text=True)
            if curl.returncode != 127:
                self.assertEqual(json.loads(curl.stdout)["ok"], True)
        gl.cleanup()


if __name__ == "__main__":
    unittest.main()
