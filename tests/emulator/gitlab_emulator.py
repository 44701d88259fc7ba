#!/usr/bin/env python3
"""GitLab emulator for kiln's integration tests.

Implements the runner-facing part of GitLab's API (/api/v4) the way GitLab (Rails behind
Workhorse) behaves, as documented in docs/protocol.md (section numbers in comments refer to it),
plus:
  * git smart HTTP for registered repositories, backed by `git http-backend` (CGI);
  * a fake object storage that serves direct artifact downloads (302 target, HTTP Range);
  * a JSON control API under /__emulator/ for tests: seed runners/jobs, inspect what the runner
    did, inject faults.

Layout of this file:
  1. GitLab constants (feature requirements, failure reasons, artifact types)
  2. Request / Reply value types and small helpers
  3. GitLab: the state model and GitLab's semantics, free of HTTP plumbing
  4. Handlers: runner API, control API, git backend, object storage, and the router
  5. HTTP plumbing: threaded HTTP/1.1 server, chunked bodies, TLS, fault application
  6. main()

Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import gzip
import hashlib
import hmac
import io
import json
import math
import os
import re
import secrets
import signal
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import zipfile
import zlib
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_FIXTURES_DIR = os.path.normpath(os.path.join(HERE, "..", "fixtures"))

# ------------------------------------------------------------------------------------------------
# 1. GitLab constants
# ------------------------------------------------------------------------------------------------

# GitLab's failure_reason enum (§5.2). Anything else sent by a runner is stored as unknown_failure.
FAILURE_REASONS = frozenset("""
unknown_failure script_failure api_failure stuck_or_timeout_failure runner_system_failure
missing_dependency_failure runner_unsupported stale_schedule job_execution_timeout archived_failure
unmet_prerequisites scheduler_failure data_integrity_failure forward_deployment_failure user_blocked
project_deleted ci_quota_exceeded pipeline_loop_detected no_matching_runner trace_size_exceeded
builds_disabled environment_creation_failure deployment_rejected failed_outdated_deployment_job
job_execution_server_timeout stuck_pending_with_matching_runners stuck_pending_no_matching_runners
no_updates_running no_updates_canceling server_timeout_running server_timeout_canceling
runner_configuration_error runner_external_dependency_failure runner_interrupted
protected_environment_failure insufficient_bridge_permissions downstream_bridge_project_not_found
invalid_bridge_trigger upstream_bridge_project_not_found insufficient_upstream_permissions
bridge_pipeline_is_child_pipeline downstream_pipeline_creation_failed secrets_provider_not_found
reached_max_descendant_pipelines_depth ip_restriction_failure reached_max_pipeline_hierarchy_size
reached_downstream_pipeline_trigger_rate_limit duo_workflow_not_allowed job_router_failure
job_token_expired id_token_burned_project_path downstream_project_trigger_resolved_to_empty
""".split())

# Features GitLab insists on before handing out a job that needs them (§2.1 "required by GitLab").
REQUIRED_FEATURES = ("fallback_cache_keys", "upload_multiple_artifacts", "refspecs",
                     "artifacts_exclude", "multi_build_steps", "return_exit_code", "vault_secrets")

# artifact_type -> the only artifact_format GitLab accepts for it (§7.2, TYPE_AND_FORMAT_PAIRS).
ARTIFACT_TYPE_FORMATS = {
    "archive": "zip", "metadata": "gzip", "trace": "raw",
    "junit": "gzip", "cobertura": "gzip", "jacoco": "gzip", "dotenv": "gzip", "metrics": "gzip",
    "cyclonedx": "gzip", "annotations": "gzip", "repository_xray": "gzip",
    "lsif": "zip", "scip": "zip",
}
for _t in ("sast secret_detection dependency_scanning container_scanning cluster_image_scanning "
           "dast license_scanning accessibility codequality performance browser_performance "
           "load_performance terraform requirements requirements_v2 coverage_fuzzing api_fuzzing "
           "sarif").split():
    ARTIFACT_TYPE_FORMATS[_t] = "raw"
ARTIFACT_FORMATS = ("raw", "zip", "gzip")

RUNNING_STATES = ("running", "canceling")      # "processing on runner"
FINAL_STATES = ("success", "failed", "canceled")
LEGACY_SYSTEM_ID = "<legacy>"
MIB = 1024 * 1024
JOBS_REQUEST_MAX_BODY = 32 * 1024              # Workhorse maxRegisterBodySize (§3.1)

RATE_LIMIT_BODY = {"message": {"error": "This endpoint has been requested too many times. "
                                        "Try again later."}}
MIGRATIONS_BODY = {"message": "Executing database migrations. Please retry later."}


def default_config(long_poll: float) -> dict:
    return {
        "long_poll": long_poll,                  # Workhorse apiCiLongPollingDuration (s)
        "trace_update_interval": 3,              # X-GitLab-Trace-Update-Interval on PATCH
        "final_update_mode": "count",            # "count" | "bytesize"
        "final_update_202_count": 1,             # number of 202s before the final 200
        "final_update_accept_timeout": 300,      # then GitLab applies the pending state anyway
        "final_update_412_count": 0,             # first N final PUTs get 412 (trace reset)
        "trace_limit_bytes": 100 * 1000 * 1000,  # ci_jobs_trace_size_limit
        "trace_patch_max_bytes": MIB,            # runner DefaultTracePatchLimit
        "trace_content_type_check": True,        # reject PATCH without a non-JSON Content-Type
        "max_artifact_size": 100 * MIB,
        "artifacts_direct_download": True,       # 302 to object storage on direct_download=true
        "registration_tokens_disabled": False,
        "runner_token_expiration_interval": None,  # seconds; tokens from POST /runners expire
        "max_runners_per_registration_token": None,
        "rate_limit_all": None,                  # {"retry_after": s, "count": n|null, "kind": ...}
        "verify_legacy_text": False,             # old GitLab: verify answers text "200"
        "two_phase_commit": False,               # honour two_phase_job_commit (§3.6)
        "two_phase_ack_timeout": 120,
        "private_tokens": ["glpat-kiln-emulator-admin"],
    }


# ------------------------------------------------------------------------------------------------
# 2. Value types and helpers
# ------------------------------------------------------------------------------------------------

ALNUM = string.ascii_letters + string.digits


def rand_str(n: int, alphabet: str = ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso_ms(t: dt.datetime | None) -> str | None:
    """GitLab's timestamp style: ISO-8601, milliseconds, UTC 'Z'."""
    if t is None:
        return None
    t = t.astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def parse_time(value: Any) -> dt.datetime | None:
    if value in (None, ""):
        return None
    t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def crc32_str(data: bytes) -> str:
    return "crc32:%08x" % (zlib.crc32(data) & 0xFFFFFFFF)


def fmt_seconds(value: Any) -> str:
    """Header seconds: integers stay integers ("3", not "3.0"); runners parse them as ints."""
    f = float(value)
    return str(int(f)) if f.is_integer() else str(f)


def ruby_to_i(text: str) -> int:
    """String#to_i: leading integer or 0; GitLab parses Content-Range starts this way."""
    m = re.match(r"\s*([+-]?\d+)", text or "")
    return int(m.group(1)) if m else 0


def to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "t")
    return bool(value)


@dataclass
class Request:
    method: str
    path: str                       # percent-decoded path without query
    raw_query: str
    query: dict[str, str]
    headers: Any                    # http.client.HTTPMessage: case-insensitive .get()
    body: bytes
    body_overflow: bool = False     # body longer than the read cap (rest discarded)
    client: tuple = ("", 0)
    client_cert: dict | None = None
    _params: dict | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def content_type(self) -> str:
        return (self.header("Content-Type") or "").split(";")[0].strip().lower()

    def is_json(self) -> bool:
        return self.content_type == "application/json" or self.content_type.endswith("+json")

    def json_body(self) -> Any:
        """Body decoded as JSON, or None. Raises ValueError on malformed JSON."""
        if not self.body.strip():
            return None
        return json.loads(self.body.decode("utf-8"))

    def params(self) -> dict:
        """Grape-style params: query string merged with the body (body wins).

        Like current GitLab, a body without Content-Type is parsed as JSON."""
        if self._params is None:
            merged: dict = dict(self.query)
            ct = self.content_type
            if self.body.strip():
                if ct == "application/x-www-form-urlencoded":
                    merged.update({k: v[-1] for k, v in urllib.parse.parse_qs(
                        self.body.decode("utf-8", "replace"), keep_blank_values=True).items()})
                elif ct == "" or self.is_json():
                    obj = self.json_body()
                    if isinstance(obj, dict):
                        merged.update(obj)
            self._params = merged
        return self._params


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: list = field(default_factory=list)
    close: bool = False             # send Connection: close
    drop: bool = False              # close the TCP connection without answering

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def json_reply(status: int, obj: Any, headers: list | None = None) -> Reply:
    return Reply(status, json.dumps(obj).encode(),
                 [("Content-Type", "application/json")] + list(headers or []))


def message_reply(status: int, message: Any, headers: list | None = None) -> Reply:
    return json_reply(status, {"message": message}, headers)


def status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def forbidden(message: str | None = None, headers: list | None = None) -> Reply:
    text = "403 Forbidden" + (f" - {message}" if message else "")
    return message_reply(403, text, headers)


def bad_request(message: str) -> Reply:
    return message_reply(400, f"400 Bad request - {message}")


def missing_param(name: str) -> Reply:
    # Grape's own validation error shape (not the {"message":…} of model validation).
    return json_reply(400, {"error": f"{name} is missing"})


def empty_reply(status: int, headers: list | None = None) -> Reply:
    return Reply(status, b"", list(headers or []))


# ------------------------------------------------------------------------------------------------
# 3. GitLab state model
# ------------------------------------------------------------------------------------------------

@dataclass
class Manager:
    system_id: str
    info: dict = field(default_factory=dict)
    features: dict = field(default_factory=dict)
    contacted_at: dt.datetime | None = None
    ip: str = ""


@dataclass
class Runner:
    id: int
    token: str
    kind: str                                   # "glrt" (created in UI) | "legacy" (registered)
    runner_type: str = "instance"               # instance | group | project (t1_ | t2_ | t3_)
    description: str = ""
    maintenance_note: str = ""
    tags: list = field(default_factory=list)
    run_untagged: bool = True
    locked: bool = False
    access_level: str = "not_protected"
    maximum_timeout: int | None = None
    paused: bool = False
    deleted: bool = False
    token_expires_at: dt.datetime | None = None
    token_lifetime: float | None = None         # seconds; new tokens after a reset get the same
    registration_token: str | None = None
    created_via: str = "ui"
    info: dict = field(default_factory=dict)
    managers: dict = field(default_factory=dict)    # system_id -> Manager
    previous_tokens: list = field(default_factory=list)
    queue_value: str = field(default_factory=lambda: secrets.token_hex(16))

    def token_expired(self) -> bool:
        return self.token_expires_at is not None and self.token_expires_at <= utcnow()

    def tick(self) -> None:
        self.queue_value = secrets.token_hex(16)


@dataclass
class Artifact:
    type: str
    format: str
    expire_in: str | None
    filename: str
    data: bytes
    uploaded_at: dt.datetime
    query: str = ""                  # the upload's raw query string, as the runner sent it

    def summary(self) -> dict:
        return {"type": self.type, "format": self.format, "expire_in": self.expire_in,
                "filename": self.filename, "size": len(self.data),
                "sha256": hashlib.sha256(self.data).hexdigest(), "query": self.query,
                "uploaded_at": iso_ms(self.uploaded_at)}


