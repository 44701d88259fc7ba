#!/usr/bin/env bash
# Resident memory (and CPU) of an idle `kiln run`: config loaded, one TLS connection to GitLab
# (the emulator) per [[runners]] entry, each holding a long poll (jobs/request).
#
#   bench/rss_idle.sh [KILN_BINARY]                 default: build/release/runner/kiln
#   RSS_RUNNERS=50 bench/rss_idle.sh [KILN_BINARY]  issue 6: 50 entries, 50 s polls, 60 s CPU window
#
# Environment:
#   RSS_RUNNERS (default 1): [[runners]] entries, each with its own runner token. With more than
#     one, the defaults below change to the issue 6 benchmark (RSS_LONG_POLL=50, RSS_CYCLES=0,
#     RSS_CPU_SECONDS=60, target VmRSS <= 8 MiB instead of 6 MiB).
#   RSS_LONG_POLL (default 10): seconds the emulator holds each jobs/request (GitLab: ~50).
#   RSS_SETTLE_SECONDS (default 3): wait after every poll is held before the first reading,
#     so start-up work that finishes asynchronously (kiln trims memory 2 s after start) is over.
#   RSS_CPU_SECONDS (default 0): window over which kiln's CPU time (utime+stime) is measured
#     after the first reading (target <= 0.1% of one core); 0 skips it.
#   RSS_CYCLES (default 2): long-poll cycles to let pass before the last reading; 0 skips it.
#   RSS_DETAILS=1: also list resident memory by mapping.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kiln=${1:-$root/build/release/runner/kiln}
runners=${RSS_RUNNERS:-1}
settle=${RSS_SETTLE_SECONDS:-3}
if ((runners > 1)); then
  long_poll=${RSS_LONG_POLL:-50}
  cycles=${RSS_CYCLES:-0}
  cpu_seconds=${RSS_CPU_SECONDS:-60}
  concurrent=4
  target_mib=8
else
  long_poll=${RSS_LONG_POLL:-10}
  cycles=${RSS_CYCLES:-2}
  cpu_seconds=${RSS_CPU_SECONDS:-0}
  concurrent=1
  target_mib=6
fi
target_kib=$((target_mib * 1024))

if ! "$kiln" run --help >/dev/null 2>&1; then
  echo "rss_idle: $kiln has no working 'run' command (build it first)" >&2
  exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-rss-idle.XXXXXX")
