#!/usr/bin/env bash
# The whole test suite on a fresh Debian 12 machine: install dependencies, build with
# AddressSanitizer and UndefinedBehaviorSanitizer (preset "dev"; pass "release" for an
# optimised build), run every test with ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-dev}"
bash scripts/install-deps.sh
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset" -j"$(nproc)"
ctest --preset "$preset" -j2