@dataclass
class Job:
    id: int
    token: str
    payload: dict
    pipeline_id: int
    tags: list
    protected: bool
    required_features: set
    target_runner_id: int | None = None
    dependency_ids: list | None = None
    repo: str | None = None
    state: str = "pending"
    failure_reason: str | None = None
    exit_code: int | None = None
    runner_id: int | None = None
    system_id: str | None = None
    cancel_gracefully: bool = False
    awaiting_ack: bool = False                  # two-phase commit: picked, not yet accepted
    ack_deadline: float = 0.0
    token_expired: bool = False
    trace: bytearray = field(default_factory=bytearray)
    debug_trace: bool = False
    puts: list = field(default_factory=list)
    patches: list = field(default_factory=list)
    violations: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    checksum_sent: str | None = None
    bytesize_sent: int | None = None
    checksum_ok: bool | None = None
    bytesize_ok: bool | None = None
    trace_checksum_at_finish: str | None = None
    pending_final: dict | None = None           # GitLab's "pending state" during the 202 phase
    count_412: int = 0
    artifacts: dict = field(default_factory=dict)   # artifact_type -> Artifact
    created_at: dt.datetime = field(default_factory=utcnow)
    created_mono: float = field(default_factory=time.monotonic)
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def name(self) -> str:
        return str((self.payload.get("job_info") or {}).get("name") or "job")


class ControlError(Exception):
    """Bad input to the control API (400 to the test)."""


def required_features_of(payload: dict) -> set:
    """Which of GitLab's RUNNER_FEATURES this job needs (§2.1)."""
    need = set()
    for c in payload.get("cache") or []:
        if isinstance(c, dict) and c.get("fallback_keys"):
            need.add("fallback_cache_keys")
    for a in payload.get("artifacts") or []:
        if not isinstance(a, dict):
            continue
        if a.get("artifact_type") not in (None, "", "archive"):
            need.add("upload_multiple_artifacts")
        if a.get("exclude"):
            need.add("artifacts_exclude")
    ref = str((payload.get("git_info") or {}).get("ref") or "")
    if ref.startswith("refs/merge-requests/"):
        need.add("refspecs")
    for s in payload.get("steps") or []:
        if isinstance(s, dict) and s.get("name") not in ("script", "after_script"):
            need.add("multi_build_steps")
    if payload.get("secrets"):
        need.add("vault_secrets")
    return need


class GitLab:
    """Everything GitLab remembers, and GitLab's rules for changing it.

    One re-entrant lock guards all state; `cond` (on the same lock) wakes long-polling job
    requests when a runner's queue value ticks."""

    def __init__(self, long_poll: float, state_dir: str, fixtures_dir: str):
        self.lock = threading.RLock()
        self.cond = threading.Condition(self.lock)
        self.base_url = "http://127.0.0.1"
        self.default_long_poll = long_poll
        self.state_dir = state_dir
        self.fixtures_dir = fixtures_dir
        self.object_secret = secrets.token_bytes(16)
        self.closing = False
        self.outage_hook: Callable[[float], None] | None = None
        self.generation = 0
        self.reset()

    # -- lifecycle ------------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.generation += 1
            self.config = default_config(self.default_long_poll)
            self.runners: dict[int, Runner] = {}
            self.runner_tokens: dict[str, Runner] = {}
            self.registration_tokens: dict[str, dict] = {}
            self.jobs: dict[int, Job] = {}
            self.faults: list[dict] = []
            self.request_log: list[dict] = []
            self.violations: list[dict] = []
            self.repos: dict[str, str] = {}
            self.next_runner_id = 1
            self.next_job_id = 101
            self.next_pipeline_id = 9001
            self.next_fault_id = 1
            self.next_request_seq = 1
            self.cond.notify_all()

    def close(self) -> None:
        with self.lock:
            self.closing = True
            self.cond.notify_all()

    def max_body_size(self) -> int:
        """Bodies are buffered in memory; beyond this they are drained and flagged overflowing."""
        with self.lock:
            return max(int(self.config["max_artifact_size"]), 64 * MIB) + MIB

    def violation(self, text: str, job: Job | None = None, request: Request | None = None) -> None:
        entry = {"time": iso_ms(utcnow()), "job_id": job.id if job else None, "message": text}
        if request is not None:
            entry["request"] = f"{request.method} {request.path}"
        with self.lock:
            self.violations.append(entry)
            if job is not None:
                job.violations.append(text)

    # -- runners --------------------------------------------------------------------------------

    def _new_runner_token(self, kind: str, runner_type: str = "instance") -> str:
        prefix = {"instance": "t1_", "group": "t2_", "project": "t3_"}.get(runner_type, "t1_")
        return ("glrt-" if kind == "glrt" else "") + prefix + rand_str(20)

    def _add_runner(self, runner: Runner) -> Runner:
        self.runners[runner.id] = runner
        self.runner_tokens[runner.token] = runner
        return runner

    def runner_by_token(self, token: Any) -> Runner | None:
        """The runner a token authenticates, or None (unknown, deleted or expired → 403)."""
        if not isinstance(token, str) or not token:
            return None
        r = self.runner_tokens.get(token)
        if r is None or r.deleted or r.token_expired():
            return None
        return r

    def touch_manager(self, runner: Runner, system_id: Any, info: Any, ip: str) -> Manager:
        sid = system_id if isinstance(system_id, str) and system_id else LEGACY_SYSTEM_ID
        m = runner.managers.get(sid)
        if m is None:
            m = runner.managers[sid] = Manager(sid)
        if isinstance(info, dict):
            m.info = {k: v for k, v in info.items() if k != "features"}
            feats = info.get("features")
            m.features = dict(feats) if isinstance(feats, dict) else {}
            runner.info = m.info
        m.contacted_at = utcnow()
        m.ip = ip
        return m

    def reset_runner_token(self, runner: Runner) -> dict:
        del self.runner_tokens[runner.token]
        runner.previous_tokens.append(runner.token)
        runner.token = self._new_runner_token(runner.kind, runner.runner_type)
        if runner.token_lifetime is not None:
            runner.token_expires_at = utcnow() + dt.timedelta(seconds=runner.token_lifetime)
        self.runner_tokens[runner.token] = runner
        return {"token": runner.token, "token_expires_at": iso_ms(runner.token_expires_at)}

    def runner_can_pick(self, runner: Runner, job: Job) -> bool:
        if job.target_runner_id is not None and job.target_runner_id != runner.id:
            return False
        if job.tags:
            if not set(job.tags) <= set(runner.tags):
                return False
        elif not runner.run_untagged:
            return False
        if runner.access_level == "ref_protected" and not job.protected:
            return False
        return True

    def runner_json(self, r: Runner) -> dict:
        return {
            "id": r.id, "token": r.token, "kind": r.kind, "description": r.description,
            "maintenance_note": r.maintenance_note, "tags": list(r.tags),
            "run_untagged": r.run_untagged, "locked": r.locked, "access_level": r.access_level,
            "maximum_timeout": r.maximum_timeout, "paused": r.paused, "deleted": r.deleted,
            "token_expires_at": iso_ms(r.token_expires_at), "token_expired": r.token_expired(),
            "registration_token": r.registration_token, "created_via": r.created_via,
            "previous_tokens": list(r.previous_tokens), "info": r.info,
            "managers": [{"system_id": m.system_id, "contacted_at": iso_ms(m.contacted_at),
                          "ip": m.ip, "info": m.info, "features": m.features}
                         for m in r.managers.values()],
        }

    # -- jobs -----------------------------------------------------------------------------------

    def load_fixture(self, name: str) -> dict:
        base = os.path.basename(name)
        if not base.endswith(".json"):
            base += ".json"
        path = os.path.join(self.fixtures_dir, base)
        if not os.path.isfile(path):
            raise ControlError(f"no fixture {base!r} in {self.fixtures_dir}")
        with open(path, "rb") as f:
            return json.load(f)

    def tick_runners_for(self, job: Job) -> None:
        """GitLab ticks the queue of every runner that could pick a newly pending job."""
        for r in self.runners.values():
            if not r.deleted and self.runner_can_pick(r, job):
                r.tick()
        self.cond.notify_all()

    def job_json(self, job: Job, with_payload: bool = True) -> dict:
        trace = bytes(job.trace)
        out = {
            "id": job.id, "name": job.name, "token": job.token, "state": job.state,
            "failure_reason": job.failure_reason, "exit_code": job.exit_code,
            "runner_id": job.runner_id, "system_id": job.system_id, "tags": job.tags,
            "pipeline_id": job.pipeline_id, "repo": job.repo,
            "cancel_gracefully": job.cancel_gracefully, "awaiting_ack": job.awaiting_ack,
            "token_expired": job.token_expired, "debug_trace": job.debug_trace,
            "required_features": sorted(job.required_features),
            "trace": trace.decode("utf-8", "backslashreplace"),
            "trace_base64": base64.b64encode(trace).decode(),
            "trace_size": len(trace), "trace_checksum": crc32_str(trace),
            "checksum_sent": job.checksum_sent, "checksum_ok": job.checksum_ok,
            "bytesize_sent": job.bytesize_sent, "bytesize_ok": job.bytesize_ok,
            "puts": list(job.puts), "patches": list(job.patches),
            "protocol_violations": list(job.violations), "notes": list(job.notes),
            "artifacts": [a.summary() for a in job.artifacts.values()],
            "created_at": iso_ms(job.created_at), "started_at": iso_ms(job.started_at),
            "finished_at": iso_ms(job.finished_at),
        }
        if with_payload:
            out["payload"] = job.payload
        return out

    def finish(self, job: Job, state: str, failure_reason: str | None = None) -> None:
        job.state = state
        job.awaiting_ack = False
        job.pending_final = None
        if state == "failed":
            job.failure_reason = failure_reason if failure_reason in FAILURE_REASONS \
                else "unknown_failure"
        job.finished_at = utcnow()
        self.cond.notify_all()

    def render_payload(self, job: Job, runner: Runner) -> dict:
        """What Rails serialises for this pick: the stored payload plus per-pick data."""
        p = copy.deepcopy(job.payload)
        ri = p.get("runner_info")
        if isinstance(ri, dict) and runner.maximum_timeout:
            t = ri.get("timeout") or 0
            ri["timeout"] = min(t, runner.maximum_timeout) if t > 0 else runner.maximum_timeout
        ji = p.get("job_info")
        if isinstance(ji, dict) and "time_in_queue_seconds" in ji:
            ji["time_in_queue_seconds"] = int(time.monotonic() - job.created_mono)
        if job.dependency_ids is not None:
            deps = []
            for dep_id in job.dependency_ids:
                dep = self.jobs.get(dep_id)
                if dep is None:
                    continue
                entry = {"id": dep.id, "name": dep.name, "token": job.token}
                arch = dep.artifacts.get("archive")
                if arch is not None:
                    entry["artifacts_file"] = {"filename": arch.filename, "size": len(arch.data)}
                deps.append(entry)
            p["dependencies"] = deps
        runner_vars = {"CI_RUNNER_ID": str(runner.id),
                       "CI_RUNNER_DESCRIPTION": runner.description,
                       "CI_RUNNER_TAGS": json.dumps(list(runner.tags))}
        for v in p.get("variables") or []:
            if isinstance(v, dict) and v.get("key") in runner_vars:
                v["value"] = runner_vars[v["key"]]
        return p

    def expire_unacked(self) -> None:
        """Two-phase commit: a pick not accepted within the ack timeout goes back to the queue."""
        with self.lock:
            now = time.monotonic()
            for job in self.jobs.values():
                if job.awaiting_ack and job.state == "pending" and now > job.ack_deadline:
                    job.awaiting_ack = False
                    job.runner_id = job.system_id = None
                    job.notes.append("two-phase ack timed out; job requeued")
                    self.tick_runners_for(job)

    # -- request log and faults -----------------------------------------------------------------

    def log_request(self, req: Request) -> dict:
        entry: dict = {
            "method": req.method, "path": req.path, "query": req.raw_query,
            "headers": {k: v for k, v in req.headers.items()},
            "body_size": len(req.body), "status": None, "time": iso_ms(utcnow()),
            "duration": None, "fault": None,
        }
        if req.client_cert:
            entry["client_cert"] = req.client_cert
        if req.body and len(req.body) <= 256 * 1024 and (req.is_json() or req.content_type == ""):
            try:
                entry["json"] = req.json_body()
            except (ValueError, UnicodeDecodeError):
                pass
        with self.lock:
            entry["seq"] = self.next_request_seq
            self.next_request_seq += 1
            self.request_log.append(entry)
            del self.request_log[:-20000]
        return entry

    def take_fault(self, req: Request) -> dict | None:
        with self.lock:
            rl = self.config.get("rate_limit_all")
            if rl and req.path.startswith("/api/v4/"):
                count = rl.get("count")
                if count is not None:
                    if count <= 0:
                        self.config["rate_limit_all"] = None
                    else:
                        rl["count"] = count - 1
                if self.config["rate_limit_all"] is not None:
                    body = MIGRATIONS_BODY if rl.get("kind") == "migrations" else RATE_LIMIT_BODY
                    return {"id": "rate_limit_all", "action": "status", "status": 429,
                            "retry_after": rl.get("retry_after", 60), "body": body}
            for f in self.faults:
                if f["remaining"] == 0:
                    continue
                if f["method"] and f["method"] != req.method:
                    continue
                if not f["regex"].search(req.path):
                    continue
                if f["remaining"] > 0:
                    f["remaining"] -= 1
                f["hits"] += 1
                return dict(f)
        return None

    def add_fault(self, spec: dict) -> dict:
        allowed = {"path", "method", "action", "status", "count", "retry_after", "delay",
                   "headers", "body"}
        unknown = set(spec) - allowed
        if unknown:
            raise ControlError(f"unknown fault keys: {sorted(unknown)}")
        action = spec.get("action", "status")
        if action not in ("status", "drop", "delay", "reset_trace"):
            raise ControlError(f"unknown fault action {action!r}")
        try:
            regex = re.compile(spec.get("path") or ".*")
        except re.error as e:
            raise ControlError(f"bad path regex: {e}") from None
        count = spec.get("count", 1)
        with self.lock:
            f = {"id": self.next_fault_id, "path": spec.get("path") or ".*", "regex": regex,
                 "method": (spec.get("method") or "").upper() or None, "action": action,
                 "status": int(spec.get("status", 503)),
                 "remaining": -1 if count is None or count < 0 else int(count),
                 "retry_after": spec.get("retry_after"), "delay": float(spec.get("delay") or 0),
                 "headers": dict(spec.get("headers") or {}), "body": spec.get("body"), "hits": 0}
            self.next_fault_id += 1
            self.faults.append(f)
            return fault_json(f)


