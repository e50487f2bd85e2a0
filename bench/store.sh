#!/usr/bin/env bash
# Persistence benchmark, loopback only: the `rooms` scenario (many rooms of 3,
# every member chatting, every message written to the database before its reply)
# against one node per database mode, in the same run:
#   off       database.url = "off" (history in memory only): the baseline
#   sqlite    the default (a file under data_dir)
#   postgres  the machine's PostgreSQL (a fresh database, dropped after), if reachable
# Modes alternate over ROUNDS rounds so drift on this noisy machine hits them alike.
# Each run reports messages/s, deliveries/s, delivery p50/p99, and deliveries per
# server CPU-second; the summary gives each mode's ratios to `off`.
#
# Knobs (environment): MODES ("off sqlite postgres"), ROUNDS (2), CONNECTIONS
# (6000), ROOMS (CONNECTIONS/3), RATE_PER_USER (1.0 msgs/s), HOLD (10s), PROCS (3),
# PG_ADMIN (postgres://postgres@127.0.0.1:5432/postgres), OUT (a temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/armoricore-target}"
MODES="${MODES:-off sqlite postgres}"
ROUNDS="${ROUNDS:-2}"
CONNECTIONS="${CONNECTIONS:-6000}"
ROOMS="${ROOMS:-$((CONNECTIONS / 3))}"
RATE_PER_USER="${RATE_PER_USER:-1.0}"
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

for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        start_server "$mode" "$OUT/$mode-$round"
        echo "== round $round, database $mode: rooms, $CONNECTIONS users in $ROOMS rooms, $RATE_PER_USER msgs/s each, hold $HOLD"
        "$BIN/armoricore-bench" rooms --url "$URL" --connections "$CONNECTIONS" --rooms "$ROOMS" \
            --rate-per-user "$RATE_PER_USER" --hold "$HOLD" --procs "$PROCS" \
            --server-pid "$SERVER_PID" --timeout 180s --json | tee "$OUT/$mode-$round.txt"
        stop_server
        # What was written: the database's row count, against what was published.
        case "$mode" in
            off) stored=null ;;
            sqlite) stored="$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("select count(*) from messages").fetchone()[0])' "$OUT/$mode-$round/armoricore.db")" ;;
            postgres) stored="$(psql "$PG_BASE/$PG_DB" -qAtc 'select count(*) from messages')" ;;
        esac
        tail -n1 "$OUT/$mode-$round.txt" |
            python3 -c 'import json,sys; r=json.load(sys.stdin); r["mode"]=sys.argv[1]; r["round"]=int(sys.argv[2]); r["stored"]=json.loads(sys.argv[3]); print(json.dumps(r))' \
                "$mode" "$round" "$stored" >>"$RESULTS"
        sleep 2
    done
done

python3 - "$RESULTS" <<'EOF'
import json, sys
from collections import defaultdict
runs = [json.loads(l) for l in open(sys.argv[1])]
by = defaultdict(list)
for r in runs:
    by[r["mode"]].append(r)
def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None
rows = {}
for mode, rs in by.items():
    rows[mode] = {
        "published_per_s": mean([r["published_per_s"] for r in rs]),
        "deliveries_per_s": mean([r["deliveries_per_s"] for r in rs]),
        "p50_ms": mean([r["delivery_latency"]["p50_ms"] for r in rs]),
        "p99_ms": mean([r["delivery_latency"]["p99_ms"] for r in rs]),
        "per_cpu_s": mean([r["server"]["deliveries_per_cpu_s"] for r in rs]),
        "stored": sum(r["stored"] or 0 for r in rs) if rs[0]["stored"] is not None else None,
        "published": sum(r["published"] for r in rs),
    }
base = rows.get("off")
print()
print("| database | msgs/s | deliveries/s | p50 ms | p99 ms | deliveries per server CPU-s | throughput vs off | CPU efficiency vs off | stored / published |")
print("|---|---|---|---|---|---|---|---|---|")
for mode, r in rows.items():
    ratio = lambda k: (r[k] / base[k]) if base and base[k] and r[k] is not None else None
    fmt = lambda v, p=0: "—" if v is None else f"{v:,.{p}f}"
    tput, eff = ratio("deliveries_per_s"), ratio("per_cpu_s")
    print(f"| {mode} | {fmt(r['published_per_s'])} | {fmt(r['deliveries_per_s'])} | {fmt(r['p50_ms'], 2)} | "
          f"{fmt(r['p99_ms'], 2)} | {fmt(r['per_cpu_s'])} | {fmt(tput, 2)}× | {fmt(eff, 2)}× | "
          + ("—" if r["stored"] is None else f"{r['stored']:,} / {r['published']:,}") + " |")
EOF
echo "results in $OUT"
