#!/usr/bin/env bash
# Events/s and p99 through the NATS bridge (media.uploaded → handler → media.ready),
# against a bare JetStream worker measured in the same run.
# Starts its own nats-server -js on a random port with a throwaway store.
# Usage: bench/bus.sh [armoricore-bench bus options, e.g. --events 50000 --json]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/armoricore-target ]; then
  export CARGO_TARGET_DIR=/var/tmp/armoricore-target
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --bin armoricore-bench >&2

store=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
nats-server -js -a 127.0.0.1 -p "$port" -sd "$store" >/dev/null 2>&1 &
nats=$!
trap 'kill $nats 2>/dev/null; wait $nats 2>/dev/null; rm -rf "$store"' EXIT
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
sleep 0.3

"$target/release/armoricore-bench" bus --nats-url "nats://127.0.0.1:$port" "$@"
