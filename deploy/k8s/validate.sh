#!/usr/bin/env bash
# Renders every overlay with kubectl's built-in kustomize and validates the result offline,
# strictly (unknown fields are errors), against the pinned Kubernetes version's schemas.
#
#   deploy/k8s/validate.sh [KUBERNETES_VALIDATE]   # default: kubernetes-validate on PATH
set -euo pipefail
cd "$(dirname "$0")"
validate="${1:-kubernetes-validate}"
kubernetes_version=1.32.0
command -v kubectl >/dev/null || { echo "validate.sh: kubectl is needed (kustomize is built in)" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for overlay in overlays/*/; do
  name="$(basename "$overlay")"
  kubectl kustomize "$overlay" > "$out/$name.yaml"
  "$validate" --strict --kubernetes-version "$kubernetes_version" --quiet "$out/$name.yaml"
  echo "deploy/k8s/overlays/$name: $(grep -c '^kind:' "$out/$name.yaml") objects valid against Kubernetes $kubernetes_version"
done
