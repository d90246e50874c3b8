#!/usr/bin/env bash
# Validates the Kubernetes manifests in deploy/kubernetes (RWX prompts volume) and
# deploy/kubernetes-s3 (object store) against the Kubernetes API's own
# OpenAPI schemas (strict: unknown fields fail), offline, with PyPI's kubernetes-validate,
# installed into .tools/ (git-ignored) on first use. The Prometheus Operator and KServe objects
# are CRDs outside those schemas; tests/it/deploy.rs checks them against the server instead.
set -euo pipefail
VALIDATE_VERSION="1.37.0"
KUBERNETES_VERSION="${KUBERNETES_VERSION:-1.31.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.tools/kubernetes-validate-$VALIDATE_VERSION"
if [[ ! -x "$venv/bin/kubernetes-validate" ]]; then
  rm -rf "$venv"
  "${PYTHON:-python3}" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VALIDATE_VERSION"
fi
for dir in kubernetes kubernetes-s3; do
  cd "$root/deploy/$dir"
  # Exactly the files kustomize applies.
  mapfile -t files < <(sed -n '/^resources:/,/^[a-z]/s/^  - //p' kustomization.yaml)
  if [[ ${#files[@]} -eq 0 ]]; then
    echo "deploy/$dir/kustomization.yaml lists no resources" >&2
    exit 1
  fi
  echo "deploy/$dir:"
  "$venv/bin/kubernetes-validate" --strict -k "$KUBERNETES_VERSION" "${files[@]}"
  # And what kustomize makes of them (labels, images), where kubectl is installed.
  if command -v kubectl >/dev/null; then
    kubectl kustomize . | "$venv/bin/kubernetes-validate" --strict -k "$KUBERNETES_VERSION" -
  fi
done
