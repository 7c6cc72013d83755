#!/usr/bin/env bash
# bench/compare.sh — quickv against Redis-with-TLS, same load generator, same run, same machine.
#
# Usage: bench/compare.sh [--quick] [--depths "1 64 256"] [--server-args "ARGS"] [--no-docs] [--keep]
#   --quick             depths 1 and 64, short runs (< 2 min); default: 1 16 64 256 (< 10 min)
#   --depths "N..."     requests in flight to measure (overrides the mode's list; keeps its run length)
#   --server-args ARGS  extra flags for both quickv servers (word-split), e.g. "--max-streams 512"
#   --no-docs           leave docs/benchmarks.md alone (results stay in bench/results/)
#   --keep              keep the servers' logs and certificates of the run
#
# What it does, in order:
#   1. builds quickv (release, feature redis); installs redis-server with apt if missing;
#   2. makes certificates with `quickv certs` (Redis uses server.pem/key + ca.pem, and demands
#      client certificates: the generator presents client.pem);
#   3. starts a Redis primary and a replica, TLS only (port 0), no persistence, on free loopback
#      ports, and waits for the replica link;
#   4. starts a quickv primary/backup pair and waits for "state": "sync" on both; if they do not
#      get there (no replication in this build), falls back LOUDLY to a standalone server;
#   5. runs the matrix: get, insert, update (100 B values, 100k keys) and ping, at each depth,
#      against quickv, Redis (writes + WAIT 1, one connection per request in flight, like
#      redis-benchmark -c N), Redis pipelined (Redis's best shape: up to 16 commands pipelined per
#      connection, N/16 connections) and, when the server has a thread flag, quickv on 2 server
#      threads (the server flag is detected: --threads, else --workers);
#      (all servers up at once; each cell's series run back to back); at each depth, before its
#      first quickv row, the raw quinn skeleton (bench/ceiling.rs: echo and relay) at quickv's shape,
#      so every quickv row is printed next to its QUIC ceiling (quickv/skeleton) and next to Redis;
#   6. writes the tables, plots and exact commands into docs/benchmarks.md (between the
#      compare.sh markers; the rest of the file is kept).
# Every process it starts is stopped on exit (trap), by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
DEPTHS_ARG=""
SERVER_ARGS=""
WRITE_DOCS=1
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --depths) DEPTHS_ARG="${2:-}"; shift ;;
    --server-args) SERVER_ARGS="${2:-}"; shift ;;
    --no-docs) WRITE_DOCS=0 ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$QUICK" = 1 ]; then
  DEPTHS="1 64"; WARMUP=0.5s; DURATION=1.5s; MODE="quick"; MODE_FLAG=" --quick"
else
  DEPTHS="1 16 64 256"; WARMUP=1s; DURATION=4s; MODE="full"; MODE_FLAG=""
fi
[ -n "$DEPTHS_ARG" ] && { DEPTHS=$DEPTHS_ARG; MODE_FLAG="$MODE_FLAG --depths \"$DEPTHS\""; }
WORKLOADS="get insert update ping"
KEYS=100000
VALUE=100
# How long a fresh (empty) pair may take to reach sync; both empty means sync at once (DESIGN §3).
SYNC_TIMEOUT_S=$([ "$QUICK" = 1 ] && echo 6 || echo 15)

say() { echo "compare.sh: $*" >&2; }
loud() { echo "" >&2; echo "!!!!!!!! $* !!!!!!!!" >&2; echo "" >&2; }

# ---------------------------------------------------------------- processes and cleanup
PIDS=()
STAMP=$(date -u +%Y%m%d-%H%M%S)
OUT="$ROOT/bench/results/$STAMP"
mkdir -p "$OUT/runs" "$OUT/logs"
MAIN_PID=$BASHPID
cleanup() {
  # A background child killed before it exec'd its program still carries these traps: only the
  # script itself cleans up (a child doing it would kill its siblings and delete the certs).
  [ "$BASHPID" = "$MAIN_PID" ] || return 0
  local pid
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
  if [ "$KEEP" = 0 ]; then rm -rf "$OUT/certs" "$OUT/redis"; fi
}
trap cleanup EXIT
trap '[ "$BASHPID" = "$MAIN_PID" ] && exit 130; exit 143' INT TERM

