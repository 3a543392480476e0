#!/usr/bin/env bash
# Creates (or reuses) the venv with the Python tools the tests use: moto's DynamoDB-compatible
# server for the DynamoDB storage tests, and schemathesis and openapi-spec-validator for the
# OpenAPI tests, aiosmtpd as the mail relay of the notification tests, standardwebhooks to verify webhook signatures. Pinned,
# installed from the package registry.
set -euo pipefail
venv="${ORDERMESH_PY_VENV:-$HOME/.cache/ordermesh-venv}"
stamp="$venv/.ordermesh-tools-v5"
if [ -f "$stamp" ]; then
  exit 0
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.2.5" "schemathesis==4.32.5" "openapi-spec-validator==0.9.0" "aiosmtpd==1.4.6" "standardwebhooks==1.1.0"
touch "$stamp"
