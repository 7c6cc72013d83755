#!/bin/bash
# bench/resync-time.sh — full resync of 1M × 116 B between a release pair on 127.0.0.1 (ports 47421/47422).
# usage: bench/resync-time.sh BINARY LABEL   (work files in /tmp/p-rp-LABEL; every wait bounded to 60 s)
# Preloads 1M keys (16 B keys, 100 B values), SIGKILLs the backup, restarts it empty and prints the
# primary's "bootstrap: snapshot sent" line (secs, MB/s), the time from the backup's
# restart to `sync` on it, and how often the link was lost.
# A/B: run it for two binaries alternately, e.g. for r in 1 2 3; do for b in OLD NEW; do ...; done; done
set -u
B=$1; L=$2; D=/tmp/p-rp-$L; rm -rf "$D"; mkdir -p "$D"
"$B" certs --dir "$D/certs" >/dev/null 2>&1 || { echo "certs failed"; exit 1; }
PA=127.0.0.1:47421; BA=127.0.0.1:47422
RUST_LOG=info "$B" server --role primary --listen $PA --peer $BA --certs "$D/certs" >"$D/primary.log" 2>&1 & PP=$!
RUST_LOG=info "$B" server --role backup --listen $BA --peer $PA --certs "$D/certs" >"$D/backup.log" 2>&1 & BP=$!
trap 'kill -9 $PP $BP 2>/dev/null; wait $PP $BP 2>/dev/null' EXIT
st() { timeout 5 "$B" status --json --server "$1" --certs "$D/certs" 2>/dev/null; }
waitsync() { local end=$(( $(date +%s) + 60 )); while [ "$(date +%s)" -lt $end ]; do st "$1" | grep -q '"state": *"sync"' && return 0; sleep 0.05; done; echo "no sync on $1 within 60 s"; return 1; }
waitsync $PA && waitsync $BA || exit 1
timeout 120 "$B" bench --server $PA --certs "$D/certs" --workload get --keys 1000000 --value-size 100 --streams 16 --pipeline 16 --duration 1s --warmup 0s --max-requests 1000 >"$D/preload.out" 2>&1
kill -9 $BP; wait $BP 2>/dev/null
for _ in $(seq 1 400); do st $PA | grep -q 'cold_start' && break; sleep 0.05; done
T0=$(date +%s.%N)
RUST_LOG=info "$B" server --role backup --listen $BA --peer $PA --certs "$D/certs" >"$D/backup2.log" 2>&1 & BP=$!
waitsync $BA || exit 1
T1=$(date +%s.%N)
echo -n "restart to sync: $(python3 -c "print(f'{$T1 - $T0:.2f}')") s (status polled every 50 ms); "
grep -h "bootstrap: snapshot sent" "$D/primary.log" | tail -1 | grep -o "keys=[0-9]*\|secs=[0-9.]*\|mb_per_s=[0-9.]*" | tr '\n' ' '
echo "link losses after the restart: $(( $(grep -c 'peer link lost' "$D/primary.log") - 1 ))"
