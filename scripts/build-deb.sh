#!/usr/bin/env bash
# Builds kiln's Debian package from the release preset:
#   bash scripts/build-deb.sh   →   build/release/packages/kiln_<version>_<arch>.deb
# Install it with `sudo apt install ./build/release/packages/kiln_*.deb`, register a runner
# (`sudo -u kiln kiln register --config /etc/kiln/config.toml ...`), then
# `sudo systemctl enable --now kiln`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)" --target kiln
cd build/release
cpack -G DEB -B "$PWD/packages" >/dev/null
ls -l "$PWD"/packages/kiln_*.deb
