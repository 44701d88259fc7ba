#!/usr/bin/env bash
# Makes sure a Docker engine answers for the Docker executor's tests, and builds the local test
# images (nothing is pulled: no registry is reachable from CI).
#
#   bash scripts/docker-setup.sh          install docker.io if needed, start dockerd if no engine
#                                         answers, build local/busybox and local/gomem if missing
#   bash scripts/docker-setup.sh --stop   stop the dockerd this script started (if any), unless
#                                         another run holds /run/kiln-dockerd/users.lock (.ci/run)
#
# Idempotent. An engine that already answers (the system's, or one this script started earlier)
# is used as it is. The dockerd started here uses the vfs storage driver and no iptables rules,
# which works in nested environments; user-defined bridge networks and their embedded DNS (service
# aliases) work without iptables, only NAT to the outside is missing, which jobs here never need.
set -euo pipefail
cd "$(dirname "$0")/.."

state_dir=/run/kiln-dockerd
pid_file=$state_dir/dockerd.pid
log_file=$state_dir/dockerd.log
sock=/var/run/docker.sock
if [[ "${DOCKER_HOST:-}" == unix://* ]]; then
  sock=${DOCKER_HOST#unix://}
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

ping_engine() {
  [ -S "$sock" ] && curl -fsS --max-time 3 --unix-socket "$sock" http://docker/_ping >/dev/null 2>&1
}

if [ "${1:-}" = "--stop" ]; then
  # Another run (see .ci/run) still using the engine holds a shared lock on this file.
  $sudo mkdir -p "$state_dir"
  exec 9>>"$state_dir/users.lock"
  if ! flock -xn 9; then
    echo "docker-setup: another run still uses dockerd; leaving it running"
    exit 0
  fi
  if [ -f "$pid_file" ]; then
    pid=$(cat "$pid_file")
    if kill -0 "$pid" 2>/dev/null; then
      $sudo kill -TERM "$pid"
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$pid" 2>/dev/null && $sudo kill -KILL "$pid"
      echo "docker-setup: stopped dockerd (pid $pid)"
    fi
    $sudo rm -f "$pid_file"
  fi
  exit 0
fi

packages=(docker.io busybox-static golang-go)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "docker-setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
docker_cli=/usr/bin/docker
[ -x "$docker_cli" ] || docker_cli=$(command -v docker)

if ! ping_engine; then
  if [ "$sock" != /var/run/docker.sock ]; then
    echo "docker-setup: no engine answers on $sock (DOCKER_HOST); not starting one there" >&2
    exit 1
  fi
  $sudo mkdir -p "$state_dir"
  # Debian's package may have left a half-started service behind; a stale socket file would make
  # dockerd refuse to start.
  [ -S "$sock" ] && $sudo rm -f "$sock"
  echo "docker-setup: starting dockerd (vfs, no iptables), log in $log_file"
  # setsid: the daemon must not die with the shell (or CI step) that started it.
  $sudo setsid dockerd --storage-driver=vfs --iptables=false --pidfile "$pid_file" \
    -H "unix://$sock" >"$log_file" 2>&1 </dev/null &
  for _ in $(seq 1 300); do
    ping_engine && break
    sleep 0.1
  done
  if ! ping_engine; then
    echo "docker-setup: dockerd did not answer /_ping within 30 s; its log:" >&2
    tail -n 40 "$log_file" >&2 || true
    exit 1
  fi
fi
echo "docker-setup: engine answers on $sock (API $(curl -fsS -D - -o /dev/null --unix-socket "$sock" http://docker/_ping | tr -d '\r' | awk -F': ' 'tolower($1)=="api-version"{print $2}'))"

dk() { $sudo "$docker_cli" -H "unix://$sock" "$@"; }

has_image() { dk image inspect "$1" >/dev/null 2>&1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

make_busybox_root() {
  local root=$1
  mkdir -p "$root"/{bin,usr/bin,sbin,usr/sbin,etc,tmp,root,home,var/tmp,proc,sys,dev}
  chmod 1777 "$root/tmp" "$root/var/tmp"
  cp /bin/busybox "$root/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list-full); do
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -sf /bin/busybox "$root/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

if ! has_image local/busybox; then
  echo "docker-setup: building local/busybox"
  make_busybox_root "$work/bb"
  tar -C "$work/bb" -c . | dk import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' \
    -c 'CMD ["/bin/sh"]' - local/busybox:latest >/dev/null
fi

# Rebuilt whenever the program's source changes (its hash is a label on the image).
gomem_source=$(sha256sum tests/fixtures/gomem/main.go | cut -c1-16)
gomem_built=$(dk image inspect -f '{{ index .Config.Labels "kiln.source" }}' local/gomem 2>/dev/null || true)
if [ "$gomem_built" != "$gomem_source" ]; then
  echo "docker-setup: building local/gomem"
  make_busybox_root "$work/gm"
  mkdir -p "$work/src"
  cp tests/fixtures/gomem/main.go "$work/src/main.go"
  (cd "$work/src" && HOME="$work" GOCACHE="$work/gocache" GOPATH="$work/gopath" GOFLAGS=-mod=mod \
    CGO_ENABLED=0 go build -trimpath -o "$work/gm/bin/gomem" main.go)
  tar -C "$work/gm" -c . | dk import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' \
    -c 'CMD ["/bin/gomem"]' -c "LABEL kiln.source=$gomem_source" - local/gomem:latest >/dev/null
fi
echo "docker-setup: images local/busybox and local/gomem present"
