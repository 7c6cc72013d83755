#!/usr/bin/env bash
# bench/callgrind.sh — instructions per request, server and client, deterministic whatever the
# machine's load (issue 23). A standalone `quickv server` runs under callgrind; after a warm-up
# (handshake, preload, first allocations) its counters are zeroed, `quickv bench` sends exactly N
# pipelined requests (16 streams x 16 in flight, `--max-requests N`), and the server's counters are
# dumped: Ir / N is the server's cost per request. The client is measured the same way on its own
# side, as the difference of two runs (N and 2N requests) so that its start-up and handshake cancel.
#
# `quickv bench` runs until --duration even when --max-requests stops it earlier, so each run's
# duration is fixed (20 s: N = 10-20k requests finish well inside it under callgrind).
#
# Usage: bench/callgrind.sh [--bin target/release/quickv] [--requests 20000] [--workloads "ping get"]
#                           [--out DIR] (keeps callgrind.out.* there for callgrind_annotate)
# Prints one line per workload and side: instructions per request.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/quickv
N=20000
WORKLOADS="ping get"
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift ;;
    --requests) N=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "callgrind.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
BIN=$(realpath "$BIN")
WORK=$(mktemp -d /tmp/callgrind.XXXXXX)
OUT=${OUT:-$WORK}
mkdir -p "$OUT"
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
"$BIN" certs --dir "$WORK/certs" >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
total_ir() { # callgrind output files -> summed Ir
  cat "$@" | awk '/^totals:/ {s += $2} END {print s}'
}
bench() { # workload requests [extra]
  local w=$1 n=$2; shift 2
  timeout 600 "$@" "$BIN" --certs "$WORK/certs" bench --target "127.0.0.1:$PORT" --workload "$w" \
    --keys 10000 --value-size 100 --connections 1 --streams 16 --pipeline 16 --warmup 0s \
    --duration "$DUR" --max-requests "$n" --progress off --no-preload >/dev/null 2>&1
}

for w in $WORKLOADS; do
  rm -f "$OUT"/callgrind.server.$w.*
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.server.$w.%p" \
    "$BIN" server --role standalone --listen "127.0.0.1:$PORT" --certs "$WORK/certs" \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 600); do
    "$BIN" --server "127.0.0.1:$PORT" --certs "$WORK/certs" status --json >/dev/null 2>&1 && break
    sleep 0.2
  done
  # Warm-up: the keyspace the gets read, and a first round of every allocation.
  timeout 600 "$BIN" --certs "$WORK/certs" bench --target "127.0.0.1:$PORT" --workload get \
    --keys 10000 --value-size 100 --streams 16 --pipeline 16 --warmup 0s --duration 15s \
    --max-requests 2000 --progress off >/dev/null 2>&1
  DUR=5s bench "$w" 2000
  callgrind_control -z "$SERVER_PID" >/dev/null
  DUR=20s bench "$w" "$N"
  callgrind_control -d "$SERVER_PID" >/dev/null
  kill -INT "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  # The dump after the zero holds the N requests (the final dump at exit: the shutdown only).
  dump=$(ls -t "$OUT"/callgrind.server.$w.*.1 2>/dev/null | head -n 1 || true)
  [ -z "$dump" ] && dump=$(ls "$OUT"/callgrind.server.$w.* | head -n 1)
  ir=$(total_ir "$dump")
  echo "server $w: $((ir / N)) instructions/request ($ir over $N; $dump)"

  # Client: the difference of N and 2N requests against a plain (not instrumented) server.
  RUST_LOG=warn "$BIN" server --role standalone --listen "127.0.0.1:$PORT" --certs "$WORK/certs" \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    "$BIN" --server "127.0.0.1:$PORT" --certs "$WORK/certs" status --json >/dev/null 2>&1 && break
    sleep 0.1
  done
  timeout 120 "$BIN" --certs "$WORK/certs" bench --target "127.0.0.1:$PORT" --workload get \
    --keys 10000 --value-size 100 --streams 16 --pipeline 16 --warmup 0s --duration 2s \
    --max-requests 2000 --progress off >/dev/null 2>&1
  rm -f "$OUT"/callgrind.client.$w.*
  DUR=20s bench "$w" "$N" valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.client.$w.1x"
  DUR=20s bench "$w" $((2 * N)) valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.client.$w.2x"
  a=$(total_ir "$OUT/callgrind.client.$w.1x"); b=$(total_ir "$OUT/callgrind.client.$w.2x")
  echo "client $w: $(((b - a) / N)) instructions/request (2N-N: $b - $a over $N)"
  kill -INT "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
done
