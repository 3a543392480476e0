#!/usr/bin/env bash
# Installs what grpc-gateway-peer needs and builds it (see shared/tools/grpc-gateway-peer): the
# grpc-gateway v1 transcoder measured side by side with the edge gateway. Prints its path last:
#   peer=$(bench/grpc-gateway-peer.sh | tail -n1)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${GRPC_GATEWAY_PEER:-$HOME/.cache/grpc-gateway-peer/peer}

TOOLS="golang-go protobuf-compiler"
LIBS="golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev
  golang-golang-x-net-dev golang-golang-x-sys-dev golang-golang-x-text-dev golang-golang-x-sync-dev
  golang-github-golang-protobuf-1-3-dev golang-goprotobuf-dev golang-grpc-gateway
  golang-github-grpc-ecosystem-grpc-gateway-dev"

missing=0
command -v go >/dev/null && command -v protoc >/dev/null || missing=1
for p in $LIBS; do
  dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing=1
done
if [ "$missing" = 1 ]; then
  echo "installing Go, protoc and Debian's grpc-gateway packages" >&2
  if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
  # A new machine's package lists may be empty or stale: update only when the install fails.
  # shellcheck disable=SC2086
  $sudo apt-get install -y -qq $TOOLS $LIBS >/dev/null 2>&1 || {
    $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq $TOOLS $LIBS >/dev/null
  }
fi

# A fresh checkout gives the protos new mtimes, so a cached binary is rebuilt once per clone.
if [ ! -x "$OUT" ] || [ -n "$(find proto -name '*.proto' -newer "$OUT" -print -quit)" ]; then
  OUT="$OUT" ../shared/tools/grpc-gateway-peer/build.sh proto \
    ordermesh/order/v1/order.proto,ordermesh/user/v1/user.proto ordermesh.local/gen \
    ordermesh.order.v1.CatalogService,ordermesh.order.v1.OrderService,ordermesh.user.v1.UserService >&2
fi
echo "$OUT"
