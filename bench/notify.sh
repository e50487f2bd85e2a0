#!/usr/bin/env bash
# Push notifications/s and job latency through Armoricore to a local FCM HTTP v1
# stand-in (in the bench process), against a bare FCM client in the same run.
# Usage: bench/notify.sh [armoricore-bench notify options, e.g. --jobs 20000
#        --window 100 --provider-latency-ms 20 --database off --json]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${CARGO_TARGET_DIR:-}" ] && [ -d /var/tmp/armoricore-target ]; then
  export CARGO_TARGET_DIR=/var/tmp/armoricore-target
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --bin armoricore-bench >&2
"$target/release/armoricore-bench" notify "$@"