def fault_json(f: dict) -> dict:
    return {k: v for k, v in f.items() if k != "regex"}


# ------------------------------------------------------------------------------------------------
# 4. Handlers
# ------------------------------------------------------------------------------------------------

class RunnerAPI:
    """/api/v4 endpoints used by runners (§2–§7)."""

    def __init__(self, gl: GitLab):
        self.gl = gl

    # -- §2.4 registration ----------------------------------------------------------------------

    def register(self, req: Request) -> Reply:
        p = req.params()
        token = p.get("token")
        if not token:
            return missing_param("token")
        if "active" in p and "paused" in p:
            return json_reply(400, {"error": "active, paused are mutually exclusive"})
        if "maintainer_note" in p and "maintenance_note" in p:
            return json_reply(400, {"error": "maintainer_note, maintenance_note are mutually "
                                             "exclusive"})
        access_level = p.get("access_level") or "not_protected"
        if access_level not in ("not_protected", "ref_protected"):
            return json_reply(400, {"error": "access_level does not have a valid value"})
        tags = p.get("tag_list") or []
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",")]
        if not isinstance(tags, list):
            return json_reply(400, {"error": "tag_list is invalid"})
        tags = [str(t).strip() for t in tags if str(t).strip()]
        gl = self.gl
        with gl.lock:
            reg = gl.registration_tokens.get(token)
            if reg is None:
                return forbidden()
            if reg["disabled"] or gl.config["registration_tokens_disabled"]:
                return message_reply(410, "410 Gone - runner registration disallowed")
            run_untagged = to_bool(p["run_untagged"]) if "run_untagged" in p else True
            errors: dict[str, list] = {}
            max_to = p.get("maximum_timeout")
            if max_to not in (None, ""):
                try:
                    max_to = int(max_to)
                except (TypeError, ValueError):
                    return json_reply(400, {"error": "maximum_timeout is invalid"})
                if max_to < 600:
                    errors["maximum_timeout"] = ["needs to be at least 10 minutes"]
            else:
                max_to = None
            if not tags and not run_untagged:
                errors["tags_list"] = ["can not be empty when runner is not allowed to pick "
                                       "untagged jobs"]
            desc = str(p.get("description") or "")
            if len(desc) > 1024:
                errors["description"] = ["is too long (maximum is 1024 characters)"]
            note = str(p.get("maintenance_note") or p.get("maintainer_note") or "")
            if len(note) > 1024:
                errors["maintenance_note"] = ["is too long (maximum is 1024 characters)"]
            limit = gl.config["max_runners_per_registration_token"]
            if limit is not None and reg["registered"] >= limit:
                errors["runner_projects.base"] = [
                    f"Maximum number of ci registered {reg['type']} runners ({limit}) exceeded"]
            if errors:
                return message_reply(400, errors)
            paused = to_bool(p["paused"]) if "paused" in p else \
                (not to_bool(p["active"]) if "active" in p else False)
            lifetime = gl.config["runner_token_expiration_interval"]
            runner = Runner(
                id=gl.next_runner_id, token=gl._new_runner_token("legacy", reg["type"]),
                kind="legacy", runner_type=reg["type"], description=desc,
                maintenance_note=note, tags=tags,
                run_untagged=run_untagged, locked=to_bool(p.get("locked", True)),
                access_level=access_level, maximum_timeout=max_to, paused=paused,
                token_lifetime=lifetime, registration_token=token, created_via="registration",
                info=p.get("info") if isinstance(p.get("info"), dict) else {})
            if lifetime is not None:
                runner.token_expires_at = utcnow() + dt.timedelta(seconds=lifetime)
            gl.next_runner_id += 1
            reg["registered"] += 1
            gl._add_runner(runner)
            return json_reply(201, {"id": runner.id, "token": runner.token,
                                    "token_expires_at": iso_ms(runner.token_expires_at)})

    # -- §2.5 verify ----------------------------------------------------------------------------

    def verify(self, req: Request) -> Reply:
        p = req.params()
        if not p.get("token"):
            return missing_param("token")
        gl = self.gl
        with gl.lock:
            runner = gl.runner_by_token(p["token"])
            if runner is None:
                return forbidden()
            gl.touch_manager(runner, p.get("system_id"), p.get("info"), req.client[0])
            if gl.config["verify_legacy_text"]:
                return Reply(200, b"200", [("Content-Type", "text/plain")])
            return json_reply(200, {"id": runner.id, "token": runner.token,
                                    "token_expires_at": iso_ms(runner.token_expires_at)})

    # -- §2.6 / §2.7 unregister ------------------------------------------------------------------

    def unregister(self, req: Request) -> Reply:
        p = req.params()
        if not p.get("token"):
            return missing_param("token")
        gl = self.gl
        with gl.lock:
            runner = gl.runner_by_token(p["token"])
            if runner is None:
                return forbidden()
            runner.deleted = True
            gl.cond.notify_all()
            return empty_reply(204)

    def unregister_manager(self, req: Request) -> Reply:
        p = req.params()
        if not p.get("token"):
            return missing_param("token")
        if not p.get("system_id"):
            return missing_param("system_id")
        gl = self.gl
        with gl.lock:
            runner = gl.runner_by_token(p["token"])
            if runner is None:
                return forbidden()
            if runner.managers.pop(p["system_id"], None) is None:
                return message_reply(404, "404 Runner manager not found")
            return empty_reply(204)

    # -- §2.8 token reset -----------------------------------------------------------------------

    def reset_token(self, req: Request) -> Reply:
        p = req.params()
        if not p.get("token"):
            return missing_param("token")
        gl = self.gl
        with gl.lock:
            runner = gl.runner_by_token(p["token"])
            if runner is None:
                return forbidden()
            return json_reply(201, gl.reset_runner_token(runner))

    def reset_token_pat(self, req: Request, runner_id: str) -> Reply:
        gl = self.gl
        with gl.lock:
            pat = req.header("PRIVATE-TOKEN")
            if not pat or pat not in gl.config["private_tokens"]:
                return message_reply(401, "401 Unauthorized")
            runner = gl.runners.get(int(runner_id))
            if runner is None or runner.deleted:
                return message_reply(404, "404 Runner Not Found")
            return json_reply(201, gl.reset_runner_token(runner))

    def router_discovery(self, req: Request) -> Reply:
        with self.gl.lock:
            if self.gl.runner_by_token(req.header("RUNNER-TOKEN")) is None:
                return forbidden()
        return message_reply(501, "501 Not Implemented")

    # -- §3 jobs/request ------------------------------------------------------------------------

    def request_job(self, req: Request) -> Reply:
        gl = self.gl
        long_poll = float(gl.config["long_poll"] or 0)
        extra = [("Gitlab-Ci-Builds-Polling", "yes")] if long_poll > 0 else []
        if len(req.body) > JOBS_REQUEST_MAX_BODY:
            return message_reply(413, "413 Request Entity Too Large", extra)
        try:
            p = req.params()
        except (ValueError, UnicodeDecodeError):
            return bad_request("invalid JSON")
        if req.body and not req.is_json():
            gl.violation("jobs/request without Content-Type: application/json "
                         "(Workhorse will not long-poll it)", request=req)
        if p.get("last_update") == "":
            gl.violation("jobs/request with an empty last_update", request=req)

        # Workhorse (§3.3): only JSON bodies with token and a non-empty last_update are held.
        token, last_update = p.get("token"), p.get("last_update")
        if long_poll > 0 and req.is_json() and isinstance(token, str) and token \
                and isinstance(last_update, str) and last_update:
            with gl.lock:
                runner = gl.runner_tokens.get(token)
                if runner is not None and runner.queue_value == last_update:
                    gen = gl.generation
                    gl.cond.wait_for(lambda: runner.queue_value != last_update or gl.closing
                                     or gl.generation != gen, timeout=long_poll)
                    # Seen change and timeout both end in a header-less 204: the runner
                    # re-polls and the stale value then takes it to Rails.
                    return empty_reply(204, extra)

        # Rails (§3.2).
        if not token:
            return missing_param("token")
        with gl.lock:
            runner = gl.runner_by_token(token)
            if runner is None:
                return forbidden(None, extra)
            info = p.get("info") if isinstance(p.get("info"), dict) else {}
            manager = gl.touch_manager(runner, p.get("system_id"), info, req.client[0])
            if runner.paused:
                return empty_reply(204, extra + [("X-GitLab-Last-Update", runner.queue_value)])
            if last_update and last_update == runner.queue_value:
                return empty_reply(204, extra + [("X-GitLab-Last-Update", last_update)])
            new_update = runner.queue_value
            job = self._pick(runner, manager)
            if job is None:
                return empty_reply(204, extra + [("X-GitLab-Last-Update", new_update)])
            payload = gl.render_payload(job, runner)
            return Reply(201, json.dumps(payload).encode(),
                         [("Content-Type", "application/json")] + extra)

    def _pick(self, runner: Runner, manager: Manager) -> Job | None:
        gl = self.gl
        features = manager.features
        for job in sorted(gl.jobs.values(), key=lambda j: j.id):
            if job.state != "pending" or job.awaiting_ack or not gl.runner_can_pick(runner, job):
                continue
            missing = sorted(f for f in job.required_features if not features.get(f))
            if missing:
                # §3.5: GitLab fails such a job instead of skipping it.
                job.notes.append(f"dropped: runner {runner.id} lacks features {missing}")
                job.runner_id = runner.id
                gl.finish(job, "failed", "runner_unsupported")
                continue
            job.runner_id = runner.id
            job.system_id = manager.system_id
            job.cancel_gracefully = bool(features.get("cancel_gracefully"))
            if gl.config["two_phase_commit"] and features.get("two_phase_job_commit"):
                job.awaiting_ack = True
                job.ack_deadline = time.monotonic() + float(gl.config["two_phase_ack_timeout"])
            else:
                job.state = "running"
                job.started_at = utcnow()
            return job
        return None

    # -- job authentication (§5, §6, §7) --------------------------------------------------------

    def _job_for(self, job_id: str, token: Any) -> tuple[Job | None, Reply | None]:
        """authenticate_job!: job + token must match and the job must run on a runner."""
        job = self.gl.jobs.get(int(job_id))
        if job is None or not isinstance(token, str) or token != job.token:
            return None, forbidden()
        if job.token_expired:
            return None, forbidden("Job token has expired")
        return job, None

    # -- §5 PUT /jobs/:id -----------------------------------------------------------------------

    def update_job(self, req: Request, job_id: str) -> Reply:
        gl = self.gl
        try:
            p = req.params()
        except (ValueError, UnicodeDecodeError):
            return bad_request("invalid JSON")
        token = p.get("token")
        if not token:
            return missing_param("token")
        with gl.lock:
            job, err = self._job_for(job_id, token)
            if err:
                return err
            hdr = req.header("JOB-TOKEN")
            if hdr is not None and hdr != token:
                gl.violation("PUT with JOB-TOKEN header different from body token", job, req)
            state = p.get("state")
            output = p.get("output") if isinstance(p.get("output"), dict) else {}
            checksum = output.get("checksum") or p.get("checksum")
            bytesize = output.get("bytesize")
            record = {"time": iso_ms(utcnow()), "state": state,
                      "failure_reason": p.get("failure_reason"), "exit_code": p.get("exit_code"),
                      "checksum": checksum, "bytesize": bytesize, "status": None,
                      "job_status": None, "trace_size": len(job.trace)}
            job.puts.append(record)
            if "output" not in p:
                job.notes.append("PUT without 'output' (the official runner always sends it)")
            if checksum is not None and not re.fullmatch(r"crc32:[0-9a-f]{8}", str(checksum)):
                gl.violation(f"malformed checksum {checksum!r} (want crc32:%08x)", job, req)
            if p.get("exit_code") == 0:
                job.notes.append("PUT carried exit_code 0 (the official runner omits it)")
            reply = self._update_job_locked(job, p, state, checksum, bytesize)
            record["status"] = reply.status
            record["job_status"] = reply.header("Job-Status")
            return reply

    def _update_job_locked(self, job: Job, p: dict, state: Any, checksum: Any,
                           bytesize: Any) -> Reply:
        gl = self.gl

        def reply(status: int, extra: list | None = None) -> Reply:
            return Reply(status, str(status).encode(),
                         [("Content-Type", "application/json"), ("Job-Status", job.state)]
                         + list(extra or []))

        if job.awaiting_ack:                     # §3.6 two-phase commit
            if state == "running":
                job.awaiting_ack = False
                job.state = "running"
                job.started_at = utcnow()
                return reply(200)
            if state == "pending":
                job.ack_deadline = time.monotonic() + float(gl.config["two_phase_ack_timeout"])
                return reply(200)
            return bad_request("job is awaiting runner acknowledgement")

        if job.state not in RUNNING_STATES:
            return forbidden("Job is not processing on runner", [("Job-Status", job.state)])

        if state not in ("running", "success", "failed"):
            return bad_request("Unknown job state")

        if state == "running":
            if checksum is not None:
                job.checksum_sent = checksum
            if isinstance(bytesize, int):
                job.bytesize_sent = bytesize
            return reply(200)

        # Final state.
        if checksum and job.count_412 < int(gl.config["final_update_412_count"] or 0):
            job.count_412 += 1
            job.trace = bytearray()
            job.pending_final = None
            job.notes.append("answered 412: stored trace discarded, runner must resend from 0")
            return reply(412)

        if checksum:
            if job.pending_final is None:        # first final PUT wins
                job.pending_final = {"state": state, "failure_reason": p.get("failure_reason"),
                                     "checksum": checksum, "bytesize": bytesize,
                                     "created": time.monotonic(), "replies": 0}
            pf = job.pending_final
            age = time.monotonic() - pf["created"]
            if not self._trace_complete(job, pf) and age < float(
                    gl.config["final_update_accept_timeout"]):
                pf["replies"] += 1
                return Reply(202, b"202", [("Content-Type", "application/json"),
                                           ("Job-Status", job.state),
                                           ("X-GitLab-Trace-Update-Interval",
                                            str(backoff_interval(age)))])
            final_state, reason = pf["state"], pf["failure_reason"]
            checksum, bytesize = pf["checksum"], pf["bytesize"]
        else:
            final_state, reason = state, p.get("failure_reason")

        self._apply_final(job, final_state, reason, p.get("exit_code"), checksum, bytesize)
        return reply(200)

    def _trace_complete(self, job: Job, pf: dict) -> bool:
        cfg = self.gl.config
        if cfg["final_update_mode"] == "bytesize" and isinstance(pf["bytesize"], int):
            return len(job.trace) >= pf["bytesize"]
        return pf["replies"] >= int(cfg["final_update_202_count"] or 0)

    def _apply_final(self, job: Job, state: str, reason: Any, exit_code: Any, checksum: Any,
                     bytesize: Any) -> None:
        trace = bytes(job.trace)
        job.checksum_sent = checksum
        job.bytesize_sent = bytesize if isinstance(bytesize, int) else None
        job.trace_checksum_at_finish = crc32_str(trace)
        job.checksum_ok = (checksum == job.trace_checksum_at_finish) if checksum else None
        job.bytesize_ok = (bytesize == len(trace)) if isinstance(bytesize, int) else None
        if checksum and not job.checksum_ok:
            self.gl.violation(f"trace checksum mismatch: runner sent {checksum}, stored trace "
                              f"({len(trace)} bytes) has {job.trace_checksum_at_finish}", job)
        try:
            job.exit_code = max(0, min(32767, int(exit_code))) if exit_code is not None else 0
        except (TypeError, ValueError):
            job.exit_code = 0
        if job.state == "canceling":
            self.gl.finish(job, "canceled")      # "runner returns success/failed" → canceled
        elif state == "success":
            self.gl.finish(job, "success")
        else:
            if reason and reason not in FAILURE_REASONS:
                job.notes.append(f"unknown failure_reason {reason!r} stored as unknown_failure")
            self.gl.finish(job, "failed", reason or "unknown_failure")

    # -- §6 PATCH /jobs/:id/trace ---------------------------------------------------------------

    def patch_trace(self, req: Request, job_id: str) -> Reply:
        gl = self.gl
        token = req.header("JOB-TOKEN") or req.query.get("token")
        body = req.body
        with gl.lock:
            job, err = self._job_for(job_id, token)
            if err:
                return err
            cr = req.header("Content-Range")
            rec = {"time": iso_ms(utcnow()), "start": None, "length": len(body),
                   "content_range": cr, "content_range_ok": None, "status": None,
                   "trace_size_before": len(job.trace)}
            job.patches.append(rec)
            reply = self._patch_locked(req, job, cr, body, rec)
            rec["status"] = reply.status
            return reply

    def _patch_locked(self, req: Request, job: Job, cr: str | None, body: bytes,
                      rec: dict) -> Reply:
        gl = self.gl
        if job.state not in RUNNING_STATES or job.awaiting_ack:
            return forbidden("Job is not processing on runner", [("Job-Status", job.state)])
        if cr is None:
            return message_reply(400, "400 Missing header Content-Range")
        if gl.config["trace_content_type_check"]:
            if req.content_type == "":
                gl.violation("trace PATCH without Content-Type (GitLab parses it as JSON)",
                             job, req)
                return message_reply(415, "415 Unsupported Media Type")
            if req.is_json():
                gl.violation("trace PATCH with a JSON Content-Type", job, req)
                return bad_request("invalid JSON")
        if len(body) > int(gl.config["trace_patch_max_bytes"]):
            gl.violation(f"trace PATCH of {len(body)} bytes exceeds the 1 MiB patch limit",
                         job, req)
            return message_reply(413, "413 Request Entity Too Large")
        if req.body_overflow:
            return message_reply(413, "413 Request Entity Too Large")

        start = ruby_to_i(cr.split("-")[0])
        rec["start"] = start
        m = re.fullmatch(r"(\d+)-(\d+)", cr.strip())
        if not m:
            rec["content_range_ok"] = False
            gl.violation(f"malformed Content-Range {cr!r} (want '<start>-<inclusive end>')",
                         job, req)
        elif body:
            expected_end = start + len(body) - 1
            rec["content_range_ok"] = int(m.group(2)) == expected_end and int(m.group(1)) == start
            if not rec["content_range_ok"]:
                gl.violation(f"Content-Range {cr!r} for {len(body)} bytes: expected "
                             f"'{start}-{expected_end}' (inclusive end)", job, req)

        end = start + len(body)
        if end > int(gl.config["trace_limit_bytes"]):
            job.notes.append("trace size limit exceeded; job dropped")
            gl.finish(job, "failed", "trace_size_exceeded")
            return message_reply(403, "403 Forbidden: Exceeded log size limit")
        if start != len(job.trace):
            return message_reply(416, "416 Range Not Satisfiable",
                                 [("Range", f"0-{len(job.trace)}")])
        # GitLab hides the job token (length-preserving) before storing (§6.2).
        tok = job.token.encode()
        job.trace += body.replace(tok, b"x" * len(tok)) if tok else body
        if start == 0 and to_bool(req.query.get("debug_trace", "false")):
            job.debug_trace = True
        return Reply(202, b"", [("Job-Status", job.state), ("Range", f"0-{len(job.trace)}"),
                                ("X-GitLab-Trace-Update-Interval",
                                 fmt_seconds(gl.config["trace_update_interval"]))])

    # -- §7.1 artifact upload -------------------------------------------------------------------

    def upload_artifact(self, req: Request, job_id: str) -> Reply:
        gl = self.gl
        q = req.query
        for name, allowed in (("artifact_type", ARTIFACT_TYPE_FORMATS), ("artifact_format",
                                                                         ARTIFACT_FORMATS)):
            if name in q and q[name] not in allowed:
                return json_reply(400, {"error": f"{name} does not have a valid value"})
        with gl.lock:
            job, err = self._job_for(job_id, req.header("JOB-TOKEN") or q.get("token"))
            if err:
                return err
            if job.state not in RUNNING_STATES or job.awaiting_ack:
                return forbidden("Job is not processing on runner", [("Job-Status", job.state)])
            max_size = int(gl.config["max_artifact_size"])
        if req.body_overflow:
            return message_reply(413, "413 Request Entity Too Large")
        try:
            fields, files = parse_multipart(req)
        except ValueError as e:
            gl.violation(f"artifact upload: {e}", job, req)
            return bad_request(str(e))
        if len(files) != 1 or files[0][0] != "file":
            names = [f[0] for f in files]
            gl.violation(f"artifact upload must carry exactly one file part named 'file', "
                         f"got {names}", job, req)
            return bad_request("upload request must contain exactly one 'file' part")
        _, filename, data = files[0]
        if len(data) > max_size:
            return message_reply(413, "413 Request Entity Too Large")
        for name in ("artifact_type", "artifact_format", "expire_in"):
            if name in fields and name not in q:
                gl.violation(f"artifact upload: {name} sent as a form field only "
                             f"(Workhorse reads it from the query string)", job, req)
        params = dict(q)
        params.update({k: v for k, v in fields.items() if k != "file"})
        a_type = params.get("artifact_type") or "archive"
        a_format = params.get("artifact_format") or "zip"
        if a_type not in ARTIFACT_TYPE_FORMATS:
            return json_reply(400, {"error": "artifact_type does not have a valid value"})
        if a_format not in ARTIFACT_FORMATS:
            return json_reply(400, {"error": "artifact_format does not have a valid value"})
        if ARTIFACT_TYPE_FORMATS[a_type] != a_format:
            return message_reply(400, "Invalid file format with specified file type")
        problem = validate_archive(a_format, data)
        if problem:
            gl.violation(f"artifact {a_type}/{a_format} upload is not valid: {problem}", job, req)
            return bad_request(f"invalid {a_format} archive: {problem}")
        with gl.lock:
            if job.state not in RUNNING_STATES:
                return forbidden("Job is not processing on runner", [("Job-Status", job.state)])
            if a_type in job.artifacts:
                return message_reply(400, "another artifact of the same type already exists")
            art = Artifact(a_type, a_format, params.get("expire_in"), filename or "", data,
                           utcnow(), req.raw_query)
            job.artifacts[a_type] = art
        self._persist_artifact(job, art)
        return Reply(201, b"201", [("Content-Type", "application/json")])

    def _persist_artifact(self, job: Job, art: Artifact) -> None:
        # Handy for debugging failed tests; the in-memory copy is authoritative.
        d = os.path.join(self.gl.state_dir, "artifacts", str(job.id), art.type)
        try:
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, os.path.basename(art.filename) or "file"), "wb") as f:
                f.write(art.data)
        except OSError:
            pass

    # -- §7.4 artifact download -----------------------------------------------------------------

    def download_artifact(self, req: Request, job_id: str) -> Reply:
        gl = self.gl
        token = req.header("JOB-TOKEN") or req.query.get("token")
        with gl.lock:
            # authenticate_job_via_dependent_job!: the token must belong to a *running* job.
            auth = next((j for j in gl.jobs.values() if j.token == token), None) \
                if token else None
            if auth is None or auth.token_expired or auth.state not in RUNNING_STATES:
                return forbidden()
            target = gl.jobs.get(int(job_id))
            if target is None:
                return forbidden()
            art = target.artifacts.get("archive")
            if art is None:
                return message_reply(404, "404 Not found")
            direct = to_bool(req.query.get("direct_download", "false"))
            if direct and gl.config["artifacts_direct_download"]:
                return Reply(302, b"", [("Location", object_url(gl, target.id, art))])
            return Reply(200, art.data, [
                ("Content-Type", "application/octet-stream"),
                ("Content-Disposition", f'attachment; filename="{art.filename}"')])


