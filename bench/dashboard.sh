#!/usr/bin/env bash
# What a watched dashboard costs a loaded node, loopback only. Builds release,
# starts `armoricore serve` with a dashboard password, then runs the `idle`
# scenario (CONNECTIONS connections, one topic each: as many topics as
# connections, the worst case for the busiest-topics scan) ROUNDS times without
# and with a dashboard watcher (bench/dashboard-watch.mjs: the page's socket, no
# browser), alternating, and prints the server CPU over each hold and the
# snapshots' size and cadence. The ratio of the two CPU figures is the result.
#
# Knobs: CONNECTIONS (10000), PROCS (4), HOLD (30s), ROUNDS (2), INTERVAL_MS
# (dashboard.interval_ms, 1000), OUT (a temp dir: server.log, one JSON per run).
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/armoricore-target}"
CONNECTIONS="${CONNECTIONS:-10000}"
PROCS="${PROCS:-4}"
HOLD="${HOLD:-30s}"
ROUNDS="${ROUNDS:-2}"
INTERVAL_MS="${INTERVAL_MS:-1000}"
OUT="${OUT:-$(mktemp -d -t armoricore-dash.XXXXXX)}"
mkdir -p "$OUT"
[ -d tests/js/node_modules/ws ] || (cd tests/js && npm ci --no-audit --no-fund)

cargo build --release --bins
BIN="$CARGO_TARGET_DIR/release"
ulimit -n "$(ulimit -Hn)"

PASSWORD="bench-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export JWT_SECRET="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
PORT=0 ARMORICORE_SERVER__HOST=127.0.0.1 ARMORICORE_SERVER__DATA_DIR="$OUT/data" \
    ARMORICORE_DASHBOARD__PASSWORD="$PASSWORD" ARMORICORE_DASHBOARD__INTERVAL_MS="$INTERVAL_MS" \
    "$BIN/armoricore" --log-format json serve >"$OUT/server.log" 2>&1 &
SERVER_PID=$!
WATCHER_PID=""
cleanup() {
    [ -n "$WATCHER_PID" ] && kill "$WATCHER_PID" 2>/dev/null || true
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
}
trap cleanup EXIT

ADDR=""
for _ in $(seq 300); do
    ADDR="$(grep '"message":"listening"' "$OUT/server.log" 2>/dev/null |
        grep -o '"addr":"[^"]*"' | head -n1 | cut -d'"' -f4 || true)"
    [ -n "$ADDR" ] && break
    sleep 0.1
done
[ -n "$ADDR" ] || { cat "$OUT/server.log" >&2; echo "server did not start" >&2; exit 1; }

idle() {
    "$BIN/armoricore-bench" idle --url "ws://$ADDR/socket/websocket" --connections "$CONNECTIONS" \
        --procs "$PROCS" --topics-per-conn 1 --concurrency 100 --server-pid "$SERVER_PID" \
        --timeout 180s --hold "$HOLD" --json | tail -n1
}

for round in $(seq "$ROUNDS"); do
    echo "== round $round: $CONNECTIONS connections, hold $HOLD, no dashboard"
    idle | tee "$OUT/plain-$round.json"
    sleep 3
    echo "== round $round: the same, dashboard watched every $INTERVAL_MS ms"
    node bench/dashboard-watch.mjs "http://$ADDR" "$PASSWORD" >"$OUT/watch-$round.json" &
    WATCHER_PID=$!
    idle | tee "$OUT/watched-$round.json"
    kill -TERM "$WATCHER_PID"; wait "$WATCHER_PID" || true; WATCHER_PID=""
    cat "$OUT/watch-$round.json"
    sleep 3
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys
out, rounds = sys.argv[1], int(sys.argv[2])
for r in range(1, rounds + 1):
    plain = json.load(open(f"{out}/plain-{r}.json"))["server"]
    watched = json.load(open(f"{out}/watched-{r}.json"))["server"]
    watch = json.load(open(f"{out}/watch-{r}.json"))
    p, w = plain["cpu_hold_s"], watched["cpu_hold_s"]
    print(f"round {r}: server CPU over the hold {p:.2f} s plain, {w:.2f} s watched "
          f"(+{w - p:.2f} s, x{w / p:.2f}); RSS/conn {plain['rss_per_conn_kib']} vs "
          f"{watched['rss_per_conn_kib']} KiB; {watch['snapshots']} snapshots, "
          f"{watch['bytes_mean']} B mean, every {watch['interval_ms_p50']} ms (max {watch['interval_ms_max']})")
PY
echo "results in $OUT"
