#!/usr/bin/env bash
# bench/ceiling-ab.sh — quickv ping/get/insert next to the raw quinn skeleton, in one window.
#
# Usage: bench/ceiling-ab.sh [--rounds 3] [--bin PATH] [--base PATH] [--client-bin PATH]
#                            [--ceiling PATH] [--duration 3s] [--server-args "ARGS"]
#                            [--workloads "ping get insert"]
#   --bin       the quickv binary to measure (default target/release/quickv)
#   --base      also measure this (older) binary's servers, interleaved with --bin's in every
#               round (order alternating), and print new/base per workload: the A/B of a change
#   --base-client  the generator for the base set (default: --client-bin), to A/B a generator
#               change against the same servers (then pass --base = --bin)
#   --base-server-args ARGS  server flags for the base set only (default: --server-args), e.g. to
#               A/B "--threads 2" against the default current-thread runtime with --base = --bin
#   --client-bin  the binary whose `quickv bench` drives the load (default: --bin), to measure a
#               server change with the generator held fixed
#   --ceiling   the ceiling bench binary (default: the newest target/release/deps/ceiling-*)
#
# Per round: the skeleton (echo and relay), then a standalone quickv (ping, get over a preloaded
# 100k keyspace) and a primary/backup pair in sync (fresh-key inserts), all at 16 streams × 16
# in flight, 1 s warm-up, --duration measured. Prints one line per round with the ratios
# quickv/skeleton (ping/echo, get/echo, insert/relay), which are what to compare across changes:
# the absolute figures move by 2× on this shared machine. Loopback only; every run is bounded;
# every server it starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=3
BIN=target/release/quickv
CLIENT=""
BASE=""
BASE_CLIENT=""
BASE_ARGS="-"
CEIL=$(ls -t target/release/deps/ceiling-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
DURATION=3s
SERVER_ARGS=""
WORKLOADS="ping get insert"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --bin) BIN=$2; shift ;;
    --client-bin) CLIENT=$2; shift ;;
    --base) BASE=$2; shift ;;
    --base-client) BASE_CLIENT=$2; shift ;;
    --base-server-args) BASE_ARGS=$2; shift ;;
    --ceiling) CEIL=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --server-args) SERVER_ARGS=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "ceiling-ab.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