def backoff_interval(age: float) -> int:
    """Gitlab::Ci::Runner::Backoff: 1, 2, 4 … 64 s by age of the pending state (§5.3)."""
    slot = 0 if age <= 1 else int(math.floor(math.log2(age))) - 1
    return 2 ** min(max(slot, 0), 6)


def parse_multipart(req: Request) -> tuple[dict, list]:
    """Split a multipart/form-data body into ({field: value}, [(name, filename, bytes)])."""
    ct = req.header("Content-Type") or ""
    msg = Message()
    msg["Content-Type"] = ct
    if msg.get_content_type() != "multipart/form-data":
        raise ValueError(f"Content-Type must be multipart/form-data, got {ct!r}")
    boundary = msg.get_param("boundary")
    if not boundary:
        raise ValueError("multipart Content-Type without boundary")
    body = req.body
    delim = b"--" + str(boundary).encode()
    pos = body.find(delim)
    if pos < 0:
        raise ValueError("multipart boundary not found in body")
    fields: dict[str, str] = {}
    files: list = []
    pos += len(delim)
    while True:
        if body[pos:pos + 2] == b"--":
            break
        eol = body.find(b"\r\n", pos)
        if eol < 0:
            raise ValueError("truncated multipart body")
        pos = eol + 2
        hdr_end = body.find(b"\r\n\r\n", pos - 2)
        if hdr_end < 0:
            raise ValueError("multipart part without header terminator")
        part_headers = Message()
        for line in body[pos:hdr_end].decode("utf-8", "replace").split("\r\n"):
            if ":" in line:
                k, v = line.split(":", 1)
                part_headers[k.strip()] = v.strip()
        start = hdr_end + 4
        end = body.find(b"\r\n" + delim, start)
        if end < 0:
            raise ValueError("multipart part is not terminated by the boundary")
        content = body[start:end]
        pos = end + 2 + len(delim)
        name = part_headers.get_param("name", header="content-disposition")
        filename = part_headers.get_param("filename", header="content-disposition")
        if isinstance(name, tuple):
            name = email_param(name)
        if isinstance(filename, tuple):
            filename = email_param(filename)
        if name is None:
            raise ValueError("multipart part without a name")
        if filename is not None:
            files.append((name, filename, content))
        else:
            fields[name] = content.decode("utf-8", "replace")
    return fields, files


