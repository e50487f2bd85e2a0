#!/usr/bin/env bash
# Persistence benchmark, loopback only: the `rooms` scenario (many rooms of 3,
# every member chatting, every message written to the database before its reply)
# against one node per database mode, in the same run:
#   off       database.url = "off" (history in memory only): the baseline
#   sqlite    the default (a file under data_dir)
#   postgres  the machine's PostgreSQL (a fresh database, dropped after), if reachable
# Modes alternate over ROUNDS rounds so drift on this noisy machine hits them alike,
# at each load in RATES (messages/s per user: 1 keeps up, 3 saturates 2 cores).
# Each run reports messages/s, deliveries/s, delivery p50/p99, and deliveries per
# server CPU-second; the summary gives each mode's ratios to `off` at each load.
#
# Knobs (environment): MODES ("off sqlite postgres"), ROUNDS (2), CONNECTIONS
# (6000), ROOMS (CONNECTIONS/3), RATES ("1 3"), HOLD (10s), PROCS (3),
# PG_ADMIN (postgres://postgres@127.0.0.1:5432/postgres), OUT (a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/armoricore-target}"
MODES="${MODES:-off sqlite postgres}"
ROUNDS="${ROUNDS:-2}"
CONNECTIONS="${CONNECTIONS:-6000}"
ROOMS="${ROOMS:-$((CONNECTIONS / 3))}"
RATES="${RATES:-1 3}"
HOLD="${HOLD:-10s}"
PROCS="${PROCS:-3}"
PG_ADMIN="${PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}"
OUT="${OUT:-$(mktemp -d -t armoricore-store-bench.XXXXXX)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
ulimit -n "$(ulimit -Hn)"

cargo build --release --bins
BIN="$CARGO_TARGET_DIR/release"
export JWT_SECRET="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

PG_DB="armoricore_bench_$$"
PG_BASE="${PG_ADMIN%/*}"
if [[ " $MODES " == *" postgres "* ]] && ! psql "$PG_ADMIN" -qAtc 'SELECT 1' >/dev/null 2>&1; then
    echo "PostgreSQL not reachable at $PG_ADMIN: skipping the postgres mode" >&2
    MODES="${MODES//postgres/}"
fi

SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
    fi
    [ -n "$SERVER_PID" ] && wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}
cleanup() {
    stop_server
    psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# start_server MODE DIR: sets SERVER_PID and URL.
start_server() {
    local mode="$1" dir="$2" url
    case "$mode" in
        off) url="off" ;;
        sqlite) url="" ;;
        postgres)
            psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null
            psql "$PG_ADMIN" -qc "CREATE DATABASE $PG_DB" >/dev/null
            url="$PG_BASE/$PG_DB" ;;
    esac
    rm -rf "$dir"
    mkdir -p "$dir"
    PORT=0 ARMORICORE_SERVER__HOST=127.0.0.1 ARMORICORE_SERVER__DATA_DIR="$dir" \
        ARMORICORE_DATABASE__URL="$url" ARMORICORE_LOG__LEVEL=warn,armoricore=info,armoricore::actors=warn \
        "$BIN/armoricore" --log-format json serve >"$dir.log" 2>&1 &
    SERVER_PID=$!
    local addr=""
    for _ in $(seq 300); do
        addr="$(grep -o '"addr":"[^"]*"' "$dir.log" 2>/dev/null | head -n1 | cut -d'"' -f4 || true)"
        [ -n "$addr" ] && break
        kill -0 "$SERVER_PID" 2>/dev/null || { cat "$dir.log" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$addr" ] || { echo "server did not start" >&2; exit 1; }
    URL="ws://$addr/socket/websocket"
}

for rate in $RATES; do
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        run="$mode-$rate-$round"
        start_server "$mode" "$OUT/$run"
        echo "== rate $rate, round $round, database $mode: rooms, $CONNECTIONS users in $ROOMS rooms, $rate msgs/s each, hold $HOLD"
        "$BIN/armoricore-bench" rooms --url "$URL" --connections "$CONNECTIONS" --rooms "$ROOMS" \
            --rate-per-user "$rate" --hold "$HOLD" --procs "$PROCS" \
            --server-pid "$SERVER_PID" --timeout 180s --json | tee "$OUT/$run.txt"
        stop_server
        # What was written: the database's row count, against what was published.
        case "$mode" in
            off) stored=null ;;
            sqlite) stored="$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from messages").fetchone()[0])' "$OUT/$run/armoricore.db")" ;;
            postgres) stored="$(psql "$PG_BASE/$PG_DB" -qAtc 'select count(*) from messages')" ;;
        esac
        tail -n1 "$OUT/$run.txt" |
            python3 -c 'import json,sys; r=json.load(sys.stdin); r["mode"]=sys.argv[1]; r["rate"]=float(sys.argv[2]); r["round"]=int(sys.argv[3]); r["stored"]=json.loads(sys.argv[4]); print(json.dumps(r))' \
                "$mode" "$rate" "$round" "$stored" >>"$RESULTS"
        sleep 2
    done
done
done

python3 - "$RESULTS" <<'EOF'
import json, sys
from collections import defaultdict
runs = [json.loads(l) for l in open(sys.argv[1])]
def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
by = defaultdict(list)
for r in runs:
    by[(r["rate"], r["mode"])].append(r)
print()
print("| load | database | msgs/s | deliveries/s | p50 ms | p99 ms | deliveries per server CPU-s | throughput vs off | CPU efficiency vs off | stored / published |")
print("|---|---|---|---|---|---|---|---|---|---|")
fmt = lambda v, p=0: "—" if v is None else f"{v:,.{p}f}"
for rate in sorted({k[0] for k in by}):
    rows = {}
    for (r_, mode), rs in by.items():
        if r_ != rate:
            continue
        rows[mode] = {
            "published_per_s": mean([r["published_per_s"] for r in rs]),
            "deliveries_per_s": mean([r["deliveries_per_s"] for r in rs]),
            "p50_ms": mean([r["delivery_latency"].get("p50_ms") for r in rs]),
            "p99_ms": mean([r["delivery_latency"].get("p99_ms") for r in rs]),
            "per_cpu_s": mean([r["server"]["deliveries_per_cpu_s"] for r in rs]),
            "stored": sum(r["stored"] or 0 for r in rs) if rs[0]["stored"] is not None else None,
            "published": sum(r["published"] for r in rs),
        }
    base = rows.get("off")
    for mode in [m for m in ("off", "sqlite", "postgres") if m in rows]:
        r = rows[mode]
        ratio = lambda k: (r[k] / base[k]) if base and base[k] and r[k] is not None else None
        print(f"| {rate:g} msg/s per user | {mode} | {fmt(r['published_per_s'])} | {fmt(r['deliveries_per_s'])} | "
              f"{fmt(r['p50_ms'], 2)} | {fmt(r['p99_ms'], 2)} | {fmt(r['per_cpu_s'])} | "
              f"{fmt(ratio('deliveries_per_s'), 2)}× | {fmt(ratio('per_cpu_s'), 2)}× | "
              + ("—" if r["stored"] is None else f"{r['stored']:,} / {r['published']:,}") + " |")
EOF
echo "results in $OUT"
