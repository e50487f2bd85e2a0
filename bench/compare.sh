#!/usr/bin/env bash
# Side-by-side benchmark: every scenario against Armoricore, Socket.IO 4.8 (Node,
# benches/peers/socketio) and Sockudo (benches/peers/sockudo.sh), one server at a
# time, each started fresh for each scenario, same client harness (armoricore-bench,
# several processes from 127.0.0.x), same machine, same run. Loopback only.
#
# Armoricore runs with database.url = "off" (the peers keep no messages either;
# set ARMORICORE_DATABASE__URL to compare with it on): bench/store.sh measures what
# the database costs.
#
# CPU: nothing is pinned. The server under test and the client processes share
# the machine's cores; each result also gives the server's own CPU seconds, so
# work per CPU-second can be compared whatever share the clients took.
#
# Results: $OUT/results.jsonl (one JSON object per scenario and server) and, unless
# QUICK=1, a Markdown table appended to docs/benchmarks.md (bench/render.py).
#
# Knobs: SERVERS ("armoricore socketio sockudo"), SCENARIOS ("idle connect fanout
# rooms presence"), QUICK=1 (smoke sizes), OUT (bench/results/<date>).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/armoricore-target}"
SERVERS="${SERVERS:-armoricore socketio sockudo}"
SCENARIOS="${SCENARIOS:-idle connect fanout rooms presence}"
QUICK="${QUICK:-0}"
OUT="${OUT:-bench/results/$(date -u +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
ulimit -n "$(ulimit -Hn)"

if [ "$QUICK" = 1 ]; then
  IDLE_N=400; CONNECT_N=400; FANOUT_N=300; ROOMS_N=300; PRESENCE_N=200; PROCS=2
  HOLD=2s; FANOUT_RATE=20; SEARCH=""; PRESENCE_RATE=200
else
  IDLE_N=15000; CONNECT_N=10000; FANOUT_N=15000; ROOMS_N=15000; PRESENCE_N=5000; PROCS=4
  HOLD=10s; FANOUT_RATE=10; SEARCH="--search"; PRESENCE_RATE=1000
fi

cargo build --release --bins
BIN="$CARGO_TARGET_DIR/release"
SECRET="bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"

if [[ " $SERVERS " == *" socketio "* ]] && [ ! -d benches/peers/socketio/node_modules ]; then
  (cd benches/peers/socketio && npm ci --no-audit --no-fund)
fi
if [[ " $SERVERS " == *" sockudo "* ]] && ! benches/peers/sockudo.sh >"$OUT/sockudo-build.log" 2>&1; then
  echo "sockudo did not build (see $OUT/sockudo-build.log): comparing without it" >&2
  echo "{\"target\":\"sockudo\",\"error\":\"build failed, see sockudo-build.log\"}" >>"$RESULTS"
  SERVERS="${SERVERS/sockudo/}"
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_server NAME → SERVER_PID, WRAPPER_PID, URL, PROTO, PREFIX (topic prefix for peers)
start_server() {
  local name=$1 log="$OUT/$1.log" port
  case $name in
    armoricore)
      # The peers have no per-client rate limits: lift ours so the search can go high.
      PORT=0 JWT_SECRET="$SECRET" ARMORICORE_SERVER__HOST=127.0.0.1 \
        ARMORICORE_LIMITS__CONNECTION_EVENTS_PER_S=1000000 ARMORICORE_LIMITS__CONNECTION_EVENTS_BURST=1000000 \
        ARMORICORE_LIMITS__USER_EVENTS_PER_S=1000000 ARMORICORE_LIMITS__USER_EVENTS_BURST=1000000 \
        ARMORICORE_DATABASE__URL="${ARMORICORE_DATABASE__URL:-off}" \
        ARMORICORE_SERVER__DATA_DIR="$OUT/data" "$BIN/armoricore" --log-format json serve >"$log" 2>&1 &
      WRAPPER_PID=$!; SERVER_PID=$WRAPPER_PID; PROTO=phoenix
      for _ in $(seq 200); do
        port=$(grep -o '"addr":"[^"]*"' "$log" 2>/dev/null | head -1 | sed 's/.*:\([0-9]*\)"/\1/') || true
        [ -n "$port" ] && break; sleep 0.05
      done
      URL="ws://127.0.0.1:$port/socket/websocket" ;;
    socketio)
      PORT=0 JWT_SECRET="$SECRET" node benches/peers/socketio/server.mjs >"$log" 2>&1 &
      WRAPPER_PID=$!; SERVER_PID=$WRAPPER_PID; PROTO=socketio
      for _ in $(seq 200); do
        port=$(grep -o '"listening":"[^"]*"' "$log" 2>/dev/null | sed 's/.*:\([0-9]*\)"/\1/') || true
        [ -n "$port" ] && break; sleep 0.05
      done
      URL="ws://127.0.0.1:$port/socket.io/" ;;
    sockudo)
      port=$(free_port)
      PORT=$port APP_SECRET="$SECRET" APP_KEY=bench-key SOCKUDO_LOG="$log" benches/peers/sockudo-run.sh >"$OUT/sockudo-run.out" 2>&1 &
      WRAPPER_PID=$!; PROTO=pusher
      for _ in $(seq 400); do grep -q "$port" "$OUT/sockudo-run.out" 2>/dev/null && break; sleep 0.05; done
      SERVER_PID=$(pgrep -n -f /var/tmp/sockudo/bin/sockudo)
      URL="ws://127.0.0.1:$port/" ;;
  esac
  [ -n "${port:-}" ] || { echo "$name did not start; log:" >&2; cat "$log" >&2; exit 1; }
}

