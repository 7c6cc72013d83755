#!/usr/bin/env bash
# bench/depth1-ab.sh — depth-1 A/B of two client (generator) binaries against one server, with
# the plain-quinn echo's depth-1 p50 beside each run (issue 23's "depth-1 get p50 within 10 % of
# the echo's"), and the generator's CPU per request.
#
# Usage: [DUR=3s] bench/depth1-ab.sh CEILING SERVER_BIN BASE_BIN NEW_BIN [ROUNDS=5]
# One standalone server (SERVER_BIN, 100k keys preloaded); per round, for each client in
# alternating order: the ceiling's echo at 1 x 1, then that client's `bench --workload get` at
# 1 x 1 (no warm-up). Prints echo p50, get p50, their ratio, ops/s, and the generator's user +
# system CPU (/usr/bin/time) per answered request. Loopback only; the server is killed on exit.
set -euo pipefail
CEIL=$1 SERVER=$2 A=$3 B=$4 ROUNDS=${5:-5}; DUR=${DUR:-3s}
W=$(mktemp -d /tmp/r8cd1.XXXX); SP=""
cleanup() { [ -n "$SP" ] && kill "$SP" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
"$SERVER" certs --dir "$W/c" >/dev/null
PORT=$(python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$SERVER" --certs "$W/c" server --role standalone --listen 127.0.0.1:$PORT >"$W/s.log" 2>&1 & SP=$!
sleep 0.5
"$A" --certs "$W/c" bench --target 127.0.0.1:$PORT --workload get --keys 100000 --value-size 100 --duration 200ms --warmup 0s --progress off >/dev/null 2>&1
one() { # label bin
  timeout 60 "$CEIL" --mode echo --streams 1 --pipeline 1 --warmup 1s --duration $DUR --json "$W/e1.json" >/dev/null
  /usr/bin/time -f "%U %S" -o "$W/t" timeout 60 "$2" --certs "$W/c" bench --target 127.0.0.1:$PORT --workload get --keys 100000 --value-size 100 --connections 1 --streams 1 --pipeline 1 --warmup 0s --duration $DUR --progress off --json --no-preload > "$W/g1.json" 2>/dev/null
  python3 - "$1" "$W" <<'PY'
import json,sys
l,w=sys.argv[1],sys.argv[2]
e1=json.load(open(w+"/e1.json"))[0]; d=json.load(open(w+"/g1.json")); g=d["total"]
u,s=map(float,open(w+"/t").read().split()[-2:])
n=g['ops_per_sec']*d['measured_seconds']
print(f"{l}\techo-d1 p50 {e1['p50_us']:.1f}\tget-d1 p50 {g['latency_us']['p50']:.1f}\tratio {g['latency_us']['p50']/e1['p50_us']:.3f}\tops {g['ops_per_sec']:.0f}\tclient cpu {(u+s)*1e6/n:.2f} us/req", flush=True)
PY
}
for r in $(seq $ROUNDS); do
  if [ $((r % 2)) = 1 ]; then one base "$A"; one new "$B"; else one new "$B"; one base "$A"; fi
done
