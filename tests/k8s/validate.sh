#!/usr/bin/env bash
# Validates the Kubernetes manifests offline (no cluster): renders each overlay with
# `kubectl kustomize`, checks it against the Kubernetes API schemas of the oldest and newest
# supported versions with `kubernetes-validate --strict` (PyPI; schemas bundled), checks what
# a schema cannot (probes, securityContext, selectors), proves the validator bites on a
# deliberate typo, and runs `sessiongate check-config` on the shipped sessiongate.toml.
# Usage: tests/k8s/validate.sh [path/to/sessiongate]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/debug/sessiongate}
versions=(1.30.0 1.37.0)   # preStop.sleep needs 1.30 (beta, on by default)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0

for overlay in test live; do
  kubectl kustomize "k8s/overlays/$overlay" >"$work/$overlay.yaml"
  for v in "${versions[@]}"; do
    if kubernetes-validate --strict -k "$v" --quiet "$work/$overlay.yaml"; then
      echo "  ok   $overlay overlay is valid Kubernetes $v (strict)"
    else
      echo "  FAIL $overlay overlay against Kubernetes $v"; fail=1
    fi
  done
  if python3 tests/k8s/checks.py "$overlay" "$work/$overlay.yaml"; then
    echo "  ok   $overlay overlay: probes, securityContext, selectors, env"
  else
    fail=1
  fi
done

# The validator must bite: a misspelt field and a string where an integer belongs.
sed 's/readinessProbe:/readinesProbe:/' "$work/test.yaml" >"$work/typo.yaml"
if kubernetes-validate --strict -k "${versions[0]}" --quiet "$work/typo.yaml" >/dev/null 2>&1; then
  echo "  FAIL a misspelt readinessProbe passed validation"; fail=1
else
  echo "  ok   a misspelt field (readinesProbe) is refused"
fi
sed 's/failureThreshold: 30/failureThreshold: "30"/' "$work/test.yaml" >"$work/type.yaml"
grep -q 'failureThreshold: "30"' "$work/type.yaml"
if kubernetes-validate --strict -k "${versions[0]}" --quiet "$work/type.yaml" >/dev/null 2>&1; then
  echo "  FAIL a string failureThreshold passed validation"; fail=1
else
  echo "  ok   a wrongly typed field (failureThreshold: \"30\") is refused"
fi
if python3 tests/k8s/checks.py test <(sed 's/readOnlyRootFilesystem: true/readOnlyRootFilesystem: false/' "$work/test.yaml") >/dev/null 2>&1; then
  echo "  FAIL a writable root filesystem passed the checks"; fail=1
else
  echo "  ok   a writable root filesystem is refused by the checks"
fi

# The examples users paste are valid too (Istio's below: its kinds have no Kubernetes schema).
for example in k8s/examples/*.yaml; do
  [ "$example" = k8s/examples/istio.yaml ] && continue
  for v in "${versions[@]}"; do
    if kubernetes-validate --strict -k "$v" --quiet "$example"; then
      echo "  ok   $example is valid Kubernetes $v (strict)"
    else
      echo "  FAIL $example against Kubernetes $v"; fail=1
    fi
  done
done

# Istio's kinds have no Kubernetes schema: their example is checked against the base
# manifests and sessiongate's configuration instead.
if python3 tests/k8s/istio_example.py "$bin"; then
  echo "  ok   k8s/examples/istio.yaml fits the manifests and the configuration"
else
  fail=1
fi
sed 's/mode: STRICT /mode: PERMISSIVE /' k8s/examples/istio.yaml >"$work/istio-permissive.yaml"
if python3 tests/k8s/istio_example.py "$bin" "$work/istio-permissive.yaml" >/dev/null 2>&1; then
  echo "  FAIL an Istio example without STRICT mTLS passed the checks"; fail=1
else
  echo "  ok   an Istio example without STRICT mTLS is refused by the checks"
fi

# The shipped configuration is valid for live (with the Secret's values present).
if SESSIONGATE_ENV=live REDIS_URL=redis://sessiongate-redis:6379 \
  SESSIONGATE_FLOW_COOKIE_KEY=check-config-only-0123456789abcdef0123 \
  "$bin" check-config k8s/base/sessiongate.toml >/dev/null 2>"$work/check.log"; then
  echo "  ok   k8s/base/sessiongate.toml passes check-config in live"
else
  echo "  FAIL k8s/base/sessiongate.toml:"; cat "$work/check.log"; fail=1
fi

exit $fail