stop_server() {
  kill -TERM "$WRAPPER_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$WRAPPER_PID" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$WRAPPER_PID" "$SERVER_PID" 2>/dev/null || true
  wait "$WRAPPER_PID" 2>/dev/null || true
}

# run NAME SCENARIO ARGS... : one scenario against a fresh server, result appended.
run() {
  local name=$1 scenario=$2; shift 2
  start_server "$name"
  local prefix_chat=chat:room: prefix_stream=comments:stream:
  if [ "$PROTO" != phoenix ]; then prefix_chat=room-; prefix_stream=stream-; fi
  local prefix=$prefix_chat
  [ "$scenario" = fanout ] && prefix=$prefix_stream
  echo "== $name $scenario" >&2
  if line=$("$BIN/armoricore-bench" "$scenario" --protocol "$PROTO" --url "$URL" --secret "$SECRET" \
      --server-pid "$SERVER_PID" --procs "$PROCS" --topic-prefix "$prefix" --json "$@" | tail -n 1) &&
     echo "$line" | python3 -c 'import json,sys; d=json.load(sys.stdin); d["target"]=sys.argv[1]; print(json.dumps(d))' "$name" >>"$RESULTS"; then
    :
  else
    echo "{\"target\":\"$name\",\"scenario\":\"$scenario\",\"error\":\"run failed\"}" >>"$RESULTS"
  fi
  stop_server
}

for name in $SERVERS; do
  for scenario in $SCENARIOS; do
    case $scenario in
      idle) run "$name" idle --connections "$IDLE_N" --rooms 5000 --hold "$HOLD" ;;
      connect) run "$name" connect --connections "$CONNECT_N" --rooms 5000 ;;
      fanout)
        run "$name" fanout --connections "$FANOUT_N" --publish-rate "$FANOUT_RATE" --hold "$HOLD" --timeout 120s
        [ -n "$SEARCH" ] && run "$name" fanout --connections "$FANOUT_N" --publish-rate "$FANOUT_RATE" --hold "$HOLD" $SEARCH --timeout 600s ;;
      rooms) run "$name" rooms --connections "$ROOMS_N" --rooms $((ROOMS_N / 3)) --rate-per-user 0.5 --hold "$HOLD" ;;
      presence)
        if [ "$name" = socketio ]; then
          echo "{\"target\":\"$name\",\"scenario\":\"presence\",\"error\":\"Socket.IO has no presence\"}" >>"$RESULTS"
        else
          run "$name" presence --connections "$PRESENCE_N" --rate "$PRESENCE_RATE" --hold 20s
        fi ;;
    esac
  done
done

echo "results: $RESULTS" >&2
if [ "$QUICK" != 1 ]; then
  python3 bench/render.py "$RESULTS" >>docs/benchmarks.md
  echo "table appended to docs/benchmarks.md" >&2
fi