emulator_pid=
kiln_pid=
cleanup() {
  if [[ -n $kiln_pid ]]; then
    kill -KILL "$kiln_pid" 2>/dev/null || true
    wait "$kiln_pid" 2>/dev/null || true
  fi
  if [[ -n $emulator_pid ]]; then
    kill -TERM "$emulator_pid" 2>/dev/null || true
    wait "$emulator_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

die() {
  echo "rss_idle: $*" >&2
  for f in "$work/emulator.log" "$work/kiln.log"; do
    [[ -s $f ]] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
  done
  exit 1
}

# Polls a condition; used only against the external processes this script starts.
wait_until() { # seconds description command...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@"; do
    ((SECONDS < deadline)) || die "timed out waiting for $what"
    sleep 0.1
  done
}

bash "$root/tests/emulator/make_certs.sh" "$work/certs"
ca=$work/certs/ca.pem

python3 "$root/tests/emulator/gitlab_emulator.py" \
  --tls-cert "$work/certs/server.pem" --tls-key "$work/certs/server-key.pem" \
  --ready-file "$work/ready" --long-poll "$long_poll" >"$work/emulator.log" 2>&1 &
emulator_pid=$!
wait_until 20 "the emulator to start" test -s "$work/ready"
url=$(head -n 1 "$work/ready")

control() { # method path [json]
  curl -fsS --cacert "$ca" -X "$1" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "$url/__emulator$2"
}

cat >"$work/config.toml" <<EOF
concurrent = $concurrent
check_interval = 3
shutdown_timeout = 0
EOF
for i in $(seq 1 "$runners"); do
  token=$(control POST /runners '{"kind":"glrt"}' | jq -r .token)
  [[ -n $token && $token != null ]] || die "the emulator did not create a runner"
  name=rss-idle
  ((runners > 1)) && name=rss-idle-$i
  cat >>"$work/config.toml" <<EOF

[[runners]]
  name = "$name"
  url = "$url"
  token = "$token"
  tls-ca-file = "$ca"
  executor = "shell"
  builds_dir = "$work/builds"
EOF
done

"$kiln" run --config "$work/config.toml" >"$work/kiln.log" 2>&1 &
kiln_pid=$!

# The first jobs/request of each runner carries no last_update and is answered at once; the
# next one is held. Every runner's poll must be held at the same time (the no-starvation design
# keeps one poll per entry open regardless of `concurrent`).
held_runners() {
  control GET '/requests?path=/api/v4/jobs/request' |
    jq '[.[] | select(.status == null) | .json.token] | unique | length'
}
held() {
  kill -0 "$kiln_pid" 2>/dev/null || die "kiln exited"
  (($(held_runners) >= runners))
}
wait_until $((30 + runners)) "all $runners long polls to be held" held
sleep "$settle"

mib() { awk -v k="$1" 'BEGIN {printf "%.2f", k / 1024}'; }
polls() { control GET '/requests?path=/api/v4/jobs/request' | jq length; }

report() { # label
  kill -0 "$kiln_pid" 2>/dev/null || die "kiln exited"
  local status=/proc/$kiln_pid/status vm_rss vm_hwm rss_anon rss_file ps_rss sockets
  vm_rss=$(awk '/^VmRSS:/ {print $2}' "$status")
  vm_hwm=$(awk '/^VmHWM:/ {print $2}' "$status")
  rss_anon=$(awk '/^RssAnon:/ {print $2}' "$status")
  rss_file=$(awk '/^RssFile:/ {print $2}' "$status")
  ps_rss=$(ps -o rss= -p "$kiln_pid" | tr -d ' ')
  sockets=$(find "/proc/$kiln_pid/fd" -lname 'socket:*' 2>/dev/null | wc -l)
  echo "$1"
  echo "  VmRSS     ${vm_rss} KiB ($(mib "$vm_rss") MiB): RssAnon ${rss_anon} KiB, RssFile ${rss_file} KiB"
  echo "  VmHWM     ${vm_hwm} KiB ($(mib "$vm_hwm") MiB)"
  echo "  ps -o rss ${ps_rss} KiB"
  echo "  sockets open: $sockets; runners with a held poll: $(held_runners); jobs/request sent so far: $(polls)"
  if ((vm_rss <= target_kib)); then
    echo "  target VmRSS <= $target_mib MiB: met"
  else
    echo "  target VmRSS <= $target_mib MiB: NOT met"
  fi
  if [[ ${RSS_DETAILS:-0} == 1 ]]; then
    echo "  resident KiB by mapping (from /proc/PID/smaps, largest first):"
    awk '/^[0-9a-f]+-[0-9a-f]+ / {name = NF >= 6 ? $NF : "[anon]"; next}
         /^Rss:/ {rss[name] += $2}
         END {for (n in rss) if (rss[n] > 0) printf "    %8d  %s\n", rss[n], n}' \
      "/proc/$kiln_pid/smaps" | sort -n -r | head -n 12
  fi
}

report "kiln run (pid $kiln_pid), $runners runner(s), every long poll held over TLS, ${settle}s after"

if ((cpu_seconds > 0)); then
  # utime + stime from /proc/PID/stat (fields 14 and 15, clock ticks).
  cpu_ticks() { awk '{print $14 + $15}' "/proc/$kiln_pid/stat"; }
  hz=$(getconf CLK_TCK)
  t0=$(cpu_ticks)
  p0=$(polls)
  sleep "$cpu_seconds"
  t1=$(cpu_ticks)
  p1=$(polls)
  pct=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v s="$cpu_seconds" 'BEGIN {printf "%.3f", 100 * t / hz / s}')
  echo
  echo "CPU over ${cpu_seconds}s idle: $((t1 - t0)) ticks of 1/${hz} s = ${pct}% of one core; jobs/request in the window: $((p1 - p0))"
  if awk -v p="$pct" 'BEGIN {exit !(p <= 0.1)}'; then
    echo "  target CPU <= 0.1% of one core: met"
  else
    echo "  target CPU <= 0.1% of one core: NOT met"
  fi
  echo
  report "after the CPU window"
fi

# Real GitLab answers a held poll with 204 after ~50 s and kiln polls again; the pages that
# cycle touches are part of the idle footprint too.
if ((cycles > 0)); then
  first=$(polls)
  more_polls() { (($(polls) >= first + cycles * runners)) && held; }
  wait_until $((cycles * (long_poll + 5) + 10)) "$cycles more long-poll cycles" more_polls
  sleep 1
  echo
  report "after $cycles more long-poll cycles (${long_poll}s each), polls held again"
fi
