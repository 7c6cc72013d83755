#!/usr/bin/env bash
# bench/flame.sh — flame graphs of one quickv request path (issue 23): a standalone server and the
# load generator (`quickv bench`, i.e. the client library), each recorded with `perf record` over
# the same few seconds at 16 streams x 16 pipelined (or --streams x --pipeline, e.g. 1 x 1 for the
# depth-1 path), folded and drawn with inferno.
#
# Usage: bench/flame.sh [--bin target/release/quickv] [--workload ping|get] [--duration 4s]
#                       [--label NAME] [--out docs/flame] [--streams 16] [--pipeline 16]
# Writes, per process (server, client): NAME-PROCESS.svg (the flame graph), NAME-PROCESS.folded
# (the folded stacks) and NAME-PROCESS.top.txt (the 40 hottest frames by self samples, and the
# share of the process's samples under a few frames of interest). Prints the top lines.
#
# inferno (inferno-collapse-perf, inferno-flamegraph) is installed on first use with
# `cargo install inferno --root target/tools`, never into the system. perf is /usr/bin/perf;
# call graphs are DWARF-unwound (release builds carry no frame pointers), 8 KiB of stack per
# sample at 499 Hz to keep the data small; frames under 0.1 % of a process are left out of the SVG
# (not of the .folded file). Loopback only; the server is killed by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/quickv
WORKLOAD=ping
DURATION=4s
LABEL=""
OUT=docs/flame
STREAMS=16
PIPELINE=16
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift ;;
    --workload) WORKLOAD=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --label) LABEL=$2; shift ;;
    --out) OUT=$2; shift ;;
    --streams) STREAMS=$2; shift ;;
    --pipeline) PIPELINE=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "flame.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
LABEL=${LABEL:-$WORKLOAD}
PERF=${PERF:-/usr/bin/perf}
TOOLS=$(pwd)/target/tools
if [ ! -x "$TOOLS/bin/inferno-flamegraph" ]; then
  echo "flame.sh: installing inferno into $TOOLS" >&2
  timeout 900 cargo install inferno --root "$TOOLS" --locked --quiet
fi
BIN=$(realpath "$BIN")
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/quickv-flame.XXXXXX)
SPID=""
cleanup() { [ -n "$SPID" ] && kill "$SPID" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
"$BIN" certs --dir "$WORK/certs" >/dev/null
ADDR=127.0.0.1:$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$BIN" --certs "$WORK/certs" server --role standalone --listen "$ADDR" >"$WORK/server.log" 2>&1 &
SPID=$!
for _ in $(seq 1 200); do grep -q listening "$WORK/server.log" 2>/dev/null && break; sleep 0.05; done
grep -q listening "$WORK/server.log" || { echo "flame.sh: the server did not start" >&2; exit 1; }
# The keyspace the gets read.
timeout 120 "$BIN" --certs "$WORK/certs" --server "$ADDR" bench --workload get --keys 100000 \
  --streams 16 --pipeline 16 --warmup 0s --duration 1s --max-requests 1000 --progress off >/dev/null 2>&1 || true

secs=${DURATION%s}
# The server is recorded for the generator's measured span (after its 1 s warm-up).
( sleep 1; timeout $((secs + 30)) "$PERF" record -q -F 499 --call-graph dwarf,8192 -p "$SPID" \
    -o "$WORK/server.data" -- sleep "$secs" >/dev/null 2>&1 ) &
REC=$!
timeout $((secs + 60)) "$PERF" record -q -F 499 --call-graph dwarf,8192 -o "$WORK/client.data" -- \
  "$BIN" --certs "$WORK/certs" --server "$ADDR" bench --workload "$WORKLOAD" --keys 100000 \
  --no-preload --streams "$STREAMS" --pipeline "$PIPELINE" --warmup 1s --duration "$DURATION" --progress off \
  --json >"$WORK/bench.json" 2>/dev/null
wait "$REC" || true
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('flame.sh: %s %.0f ops/s' % (sys.argv[2], d['total']['ops_per_sec']))" \
  "$WORK/bench.json" "$LABEL" >&2 || true

for side in server client; do
  base="$OUT/$LABEL-$side"
  "$PERF" script -i "$WORK/$side.data" 2>/dev/null | "$TOOLS/bin/inferno-collapse-perf" >"$base.folded"
  "$TOOLS/bin/inferno-flamegraph" --minwidth 0.1 --title "quickv $LABEL: $side ($STREAMS x $PIPELINE)" <"$base.folded" >"$base.svg"
  python3 bench/flame-summary.py "$base.folded" \
    'quickv_client' 'quickv_server' 'quickv_proto' 'quickv::bench' 'quinn_proto' 'quinn::' 'ring::' 'tokio::' '[unknown]' 'entry_SYSCALL' 'malloc' 'free' 'memcpy' 'memmove' >"$base.top.txt"
  echo "== $base ($(du -k "$base.svg" | cut -f1) KiB svg)"
  head -n 28 "$base.top.txt"
done
