#!/usr/bin/env bash
# Build Sockudo (a Rust Pusher-protocol server) once, as a benchmark peer for
# armoricore-bench. The binary lands in /var/tmp/sockudo/bin/sockudo; the build
# cache lives in /var/tmp/sockudo-target, outside the project's target dir.
# Re-running is a no-op once the binary exists (delete it to rebuild).
#
#   benches/peers/sockudo.sh            # build if missing, print the binary path
#   nice -n 10 benches/peers/sockudo.sh > /tmp/sockudo-build.log 2>&1 &
#
# Cold build: about 15 minutes on 2 cores.
set -euo pipefail

SOCKUDO_VERSION="${SOCKUDO_VERSION:-5.2.0}"
ROOT="${SOCKUDO_ROOT:-/var/tmp/sockudo}"
BIN="$ROOT/bin/sockudo"
export CARGO_TARGET_DIR="${SOCKUDO_TARGET_DIR:-/var/tmp/sockudo-target}"

if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi

# sockudo's dependency tree compiles .proto files at build time.
if ! command -v protoc >/dev/null 2>&1; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "protoc is missing: install protobuf-compiler (needs root)" >&2
        exit 1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y protobuf-compiler
fi

# --locked: build against the Cargo.lock shipped in the crate, so the peer is
# reproducible. `local` = in-process adapter/app manager/cache only: no Redis,
# NATS, SQL, OpenTelemetry or protocol-v2 extras.
start=$(date +%s)
cargo install sockudo \
    --version "=$SOCKUDO_VERSION" \
    --locked \
    --no-default-features --features local \
    --root "$ROOT"
echo "built sockudo $SOCKUDO_VERSION in $(( $(date +%s) - start ))s" >&2
echo "$BIN"
