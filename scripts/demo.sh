#!/usr/bin/env bash
# kiln's main job on a fresh Debian 12 machine: install what is needed, build, start the GitLab
# emulator on loopback (HTTPS), register a runner, run `kiln run` until a sample job finishes,
# and print the job's trace as GitLab stored it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target kiln -j"$(nproc)"
exec python3 scripts/demo.py
