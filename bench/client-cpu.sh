#!/usr/bin/env bash
# bench/client-cpu.sh — CPU time per request of the load generator (`quickv bench`, i.e. the
# quickv_client call path) and of the server, A/B between two generator binaries, interleaved.
#
# Usage: bench/client-cpu.sh --new BIN --base BIN [--server BIN] [--rounds 3] [--duration 3s]
#                            [--workloads "ping get"]
#   --new, --base  the two binaries whose `quickv bench` drives the load
#   --server       the binary of the one standalone server both drive (default: --new)
#
# Per round and workload, each generator (order alternating per round) runs 16 streams × 16 in
# flight for --duration with no warm-up against the same standalone server (get: 100k keys,
# preloaded once before the first round). Printed per run: answered requests, generator CPU
# (user+system, from getrusage of the child) in µs per request, server CPU in µs per request
# (/proc/PID/stat around the run), and throughput. The last column of each round is new/base.
# Loopback only; every run is bounded by `timeout`; the server is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
NEW=""; BASE=""; SERVER=""; ROUNDS=3; DURATION=3s; WORKLOADS="ping get"
while [ $# -gt 0 ]; do
  case "$1" in
    --new) NEW=$2; shift ;;
    --base) BASE=$2; shift ;;
    --server) SERVER=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "client-cpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$NEW" ] && [ -x "$BASE" ] || { echo "client-cpu.sh: --new and --base binaries are required" >&2; exit 2; }
SERVER=${SERVER:-$NEW}

WORK=$(mktemp -d /tmp/quickv-client-cpu.XXXXXX)
SPID=""
cleanup() { [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
"$SERVER" certs --dir "$WORK/certs" >/dev/null
ADDR=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$SERVER" --certs "$WORK/certs" server --role standalone --listen "$ADDR" >"$WORK/server.log" 2>&1 &
SPID=$!
for _ in $(seq 1 200); do grep -q listening "$WORK/server.log" 2>/dev/null && break; sleep 0.05; done
grep -q listening "$WORK/server.log" || { echo "client-cpu.sh: the server did not start" >&2; cat "$WORK/server.log" >&2; exit 1; }
server_ticks() { awk '{print $14 + $15}' "/proc/$SPID/stat"; }
TICK=$(getconf CLK_TCK)

# Preload the get keyspace once.
timeout 120 "$NEW" --certs "$WORK/certs" --server "$ADDR" bench --workload get --keys 100000 \
  --streams 16 --pipeline 16 --warmup 0s --duration 1s --max-requests 1000 --json >/dev/null 2>&1 || true

run() { # generator workload -> "answered client_us server_us ops_per_sec"
  local gen=$1 wl=$2 before after
  before=$(server_ticks)
  python3 - "$gen" "$WORK" "$ADDR" "$wl" "$DURATION" <<'EOF' >"$WORK/run.txt"
import json, resource, subprocess, sys
gen, work, addr, wl, duration = sys.argv[1:]
cmd = ["timeout", "60", gen, "--certs", f"{work}/certs", "--server", addr, "bench", "--workload", wl,
       "--keys", "100000", "--no-preload", "--streams", "16", "--pipeline", "16", "--warmup", "0s",
       "--duration", duration, "--json"]
out = subprocess.run(cmd, capture_output=True, text=True)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
try:
    d = json.loads(out.stdout)
    answered = d["total"]["count"] if "count" in d["total"] else round(d["total"]["ops_per_sec"] * d["measured_seconds"])
    ops = d["total"]["ops_per_sec"]
except Exception:
    answered, ops = 0, 0
print(answered, ru.ru_utime + ru.ru_stime, ops)
EOF
  after=$(server_ticks)
  read -r answered cpu ops <"$WORK/run.txt"
  python3 -c "import sys
a, cpu, ticks, tick, ops = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
print(int(a), '%.2f' % (cpu * 1e6 / a) if a else '-', '%.2f' % (ticks / tick * 1e6 / a) if a else '-', int(ops))" \
    "$answered" "$cpu" "$((after - before))" "$TICK" "$ops"
}

echo "# $(date -u +%FT%TZ) new=$NEW base=$BASE server=$SERVER duration=$DURATION load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-5s %-5s %-5s %9s %10s %10s %9s\n' round wl set answered cli_us/req srv_us/req ops/s
for r in $(seq 1 "$ROUNDS"); do
  for wl in $WORKLOADS; do
    order="new base"; [ $((r % 2)) = 0 ] && order="base new"
    declare -A RES=()
    for set in $order; do
      gen=$NEW; [ "$set" = base ] && gen=$BASE
      RES[$set]=$(run "$gen" "$wl")
      # shellcheck disable=SC2086
      printf '%-5s %-5s %-5s %9s %10s %10s %9s\n' "$r" "$wl" "$set" ${RES[$set]}
    done
    python3 -c "import sys
n, b = sys.argv[1].split(), sys.argv[2].split()
f = lambda x: float(x) if x not in ('-', '') else 0.0
print('%-5s %-5s %-5s %9s %10s %10s %9s' % (sys.argv[3], sys.argv[4], 'n/b', '',
      '%.2f' % (f(n[1]) / f(b[1])) if f(b[1]) else '-', '%.2f' % (f(n[2]) / f(b[2])) if f(b[2]) else '-',
      '%.2f' % (f(n[3]) / f(b[3])) if f(b[3]) else '-'))" "${RES[new]}" "${RES[base]}" "$r" "$wl"
  done
done
