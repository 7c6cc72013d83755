#!/bin/bash
# RSS per stored byte and full-resync time of a release primary+backup pair on 127.0.0.1 (ports 47411/47412).
# usage: bench/rss.sh BINARY LABEL  (e.g. bench/rss.sh target/release/quickv after); work files in /tmp/p-rss-LABEL.
# 1M x (16 B key + 100 B value) preloaded, then 700k uniform updates, then SIGKILL + restart of the backup. Bounded: 60 s per wait.
set -u
B=$1; L=$2; D=/tmp/p-rss-$L; rm -rf $D; mkdir -p $D
$B certs --dir $D/certs >/dev/null 2>&1 || { echo certs failed; exit 1; }
PA=127.0.0.1:47411; BA=127.0.0.1:47412
RUST_LOG=info $B server --role primary --listen $PA --peer $BA --certs $D/certs >$D/primary.log 2>&1 & PP=$!
RUST_LOG=info $B server --role backup --listen $BA --peer $PA --certs $D/certs >$D/backup.log 2>&1 & BP=$!
trap 'kill -9 $PP $BP 2>/dev/null' EXIT
st() { timeout 5 $B status --json --server $1 --certs $D/certs 2>/dev/null; }
waitsync() { local end=$(( $(date +%s) + 60 )); while [ $(date +%s) -lt $end ]; do st $1 | grep -q '"state": *"sync"' && return 0; sleep 0.05; done; echo "no sync on $1 within 60 s"; return 1; }
waitsync $PA; waitsync $BA
rss() { awk '/VmRSS|VmHWM/{printf "%s %d MB  ", $1, $2/1024}' /proc/$1/status; }
echo "empty: primary $(rss $PP) backup $(rss $BP)"
timeout 120 $B bench --server $PA --certs $D/certs --workload get --keys 1000000 --value-size 100 --streams 16 --pipeline 16 --duration 1s --warmup 0s --max-requests 1000 >$D/preload.out 2>&1
sleep 1
echo "primary status: $(st $PA | jq -c '{state,keys,bytes,approx_bytes}' 2>/dev/null)"
echo "after 1M insert: primary $(rss $PP) backup $(rss $BP)"
timeout 120 $B bench --server $PA --certs $D/certs --workload update --keys 1000000 --value-size 100 --streams 16 --pipeline 16 --duration 60s --warmup 0s --no-preload --max-requests 700000 >$D/update.out 2>&1
sleep 1
echo "after 700k uniform updates: primary $(rss $PP) backup $(rss $BP)"
echo "primary status: $(st $PA | jq -c '{state,keys,bytes,approx_bytes}' 2>/dev/null)"
# resync: SIGKILL backup, restart, time to sync
kill -9 $BP; wait $BP 2>/dev/null
for i in $(seq 1 400); do st $PA | grep -q 'cold_start' && break; sleep 0.05; done
T0=$(date +%s.%N)
RUST_LOG=info $B server --role backup --listen $BA --peer $PA --certs $D/certs >$D/backup2.log 2>&1 & BP=$!
waitsync $BA
T1=$(date +%s.%N)
echo "resync: $(echo "$T1 - $T0" | bc) s restart->sync"
sleep 1
echo "after resync: primary $(rss $PP) backup $(rss $BP)"
echo "backup status: $(st $BA | jq -c '{state,keys,bytes,approx_bytes}' 2>/dev/null)"
