#!/usr/bin/env bash
# Installs the distribution packages the tests need: nginx, the L7 proxy in front of the
# gateways in tests/cluster.rs. The package's own service is kept from starting (the tests
# start nginx themselves, on loopback ports, with their own configuration).
set -euo pipefail
if command -v nginx >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "nginx is missing and installing it needs root: apt-get install nginx-light" >&2
  exit 1
fi
policy=/usr/sbin/policy-rc.d
had_policy=0
[ -e "$policy" ] && had_policy=1
if [ "$had_policy" -eq 0 ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
fi
trap '[ "$had_policy" -eq 0 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
command -v nginx >/dev/null