# Stops the processes whose PIDs are given and drops them from PIDS.
stop_pids() {
  local pid keep=() p
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do
    case " $* " in *" $p "*) ;; *) [ -n "$p" ] && keep+=("$p") ;; esac
  done
  PIDS=("${keep[@]:-}")
}

# Sets variable $1 to a loopback port free for both TCP and UDP right now (and not handed out
# before in this run; no subshell, so TAKEN persists).
TAKEN=" "
free_port() {
  local port used
  used=" $(ss -Hlntu 2>/dev/null | awk '{print $5}' | sed 's/.*://' | sort -u | tr '\n' ' ') "
  while :; do
    port=$(( 20000 + RANDOM % 40000 ))
    case "$used$TAKEN" in *" $port "*) continue ;; esac
    TAKEN="$TAKEN$port "
    printf -v "$1" '%s' "$port"; return
  done
}

# ---------------------------------------------------------------- build and tools
say "building quickv (release, --features redis)"
cargo build --release --features redis --quiet
cargo build --release --features redis --bench ceiling --quiet
Q="$ROOT/target/release/quickv"
CEIL=$(ls -t "$ROOT"/target/release/deps/ceiling-* | grep -v '\.d$' | head -n 1)

if ! command -v redis-server >/dev/null; then
  say "redis-server missing: installing with apt"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
fi
REDIS_VERSION=$(redis-server --version | sed -n 's/.*v=\([0-9.]*\).*/\1/p')
if ! ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1 && [ -z "${QUICKV_PLOT_FONT:-}" ]; then
  say "no DejaVu font for the PNG plots: installing fonts-dejavu-core with apt"
  (apt-get install -y -qq fonts-dejavu-core >/dev/null 2>&1 || true)
fi

CERTS="$OUT/certs"
"$Q" certs --dir "$CERTS" >/dev/null

# ---------------------------------------------------------------- Redis primary + replica (TLS only)
free_port R1; free_port R2
mkdir -p "$OUT/redis"
redis_start() { # port [replicaof-port]
  local port=$1 args=()
  [ -n "${2:-}" ] && args=(--replicaof 127.0.0.1 "$2")
  redis-server --port 0 --tls-port "$port" --bind 127.0.0.1 \
    --tls-cert-file "$CERTS/server.pem" --tls-key-file "$CERTS/server.key" \
    --tls-ca-cert-file "$CERTS/ca.pem" --tls-auth-clients yes --tls-replication yes \
    --save '' --appendonly no --repl-diskless-sync yes --repl-diskless-load on-empty-db \
    --dir "$OUT/redis" --daemonize no \
    --logfile "$OUT/logs/redis-$port.log" "${args[@]}" &
  PIDS+=($!)
}
rcli() { redis-cli --tls --cert "$CERTS/client.pem" --key "$CERTS/client.key" --cacert "$CERTS/ca.pem" -h 127.0.0.1 "$@"; }
redis_start "$R1"
redis_start "$R2" "$R1"
REDIS_OK=0
for _ in $(seq 1 $((SYNC_TIMEOUT_S * 10))); do
  if rcli -p "$R2" info replication 2>/dev/null | grep -q 'master_link_status:up'; then REDIS_OK=1; break; fi
  sleep 0.1
done
if [ "$REDIS_OK" = 1 ]; then
  say "redis $REDIS_VERSION primary :$R1, replica :$R2 (TLS, link up)"
else
  loud "Redis replica did not connect within ${SYNC_TIMEOUT_S}s: WAIT 1 rows will show indeterminate writes"
fi

# ---------------------------------------------------------------- quickv pair (or standalone)
THREADS_FLAG=""
if "$Q" server --help | grep -q -- '--threads'; then THREADS_FLAG="--threads"
elif "$Q" server --help | grep -q -- '--workers'; then THREADS_FLAG="--workers"; fi

