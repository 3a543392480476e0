#!/usr/bin/env bash
# Checks the Helm chart, the Istio manifests and the Dockerfile without a cluster:
#   bash tests/deploy/run.sh
# Creates (once) or reuses a virtualenv at ${ORDERMESH_PY_VENV:-$HOME/.cache/ordermesh-venv}.
# The Istio CRD schemas are read from ../shared/schemas/istio-crds.yaml beside the repository,
# or from ${ORDERMESH_SHARED_DIR}/schemas/istio-crds.yaml.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${ORDERMESH_PY_VENV:-$HOME/.cache/ordermesh-venv}"
python="${PYTHON:-python3}"

# Pinned: helm-python-sdk bundles the Helm v4 engine; kubernetes-validate ships the
# Kubernetes schemas up to 1.37.
requirements=(
  "helm-python-sdk==0.2.2"
  "kubernetes-validate==1.37.0"
  "jsonschema==4.26.0"
  "PyYAML==6.0.3"
)

if [[ ! -x "$venv/bin/python" ]]; then
  echo "creating virtualenv $venv"
  "$python" -m venv "$venv"
fi
# The venv may be shared with other test setups: always (re)assert the pins. When they are
# already installed this is offline and takes about a second.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${requirements[@]}"

exec "$venv/bin/python" "$here/check_deploy.py" "$@"
