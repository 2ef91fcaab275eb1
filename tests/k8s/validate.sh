#!/usr/bin/env bash
# Validates the Kubernetes manifests offline (no cluster): renders each overlay with
# `kubectl kustomize`, checks it against the Kubernetes API schemas of the oldest and newest
# supported versions with `kubernetes-validate --strict` (PyPI; schemas bundled), checks what
# a schema cannot (probes, securityContext, selectors), proves the validator bites on a
# deliberate typo, and runs `sessiongate check-config` on each overlay's rendered configuration.
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

if python3 tests/k8s/checks.py test <(sed 's/^  revisionHistoryLimit: 5/  replicas: 2\n  revisionHistoryLimit: 5/' "$work/test.yaml") >/dev/null 2>&1; then
  echo "  FAIL replicas under an HPA passed the checks"; fail=1
else
  echo "  ok   replicas on a Deployment an HPA scales are refused by the checks"
fi
if python3 tests/k8s/checks.py test <(sed 's/^    maxmemory 700mb/    maxmemory 2gb/' "$work/test.yaml") >/dev/null 2>&1; then
  echo "  FAIL a Redis maxmemory over its limit passed the checks"; fail=1
else
  echo "  ok   a Redis maxmemory over its container limit is refused by the checks"
fi

# The Redis configuration runs as the StatefulSet runs it: a real redis-server with the shipped
# redis.conf and --requirepass refuses a client without the password, answers the probe's
# PONG with it, and has maxmemory and noeviction.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# (Only its data directory moves: /data is the volume's mount point.)
sed "s|^dir /data$|dir $work|" k8s/components/redis/redis.conf >"$work/redis.conf"
redis-server "$work/redis.conf" --requirepass probe-secret --port "$port" --bind 127.0.0.1 \
  >"$work/redis.log" 2>&1 &
redis_pid=$!
# Until it says it is ready (or 10 s).
timeout 10 grep -m1 -q "Ready to accept connections" <(tail -f "$work/redis.log") || true
if [ "$(redis-cli -p "$port" get x 2>&1)" = "NOAUTH Authentication required." ] \
  && [ "$(REDISCLI_AUTH=probe-secret redis-cli -p "$port" ping)" = PONG ] \
  && [ "$(REDISCLI_AUTH=probe-secret redis-cli -p "$port" config get maxmemory | tail -1)" = 734003200 ] \
  && [ "$(REDISCLI_AUTH=probe-secret redis-cli -p "$port" config get maxmemory-policy | tail -1)" = noeviction ]; then
  echo "  ok   k8s/components/redis/redis.conf: a password required, PONG for the probe, maxmemory 700mb, noeviction"
else
  echo "  FAIL k8s/components/redis/redis.conf does not run as the StatefulSet expects"; fail=1
fi
kill "$redis_pid" 2>/dev/null || true
wait "$redis_pid" 2>/dev/null || true

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

# Each overlay's configuration, as its pods read it: the rendered ConfigMaps written where the
# Deployment mounts them (config/ and clients/ side by side, so that clients_file resolves), then
# `sessiongate check-config` in the overlay's env (with the Secret's values present).
for overlay in test live; do
  etc="$work/etc-$overlay"
  python3 - "$work/$overlay.yaml" "$etc" <<'EOF_PY'
import pathlib, sys, yaml
rendered, etc = sys.argv[1], pathlib.Path(sys.argv[2])
mounts = {"sessiongate-config": "config", "sessiongate-clients": "clients"}
for doc in yaml.safe_load_all(open(rendered)):
    if doc and doc["kind"] == "ConfigMap":
        for prefix, folder in mounts.items():
            if doc["metadata"]["name"].startswith(prefix + "-"):
                for name, text in doc["data"].items():
                    (etc / folder).mkdir(parents=True, exist_ok=True)
                    (etc / folder / name).write_text(text)
EOF_PY
  if SESSIONGATE_ENV=$overlay REDIS_URL=redis://sessiongate-redis:6379 \
    SESSIONGATE_FLOW_COOKIE_KEY=check-config-only-0123456789abcdef0123 \
    "$bin" check-config "$etc/config/sessiongate.toml" >"$work/check.json" 2>"$work/check.log" \
    && [ "$(grep -c '"name": "login-service"' "$work/check.json")" = 1 ]; then
    echo "  ok   $overlay overlay: its sessiongate.toml and clients.toml pass check-config in $overlay"
  else
    echo "  FAIL $overlay overlay's configuration:"; cat "$work/check.log"; fail=1
  fi
done
# Without the overlay's callers, live refuses to start.
rm "$work/etc-live/clients/clients.toml"
if SESSIONGATE_ENV=live REDIS_URL=redis://sessiongate-redis:6379 \
  SESSIONGATE_FLOW_COOKIE_KEY=check-config-only-0123456789abcdef0123 \
  "$bin" check-config "$work/etc-live/config/sessiongate.toml" >/dev/null 2>&1; then
  echo "  FAIL live started without its clients.toml"; fail=1
else
  echo "  ok   live without the overlay's clients.toml is refused"
fi

exit $fail
