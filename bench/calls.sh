#!/usr/bin/env bash
# RTP forwarded by the call SFU per node CPU-second, and the latency it adds per
# packet against a direct peer-to-peer baseline in the same run (str0m peers and
# the node in one process; the node's CPU is read from its own threads).
# Usage: bench/calls.sh [armoricore-bench calls options, e.g. --participants 6
#        --pps 200 --size 600 --seconds 10 --node-threads 1 --json]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/armoricore-target ]; then
  export CARGO_TARGET_DIR=/var/tmp/armoricore-target
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --bin armoricore-bench >&2
"$target/release/armoricore-bench" calls "$@"