QUICKV_PIDS=()
QUICKV_MODE=""
# Waits until a server process prints "listening on"; $1 = log file, $2 = pid.
wait_listening() {
  for _ in $(seq 1 100); do
    grep -q "listening on" "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}
state_of() { "$Q" --server "$1" --certs "$CERTS" status --json 2>/dev/null | grep -o '"state": *"[a-z_]*"' | sed 's/.*"\([a-z_]*\)"$/\1/'; }
# Starts the pair with extra flags "$@"; falls back to a standalone server. Sets QUICKV_MODE.
quickv_start() {
  free_port P1; free_port P2
  if [ "${QUICKV_FELL_BACK:-0}" = 1 ]; then
    loud "this build's pair did not sync before: AGAIN A STANDALONE quickv server ($*)"
    quickv_standalone "$@"
    return
  fi
  # shellcheck disable=SC2086
  "$Q" server --role primary --listen "127.0.0.1:$P1" --peer "127.0.0.1:$P2" --certs "$CERTS" $SERVER_ARGS "$@" \
    >"$OUT/logs/quickv-primary-$P1.log" 2>&1 &
  local p=$!; PIDS+=($p)
  # shellcheck disable=SC2086
  "$Q" server --role backup --listen "127.0.0.1:$P2" --peer "127.0.0.1:$P1" --certs "$CERTS" $SERVER_ARGS "$@" \
    >"$OUT/logs/quickv-backup-$P2.log" 2>&1 &
  local b=$!; PIDS+=($b)
  QUICKV_PIDS=("$p" "$b")
  local synced=0
  if wait_listening "$OUT/logs/quickv-primary-$P1.log" "$p" && wait_listening "$OUT/logs/quickv-backup-$P2.log" "$b"; then
    for _ in $(seq 1 $((SYNC_TIMEOUT_S * 5))); do
      if [ "$(state_of "127.0.0.1:$P1")" = sync ] && [ "$(state_of "127.0.0.1:$P2")" = sync ]; then synced=1; break; fi
      sleep 0.2
    done
  fi
  if [ "$synced" = 1 ]; then
    QUICKV_MODE="pair"
    say "quickv primary :$P1, backup :$P2 in sync ($*)"
    return
  fi
  loud "quickv pair not in sync within ${SYNC_TIMEOUT_S}s (state: $(state_of "127.0.0.1:$P1" || true)/$(state_of "127.0.0.1:$P2" || true)): FALLING BACK TO A STANDALONE quickv server — writes are NOT replicated and write rows are NOT comparable to Redis+WAIT"
  QUICKV_FELL_BACK=1
  stop_pids "${QUICKV_PIDS[@]}"
  quickv_standalone "$@"
}
# Starts a standalone server on P1 with extra flags "$@".
quickv_standalone() {
  local p
  # shellcheck disable=SC2086
  "$Q" server --role standalone --listen "127.0.0.1:$P1" --certs "$CERTS" $SERVER_ARGS "$@" \
    >"$OUT/logs/quickv-standalone-$P1.log" 2>&1 &
  p=$!; PIDS+=($p); QUICKV_PIDS=("$p")
  wait_listening "$OUT/logs/quickv-standalone-$P1.log" "$p" || { echo "quickv standalone did not start" >&2; exit 1; }
  QUICKV_MODE="standalone"
}

# ---------------------------------------------------------------- the matrix
COMMANDS_FILE="$OUT/commands.txt"
: >"$COMMANDS_FILE"
# shape N -> "streams pipeline": quickv's best shape per DESIGN §7 (many streams, one connection).
shape() { local n=$1 s; s=$(( n < 16 ? n : 16 )); echo "$s $(( n / s ))"; }
# deep N -> "connections pipeline": Redis's best shape, up to 16 commands pipelined per connection
# (redis-benchmark -P 16), as few connections as that allows.
deep() { local n=$1 d; d=$(( n < 16 ? n : 16 )); echo "$(( n / d )) $d"; }
# Targets whose keyspace is loaded already: later runs pass --no-preload.
PRELOADED=" "
# run SERIES TARGET WORKLOAD N STREAMS PIPELINE [extra bench flags...]
run() {
  local series=$1 target=$2 workload=$3 n=$4 s=$5 d=$6; shift 6
  local dir="$OUT/runs/$series/$workload-$n"
  case "$workload" in get|update|delete)
    case "$PRELOADED" in *" $target "*) set -- "$@" --no-preload ;; *) PRELOADED="$PRELOADED$target " ;; esac ;;
  esac
  local cmd=("$Q" --certs "$CERTS" bench --target "$target" --workload "$workload" --keys "$KEYS"
    --value-size "$VALUE" --connections 1 --streams "$s" --pipeline "$d" --warmup "$WARMUP"
    --duration "$DURATION" --progress off --label "$series" --hdr-out "$dir" "$@")
  echo "${cmd[*]}" | sed "s|$OUT/|\$OUT/|g; s|$ROOT/||g" >>"$COMMANDS_FILE"
  if "${cmd[@]}" >"$OUT/logs/bench-$series-$workload-$n.txt" 2>&1; then
    awk -v s="$series" -v w="$workload" -v n="$n" '$1==w {printf "  %-16s %-7s %4s in flight: %10s ops/s  p50 %8s µs  p99 %8s µs  errors %s\n", s, w, n, $2, $3, $5, $12}' \
      "$OUT/logs/bench-$series-$workload-$n.txt" >&2
  else
    loud "bench $series $workload $n failed: $(tail -n 1 "$OUT/logs/bench-$series-$workload-$n.txt")"
  fi
}
# All servers run side by side (an idle pair costs nothing), and every cell of the matrix runs
# its series back to back, so a change in the machine's background load hits all of them alike
# instead of skewing one series.
quickv_start
QUICKV_FIRST_MODE=$QUICKV_MODE
QV1="127.0.0.1:$P1"
ALSO=(--also redis-pipelined)
QV2=""
if [ -n "$THREADS_FLAG" ]; then
  quickv_start "$THREADS_FLAG" 2
  QV2="127.0.0.1:$P1"
  ALSO+=(--also quickv-t2)
