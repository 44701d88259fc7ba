#!/usr/bin/env bash
# Builds the release preset (benchmarks included) and runs every benchmark, printing figures.
# docs/benchmarks.md records what they printed on the reference machine.
#
#   bench/run.sh                      build, then run everything
#   KILN_BENCH_NO_BUILD=1 bench/run.sh   run what is already built
#   KILN_BENCH_BUILD_DIR=build/bench bench/run.sh   use another build tree
#   REQUESTS=50000 bench/run.sh       more requests for http_keepalive_bench
#   ARCHIVE_RUNS=5 bench/run.sh       more runs (best taken) for archive_bench
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=${KILN_BENCH_BUILD_DIR:-build/release}
requests=${REQUESTS:-20000}

if [[ -z ${KILN_BENCH_NO_BUILD:-} ]]; then
  cmake --preset release -DKILN_BUILD_BENCH=ON
  cmake --build --preset release -j2
fi

bench_bin=$build/bench/http_keepalive_bench
echo "== $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== http_keepalive_bench (kiln net::http_client, one kept-alive connection)"
"$bench_bin" --requests "$requests" || echo "(http_keepalive_bench: target not met)"

# The same requests from Python's http.client against the same server, as a reference point.
python_reference() { # plain|tls
  local out
  coproc server { "$bench_bin" --serve "$1"; }
  local server_in=${server[1]}
  read -r url ca <&"${server[0]}"
  out=$(python3 - "$url" "$ca" "$requests" <<'EOF'
import http.client, ssl, sys, time, urllib.parse
url, ca, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlsplit(url)
if u.scheme == "https":
    conn = http.client.HTTPSConnection(u.hostname, u.port, context=ssl.create_default_context(cafile=ca))
else:
    conn = http.client.HTTPConnection(u.hostname, u.port)
body = ('{"token":"glcbt-64_pXb3kZq1Yw7cVt9mRn2s","state":"running","pad":"' + "x" * 130 + '"}').encode()
headers = {"Content-Type": "application/json", "JOB-TOKEN": "glcbt-64_pXb3kZq1Yw7cVt9mRn2s"}
def one():
    conn.request("POST", "/api/v4/jobs/5001/trace", body, headers)
    r = conn.getresponse()
    r.read()
    return r.status
for _ in range(500):
    one()
lat = []
start = time.perf_counter()
for _ in range(n):
    t0 = time.perf_counter()
    assert one() == 200
    lat.append((time.perf_counter() - t0) * 1e6)
total = time.perf_counter() - start
lat.sort()
print(f"{u.scheme:5}  requests={n}  requests/s={n / total:.0f}  p50={lat[len(lat) // 2]:.1f}us"
      f"  p99={lat[int(len(lat) * 0.99)]:.1f}us  ({len(body)}-byte body)")
EOF
  )
  exec {server_in}>&-
  wait "$server_PID" 2>/dev/null || true
  echo "$out"
}
echo
echo "== reference: Python $(python3 -c 'import sys; print(sys.version.split()[0])') http.client, one connection, same server"
python_reference plain
python_reference tls

echo
echo "== masking_bench (job-log masking throughput)"
"$build/bench/masking_bench" || echo "(masking_bench failed)"

echo
echo "== trace_path_bench (CPU per MB of a job log's parts: pipe, trace buffer, TLS PATCHes)"
"$build/bench/trace_path_bench" --mb 100 --runs 5 || echo "(trace_path_bench failed)"

echo
echo "== archive_bench (zip of a ~300 MB tree of headers and shared libraries: kiln write_zip, zip -1, pigz)"
"$build/bench/archive_bench" --threads 2 --runs "${ARCHIVE_RUNS:-3}" || echo "(archive_bench failed)"

echo
echo "== signing_bench (the same kind of tree: write_zip with and without the signing trailer, verify_archive)"
"$build/bench/signing_bench" --threads 2 --runs "${ARCHIVE_RUNS:-3}" || echo "(signing_bench failed)"

echo
echo "== rss_idle (kiln run, idle, one TLS connection with a held long poll; then 50 runner entries)"
bench/rss_idle.sh "$build/runner/kiln" || echo "(rss_idle failed)"
RSS_RUNNERS=50 bench/rss_idle.sh "$build/runner/kiln" || echo "(rss_idle, 50 runners, failed)"

# Benchmarks of the whole binary against the emulator, each with its own usage line.
for py in bench/*.py; do
  echo
  echo "== $(basename "$py")"
  python3 "$py" --kiln "$build/runner/kiln" || echo "($(basename "$py") failed)"
done