def email_param(value: tuple) -> str:
    from email.utils import collapse_rfc2231_value
    return collapse_rfc2231_value(value)


def validate_archive(fmt: str, data: bytes) -> str | None:
    """None if `data` is a well-formed archive of the given artifact_format, else a reason."""
    if fmt == "zip":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                bad = zf.testzip()
                if bad is not None:
                    return f"corrupt member {bad!r}"
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
            return str(e) or type(e).__name__
    elif fmt == "gzip":
        # A gzip artifact is one member per file, concatenated; GzipFile reads all members.
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as gz:
                while gz.read(1 << 20):
                    pass
        except (OSError, EOFError, zlib.error) as e:
            return str(e) or type(e).__name__
    return None


def object_signature(gl: GitLab, path: str) -> str:
    return hmac.new(gl.object_secret, path.encode(), hashlib.sha256).hexdigest()


def object_url(gl: GitLab, job_id: int, art: Artifact) -> str:
    path = "/object-storage/artifacts/%d/%s/%s" % (
        job_id, art.type, urllib.parse.quote(os.path.basename(art.filename) or "file"))
    return (f"{gl.base_url}{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600"
            f"&X-Amz-Signature={object_signature(gl, urllib.parse.unquote(path))}")


class ObjectStorage:
    """A presigned-URL style store for direct artifact downloads (302 targets)."""

    def __init__(self, gl: GitLab):
        self.gl = gl

    def get(self, req: Request, job_id: str, a_type: str, filename: str) -> Reply:
        sig = req.query.get("X-Amz-Signature", "")
        if not hmac.compare_digest(sig, object_signature(self.gl, req.path)):
            return s3_error(403, "SignatureDoesNotMatch",
                            "The request signature we calculated does not match the signature "
                            "you provided.")
        with self.gl.lock:
            job = self.gl.jobs.get(int(job_id))
            art = job.artifacts.get(a_type) if job else None
        if art is None:
            return s3_error(404, "NoSuchKey", "The specified key does not exist.")
        return serve_bytes(req, art.data, "application/octet-stream",
                           etag='"%s"' % hashlib.md5(art.data).hexdigest())


def s3_error(status: int, code: str, message: str) -> Reply:
    body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message></Error>")
    return Reply(status, body.encode(), [("Content-Type", "application/xml")])


def serve_bytes(req: Request, data: bytes, content_type: str, etag: str) -> Reply:
    """200 with the data, or 206 for a single satisfiable byte range (RFC 9110 §14)."""
    headers = [("Content-Type", content_type), ("Accept-Ranges", "bytes"), ("ETag", etag)]
    rng = req.header("Range")
    total = len(data)
    if not rng:
        return Reply(200, data, headers)
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", rng)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return Reply(200, data, headers)     # multi-range / malformed: ignore Range
    if m.group(1) == "":
        n = int(m.group(2))
        if n == 0:
            return Reply(416, b"", headers + [("Content-Range", f"bytes */{total}")])
        first, last = max(0, total - n), total - 1
    else:
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else total - 1
        last = min(last, total - 1)
        if first >= total or first > last:
            return Reply(416, b"", headers + [("Content-Range", f"bytes */{total}")])
    return Reply(206, data[first:last + 1],
                 headers + [("Content-Range", f"bytes {first}-{last}/{total}")])


