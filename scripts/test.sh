#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: install dependencies, build with
# AddressSanitizer and UndefinedBehaviorSanitizer (preset "dev"; pass "release" for an
# optimised build), run every test with ctest. The Docker tests run against a real engine:
# scripts/docker-setup.sh installs Debian's docker.io and starts dockerd when none answers
# (stop it with `bash scripts/docker-setup.sh --stop`).
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-dev}"
bash scripts/install-deps.sh
# The Docker executor's tests need a real engine and the local test images (no registry).
bash scripts/docker-setup.sh
# The S3 cache tests run against s3rver (npm, pinned) started on loopback.
bash scripts/s3-setup.sh >/dev/null
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j"$(nproc)"
ctest --preset "$preset" -j2
