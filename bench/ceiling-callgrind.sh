#!/usr/bin/env bash
# bench/ceiling-callgrind.sh — server instructions per request, the plain-quinn echo skeleton
# (bench/ceiling.rs) beside quickv's standalone server answering ping and get, counted the same
# way (issue 23): each server runs under callgrind for its whole life, serves exactly N and then
# 2N requests of one client (16 streams x 16 pipelined, ~116-byte frames), and exits cleanly; the
# difference of the two totals over N is the cost of one request, start-up, handshake and exit
# cancelling out. Deterministic whatever the machine's load (valgrind counts user-space
# instructions; the kernel's UDP work is not counted, and it is the same for both).
#
# Usage: bench/ceiling-callgrind.sh [--bin target/release/quickv] [--ceiling PATH] [--requests 10000]
#                                   [--out DIR]
# Prints one line per server and workload: instructions/request, and the ratio to the echo.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/quickv
CEIL=""
N=10000
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift ;;
    --ceiling) CEIL=$2; shift ;;
    --requests) N=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "ceiling-callgrind.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
command -v valgrind >/dev/null || { echo "ceiling-callgrind.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
if [ -z "$CEIL" ]; then
  cargo build --release --features redis --bench ceiling --quiet
  CEIL=$(ls -t target/release/deps/ceiling-* | grep -v '\.d$' | head -n 1)
fi
BIN=$(realpath "$BIN")
CEIL=$(realpath "$CEIL")
WORK=$(mktemp -d /tmp/ceiling-callgrind.XXXXXX)
OUT=${OUT:-$WORK}
mkdir -p "$OUT"
SERVER_PID=""
cleanup() { [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
"$BIN" certs --dir "$WORK/certs" >/dev/null
total_ir() { cat "$@" | awk '/^totals:/ {s += $2} END {print s + 0}'; }

# The echo skeleton: its server exits when the counted run's connection closes.
echo_ir() { # requests -> total Ir of the echo server
  rm -f "$OUT"/echo.$1.*
  QUICKV_CEILING_SERVER_WRAP="valgrind --tool=callgrind --callgrind-out-file=$OUT/echo.$1.%p" \
    timeout 900 "$CEIL" --mode echo --streams 16 --pipeline 16 --requests "$1" >/dev/null 2>"$WORK/echo.log"
  total_ir "$OUT"/echo.$1.*
}

# quickv: a standalone server under callgrind, N requests of one workload, then SIGINT (graceful).
quickv_ir() { # workload requests -> total Ir of the server
  local w=$1 n=$2
  local port
  port=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  rm -f "$OUT"/quickv.$w.$n.*
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT/quickv.$w.$n.%p" \
    "$BIN" server --role standalone --listen "127.0.0.1:$port" --certs "$WORK/certs" \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 600); do
    "$BIN" --server "127.0.0.1:$port" --certs "$WORK/certs" status --json >/dev/null 2>&1 && break
    sleep 0.2
  done
  # `quickv bench` stops sending at --max-requests and ends at --duration.
  timeout 600 "$BIN" --certs "$WORK/certs" bench --target "127.0.0.1:$port" --workload "$w" \
    --keys 10000 --value-size 100 --connections 1 --streams 16 --pipeline 16 --warmup 0s \
    --duration 30s --max-requests "$n" --progress off >/dev/null 2>&1
  kill -INT "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  total_ir "$OUT"/quickv.$w.$n.*
}

a=$(echo_ir "$N"); b=$(echo_ir $((2 * N)))
echo_per=$(((b - a) / N))
echo "echo skeleton server: $echo_per instructions/request (2N-N: $b - $a over $N)"
for w in ping get; do
  a=$(quickv_ir "$w" "$N"); b=$(quickv_ir "$w" $((2 * N)))
  per=$(((b - a) / N))
  ratio=$(python3 -c "print(f'{$per / $echo_per:.2f}')")
  echo "quickv server, $w: $per instructions/request (2N-N: $b - $a over $N), ${ratio}x the echo"
done
