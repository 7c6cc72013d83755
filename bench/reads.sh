#!/usr/bin/env bash
# bench/reads.sh — reads at both servers of a pair against reads at the primary alone, and the
# cost of the primary's dirty check (issue 22), in one run, as ratios.
#
# Usage: bench/reads.sh --bin BIN [--base BIN] [--rounds 3] [--duration 5s] [--streams 16]
#                       [--pipeline 16]
#   --bin    the quickv binary under test (its `quickv bench` drives every run)
#   --base   a second server binary (e.g. main before the change): its pair runs beside the
#            first, and every workload is measured on both, interleaved, for new/base ratios
#
# Per pair (primary + backup on loopback, started once, release build) and round, in an order
# that alternates per round:
#   get-primary  gets of 100k preloaded keys (100 B values), all at the primary
#   get-any      the same gets with `--read-from any --backup`: taking turns between the servers
#   mixed-primary / mixed-any   50 % gets, 50 % updates on 1,000 keys (hot keys: the dirty check
#                has writes in flight to wait for)
# Printed per run: ops/s, requests each server served (status `requests` deltas), and server CPU
# (user+system of both processes, /proc/PID/stat deltas) in µs per request; then per workload the
# median over rounds and the ratios any/primary (and new/base). Loopback only; every command is
# bounded by `timeout`; the servers are stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=""; BASE=""; ROUNDS=3; DURATION=5s; STREAMS=16; PIPELINE=16
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN=$2; shift ;;
    --base) BASE=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --streams) STREAMS=$2; shift ;;
    --pipeline) PIPELINE=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "reads.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ -x "$BIN" ] || { echo "reads.sh: --bin BIN is required" >&2; exit 2; }
[ -z "$BASE" ] || [ -x "$BASE" ] || { echo "reads.sh: --base $BASE is not executable" >&2; exit 2; }

exec python3 - "$BIN" "$BASE" "$ROUNDS" "$DURATION" "$STREAMS" "$PIPELINE" <<'EOF'
import json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

gen, base, rounds, duration, streams, pipeline = sys.argv[1:]
rounds = int(rounds)
work = tempfile.mkdtemp(prefix="quickv-reads.")
procs = []

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"

def start(binary, role, listen, peer, log):
    p = subprocess.Popen([binary, "--certs", f"{work}/certs", "server", "--role", role,
                          "--listen", listen, "--peer", peer],
                         stdout=open(log, "w"), stderr=subprocess.STDOUT)
    procs.append(p)
    for _ in range(400):
        if "listening" in open(log).read():
            return p
        time.sleep(0.05)
    sys.exit(f"reads.sh: the {role} did not start: {open(log).read()}")

def cli(server, *args, limit=120):
    out = subprocess.run(["timeout", str(limit), gen, "--certs", f"{work}/certs", "--server",
                          server, *args], capture_output=True, text=True)
    return out

def status(server):
    out = cli(server, "status", "--json", limit=20)
    return json.loads(out.stdout)

def ticks(p):
    f = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])

class Pair:
    def __init__(self, name, binary):
        self.name = name
        self.p_addr, self.b_addr = free_port(), free_port()
        self.p = start(binary, "primary", self.p_addr, self.b_addr, f"{work}/{name}-p.log")
        self.b = start(binary, "backup", self.b_addr, self.p_addr, f"{work}/{name}-b.log")
        for _ in range(400):
            try:
                if status(self.p_addr)["state"] == "sync" and status(self.b_addr)["state"] == "sync":
                    break
            except Exception:
                pass
            time.sleep(0.05)
        else:
            sys.exit(f"reads.sh: pair {name} never reached sync")
        for keys in ("100000", "1000"):
            cli(self.p_addr, "bench", "--workload", "get", "--keys", keys, "--streams", "16",
                "--pipeline", "16", "--warmup", "0s", "--duration", "1s", "--max-requests", "1",
                "--json", limit=300)

WORKLOADS = {
    "get-primary": ["--workload", "get", "--keys", "100000"],
    "get-any": ["--workload", "get", "--keys", "100000", "--read-from", "any"],
    "mixed-primary": ["--mix", "get=50,update=50", "--keys", "1000"],
    "mixed-any": ["--mix", "get=50,update=50", "--keys", "1000", "--read-from", "any"],
}

def run(pair, wl):
    args = list(WORKLOADS[wl])
    if "--read-from" in args:
        args += ["--backup", pair.b_addr]
    req0 = [status(a)["requests"] for a in (pair.p_addr, pair.b_addr)]
    t0 = ticks(pair.p) + ticks(pair.b)
    out = cli(pair.p_addr, "bench", *args, "--no-preload", "--streams", streams, "--pipeline",
              pipeline, "--warmup", "1s", "--duration", duration, "--progress", "off", "--json")
    t1 = ticks(pair.p) + ticks(pair.b)
    req1 = [status(a)["requests"] for a in (pair.p_addr, pair.b_addr)]
    try:
        d = json.loads(out.stdout)
        ops = d["total"]["ops_per_sec"]
    except Exception:
        sys.exit(f"reads.sh: {wl} on {pair.name} failed: {out.stderr[-2000:]}")
    served = [b - a for a, b in zip(req0, req1)]
    cpu_us = (t1 - t0) / os.sysconf("SC_CLK_TCK") * 1e6
    per_req = cpu_us / max(1, sum(served))
    return ops, served, per_req

try:
    subprocess.run([gen, "certs", "--dir", f"{work}/certs"], capture_output=True, check=True)
    pairs = [Pair("new", gen)] + ([Pair("base", base)] if base else [])
    load = open("/proc/loadavg").read().split()[:3]
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} bin={gen} base={base or '-'} "
          f"duration={duration} streams={streams}x{pipeline} load: {' '.join(load)}")
    print(f"{'round':<6}{'pair':<6}{'workload':<15}{'ops/s':>10}{'primary req':>13}{'backup req':>12}{'srv µs/req':>12}")
    results = {}
    order = [(p, wl) for p in pairs for wl in WORKLOADS]
    for r in range(rounds):
        for pair, wl in (order if r % 2 == 0 else list(reversed(order))):
            ops, served, per_req = run(pair, wl)
            results.setdefault((pair.name, wl), []).append((ops, per_req))
            print(f"{r:<6}{pair.name:<6}{wl:<15}{ops:>10.0f}{served[0]:>13}{served[1]:>12}{per_req:>12.2f}", flush=True)
    med = {k: (statistics.median(o for o, _ in v), statistics.median(c for _, c in v)) for k, v in results.items()}
    print("\nmedians (ops/s, server µs per request) and ratios")
    for pair in pairs:
        n = pair.name
        for kind in ("get", "mixed"):
            (po, pc), (ao, ac) = med[(n, f"{kind}-primary")], med[(n, f"{kind}-any")]
            print(f"{n:<6}{kind:<6} primary {po:>9.0f} ops/s {pc:6.2f} µs | any {ao:>9.0f} ops/s {ac:6.2f} µs"
                  f" | any/primary: ops {ao / po:.2f}x, cpu/req {ac / pc:.2f}x")
    if base:
        for wl in WORKLOADS:
            (no, nc), (bo, bc) = med[("new", wl)], med[("base", wl)]
            print(f"new/base {wl:<15} ops {no / bo:.2f}x, cpu/req {nc / bc:.2f}x")
finally:
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    shutil.rmtree(work, ignore_errors=True)
EOF
