#!/usr/bin/env bash
# bench/flame-pair.sh — flame graphs of the replicated write path (issue 23, round 8): a primary +
# backup pair and the load generator (`quickv bench --workload insert`, fresh keys), each recorded
# with `perf record` over the same seconds at 16 streams x 16 pipelined, folded and drawn with
# inferno; plus each process's CPU per answered insert over those seconds (utime + stime from
# /proc, sampled at the start and end of the measured span, perf running).
#
# Usage: bench/flame-pair.sh [--bin target/release/quickv] [--workload insert] [--duration 4s]
#                            [--streams 16] [--pipeline 16] [--label NAME] [--out docs/flame]
#                            [--no-perf] [--server-arg ARG]...
# Writes, per process (primary, backup, client): NAME-PROCESS.svg, NAME-PROCESS.folded and
# NAME-PROCESS.top.txt (hottest frames by self samples, share under frames of interest), and
# NAME-cpu.txt (ops/s and CPU µs per request of each process). --no-perf measures the CPU per
# request without recording (perf's own cost, DWARF stack copies, inflates the recorded run's).
#
# --server-arg passes ARG to both servers (e.g. --server-arg --expected-keys=4000000: presized
# stores, to tell the store's growth from the rest of the write path).
#
# inferno is installed on first use with `cargo install inferno --root target/tools` (never into
# the system); perf is /usr/bin/perf, DWARF call graphs (8 KiB of stack) at $FREQ Hz (default 499).
# Loopback only; both servers are killed by PID on exit. Frames under 0.25 % of a process are
# left out of the SVG (not of the .folded file).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/quickv
WORKLOAD=insert
DURATION=4s
STREAMS=16
PIPELINE=16
LABEL=""
OUT=docs/flame
PERF_ON=1
SARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift ;;
    --workload) WORKLOAD=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --streams) STREAMS=$2; shift ;;
    --pipeline) PIPELINE=$2; shift ;;
    --label) LABEL=$2; shift ;;
    --out) OUT=$2; shift ;;
    --no-perf) PERF_ON=0 ;;
    --server-arg) SARGS+=("$2"); shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "flame-pair.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
LABEL=${LABEL:-pair-$WORKLOAD}
PERF=${PERF:-/usr/bin/perf}
FREQ=${FREQ:-499}
TOOLS=$(pwd)/target/tools
if [ "$PERF_ON" = 1 ] && [ ! -x "$TOOLS/bin/inferno-flamegraph" ]; then
  echo "flame-pair.sh: installing inferno into $TOOLS" >&2
  timeout 900 cargo install inferno --root "$TOOLS" --locked --quiet
fi
BIN=$(realpath "$BIN")
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/quickv-flame-pair.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
"$BIN" certs --dir "$WORK/certs" >/dev/null
udp_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(udp_port)
P2=$(udp_port)
while [ "$P2" = "$P1" ]; do P2=$(udp_port); done
RUST_LOG=warn "$BIN" --certs "$WORK/certs" server --role backup --listen "127.0.0.1:$P2" --peer "127.0.0.1:$P1" ${SARGS[@]+"${SARGS[@]}"} >"$WORK/backup.log" 2>&1 &
BPID=$!; PIDS+=("$BPID")
RUST_LOG=warn "$BIN" --certs "$WORK/certs" server --role primary --listen "127.0.0.1:$P1" --peer "127.0.0.1:$P2" ${SARGS[@]+"${SARGS[@]}"} >"$WORK/primary.log" 2>&1 &
PPID_=$!; PIDS+=("$PPID_")
for _ in $(seq 200); do
  "$BIN" --server "127.0.0.1:$P1" --certs "$WORK/certs" status --json 2>/dev/null | grep -q '"state": "sync"' && break
  sleep 0.1
done
"$BIN" --server "127.0.0.1:$P1" --certs "$WORK/certs" status --json | grep -q '"state": "sync"' || { echo "flame-pair.sh: the pair did not reach sync" >&2; exit 1; }

secs=${DURATION%s}
TICK=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# The generator, recorded (or not) from its start; its measured span begins after a 1 s warm-up
# and runs a second longer than the window the servers are recorded and measured over.
GEN=("$BIN" --certs "$WORK/certs" --server "127.0.0.1:$P1" bench --workload "$WORKLOAD" --keys 100000
  --value-size 100 --no-preload --connections 1 --streams "$STREAMS" --pipeline "$PIPELINE"
  --warmup 1s --duration "$((secs + 1))s" --progress off --json)
if [ "$PERF_ON" = 1 ]; then
  timeout $((secs + 60)) "$PERF" record -q -F "$FREQ" --call-graph dwarf,8192 -o "$WORK/client.data" -- \
    "${GEN[@]}" >"$WORK/bench.json" 2>"$WORK/bench.err" &
else
  timeout $((secs + 60)) "${GEN[@]}" >"$WORK/bench.json" 2>"$WORK/bench.err" &
fi
RUNNER=$!
sleep 1
# The generator's own PID: the descendant of `timeout` (and perf, when recorded) running $BIN.
CPID=$RUNNER
for _ in $(seq 50); do
  [ "$(readlink "/proc/$CPID/exe" 2>/dev/null)" = "$BIN" ] && break
  CPID=$(pgrep -P "$CPID" | head -n 1 || true)
  [ -n "$CPID" ] || CPID=$RUNNER
  sleep 0.01
