#!/usr/bin/env bash
# The S3-compatible server the cache tests start on loopback: s3rver from the npm registry,
# at the versions pinned by tests/s3rver/package-lock.json, installed into a project-local
# directory (default .deps/s3rver, or $KILN_S3RVER_DIR). Node.js and npm come from Debian when
# missing. Idempotent: an installation matching the lock file is left alone. Prints the path of
# the s3rver executable.
set -euo pipefail
cd "$(dirname "$0")/.."
src="$PWD/tests/s3rver"
dir="${KILN_S3RVER_DIR:-$PWD/.deps/s3rver}"
bin="$dir/node_modules/.bin/s3rver"

if [ -x "$bin" ] && cmp -s "$src/package-lock.json" "$dir/package-lock.json"; then
  echo "$bin"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

mkdir -p "$dir"
cp "$src/package.json" "$src/package-lock.json" "$dir/"
# npm ci installs exactly the lock file's versions (checked against their integrity hashes).
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
[ -x "$bin" ] || { echo "s3-setup: npm installed no s3rver into $dir" >&2; exit 1; }
echo "$bin"