else
  say "the server has no thread-count flag: skipping the 2-thread series"
fi
RTARGET="rediss://127.0.0.1:$R1"

# ceiling N STREAMS PIPELINE: the raw quinn skeleton (echo and relay) at quickv's shape.
ceiling() {
  local n=$1 s=$2 d=$3
  local cmd=("$CEIL" --mode both --streams "$s" --pipeline "$d" --warmup "$WARMUP" --duration "$DURATION"
    --json "$OUT/runs/ceiling-$n.json")
  echo "${cmd[*]}" | sed "s|$OUT/|\$OUT/|g; s|$ROOT/target/release/deps/ceiling-[0-9a-f]*|cargo bench --bench ceiling --|g" >>"$COMMANDS_FILE"
  timeout 120 "${cmd[@]}" >"$OUT/logs/ceiling-$n.txt" 2>&1 || loud "ceiling $n failed: $(tail -n 1 "$OUT/logs/ceiling-$n.txt")"
}

T0=$(date +%s)
for w in $WORKLOADS; do for n in $DEPTHS; do
  read -r s d <<<"$(shape "$n")"
  [ -f "$OUT/runs/ceiling-$n.json" ] || ceiling "$n" "$s" "$d"
  run quickv "$QV1" "$w" "$n" "$s" "$d"
  # One TLS connection per request in flight (redis-benchmark -c N), writes paired with WAIT 1.
  run redis "$RTARGET" "$w" "$n" "$n" 1 --redis-wait 1 --redis-wait-ms 1000
  read -r rs rd <<<"$(deep "$n")"
  run redis-pipelined "$RTARGET" "$w" "$n" "$rs" "$rd" --redis-wait 1 --redis-wait-ms 1000
  if [ -n "$QV2" ]; then run quickv-t2 "$QV2" "$w" "$n" "$s" "$d"; fi
done; done
ELAPSED=$(( $(date +%s) - T0 ))

