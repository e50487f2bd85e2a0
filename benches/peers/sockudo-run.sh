#!/usr/bin/env bash
# Run Sockudo (built by benches/peers/sockudo.sh) as a benchmark peer:
# one in-process app, no rate limits, client events on, no metrics, warn logs.
# Prints the port on stdout once `/up/$APP_ID` answers 200, then stays in the
# foreground until Sockudo exits; SIGTERM/SIGINT are passed on to it.
#
#   PORT=6001 benches/peers/sockudo-run.sh
#   armoricore-bench ... --url ws://127.0.0.1:6001   (Pusher driver: key/secret below)
#
# Environment (defaults in brackets):
#   PORT [6001]  HOST [127.0.0.1]  SOCKUDO_BIN [/var/tmp/sockudo/bin/sockudo]
#   APP_ID [armoricore-bench]  APP_KEY [bench-key]  APP_SECRET [bench-secret]
#   MAX_CONNECTIONS [1000000] per app (the default app allows 100; the server-wide cap stays 0 = none)
#   SOCKUDO_LOG [/dev/stderr] where Sockudo's own output goes
#   SHUTDOWN_GRACE_PERIOD [1] seconds Sockudo drains on SIGTERM (its default, 10, makes every stop take 11 s)
set -euo pipefail

PORT="${PORT:-6001}"
HOST="${HOST:-127.0.0.1}"
BIN="${SOCKUDO_BIN:-/var/tmp/sockudo/bin/sockudo}"
APP_ID="${APP_ID:-armoricore-bench}"
APP_KEY="${APP_KEY:-bench-key}"
APP_SECRET="${APP_SECRET:-bench-secret}"
MAX_CONNECTIONS="${MAX_CONNECTIONS:-1000000}"
LOG="${SOCKUDO_LOG:-/dev/stderr}"
GRACE="${SHUTDOWN_GRACE_PERIOD:-1}"
# Generous "unlimited": Sockudo treats 0 as "no limit" for connections and
# client events, but as "nothing allowed" for presence members.
BIG=1000000

if [[ ! -x "$BIN" ]]; then
    echo "$BIN not found: run benches/peers/sockudo.sh first" >&2
    exit 1
fi

# One descriptor per connection: use the hard limit (Sockudo does not raise it).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Sockudo reads ./config/config.toml or ./config/config.json when present:
# run from an empty directory so only the environment below applies.
workdir=$(mktemp -d /tmp/sockudo-run.XXXXXX)

env \
    HOST="$HOST" PORT="$PORT" SHUTDOWN_GRACE_PERIOD="$GRACE" \
    RUST_LOG=warn LOG_COLORS_ENABLED=false \
    ADAPTER_DRIVER=local APP_MANAGER_DRIVER=memory CACHE_DRIVER=memory QUEUE_DRIVER=none \
    METRICS_ENABLED=false \
    RATE_LIMITER_ENABLED=false \
    SOCKUDO_MAX_CONNECTIONS=0 \
    SOCKUDO_DEFAULT_APP_ID="$APP_ID" \
    SOCKUDO_DEFAULT_APP_KEY="$APP_KEY" \
    SOCKUDO_DEFAULT_APP_SECRET="$APP_SECRET" \
    SOCKUDO_DEFAULT_APP_ENABLED=true \
    SOCKUDO_DEFAULT_APP_MAX_CONNECTIONS="$MAX_CONNECTIONS" \
    SOCKUDO_DEFAULT_APP_ENABLE_CLIENT_MESSAGES=true \
    SOCKUDO_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SECOND=0 \
    SOCKUDO_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SECOND=$BIG \
    SOCKUDO_DEFAULT_APP_MAX_READ_REQUESTS_PER_SECOND=$BIG \
    SOCKUDO_DEFAULT_APP_MAX_PRESENCE_MEMBERS_PER_CHANNEL=$BIG \
    bash -c 'cd "$1" && exec "$2"' _ "$workdir" "$BIN" >>"$LOG" 2>&1 &
pid=$!

stop() {
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$workdir"
}
trap 'stop; exit 143' TERM INT
trap 'rm -rf "$workdir"' EXIT

for _ in $(seq 1 300); do
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" || true
        echo "sockudo exited before becoming ready" >&2
        exit 1
    fi
    if curl -fsS -o /dev/null --max-time 1 "http://$HOST:$PORT/up/$APP_ID" 2>/dev/null; then
        echo "$PORT"
        # `wait` returns early when a trapped signal arrives, so the trap runs promptly.
        wait "$pid"
        exit $?
    fi
    sleep 0.1
done
echo "sockudo not ready on $HOST:$PORT after 30s" >&2
stop
exit 1