CLIENT=${CLIENT:-$BIN}
BASE_CLIENT=${BASE_CLIENT:-$CLIENT}
[ "$BASE_ARGS" = "-" ] && BASE_ARGS=$SERVER_ARGS
[ -x "$BIN" ] || { echo "ceiling-ab.sh: no binary $BIN (cargo build --release)" >&2; exit 2; }
[ -x "$CEIL" ] || { echo "ceiling-ab.sh: no ceiling bench (cargo bench --bench ceiling --no-run)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/quickv-ceiling-ab.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
"$BIN" certs --dir "$WORK/certs" >/dev/null

port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # file pattern seconds
  for _ in $(seq 1 $(( $3 * 20 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "ceiling-ab.sh: timed out waiting for '$2' in $1" >&2; cat "$1" >&2; exit 1
}
# start_set NAME BIN: a standalone server (ping, get) and a primary/backup pair (insert).
declare -A STANDALONE PRIMARY
start_set() {
  local name=$1 bin=$2 s p b SERVER_ARGS=$SERVER_ARGS
  [ "$name" = base ] && SERVER_ARGS=$BASE_ARGS
  s=127.0.0.1:$(port); p=127.0.0.1:$(port); b=127.0.0.1:$(port)
  # shellcheck disable=SC2086
  "$bin" --certs "$WORK/certs" server --role standalone --listen "$s" $SERVER_ARGS >"$WORK/$name-s.log" 2>&1 & PIDS+=($!)
  # shellcheck disable=SC2086
  "$bin" --certs "$WORK/certs" server --role backup --listen "$b" --peer "$p" $SERVER_ARGS >"$WORK/$name-b.log" 2>&1 & PIDS+=($!)
  # shellcheck disable=SC2086
  "$bin" --certs "$WORK/certs" server --role primary --listen "$p" --peer "$b" $SERVER_ARGS >"$WORK/$name-p.log" 2>&1 & PIDS+=($!)
  wait_for "$WORK/$name-s.log" "listening" 10
  wait_for "$WORK/$name-p.log" "to=sync" 15
  STANDALONE[$name]=$s; PRIMARY[$name]=$p
}
SETS="new"
start_set new "$BIN"
if [ -n "$BASE" ]; then start_set base "$BASE"; SETS="new base"; fi

qv() { # client server workload extra...
  local client=$1 srv=$2 wl=$3; shift 3
  timeout 60 "$client" --certs "$WORK/certs" --server "$srv" bench --workload "$wl" --streams 16 --pipeline 16 \
    --warmup 1s --duration "$DURATION" --json "$@" 2>/dev/null >"$WORK/out.json" || true
  python3 -c 'import json,sys
try: d=json.load(open(sys.argv[1]))
except Exception: print(0); sys.exit()
def find(o):
    if isinstance(o, dict):
        if isinstance(o.get("ops_per_sec"), (int, float)): return o["ops_per_sec"]
        o = list(o.values())
    if isinstance(o, list):
        for v in o:
            r = find(v)
            if r is not None: return r
    return None
print(int(d.get("total", {}).get("ops_per_sec") or find(d) or 0))' "$WORK/out.json"
}
run_wl() { # set workload
  local c=$CLIENT; [ "$1" = base ] && c=$BASE_CLIENT
  case $2 in
    ping) qv "$c" "${STANDALONE[$1]}" ping --keys 100000 --no-preload ;;
    get) if [ ! -e "$WORK/$1.preloaded" ]; then touch "$WORK/$1.preloaded"; qv "$c" "${STANDALONE[$1]}" get --keys 100000
         else qv "$c" "${STANDALONE[$1]}" get --keys 100000 --no-preload; fi ;;
    insert) qv "$c" "${PRIMARY[$1]}" insert --keys 100000000 --no-preload ;;
  esac
}
echo "# $(date -u +%FT%TZ) bin=$BIN base=${BASE:-none} server-args='$SERVER_ARGS' base-server-args='$BASE_ARGS' client=$CLIENT base-client=$BASE_CLIENT load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# quickv/skeleton ratios: ping and get against echo, insert against relay"
printf '%-6s %-5s %8s %8s' round set echo relay
for wl in $WORKLOADS; do printf ' %8s %7s' "$wl" "$wl/ceil"; done; echo
for r in $(seq 1 "$ROUNDS"); do
  timeout 60 "$CEIL" --mode both --streams 16 --pipeline 16 --warmup 1s --duration "$DURATION" \
    --json "$WORK/ceil.json" >/dev/null 2>&1 || true
  read -r echo relay < <(python3 -c 'import json,sys; d={r["mode"]: int(r["ops_per_sec"]) for r in json.load(open(sys.argv[1]))}; print(d.get("echo",0), d.get("relay",0))' "$WORK/ceil.json")
  declare -A RES=()
  order=$SETS; if [ $((r % 2)) = 0 ] && [ -n "$BASE" ]; then order="base new"; fi
  for wl in $WORKLOADS; do for set in $order; do RES[$set.$wl]=$(run_wl "$set" "$wl"); done; done
  for set in $SETS; do
    printf '%-6s %-5s %8s %8s' "$r" "$set" "$echo" "$relay"
    for wl in $WORKLOADS; do
      ceil=$echo; [ "$wl" = insert ] && ceil=$relay
      printf ' %8s %7s' "${RES[$set.$wl]}" "$(python3 -c "import sys; a,b=map(float,sys.argv[1:]); print('%.2f'%(a/b) if b else '-')" "${RES[$set.$wl]}" "$ceil")"
    done; echo
  done
  if [ -n "$BASE" ]; then
    printf '%-6s %-5s %8s %8s' "$r" "n/b" "" ""
    for wl in $WORKLOADS; do
      printf ' %8s %7s' "" "$(python3 -c "import sys; a,b=map(float,sys.argv[1:]); print('%.2f'%(a/b) if b else '-')" "${RES[new.$wl]}" "${RES[base.$wl]}")"
    done; echo
  fi
done
