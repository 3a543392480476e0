#!/usr/bin/env bash
# The benchmark command: installs wrk when missing, builds release binaries, starts every
# role as its own process on loopback, measures, and rewrites the generated section of
# BENCHMARKS.md. `bench/run.sh soak` runs the fixed-rate soak and the rate-limit check
# instead, into RELIABILITY.md. Extra arguments go to `ordermesh-bench run|soak`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ordermesh-target}"

what=run
if [ "${1:-}" = soak ]; then what=soak; shift; fi

if [ "$what" = run ] && ! command -v wrk >/dev/null; then
  echo "installing wrk (HTTP load generator)"
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get install -y -qq wrk >/dev/null 2>&1 || {
    $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq wrk >/dev/null
  }
fi

peer=()
if [ "$what" = run ] && [ "${ORDERMESH_BENCH_PEER:-1}" = 1 ]; then
  # grpc-gateway, side by side (ORDERMESH_BENCH_PEER=0 leaves it out).
  peer=(--grpc-gateway "$(bash bench/grpc-gateway-peer.sh | tail -n1)")
fi

cargo build --release --locked -p ordermesh -p ordermesh-bench
exec "$CARGO_TARGET_DIR/release/ordermesh-bench" "$what" \
  --ordermesh "$CARGO_TARGET_DIR/release/ordermesh" "${peer[@]}" "$@"
