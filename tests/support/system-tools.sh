#!/usr/bin/env bash
# Installs the distribution packages the tests need, each only when its command is missing:
#   nginx    (nginx-light): the L7 proxy in front of the gateways in tests/cluster.rs;
#   promtool (prometheus):  `promtool check rules` / `promtool test rules` on the alerting
#                           rules in tests/deploy/run.sh.
# The packages' own services are kept from starting (the tests start nginx themselves, on
# loopback ports, with their own configuration; nothing needs a Prometheus server).
set -euo pipefail

# command -> Debian package that ships it
tools=(
  "nginx nginx-light"
  "promtool prometheus"
)

missing=()
for entry in "${tools[@]}"; do
  read -r cmd pkg <<<"$entry"
  if ! command -v "$cmd" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing packages, and installing them needs root: apt-get install ${missing[*]}" >&2
  exit 1
fi

# Keep the packages' services from starting (invoke-rc.d asks policy-rc.d; 101 = forbidden).
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
# One package at a time: a package that fails to install does not hold back the others,
# and the message names it.
status=0
for entry in "${tools[@]}"; do
  read -r cmd pkg <<<"$entry"
  command -v "$cmd" >/dev/null 2>&1 && continue
  echo "installing $pkg (for $cmd)"
  if ! apt-get install -y -qq --no-install-recommends "$pkg" >/dev/null; then
    echo "apt-get install $pkg failed" >&2
    status=1
    continue
  fi
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "$pkg installed, but $cmd is still not on PATH" >&2
    status=1
  fi
done
exit "$status"
