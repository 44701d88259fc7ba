#!/usr/bin/env bash
# Installs everything kiln needs to build, test and run its demo, from Debian 12 packages only.
# Idempotent: packages already present are not fetched again.
set -euo pipefail

packages=(
  # toolchain
  g++ cmake ninja-build pkg-config
  # libraries (see docs/architecture.md, "Dependencies")
  libboost1.81-dev libboost-url1.81-dev libssl-dev libdeflate-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libtomlplusplus-dev libcli11-dev catch2
  # archives (issue 5): isa-l deflate, libarchive for reading zip/tar and writing tar.zst, zstd
  libisal-dev libarchive-dev libzstd-dev
  # libarchive is linked statically (without its xar support, which would load libxml2 and ICU
  # into every kiln process): the static link needs these -dev packages too
  libacl1-dev liblz4-dev libbz2-dev liblzma-dev nettle-dev zlib1g-dev
  # tests: the GitLab emulator (Python stdlib), git http-backend, test CA generation
  python3 git openssl ca-certificates procps
  # archive tests and benchmark: independent zip/unzip, pigz and zstd to compare and verify with
  zip unzip pigz zstd
  # tests: a strict Prometheus text-format parser (/metrics), systemd-analyze (the unit), dpkg-dev (the .deb)
  python3-prometheus-client systemd dpkg-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