done
RECS=()
if [ "$PERF_ON" = 1 ]; then
  for side in primary backup; do
    pid=$PPID_; [ "$side" = backup ] && pid=$BPID
    timeout $((secs + 30)) "$PERF" record -q -F "$FREQ" --call-graph dwarf,8192 -p "$pid" \
      -o "$WORK/$side.data" -- sleep "$secs" >/dev/null 2>&1 &
    RECS+=($!)
  done
fi
c0=$(ticks "$CPID"); p0=$(ticks "$PPID_"); b0=$(ticks "$BPID")
sleep "$secs"
c1=$(ticks "$CPID"); p1=$(ticks "$PPID_"); b1=$(ticks "$BPID")
wait "$RUNNER" || true
for r in "${RECS[@]}"; do wait "$r" || true; done
python3 - "$WORK/bench.json" "$LABEL" "$secs" "$TICK" "$((c1 - c0))" "$((p1 - p0))" "$((b1 - b0))" "$PERF_ON" <<'PY' | tee "$OUT/$LABEL-cpu.txt"
import json, sys
doc = json.load(open(sys.argv[1]))
ops = doc["total"]["ops_per_sec"]
secs, hz = float(sys.argv[3]), int(sys.argv[4])
n = ops * secs
print(f"{sys.argv[2]}: {ops:.0f} ops/s, p50 {doc['total']['latency_us']['p50']:.0f} µs (perf {'on' if sys.argv[8] == '1' else 'off'})")
for name, t in zip(["client", "primary", "backup"], sys.argv[5:8]):
    cpu = int(t) / hz
    print(f"  {name:8s} {cpu:5.2f} s CPU over {secs:.0f} s = {cpu * 1e6 / n:5.2f} µs per request" if n else f"  {name}: no requests")
PY
[ "$PERF_ON" = 1 ] || exit 0

for side in primary backup client; do
  base="$OUT/$LABEL-$side"
  "$PERF" script -i "$WORK/$side.data" 2>/dev/null | "$TOOLS/bin/inferno-collapse-perf" >"$base.folded"
  "$TOOLS/bin/inferno-flamegraph" --minwidth 0.25 --title "quickv $LABEL: $side ($STREAMS x $PIPELINE)" <"$base.folded" >"$base.svg"
  python3 bench/flame-summary.py "$base.folded" \
    'quickv_client' 'quickv_server' 'quickv_core' 'quickv_proto' 'quickv_net' 'quickv::bench' 'Lanes::submit' 'Lanes::handle_ack' 'apply_pass' 'Store::put' 'Store::get' 'sessions' 'quinn_proto' 'quinn::' 'ring::' 'aws_lc' 'tokio::' '[unknown]' 'entry_SYSCALL' 'sendmsg' 'recvmsg' 'malloc' 'free' 'memcpy' 'memmove' '_raw_spin' 'futex' >"$base.top.txt"
  # Each sample in the first category of the list with a frame on its stack (a store frame under the lanes
  # counts as store), in shares and in µs of this process's CPU per request.
  us=$(awk -v s="$side" '$1 == s {print $(NF - 3)}' "$OUT/$LABEL-cpu.txt")
  python3 - "$base.folded" "${us:-0}" >>"$base.top.txt" <<'PY'
import collections, sys
cats = [
    ("store: Store::put (flurry insert, growth)", ["Store::put", "Store::insert", "store::Store::apply"]),
    ("store: Store::get (decide's lookup)", ["Store::get"]),
    ("session tables (lookup, record)", ["sessions::"]),
    ("std HashMaps (SipHash; the lanes' overlay and stamped maps on the primary)", ["std::collections::hash::map::HashMap"]),
    ("answer delivery (Waiter::send, AnswerSink, outbox push)", ["Waiter::send", "AnswerSink", "send_reply"]),
    ("peer frame encode/decode (PeerMsg)", ["PeerMsg::encode", "PeerMsg::decode", "peer::"]),
    ("rest of the lanes / apply_pass", ["quickv_core::lanes", "apply_pass", "quickv_core::apply"]),
    ("client frames, router, stream session (server::conn), quickv_proto", ["quickv_server::server", "quickv_proto"]),
    ("client library + bench driver", ["quickv_client", "quickv::bench"]),
    ("quinn + rustls + UDP syscalls", ["quinn", "ring::", "rustls", "entry_SYSCALL", "sendmsg", "recvmsg"]),
    ("tokio scheduling, wakes, park", ["tokio::", "epoll", "futex", "finish_task_switch"]),
]
us, total, got = float(sys.argv[2]), 0, collections.Counter()
for line in open(sys.argv[1]):
    stack, n = line.rsplit(" ", 1)
    n = int(n)
    total += n
    frames = stack.split(";")
    got[next((c for c, pats in cats if any(p in f for f in frames for p in pats)), "other")] += n
print(f"categories (µs of {us} µs CPU per request):")
for c in [c for c, _ in cats] + ["other"]:
    share = got[c] / max(total, 1)
    print(f"  {100 * share:5.1f} %  {us * share:5.2f} µs  {c}")
PY
  echo "== $base ($(du -k "$base.svg" | cut -f1) KiB svg)"
  sed -n '/^categories/,$p' "$base.top.txt"
done