class GitBackend:
    """Smart HTTP for registered repositories via `git http-backend` (CGI).

    Authentication is GitLab's CI job token scheme: Basic gitlab-ci-token:<job token> of a job
    that is running (or canceling)."""

    def __init__(self, gl: GitLab):
        self.gl = gl

    def handle(self, req: Request, repo_name: str, rest: str) -> Reply:
        user, password = basic_auth(req.header("Authorization"))
        with self.gl.lock:
            ok = user == "gitlab-ci-token" and any(
                j.token == password and j.state in RUNNING_STATES and not j.token_expired
                for j in self.gl.jobs.values())
            path = self.gl.repos.get(repo_name)
        if not ok:
            return Reply(401, b"HTTP Basic: Access denied\n",
                         [("Content-Type", "text/plain"),
                          ("WWW-Authenticate", 'Basic realm="GitLab"')])
        if path is None:
            return Reply(404, b"The project you were looking for could not be found.\n",
                         [("Content-Type", "text/plain")])
        path = path.rstrip("/")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update({
            "GIT_PROJECT_ROOT": os.path.dirname(path) or "/",
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": "/" + os.path.basename(path) + (rest or "/"),
            "QUERY_STRING": req.raw_query,
            "REQUEST_METHOD": req.method,
            "CONTENT_TYPE": req.header("Content-Type") or "",
            "CONTENT_LENGTH": str(len(req.body)),
            "REMOTE_USER": user or "",
            "REMOTE_ADDR": str(req.client[0]),
            "AUTH_TYPE": "Basic",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": "kiln-gitlab-emulator",
        })
        for k, v in req.headers.items():
            key = "HTTP_" + k.upper().replace("-", "_")
            if key not in ("HTTP_AUTHORIZATION", "HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                env[key] = v
        try:
            proc = subprocess.run(["git", "http-backend"], input=req.body, env=env,
                                  capture_output=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return Reply(500, f"git http-backend failed: {e}\n".encode(),
                         [("Content-Type", "text/plain")])
        if proc.stderr:
            sys.stderr.write("git http-backend: " + proc.stderr.decode("utf-8", "replace"))
        return parse_cgi_output(proc.stdout)


def basic_auth(value: str | None) -> tuple[str | None, str | None]:
    if not value or not value.lower().startswith("basic "):
        return None, None
    try:
        user, _, password = base64.b64decode(value[6:].strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None, None
    return user, password


def parse_cgi_output(out: bytes) -> Reply:
    m = re.search(rb"\r?\n\r?\n", out)
    if not m:
        return Reply(502, b"malformed CGI response\n", [("Content-Type", "text/plain")])
    status, headers = 200, []
    for line in out[:m.start()].decode("latin-1").splitlines():
        if ":" not in line:
            continue
        k, v = (s.strip() for s in line.split(":", 1))
        if k.lower() == "status":
            status = int(v.split()[0])
        else:
            headers.append((k, v))
    return Reply(status, out[m.end():], headers)


class ControlAPI:
    """/__emulator/: test-only endpoints (no auth, not logged, never faulted)."""

    def __init__(self, gl: GitLab):
        self.gl = gl

    def _body(self, req: Request) -> dict:
        try:
            obj = req.json_body()
        except (ValueError, UnicodeDecodeError) as e:
            raise ControlError(f"invalid JSON: {e}") from None
        if obj is None:
            return {}
        if not isinstance(obj, dict):
            raise ControlError("body must be a JSON object")
        return obj

    def _job(self, job_id: str) -> Job:
        job = self.gl.jobs.get(int(job_id))
        if job is None:
            raise LookupError(f"no job {job_id}")
        return job

    def health(self, req: Request) -> Reply:
        return json_reply(200, {"ok": True, "url": self.gl.base_url})

    def reset(self, req: Request) -> Reply:
        self.gl.reset()
        return json_reply(200, {"ok": True})

    def outage(self, req: Request) -> Reply:
        """GitLab unreachable for `seconds`: the listener is closed (connections refused) and
        open connections are cut; state is kept, and the same port listens again after."""
        seconds = float(self._body(req).get("seconds", 10))
        if self.gl.outage_hook is None:
            raise ControlError("outages need the emulator's own server")
        self.gl.outage_hook(seconds)
        return json_reply(200, {"ok": True, "seconds": seconds})

    def get_config(self, req: Request) -> Reply:
        with self.gl.lock:
            return json_reply(200, self.gl.config)

    def set_config(self, req: Request) -> Reply:
        body = self._body(req)
        with self.gl.lock:
            unknown = set(body) - set(self.gl.config)
            if unknown:
                raise ControlError(f"unknown config keys: {sorted(unknown)}")
            if body.get("final_update_mode", "count") not in ("count", "bytesize"):
                raise ControlError("final_update_mode must be 'count' or 'bytesize'")
            self.gl.config.update(body)
            self.gl.cond.notify_all()
            return json_reply(200, self.gl.config)

    def add_registration_token(self, req: Request) -> Reply:
        body = self._body(req)
        token = body.get("token") or "GR1348941" + rand_str(20)
        rtype = body.get("type", "instance")
        if rtype not in ("instance", "group", "project"):
            raise ControlError("type must be instance, group or project")
        with self.gl.lock:
            self.gl.registration_tokens[token] = {
                "token": token, "disabled": bool(body.get("disabled", False)), "type": rtype,
                "registered": 0}
            return json_reply(201, self.gl.registration_tokens[token])

    def create_runner(self, req: Request) -> Reply:
        body = self._body(req)
        allowed = {"token", "kind", "tags", "run_untagged", "token_expires_at",
                   "token_expires_in", "description", "locked", "access_level",
                   "maximum_timeout", "paused", "type"}
        unknown = set(body) - allowed
        if unknown:
            raise ControlError(f"unknown runner keys: {sorted(unknown)}")
        kind = body.get("kind", "glrt")
        if kind not in ("glrt", "legacy"):
            raise ControlError("kind must be 'glrt' or 'legacy'")
        gl = self.gl
        with gl.lock:
            token = body.get("token") or gl._new_runner_token(kind, body.get("type", "instance"))
            if token in gl.runner_tokens:
                raise ControlError("token already in use")
            expires = parse_time(body.get("token_expires_at"))
            lifetime = None
            if body.get("token_expires_in") is not None:
                lifetime = float(body["token_expires_in"])
                expires = utcnow() + dt.timedelta(seconds=lifetime)
            elif expires is not None:
                lifetime = max(1.0, (expires - utcnow()).total_seconds())
            runner = Runner(id=gl.next_runner_id, token=token, kind=kind,
                            runner_type=body.get("type", "instance"),
                            description=str(body.get("description") or ""),
                            tags=[str(t) for t in body.get("tags") or []],
                            run_untagged=bool(body.get("run_untagged", True)),
                            locked=bool(body.get("locked", False)),
                            access_level=body.get("access_level", "not_protected"),
                            maximum_timeout=body.get("maximum_timeout"),
                            paused=bool(body.get("paused", False)),
                            token_expires_at=expires, token_lifetime=lifetime)
            gl.next_runner_id += 1
            gl._add_runner(runner)
            return json_reply(201, {"id": runner.id, "token": runner.token, "kind": kind,
                                    "token_expires_at": iso_ms(runner.token_expires_at)})

    def list_runners(self, req: Request) -> Reply:
        with self.gl.lock:
            return json_reply(200, [self.gl.runner_json(r) for r in self.gl.runners.values()])

    def enqueue_job(self, req: Request) -> Reply:
        body = self._body(req)
        allowed = {"payload", "fixture", "tags", "runner_token", "runner_id", "variables", "repo",
                   "ref", "sha", "timeout", "dependencies", "required_features", "protected",
                   "script", "after_script", "overrides", "allow_failure_exit_codes"}
        unknown = set(body) - allowed
        if unknown:
            raise ControlError(f"unknown job keys: {sorted(unknown)}")
        gl = self.gl
        payload = body.get("payload")
        if payload is None:
            payload = gl.load_fixture(body.get("fixture") or "job_basic")
        if not isinstance(payload, dict):
            raise ControlError("payload must be an object")
        with gl.lock:
            job_id, pipeline_id = gl.next_job_id, gl.next_pipeline_id
            gl.next_job_id += 1
            gl.next_pipeline_id += 1
            target = None
            if body.get("runner_token"):
                r = gl.runner_tokens.get(body["runner_token"])
                if r is None:
                    raise ControlError("runner_token does not belong to a runner")
                target = r.id
            elif body.get("runner_id") is not None:
                target = int(body["runner_id"])
            repo_path = gl.repos.get(body.get("repo") or "")
            base_url = gl.base_url
        token = "glcbt-64_" + rand_str(20)
        payload, repo = rewrite_payload(payload, body, job_id, token, pipeline_id, base_url)
        if repo_path is None:
            with gl.lock:
                repo_path = gl.repos.get(repo)
        if repo_path is not None:
            prepare_repo_for_pipeline(repo_path, payload, body, pipeline_id)
        need = required_features_of(payload) | set(body.get("required_features") or [])
        if body.get("allow_failure_exit_codes"):
            need.add("return_exit_code")
        unknown_feats = need - set(REQUIRED_FEATURES)
        if unknown_feats:
            raise ControlError(f"not GitLab-required features: {sorted(unknown_feats)}")
        protected = body.get("protected")
        if protected is None:
            protected = bool((payload.get("git_info") or {}).get("protected"))
        deps = body.get("dependencies")
        job = Job(id=job_id, token=token, payload=payload, pipeline_id=pipeline_id,
                  tags=[str(t) for t in body.get("tags") or []], protected=bool(protected),
                  required_features=need, target_runner_id=target, repo=repo,
                  dependency_ids=None if deps is None else [
                      int(d["id"] if isinstance(d, dict) else d) for d in deps])
        with gl.lock:
            gl.jobs[job.id] = job
            gl.tick_runners_for(job)
        return json_reply(201, {"id": job.id, "token": job.token, "pipeline_id": pipeline_id,
                                "repo_url": (payload.get("git_info") or {}).get("repo_url"),
                                "required_features": sorted(need)})

    def list_jobs(self, req: Request) -> Reply:
        with self.gl.lock:
            return json_reply(200, [self.gl.job_json(j, with_payload=False)
                                    for j in self.gl.jobs.values()])

    def get_job(self, req: Request, job_id: str) -> Reply:
        with self.gl.lock:
            return json_reply(200, self.gl.job_json(self._job(job_id)))

    def get_job_trace(self, req: Request, job_id: str) -> Reply:
        with self.gl.lock:
            return Reply(200, bytes(self._job(job_id).trace),
                         [("Content-Type", "application/octet-stream")])

    def get_job_artifact(self, req: Request, job_id: str, a_type: str) -> Reply:
        with self.gl.lock:
            art = self._job(job_id).artifacts.get(a_type)
            if art is None:
                raise LookupError(f"job {job_id} has no {a_type} artifact")
            return Reply(200, art.data, [("Content-Type", "application/octet-stream")])

    def put_job_artifact(self, req: Request, job_id: str, a_type: str) -> Reply:
        """Test hook: store the request body as the job's artifact of `a_type`, unvalidated,
        as if the job had uploaded it (e.g. a hostile archive for a dependency download)."""
        q = req.query
        fmt = q.get("artifact_format") or ARTIFACT_TYPE_FORMATS.get(a_type, "zip")
        filename = q.get("filename") or ("artifacts.zip" if fmt == "zip" else a_type)
        with self.gl.lock:
            job = self._job(job_id)
            art = Artifact(a_type, fmt, q.get("expire_in"), filename, bytes(req.body), utcnow())
            job.artifacts[a_type] = art
            return json_reply(201, art.summary())

    def delete_job(self, req: Request, job_id: str) -> Reply:
        with self.gl.lock:
            job = self.gl.jobs.pop(int(job_id), None)
            if job is None:
                raise LookupError(f"no job {job_id}")
            self.gl.cond.notify_all()
            return json_reply(200, {"id": job.id, "deleted": True})

    def cancel_job(self, req: Request, job_id: str) -> Reply:
        mode = self._body(req).get("mode", "graceful")
        if mode not in ("graceful", "hard"):
            raise ControlError("mode must be 'graceful' or 'hard'")
        gl = self.gl
        with gl.lock:
            job = self._job(job_id)
            before = job.state
            if job.state == "pending":
                gl.finish(job, "canceled")
            elif job.state == "running" and mode == "graceful" and job.cancel_gracefully:
                job.state = "canceling"
            elif job.state in RUNNING_STATES:
                gl.finish(job, "canceled")
            return json_reply(200, {"id": job.id, "state": job.state, "previous_state": before,
                                    "changed": before != job.state})

    def expire_job_token(self, req: Request, job_id: str) -> Reply:
        gl = self.gl
        with gl.lock:
            job = self._job(job_id)
            job.token_expired = True
            if job.state in RUNNING_STATES or job.state == "pending":
                gl.finish(job, "failed", "job_token_expired")
            return json_reply(200, {"id": job.id, "state": job.state,
                                    "failure_reason": job.failure_reason})

    def fail_job(self, req: Request, job_id: str) -> Reply:
        reason = self._body(req).get("failure_reason", "job_execution_server_timeout")
        gl = self.gl
        with gl.lock:
            job = self._job(job_id)
            if job.state not in FINAL_STATES:
                gl.finish(job, "failed", reason)
            return json_reply(200, {"id": job.id, "state": job.state,
                                    "failure_reason": job.failure_reason})

    def set_job_timeout(self, req: Request, job_id: str) -> Reply:
        timeout = self._body(req).get("timeout")
        if not isinstance(timeout, int):
            raise ControlError("timeout must be an integer number of seconds")
        with self.gl.lock:
            job = self._job(job_id)
            job.payload.setdefault("runner_info", {})["timeout"] = timeout
            for s in job.payload.get("steps") or []:
                if isinstance(s, dict) and "timeout" in s:
                    s["timeout"] = timeout
            return json_reply(200, {"id": job.id, "timeout": timeout})

    def add_fault(self, req: Request) -> Reply:
        return json_reply(201, self.gl.add_fault(self._body(req)))

    def list_faults(self, req: Request) -> Reply:
        with self.gl.lock:
            return json_reply(200, [fault_json(f) for f in self.gl.faults])

    def clear_faults(self, req: Request) -> Reply:
        with self.gl.lock:
            self.gl.faults.clear()
            self.gl.config["rate_limit_all"] = None
            return json_reply(200, {"ok": True})

    def list_requests(self, req: Request) -> Reply:
        since = int(req.query.get("since", "0") or 0)
        path_re = re.compile(req.query["path"]) if req.query.get("path") else None
        method = req.query.get("method", "").upper()
        with self.gl.lock:
            out = [dict(e) for e in self.gl.request_log
                   if e["seq"] > since and (path_re is None or path_re.search(e["path"]))
                   and (not method or e["method"] == method)]
            return json_reply(200, out)

    def clear_requests(self, req: Request) -> Reply:
        with self.gl.lock:
            self.gl.request_log.clear()
            return json_reply(200, {"ok": True})

    def list_violations(self, req: Request) -> Reply:
        with self.gl.lock:
            return json_reply(200, list(self.gl.violations))

    def add_repo(self, req: Request) -> Reply:
        body = self._body(req)
        name, path = body.get("name"), body.get("path")
        if not name or not path or not os.path.isabs(path):
            raise ControlError("need 'name' (group/project) and an absolute 'path'")
        name = name.strip("/")
        if name.endswith(".git"):
            name = name[:-4]
        if not os.path.isdir(path):
            raise ControlError(f"{path} is not a directory")
        with self.gl.lock:
            self.gl.repos[name] = path
        return json_reply(201, {"name": name, "path": path,
                                "url": f"{self.gl.base_url}/{name}.git"})

    def list_repos(self, req: Request) -> Reply:
        with self.gl.lock:
            return json_reply(200, dict(self.gl.repos))


def set_variable(payload: dict, key: str, value: str, append: bool = False) -> None:
    variables = payload.get("variables")
    if not isinstance(variables, list):
        if not append:
            return
        variables = payload["variables"] = []
    for v in variables:
        if isinstance(v, dict) and v.get("key") == key:
            v["value"] = value
            return
    if append:
        variables.append({"key": key, "value": value, "public": True, "masked": False})


def gitlab_refspecs(pipeline_id: int, ref: str, ref_type: str, depth: int) -> list:
    """BuildRunnerPresenter#refspecs (§4.2)."""
    specs = [f"+refs/pipelines/{pipeline_id}:refs/pipelines/{pipeline_id}"]
    if depth > 0:
        specs.append(f"+refs/tags/{ref}:refs/tags/{ref}" if ref_type == "tag"
                     else f"+refs/heads/{ref}:refs/remotes/origin/{ref}")
    else:
        specs += ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"]
    return specs


def rewrite_payload(payload: dict, spec: dict, job_id: int, token: str, pipeline_id: int,
                    base_url: str) -> tuple[dict, str]:
    """Give a fixture payload a fresh identity that points back at this emulator."""
    old_token = payload.get("token")
    text = json.dumps(payload)
    if isinstance(old_token, str) and old_token:
        # The job token is repeated in repo_url, variables, credentials and dependencies.
        text = text.replace(old_token, token)
    p = json.loads(text)
    p["id"] = job_id
    p["token"] = token
    ji = p.setdefault("job_info", {})
    if isinstance(ji, dict):
        ji["id"] = job_id
    gi = p.setdefault("git_info", {})
    old_url = urllib.parse.urlsplit(str(gi.get("repo_url") or ""))
    repo = spec.get("repo") or (ji.get("project_full_path") if isinstance(ji, dict) else None) \
        or old_url.path.strip("/").removesuffix(".git") or "group/project"
    repo = repo.strip("/").removesuffix(".git")
    base = urllib.parse.urlsplit(base_url)
    repo_url = f"{base.scheme}://gitlab-ci-token:{token}@{base.netloc}/{repo}.git"
    gi["repo_url"] = repo_url
    old_pipeline = None
    for v in p.get("variables") or []:
        if isinstance(v, dict) and v.get("key") == "CI_PIPELINE_ID":
            old_pipeline = v.get("value")
    refspecs = gi.get("refspecs")
    if isinstance(refspecs, list):
        gi["refspecs"] = [re.sub(r"refs/pipelines/\d+", f"refs/pipelines/{pipeline_id}", str(r))
                          for r in refspecs]
    if spec.get("ref"):
        ref = str(spec["ref"])
        gi["ref"] = ref
        gi["refspecs"] = gitlab_refspecs(pipeline_id, ref, gi.get("ref_type") or "branch",
                                         int(gi.get("depth") or 0))
        set_variable(p, "CI_COMMIT_REF_NAME", ref)
        set_variable(p, "CI_COMMIT_BRANCH" if gi.get("ref_type") != "tag" else "CI_COMMIT_TAG",
                     ref)
        set_variable(p, "CI_COMMIT_REF_SLUG",
                     re.sub(r"[^a-z0-9]+", "-", ref.lower()).strip("-")[:63])
    if spec.get("sha"):
        gi["sha"] = spec["sha"]
    if spec.get("timeout") is not None:
        p.setdefault("runner_info", {})["timeout"] = int(spec["timeout"])
    project_url = f"{base_url}/{repo}"
    updates = {
        "CI_JOB_ID": str(job_id), "CI_JOB_URL": f"{project_url}/-/jobs/{job_id}",
        "CI_PIPELINE_ID": str(pipeline_id),
        "CI_PIPELINE_URL": f"{project_url}/-/pipelines/{pipeline_id}",
        "CI_REPOSITORY_URL": repo_url, "CI_SERVER_URL": base_url,
        "CI_API_V4_URL": f"{base_url}/api/v4", "CI_SERVER_HOST": base.hostname or "",
        "CI_SERVER_PORT": str(base.port or (443 if base.scheme == "https" else 80)),
        "CI_SERVER_PROTOCOL": base.scheme, "CI_PROJECT_URL": project_url,
        "CI_JOB_TOKEN": token,
    }
    if spec.get("repo"):
        ns, _, name = repo.rpartition("/")
        updates.update({"CI_PROJECT_PATH": repo, "CI_PROJECT_NAME": name,
                        "CI_PROJECT_NAMESPACE": ns,
                        "CI_PROJECT_PATH_SLUG": re.sub(r"[^a-z0-9]+", "-", repo.lower())})
        if isinstance(ji, dict):
            ji["project_full_path"] = repo
    for k, v in updates.items():
        set_variable(p, k, v)
    if old_pipeline is not None:
        text = json.dumps(p).replace(f"/pipelines/{old_pipeline}", f"/pipelines/{pipeline_id}")
        p = json.loads(text)
    for key in ("script", "after_script"):
        if spec.get(key) is not None:
            steps = p.setdefault("steps", [])
            step = next((s for s in steps if isinstance(s, dict) and s.get("name") == key), None)
            if step is None:
                step = {"name": key, "script": [], "timeout": p.get("runner_info", {}).get(
                    "timeout", 3600), "when": "on_success" if key == "script" else "always",
                    "allow_failure": key != "script"}
                steps.append(step)
            step["script"] = list(spec[key])
    for v in spec.get("variables") or []:
        if not isinstance(v, dict) or "key" not in v:
            raise ControlError("variables entries need at least a 'key'")
        entry = {"key": v["key"], "value": v.get("value", ""), "public": v.get("public", True),
                 "masked": v.get("masked", False)}
        for flag in ("file", "raw"):
            if v.get(flag):
                entry[flag] = True
        p.setdefault("variables", []).append(entry)
    for k, v in (spec.get("overrides") or {}).items():
        p[k] = v
    return p, repo


def prepare_repo_for_pipeline(repo_path: str, payload: dict, spec: dict,
                              pipeline_id: int) -> None:
    """Resolve the job's sha from the repository and create refs/pipelines/<id>, as GitLab
    does when it creates a pipeline (the runner fetches that refspec)."""
    gi = payload.get("git_info") or {}
    git = ["git", "--git-dir", git_dir_of(repo_path)]
    sha = spec.get("sha")
    if not sha:
        ref = gi.get("ref") or "HEAD"
        candidates = [ref] if ref.startswith("refs/") else \
            [f"refs/tags/{ref}" if gi.get("ref_type") == "tag" else f"refs/heads/{ref}", ref]
        for c in candidates:
            r = subprocess.run(git + ["rev-parse", "--verify", "--quiet", c + "^{commit}"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                sha = r.stdout.strip()
                break
    if not sha:
        return
    gi["sha"] = sha
    set_variable(payload, "CI_COMMIT_SHA", sha)
    set_variable(payload, "CI_COMMIT_SHORT_SHA", sha[:8])
    subprocess.run(git + ["update-ref", f"refs/pipelines/{pipeline_id}", sha],
                   capture_output=True)


def git_dir_of(path: str) -> str:
    dotgit = os.path.join(path, ".git")
    return dotgit if os.path.isdir(dotgit) else path


# ------------------------------------------------------------------------------------------------
# Router
# ------------------------------------------------------------------------------------------------

Route = tuple[str, "re.Pattern[str]", Callable[..., Reply]]


class Router:
    def __init__(self, gl: GitLab):
        api, ctl = RunnerAPI(gl), ControlAPI(gl)
        self.git = GitBackend(gl)
        self.objects = ObjectStorage(gl)
        r = self._compile
        self.api_routes: list[Route] = [
            r("POST", r"/api/v4/runners", api.register),
            r("DELETE", r"/api/v4/runners", api.unregister),
            r("POST", r"/api/v4/runners/verify", api.verify),
            r("DELETE", r"/api/v4/runners/managers", api.unregister_manager),
            r("POST", r"/api/v4/runners/reset_authentication_token", api.reset_token),
            r("POST", r"/api/v4/runners/(\d+)/reset_authentication_token", api.reset_token_pat),
            r("GET", r"/api/v4/runners/router/discovery", api.router_discovery),
            r("POST", r"/api/v4/jobs/request", api.request_job),
            r("PUT", r"/api/v4/jobs/(\d+)", api.update_job),
            r("PATCH", r"/api/v4/jobs/(\d+)/trace", api.patch_trace),
            r("POST", r"/api/v4/jobs/(\d+)/artifacts", api.upload_artifact),
            r("GET", r"/api/v4/jobs/(\d+)/artifacts", api.download_artifact),
            r("GET", r"/object-storage/artifacts/(\d+)/([a-z_0-9]+)/([^/]+)", self.objects.get),
        ]
        self.control_routes: list[Route] = [
            r("GET", r"/__emulator/health", ctl.health),
            r("POST", r"/__emulator/reset", ctl.reset),
            r("POST", r"/__emulator/outage", ctl.outage),
            r("GET", r"/__emulator/config", ctl.get_config),
            r("POST", r"/__emulator/config", ctl.set_config),
            r("POST", r"/__emulator/registration_tokens", ctl.add_registration_token),
            r("POST", r"/__emulator/runners", ctl.create_runner),
            r("GET", r"/__emulator/runners", ctl.list_runners),
            r("POST", r"/__emulator/jobs", ctl.enqueue_job),
            r("GET", r"/__emulator/jobs", ctl.list_jobs),
            r("GET", r"/__emulator/jobs/(\d+)", ctl.get_job),
            r("DELETE", r"/__emulator/jobs/(\d+)", ctl.delete_job),
            r("GET", r"/__emulator/jobs/(\d+)/trace", ctl.get_job_trace),
            r("GET", r"/__emulator/jobs/(\d+)/artifacts/([a-z_0-9]+)", ctl.get_job_artifact),
            r("PUT", r"/__emulator/jobs/(\d+)/artifacts/([a-z_0-9]+)", ctl.put_job_artifact),
            r("POST", r"/__emulator/jobs/(\d+)/cancel", ctl.cancel_job),
            r("POST", r"/__emulator/jobs/(\d+)/expire_token", ctl.expire_job_token),
            r("POST", r"/__emulator/jobs/(\d+)/fail", ctl.fail_job),
            r("POST", r"/__emulator/jobs/(\d+)/timeout", ctl.set_job_timeout),
            r("POST", r"/__emulator/faults", ctl.add_fault),
            r("GET", r"/__emulator/faults", ctl.list_faults),
            r("DELETE", r"/__emulator/faults", ctl.clear_faults),
            r("GET", r"/__emulator/requests", ctl.list_requests),
            r("DELETE", r"/__emulator/requests", ctl.clear_requests),
            r("GET", r"/__emulator/violations", ctl.list_violations),
            r("POST", r"/__emulator/repos", ctl.add_repo),
            r("GET", r"/__emulator/repos", ctl.list_repos),
        ]

    @staticmethod
    def _compile(method: str, pattern: str, fn: Callable[..., Reply]) -> Route:
        return method, re.compile(pattern), fn

    @staticmethod
    def is_control(path: str) -> bool:
        return path.startswith("/__emulator/")

    def dispatch(self, req: Request) -> Reply:
        if self.is_control(req.path):
            try:
                return self._match(self.control_routes, req)
            except ControlError as e:
                return json_reply(400, {"error": str(e)})
            except LookupError as e:
                return json_reply(404, {"error": str(e)})
        m = re.fullmatch(r"/(.+?\.git)(/.*)?", req.path)
        if m and req.method in ("GET", "POST", "HEAD"):
            return self.git.handle(req, m.group(1)[:-4].strip("/"), m.group(2) or "")
        return self._match(self.api_routes, req)

    def _match(self, routes: list[Route], req: Request) -> Reply:
        method = "GET" if req.method == "HEAD" else req.method
        path_matched = False
        for r_method, regex, fn in routes:
            m = regex.fullmatch(req.path)
            if not m:
                continue
            path_matched = True
            if r_method == method:
                return fn(req, *m.groups())
        if path_matched:
            return json_reply(405, {"error": "405 Not Allowed"})
        return json_reply(404, {"error": "404 Not Found"})


# ------------------------------------------------------------------------------------------------
# 5. HTTP plumbing
# ------------------------------------------------------------------------------------------------

class BodyError(Exception):
    pass


def read_exact(rfile, n: int, cap: int, sink: bytearray) -> None:
    """Read n bytes; keep them while the sink is below cap, discard the rest."""
    while n > 0:
        chunk = rfile.read(min(n, 1 << 16))
        if not chunk:
            raise BodyError("connection closed mid-body")
        n -= len(chunk)
        room = cap - len(sink)
        if room > 0:
            sink += chunk[:room]


def read_chunked(rfile, cap: int) -> tuple[bytes, int]:
    """Decode a chunked body (RFC 9112 §7.1). Returns (kept bytes, total size)."""
    sink = bytearray()
    total = 0
    while True:
        line = rfile.readline(65537)
        if not line:
            raise BodyError("connection closed in chunk header")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BodyError(f"bad chunk size {size_text!r}") from None
        if size == 0:
            while True:                         # trailer section
                t = rfile.readline(65537)
                if not t or t in (b"\r\n", b"\n"):
                    return bytes(sink), total
        read_exact(rfile, size, cap, sink)
        total += size
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise BodyError("chunk not followed by CRLF")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kiln-gitlab-emulator/1"
    timeout = 300                               # idle keep-alive connections are closed

    server: "EmulatorServer"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without TCP_NODELAY the body waits for
        # the client's delayed ACK (~40 ms), a stall GitLab's own front ends do not have.
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, fmt: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def _serve(self) -> None:
        gl, router = self.server.gl, self.server.router
        started = time.monotonic()
        try:
            req = self._read_request()
        except BodyError as e:
            self.close_connection = True
            self._send(message_reply(400, f"400 Bad request - {e}"), close=True)
            return
        if router.is_control(req.path):
            try:
                reply = router.dispatch(req)
            except Exception:  # noqa: BLE001 - report, keep serving
                traceback.print_exc()
                reply = json_reply(500, {"error": traceback.format_exc()})
            self._send(reply)
            return

        entry = gl.log_request(req)
        fault = gl.take_fault(req)
        reply: Reply | None = None
        if fault is not None:
            with gl.lock:
                entry["fault"] = fault["action"] if fault["id"] != "rate_limit_all" \
                    else "rate_limit_all"
            reply = self._apply_fault(fault, req)
        if reply is None:
            try:
                reply = router.dispatch(req)
            except Exception:  # noqa: BLE001
                traceback.print_exc()
                reply = message_reply(500, "500 Internal Server Error")
        reply.headers.append(("X-Request-Id", rand_str(26, string.ascii_uppercase +
                                                       string.digits)))
        with gl.lock:
            entry["status"] = "dropped" if reply.drop else reply.status
            entry["duration"] = round(time.monotonic() - started, 3)
            entry["response_headers"] = {k: v for k, v in reply.headers}
        if reply.drop:
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._send(reply)

    def _apply_fault(self, fault: dict, req: Request) -> Reply | None:
        action = fault["action"]
        if action == "drop":
            # With a delay: a GitLab that dies holding the request; it is never applied.
            if fault["delay"]:
                time.sleep(fault["delay"])
            return Reply(0, drop=True)
        if action == "delay":
            time.sleep(fault["delay"])
            return None
        if action == "reset_trace":
            m = re.match(r"/api/v4/jobs/(\d+)", req.path)
            gl = self.server.gl
            with gl.lock:
                job = gl.jobs.get(int(m.group(1))) if m else None
                if job is not None:
                    job.trace = bytearray()
                    job.notes.append("fault reset_trace: stored trace lost")
            return None
        status = fault["status"]
        headers = [(k, str(v)) for k, v in (fault.get("headers") or {}).items()]
        if fault.get("retry_after") is not None:
            ra = fault["retry_after"]
            headers.append(("Retry-After", fmt_seconds(ra)))
        body = fault.get("body")
        if body is None:
            body = RATE_LIMIT_BODY if status == 429 else {"message": status_text(status)}
        if isinstance(body, (dict, list)):
            if not any(k.lower() == "content-type" for k, _ in headers):
                headers.insert(0, ("Content-Type", "application/json"))
            return Reply(status, json.dumps(body).encode(), headers)
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers.insert(0, ("Content-Type", "text/plain"))
        return Reply(status, str(body).encode(), headers)

    def _read_request(self) -> Request:
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(
            split.query, keep_blank_values=True).items()}
        cap = self.server.gl.max_body_size()
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        overflow = False
        if "chunked" in te:
            body, total = read_chunked(self.rfile, cap)
            overflow = total > len(body)
        else:
            cl = self.headers.get("Content-Length")
            sink = bytearray()
            if cl:
                try:
                    n = int(cl)
                except ValueError:
                    raise BodyError("invalid Content-Length") from None
                if n < 0:
                    raise BodyError("invalid Content-Length")
                read_exact(self.rfile, n, cap, sink)
                overflow = n > len(sink)
            body = bytes(sink)
        cert = None
        if isinstance(self.connection, ssl.SSLSocket):
            peer = self.connection.getpeercert()
            if peer:
                cert = {"subject": [list(x) for x in peer.get("subject", ())]}
        return Request(self.command, path, split.query, query, self.headers, body, overflow,
                       self.client_address, cert)

    def _send(self, reply: Reply, close: bool = False) -> None:
        try:
            self.send_response(reply.status)
            for k, v in reply.headers:
                self.send_header(k, v)
            no_body = reply.status in (204, 304) or 100 <= reply.status < 200
            if not no_body:
                self.send_header("Content-Length", str(len(reply.body)))
            if close or reply.close:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if not no_body and self.command != "HEAD" and reply.body:
                self.wfile.write(reply.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple, gl: GitLab, router: Router,
                 ssl_context: ssl.SSLContext | None, verbose: bool):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.gl, self.router = gl, router
        self.ssl_context = ssl_context
        self.verbose = verbose
        self.conn_lock = threading.Lock()
        self.connections: set = set()
        super().__init__(addr, Handler)

    # -- outages (control API /__emulator/outage) ---------------------------------------------

    def take_down(self, seconds: float) -> None:
        threading.Thread(target=self._outage, args=(seconds,), name="outage", daemon=True).start()

    def _outage(self, seconds: float) -> None:
        time.sleep(0.2)                         # let the control reply go out first
        self.shutdown()                         # serve_forever returns: no more accepts
        self.socket.close()                     # connecting now gives ECONNREFUSED
        with self.conn_lock:
            conns = list(self.connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        sys.stderr.write(f"outage: down for {seconds}s\n")
        time.sleep(seconds)
        self.socket = socket.socket(self.address_family, self.socket_type)
        self.server_bind()                      # same address and port (SO_REUSEADDR)
        self.server_activate()
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                         name="serve", daemon=True).start()
        sys.stderr.write("outage: listening again\n")

    def _track(self, conn, add: bool) -> None:
        with self.conn_lock:
            if add:
                self.connections.add(conn)
            else:
                self.connections.discard(conn)

    def finish_request(self, request, client_address) -> None:
        self._track(request, True)
        try:
            self._finish_request(request, client_address)
        finally:
            self._track(request, False)

    def _finish_request(self, request, client_address) -> None:
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        # Handshake here, in the connection's own thread, so a slow or broken client cannot
        # stall the accept loop.
        request.settimeout(10)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            if self.verbose:
                sys.stderr.write(f"TLS handshake with {client_address} failed: {e}\n")
            return
        self._track(tls, True)
        try:
            tls.settimeout(None)
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            self._track(tls, False)
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        super().handle_error(request, client_address)


# ------------------------------------------------------------------------------------------------
# 6. main
# ------------------------------------------------------------------------------------------------

def make_ssl_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx


def write_ready_file(path: str, url: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ready-", dir=d)
    with os.fdopen(fd, "w") as f:
        f.write(url + "\n")
    os.replace(tmp, path)


def dump_state(gl: GitLab) -> None:
    try:
        with gl.lock:
            state = {"runners": [gl.runner_json(r) for r in gl.runners.values()],
                     "jobs": [gl.job_json(j, with_payload=False) for j in gl.jobs.values()],
                     "violations": gl.violations}
        with open(os.path.join(gl.state_dir, "state.json"), "w") as f:
            json.dump(state, f, indent=1)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="GitLab emulator for kiln integration tests")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-client-ca", help="require client certificates signed by this CA")
    ap.add_argument("--ready-file")
    ap.add_argument("--long-poll", type=float, default=50.0,
                    help="seconds a job request with a current last_update is held")
    ap.add_argument("--state-dir", help="artifact copies and state.json on exit")
    ap.add_argument("--fixtures-dir", default=DEFAULT_FIXTURES_DIR)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        ap.error("--tls-client-ca needs --tls-cert/--tls-key")

    tmp_state = None
    state_dir = args.state_dir
    if not state_dir:
        tmp_state = tempfile.TemporaryDirectory(prefix="gitlab-emulator-")
        state_dir = tmp_state.name
    os.makedirs(state_dir, exist_ok=True)

    gl = GitLab(args.long_poll, state_dir, args.fixtures_dir)
    router = Router(gl)
    ctx = make_ssl_context(args.tls_cert, args.tls_key, args.tls_client_ca) \
        if args.tls_cert else None
    server = EmulatorServer((args.host, args.port), gl, router, ctx, args.verbose)
    host, port = server.server_address[:2]
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in shown:
        shown = f"[{shown}]"
    url = f"{'https' if ctx else 'http'}://{shown}:{port}"
    gl.base_url = url
    gl.outage_hook = server.take_down

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    serve = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                             name="serve", daemon=True)
    serve.start()

    def sweeper() -> None:
        while not stop.wait(0.5):
            gl.expire_unacked()
    threading.Thread(target=sweeper, name="sweeper", daemon=True).start()

    if args.ready_file:
        write_ready_file(args.ready_file, url)
    print(url, flush=True)

    while not stop.wait(1.0):
        pass
    gl.close()                                  # release long polls
    server.shutdown()
    server.server_close()
    dump_state(gl)
    if tmp_state is not None:
        tmp_state.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