# ---------------------------------------------------------------- tables, plots, docs
TABLES=$("$Q" bench table "$OUT/runs" --base quickv --other redis "${ALSO[@]}")
# quickv against its QUIC ceiling and against Redis, one row per depth (issue 13's ratios).
CEILING_TABLE=$(python3 - "$OUT/runs" "$DEPTHS" <<'PY'
import json, os, sys
runs, depths = sys.argv[1], sys.argv[2].split()
def ops(series, w, n):
    try:
        with open(os.path.join(runs, series, f"{w}-{n}", "report.json")) as f:
            return json.load(f)["total"]["ops_per_sec"]
    except (OSError, ValueError, KeyError):
        return None
def ceil(n):
    try:
        with open(os.path.join(runs, f"ceiling-{n}.json")) as f:
            return {r["mode"]: r["ops_per_sec"] for r in json.load(f)}
    except (OSError, ValueError, KeyError):
        return {}
k = lambda v: "—" if v is None else f"{v / 1000:.0f}k"
x = lambda a, b: "—" if a is None or not b else f"{a / b:.2f}"
print("| in flight | echo | relay | quickv ping | ping/echo | quickv get | get/echo | get/Redis best | quickv insert | insert/relay | insert/Redis+WAIT | quickv update | update/relay |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for n in depths:
    c = ceil(n)
    e, r = c.get("echo"), c.get("relay")
    ping, get, ins, upd = (ops("quickv", w, n) for w in ("ping", "get", "insert", "update"))
    best = [v for v in (ops("redis", "get", n), ops("redis-pipelined", "get", n)) if v]
    print(f"| {n} | {k(e)} | {k(r)} | {k(ping)} | {x(ping, e)} | {k(get)} | {x(get, e)} | "
          f"{x(get, max(best) if best else None)} | {k(ins)} | {x(ins, r)} | "
          f"{x(ins, ops('redis', 'insert', n))} | {k(upd)} | {x(upd, r)} |")
PY
)
PLOTS=()
PLOT_DEPTHS="1 64"
for w in get insert update; do for n in $PLOT_DEPTHS; do
  inputs=()
  for series in quickv redis redis-pipelined quickv-t2; do
    [ -f "$OUT/runs/$series/$w-$n/$w.hgrm" ] && inputs+=("$OUT/runs/$series/$w-$n")
  done
  [ ${#inputs[@]} -eq 0 ] && continue
  if "$Q" bench plot "${inputs[@]}" --log-y --title "$w, $n in flight (100 B values, 100k keys)" \
      --out "$OUT/plots/bench-$w-$n" >/dev/null 2>"$OUT/logs/plot-$w-$n.txt"; then
    PLOTS+=("bench-$w-$n")
  else
    loud "plot $w $n failed: $(cat "$OUT/logs/plot-$w-$n.txt")"
  fi
done; done

NPROC=$(nproc)
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
GITREV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$QUICKV_FIRST_MODE" = pair ]; then
  MODE_NOTE="quickv ran as a primary/backup pair in sync: every write was replicated and acknowledged."
else
  MODE_NOTE="**quickv ran STANDALONE** (the pair did not reach \`sync\` in ${SYNC_TIMEOUT_S} s: replication is not in this build). Its write rows are unreplicated writes and are **not comparable** to Redis \`SET\`+\`WAIT 1\`; only get and ping rows compare like with like. Re-run after replication lands."
fi

SECTION="$OUT/section.md"
{
  echo "<!-- compare.sh:begin (generated by bench/compare.sh; edit the script, not this section) -->"
  echo "## quickv vs Redis with TLS (bench/compare.sh)"
  echo
  echo "Run $STAMP UTC, \`bench/compare.sh$MODE_FLAG\` ($MODE matrix, ${ELAPSED} s of benchmarking), quickv $GITREV, Redis $REDIS_VERSION."
  echo "Machine: $NPROC CPUs ($CPU); servers and load generator share them."
  echo
  echo "$MODE_NOTE"
  echo
  echo "Each row: closed loop, ${WARMUP} warmup then ${DURATION} measured, $KEYS keys (preloaded), $VALUE-byte values, uniform keys. Latency in µs from HDR histograms."
  echo "Series: **quickv** = one QUIC connection with min(N,16) streams × N/min(N,16) requests in flight each;"
  echo "**redis** = N TLS connections with one request in flight each (like \`redis-benchmark -c N\`), every write sent as \`SET …; WAIT 1 1000\` in one pipeline;"
  echo "**redis-pipelined** = Redis's favourite shape: min(N,16) commands pipelined per TLS connection on max(1,N/16) connections (like \`redis-benchmark -P 16\`), writes also with \`WAIT 1\`."
  [ -n "$THREADS_FLAG" ] && echo "**quickv-t2** = the same quickv matrix with the server on 2 tokio worker threads (\`$THREADS_FLAG 2\`); **quickv** is the current-thread runtime."
  echo "Ratios are quickv/other: ops/s above 1 and p99 below 1 favour quickv. ⚠ marks rows with failed requests (count shown); see the JSON reports."
  echo
  echo "$TABLES"
  echo
  echo "### Against the QUIC ceiling (issue 13)"
  echo
  echo "The raw quinn skeleton (\`bench/ceiling.rs\`: echo, and relay client → primary → backup → ack) at quickv's shape for each depth, measured in the same run just before that depth's first quickv row. Goals (issue 13): ping ≥ 0.7 and get ≥ 0.6 of echo at 256; insert ≥ 0.6 of relay at 256 and ≥ 5× Redis \`SET\`+\`WAIT 1\` at 64; get ≥ 2× Redis's best shape at 256."
  echo
  echo "$CEILING_TABLE"
  echo
  for p in "${PLOTS[@]}"; do
    echo "![${p#bench-}](${p}.png)"
  done
  echo
  echo "<details><summary>Exact commands ($(wc -l <"$COMMANDS_FILE") bench runs; \$OUT = bench/results/$STAMP)</summary>"
  echo
  echo '```'
  echo "bench/compare.sh$MODE_FLAG${SERVER_ARGS:+ --server-args \"$SERVER_ARGS\"}"
  echo "# servers"
  echo "redis-server --port 0 --tls-port R1 --bind 127.0.0.1 --tls-cert-file certs/server.pem --tls-key-file certs/server.key --tls-ca-cert-file certs/ca.pem --tls-auth-clients yes --tls-replication yes --save '' --appendonly no --repl-diskless-sync yes --repl-diskless-load on-empty-db"
  echo "redis-server (same flags) --tls-port R2 --replicaof 127.0.0.1 R1"
  echo "quickv server --role primary --listen 127.0.0.1:P1 --peer 127.0.0.1:P2 --certs certs $SERVER_ARGS"
  echo "quickv server --role backup  --listen 127.0.0.1:P2 --peer 127.0.0.1:P1 --certs certs $SERVER_ARGS"
  [ "$QUICKV_FIRST_MODE" = pair ] || echo "quickv server --role standalone --listen 127.0.0.1:P1 --certs certs $SERVER_ARGS   # the fallback used in this run"
  echo "# load (plot: quickv bench plot RUN_DIRS... --log-y --out docs/bench-W-N)"
  sed 's|target/release/quickv|quickv|' "$COMMANDS_FILE"
  echo '```'
  echo "</details>"
  echo "<!-- compare.sh:end -->"
} >"$SECTION"

cat "$SECTION"
if [ "$WRITE_DOCS" = 1 ]; then
  DOC="$ROOT/docs/benchmarks.md"
  for p in "${PLOTS[@]}"; do cp "$OUT/plots/$p.png" "$ROOT/docs/$p.png"; done
  if grep -q '<!-- compare.sh:begin' "$DOC"; then
    awk -v section="$SECTION" '
      /<!-- compare.sh:begin/ { while ((getline line < section) > 0) print line; skip = 1; next }
      /<!-- compare.sh:end -->/ { skip = 0; next }
      !skip { print }' "$DOC" >"$DOC.tmp" && mv "$DOC.tmp" "$DOC"
  else
    { echo; cat "$SECTION"; } >>"$DOC"
  fi
  say "wrote docs/benchmarks.md and ${#PLOTS[@]} plot(s) into docs/"
fi
say "results in ${OUT#"$ROOT"/} (${ELAPSED} s of benchmarking)"
