#!/usr/bin/env bash
# bench/yardstick.sh — issue 23's side-by-side, in one window: the plain-quinn ceiling
# (bench/ceiling.rs: echo and relay), quickv (ping, get, replicated insert) and Redis with TLS
# driven by its own tool (redis-benchmark), in interleaved rounds so that a change in the
# machine's background load hits every series alike. Prints every figure, the ratios the goals
# are stated in, and the CPU each server process spent per request (from /proc, utime + stime).
#
# Usage: bench/yardstick.sh [--rounds 3] [--duration 3s] [--requests 2000000]
#   --rounds N       interleaved rounds (default 3)
#   --duration T     measured time per quickv/ceiling run (default 3s; warm-up 1s)
#   --requests N     requests per redis-benchmark run (default 2000000: a few seconds)
#   --bin PATH       the quickv binary to measure (default: build target/release/quickv)
#   --ceiling PATH   the ceiling bench binary (default: build it)
#
# Shapes: 16 streams x 16 pipelined on one connection (quickv, ceiling); redis-benchmark -c 16
# -P 16 (16 connections, 16 pipelined: the same 256 in flight); insert also at 64 in flight
# (4 x 16) beside Redis SET + WAIT 1 (the `redis` crate through quickv's generator: redis-benchmark
# cannot pair a write with WAIT); depth 1 (1 x 1) for the p50 of get against the echo's.
# Everything listens on 127.0.0.1 only; every process it starts is killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
ROUNDS=3
DURATION=3s
REQUESTS=2000000
Q=""
CEIL=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --requests) REQUESTS=$2; shift ;;
    --bin) Q=$(realpath "$2"); shift ;;
    --ceiling) CEIL=$(realpath "$2"); shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "yardstick.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
say() { echo "yardstick: $*" >&2; }

command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null || {
  say "redis-server/redis-benchmark missing: installing with apt"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
}
if [ -z "$Q" ]; then
  cargo build --release --features redis --quiet
  Q="$ROOT/target/release/quickv"
fi
if [ -z "$CEIL" ]; then
  cargo build --release --features redis --bench ceiling --quiet
  CEIL=$(ls -t "$ROOT"/target/release/deps/ceiling-* | grep -v '\.d$' | head -n 1)
fi

OUT=$(mktemp -d /tmp/yardstick.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CERTS="$OUT/certs"
"$Q" certs --dir "$CERTS" >/dev/null

# Redis primary + replica, TLS only, no persistence.
R1=$(free_port); R2=$(free_port)
redis_start() { # port [replicaof-port]
  local port=$1 args=()
  [ -n "${2:-}" ] && args=(--replicaof 127.0.0.1 "$2")
  redis-server --port 0 --tls-port "$port" --bind 127.0.0.1 \
    --tls-cert-file "$CERTS/server.pem" --tls-key-file "$CERTS/server.key" \
    --tls-ca-cert-file "$CERTS/ca.pem" --tls-auth-clients yes --tls-replication yes \
    --save '' --appendonly no --dir "$OUT" --daemonize no --logfile "$OUT/redis-$port.log" "${args[@]}" &
  PIDS+=($!)
}
TLS_ARGS=(--tls --cert "$CERTS/client.pem" --key "$CERTS/client.key" --cacert "$CERTS/ca.pem")
redis_start "$R1"; REDIS_PID=${PIDS[-1]}
redis_start "$R2" "$R1"
for _ in $(seq 100); do
  redis-cli "${TLS_ARGS[@]}" -h 127.0.0.1 -p "$R2" info replication 2>/dev/null | grep -q 'master_link_status:up' && break
  sleep 0.1
done

# A quickv pair.
P1=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
P2=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$Q" server --role backup --listen "127.0.0.1:$P2" --peer "127.0.0.1:$P1" --certs "$CERTS" >"$OUT/backup.log" 2>&1 &
PIDS+=($!); BACKUP_PID=$!
RUST_LOG=warn "$Q" server --role primary --listen "127.0.0.1:$P1" --peer "127.0.0.1:$P2" --certs "$CERTS" >"$OUT/primary.log" 2>&1 &
PIDS+=($!); PRIMARY_PID=$!
for _ in $(seq 200); do
  "$Q" --server "127.0.0.1:$P1" --certs "$CERTS" status --json 2>/dev/null | grep -q '"state": "sync"' && break
  sleep 0.1
done
"$Q" --server "127.0.0.1:$P1" --certs "$CERTS" status --json | grep -q '"state": "sync"' || { say "the quickv pair did not reach sync"; exit 1; }

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
RESULTS="$OUT/results.tsv"
# record ROUND SERIES OPS_PER_SEC P50_US CPU_US_PER_REQ(server-side, or -) P99_US
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS"; }

ceiling() { # round streams pipeline suffix
  local json="$OUT/ceiling-$1-$4.json"
  timeout 120 "$CEIL" --mode both --streams "$2" --pipeline "$3" --warmup 1s --duration "$DURATION" --json "$json" >/dev/null
  python3 - "$json" "$1" "$4" >>"$RESULTS" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    print(f"{sys.argv[2]}\t{r['mode']}{sys.argv[3]}\t{r['ops_per_sec']:.0f}\t{r['p50_us']:.1f}\t-\t{r['p99_us']:.1f}")
PY
}

quickv() { # round workload streams pipeline suffix [extra]
  local round=$1 w=$2 s=$3 d=$4 suffix=$5; shift 5
  local before_p before_b after_p after_b json="$OUT/quickv-$round-$w$suffix.json"
  before_p=$(cpu_ticks "$PRIMARY_PID"); before_b=$(cpu_ticks "$BACKUP_PID")
  "$Q" --certs "$CERTS" bench --target "127.0.0.1:$P1" --workload "$w" --keys 100000 --value-size 100 \
    --connections 1 --streams "$s" --pipeline "$d" --warmup 1s --duration "$DURATION" --progress off \
    --json "$@" >"$json" 2>"$OUT/bench-$round-$w$suffix.err"
  after_p=$(cpu_ticks "$PRIMARY_PID"); after_b=$(cpu_ticks "$BACKUP_PID")
  python3 - "$json" "$round" "$w$suffix" "$((after_p - before_p + after_b - before_b))" "$TICK" >>"$RESULTS" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
total = doc["total"]
ops, p50, p99 = total["ops_per_sec"], total["latency_us"]["p50"], total["latency_us"]["p99"]
# Server CPU covers the warm-up (1 s) too: requests over the whole run at the measured rate.
answered = ops * (doc["measured_seconds"] + 1.0)
ticks, hz = int(sys.argv[4]), int(sys.argv[5])
cpu = f"{ticks / hz * 1e6 / answered:.2f}" if answered else "-"
print(f"{sys.argv[2]}\tquickv-{sys.argv[3]}\t{ops:.0f}\t{p50:.1f}\t{cpu}\t{p99:.1f}")
PY
}

redis_bench() { # round test
  local before after line
  before=$(cpu_ticks "$REDIS_PID")
  line=$(redis-benchmark "${TLS_ARGS[@]}" -h 127.0.0.1 -p "$R1" -t "$2" -c 16 -P 16 -d 100 -r 100000 \
    -n "$REQUESTS" --csv 2>/dev/null | grep -i "\"$2\"" | head -n 1)
  after=$(cpu_ticks "$REDIS_PID")
  python3 - "$1" "$2" "$line" "$((after - before))" "$TICK" "$REQUESTS" >>"$RESULTS" <<'PY'
import sys
round_, test, line, ticks, hz, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
cells = [c.strip('"') for c in line.split(",")]
# CSV columns: test, rps, avg, min, p50, p95, p99, max (latencies in ms)
ops = float(cells[1])
p50 = float(cells[4]) * 1000 if len(cells) > 4 else 0.0
p99 = float(cells[6]) * 1000 if len(cells) > 6 else 0.0
print(f"{round_}\tredis-benchmark-{test.lower()}\t{ops:.0f}\t{p50:.1f}\t{ticks / hz * 1e6 / n:.2f}\t{p99:.1f}")
PY
}

# Preload the keyspace the gets read (once).
"$Q" --certs "$CERTS" bench --target "127.0.0.1:$P1" --workload get --keys 100000 --value-size 100 \
  --duration 100ms --warmup 0s --progress off >/dev/null 2>&1
redis-benchmark "${TLS_ARGS[@]}" -h 127.0.0.1 -p "$R1" -t set -c 16 -P 16 -d 100 -r 100000 -n 200000 -q >/dev/null 2>&1 || true

for round in $(seq "$ROUNDS"); do
  say "round $round of $ROUNDS"
  ceiling "$round" 16 16 ""
  quickv "$round" ping 16 16 "" --no-preload
  quickv "$round" get 16 16 "" --no-preload
  quickv "$round" insert 16 16 ""
  redis_bench "$round" GET
  redis_bench "$round" SET
  quickv "$round" insert 4 16 "-64"
  "$Q" --certs "$CERTS" bench --target "rediss://127.0.0.1:$R1" --workload insert --keys 100000 \
    --value-size 100 --connections 1 --streams 64 --pipeline 1 --redis-wait 1 --warmup 1s \
    --duration "$DURATION" --progress off --json >"$OUT/redis-wait-$round.json" 2>/dev/null || true
  python3 - "$OUT/redis-wait-$round.json" "$round" >>"$RESULTS" <<'PY' || true
import json, sys
total = json.load(open(sys.argv[1]))["total"]
lat = total["latency_us"]
print(f"{sys.argv[2]}\tredis-set-wait1-64\t{total['ops_per_sec']:.0f}\t{lat['p50']:.1f}\t-\t{lat['p99']:.1f}")
PY
  ceiling "$round" 1 1 "-d1"
  quickv "$round" get 1 1 "-d1" --no-preload
done

python3 - "$RESULTS" <<'PY'
import sys, collections
rows = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    r, series, ops, p50, cpu, p99 = line.rstrip("\n").split("\t")
    rows[r][series] = (float(ops), float(p50), cpu, float(p99))
print("| round | series | ops/s | p50 µs | p99 µs | server CPU µs/req |")
print("|---|---|---|---|---|---|")
for r in sorted(rows):
    for s, (ops, p50, cpu, p99) in sorted(rows[r].items()):
        print(f"| {r} | {s} | {ops:,.0f} | {p50:.1f} | {p99:.1f} | {cpu} |")
goals = [
    ("ping ≥ 0.8 × echo", "quickv-ping", "echo", 0.8, "ops"),
    ("get ≥ 0.6 × echo", "quickv-get", "echo", 0.6, "ops"),
    ("insert ≥ 0.5 × relay", "quickv-insert", "relay", 0.5, "ops"),
    ("get ≥ 1.0 × redis-benchmark GET", "quickv-get", "redis-benchmark-get", 1.0, "ops"),
    ("insert@64 ≥ 5 × Redis SET+WAIT 1@64", "quickv-insert-64", "redis-set-wait1-64", 5.0, "ops"),
    ("depth-1 get p50 ≤ 1.10 × echo p50", "quickv-get-d1", "echo-d1", 1.10, "p50"),
    ("insert@64 p99 < Redis SET+WAIT 1@64 p99", "quickv-insert-64", "redis-set-wait1-64", 1.0, "p99"),
]
print()
print("| goal | ratio per round | met? |")
print("|---|---|---|")
for name, a, b, goal, kind in goals:
    ratios = []
    for r in sorted(rows):
        if a in rows[r] and b in rows[r] and rows[r][b][0] > 0:
            column = {"ops": 0, "p50": 1, "p99": 3}[kind]
            x = rows[r][a][column] / rows[r][b][column] if rows[r][b][column] > 0 else float("inf")
            ratios.append(x)
    if not ratios:
        print(f"| {name} | (missing) | ? |"); continue
    med = sorted(ratios)[len(ratios) // 2]
    met = med >= goal if kind == "ops" else (med < goal if kind == "p99" else med <= goal)
    print(f"| {name} | {', '.join(f'{x:.2f}' for x in ratios)} (median {med:.2f}) | {'met' if met else 'missed'} |")
PY
say "raw figures: $RESULTS"
