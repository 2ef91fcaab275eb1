#!/usr/bin/env bash
# Smoke test of the real binary with the real grpcurl (1.8.6: reflection v1alpha only).
# Usage: tests/contract/grpcurl.sh [path/to/sessiongate]
set -euo pipefail

bin=${1:-target/debug/sessiongate}
work=$(mktemp -d)
pass=0 fail=0
server_pid=

cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

ok()   { pass=$((pass + 1)); echo "  ok   $*"; }
bad()  { fail=$((fail + 1)); echo "  FAIL $*"; }
check() { # check NAME PATTERN TEXT
  if grep -qE -- "$2" <<<"$3"; then ok "$1"; else bad "$1: expected /$2/ in:"; sed 's/^/       /' <<<"$3"; fi
}

# A caller key, configured only by its SHA-256.
key=grpcurl-smoke-key
hash=$(printf %s "$key" | sha256sum | cut -d' ' -f1)
flow_key=grpcurl-flow-key
flow_hash=$(printf %s "$flow_key" | sha256sum | cut -d' ' -f1)
cat >"$work/sessiongate.toml" <<TOML
[[clients]]
name = "smoke"
key_sha256 = "$hash"
scopes = ["validate", "admin", "issue", "revoke"]

[[clients]]
name = "login-page"
key_sha256 = "$flow_hash"
scopes = ["flow"]

[[flows]]
name = "login"
percentage = 100
stickiness = "device"
countries = ["NO", "SE"]
TOML

# Start on free ports and read the addresses it reports; reading the log line blocks until
# the server is up, so nothing here sleeps.
mkfifo "$work/log"
(cd "$work" && exec env -u REDIS_URL SESSIONGATE_CONFIG="$work/sessiongate.toml" \
  SESSIONGATE_GRPC_ADDR=127.0.0.1:0 SESSIONGATE_HTTP_ADDR=127.0.0.1:0 \
  SESSIONGATE_LOG_FORMAT=json RUST_LOG=info "$OLDPWD/$bin" 2>"$work/log") &
server_pid=$!
exec 3<"$work/log"
addr=
while IFS= read -r -t 30 line <&3; do
  printf '%s\n' "$line" >>"$work/head.log"
  if [[ $line == *'"sessiongate serving"'* ]]; then
    addr=$(grep -oE '"grpc_addr":"[^"]+"' <<<"$line" | cut -d'"' -f4)
    http=$(grep -oE '"http_addr":"[^"]+"' <<<"$line" | cut -d'"' -f4)
    break
  fi
done
[ -n "$addr" ] || { echo "sessiongate did not start"; exit 1; }
cat <&3 >"$work/rest.log" &   # keep draining the log so the server never blocks on it
drain_pid=$!
echo "sessiongate at $addr"

g() { grpcurl -plaintext -max-time 10 "$@" 2>&1 || true; }

out=$(g "$addr" list)
check "list shows SessionGateService" '^sessiongate\.v1\.SessionGateService$' "$out"
check "list shows RolloutAdminService" '^sessiongate\.v1\.RolloutAdminService$' "$out"
check "list shows WebhookAdminService" '^sessiongate\.v1\.WebhookAdminService$' "$out"
check "list shows grpc.health.v1.Health" '^grpc\.health\.v1\.Health$' "$out"
check "list shows Envoy's envoy.service.auth.v3.Authorization" '^envoy\.service\.auth\.v3\.Authorization$' "$out"
[ "$(wc -l <<<"$out")" -eq 5 ] && ok "list shows nothing else" || bad "list shows more: $out"
out=$(g "$addr" describe envoy.service.auth.v3.CheckRequest)
check "describe shows Envoy's CheckRequest" 'AttributeContext attributes = 1' "$out"

out=$(g "$addr" describe sessiongate.v1.SessionGateService)
for rpc in ValidateSession MigrateSession ResolveFlow CreateSession RevokeSession; do
  check "describe shows $rpc" "rpc $rpc " "$out"
done
out=$(g "$addr" describe sessiongate.v1.RolloutAdminService)
for rpc in GetRollout ListRollouts UpdateRollout; do
  check "describe shows $rpc" "rpc $rpc " "$out"
done
out=$(g "$addr" describe sessiongate.v1.WebhookAdminService)
for rpc in ListDeadLetters RedeliverDeadLetter; do
  check "describe shows $rpc" "rpc $rpc " "$out"
done
out=$(g "$addr" describe sessiongate.v1.UpdateRolloutRequest)
check "describe shows proto3 optional fields" 'optional uint32 percentage = 2' "$out"

out=$(g "$addr" grpc.health.v1.Health/Check)
check "health overall SERVING" '"status": "SERVING"' "$out"
out=$(g -d '{"service":"sessiongate.v1.SessionGateService"}' "$addr" grpc.health.v1.Health/Check)
check "health of the service SERVING" '"status": "SERVING"' "$out"

out=$(g -d '{}' "$addr" sessiongate.v1.RolloutAdminService/ListRollouts)
check "no key: UNAUTHENTICATED" 'Code: Unauthenticated' "$out"
check "no key: ErrorInfo reason decoded" 'CALLER_UNAUTHENTICATED' "$out"
out=$(g -H "authorization: Bearer wrong" -d '{}' "$addr" sessiongate.v1.RolloutAdminService/ListRollouts)
check "wrong key: UNAUTHENTICATED" 'Code: Unauthenticated' "$out"
out=$(g -H "authorization: Bearer $key" -d '{}' "$addr" sessiongate.v1.SessionGateService/ResolveFlow)
check "key without the scope: PERMISSION_DENIED" 'Code: PermissionDenied' "$out"
out=$(g -H "authorization: Bearer $key" -d '{}' "$addr" sessiongate.v1.RolloutAdminService/ListRollouts)
check "key with the scope passes auth" '"rollouts"' "$out"

# ResolveFlow: a new device gets a minted id and a ready Set-Cookie line; the cookie keeps
# it on NEW after the percentage drops to 0; the kill switch beats it.
out=$(g -H "authorization: Bearer $flow_key" -d '{"country":"no"}' "$addr" sessiongate.v1.SessionGateService/ResolveFlow)
check "ResolveFlow: NEW for a new device at 100%" '"flow": "FLOW_NEW"' "$out"
check "ResolveFlow: reason ROLLOUT_IN" '"reason": "FLOW_REASON_ROLLOUT_IN"' "$out"
check "ResolveFlow: a ready Set-Cookie line" '"headerValue": "__Host-sg_flow=v1\.[^"]*; Max-Age=34560000; Path=/; Secure; HttpOnly; SameSite=Lax"' "$out"
cookie=$(grep -oE '"value": "v1\.[^"]+"' <<<"$out" | cut -d'"' -f4)
out=$(g -H "authorization: Bearer $flow_key" -d '{"country":"XX"}' "$addr" sessiongate.v1.SessionGateService/ResolveFlow)
check "ResolveFlow: unknown country not eligible" '"reason": "FLOW_REASON_NOT_ELIGIBLE"' "$out"
out=$(g -H "authorization: Bearer $key" -d '{"flow":"login","percentage":0}' "$addr" sessiongate.v1.RolloutAdminService/UpdateRollout)
check "UpdateRollout: percentage 0" '"configVersion"' "$out"
out=$(g -H "authorization: Bearer $flow_key" -d "{\"country\":\"SE\",\"flow_cookie\":\"$cookie\"}" "$addr" sessiongate.v1.SessionGateService/ResolveFlow)
check "ResolveFlow: the cookie keeps the device on NEW at 0%" '"reason": "FLOW_REASON_STICKY"' "$out"
out=$(g -H "authorization: Bearer $key" -d '{"flow":"login","kill_switch":true}' "$addr" sessiongate.v1.RolloutAdminService/UpdateRollout)
check "UpdateRollout: kill switch on" '"killSwitch": true' "$out"
out=$(g -H "authorization: Bearer $flow_key" -d "{\"country\":\"SE\",\"flow_cookie\":\"$cookie\"}" "$addr" sessiongate.v1.SessionGateService/ResolveFlow)
check "ResolveFlow: the kill switch beats the cookie" '"reason": "FLOW_REASON_DISABLED"' "$out"

# Native sessions: create, validate the token and the JWT, verify the JWT offline with
# PyJWT and the JWKS only, revoke.
auth=(-H "authorization: Bearer $key")
out=$(g "${auth[@]}" -d '{"new_user":{"email":"ada@example.com","email_verified":true},"authentication_factors":[{"type":"passkey"}]}' \
  "$addr" sessiongate.v1.SessionGateService/CreateSession)
check "CreateSession makes a user and a session" '"userCreated": true' "$out"
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1" <<<"$out" 2>/dev/null || true; }
token=$(field sessionToken) jwt=$(field sessionJwt) user=$(field userId)
[[ $token == sgs_* ]] && ok "session_token is sgs_…" || bad "no session_token in: $out"
# With a request_id, as the README shows it: the repeat is the first call's session.
rid=$(cat /proc/sys/kernel/random/uuid)
create='{"new_user":{"email":"grace@example.com"},"authentication_factors":[{"type":"passkey"}],"request_id":"'"$rid"'"}'
first=$(g "${auth[@]}" -d "$create" "$addr" sessiongate.v1.SessionGateService/CreateSession)
again=$(g "${auth[@]}" -d "$create" "$addr" sessiongate.v1.SessionGateService/CreateSession)
check "CreateSession repeated with its request_id is replayed" '"replayed": true' "$again"
[[ $(grep -o '"sessionToken": "[^"]*"' <<<"$first") == $(grep -o '"sessionToken": "[^"]*"' <<<"$again") ]] \
  && ok "… with the first call's session" || bad "a second session for one request_id: $first / $again"
out=$(g "${auth[@]}" -d "{\"token\":\"$token\"}" "$addr" sessiongate.v1.SessionGateService/ValidateSession)
check "ValidateSession(session_token) VALID" '"verdict": "VERDICT_VALID"' "$out"
check "… from the store, with a fresh JWT" '"source": "DECISION_SOURCE_STORE"' "$out"
out=$(g "${auth[@]}" -d "{\"token\":\"$jwt\"}" "$addr" sessiongate.v1.SessionGateService/ValidateSession)
check "ValidateSession(session_jwt) VALID, verified locally" '"source": "DECISION_SOURCE_LOCAL_VERIFY"' "$out"
out=$(g "${auth[@]}" -d "{\"token\":\"$jwt\"}" "$addr" sessiongate.v1.SessionGateService/ValidateSession)
check "… then from the cache" '"source": "DECISION_SOURCE_CACHE"' "$out"
if out=$(python3 "$(dirname "$0")/verify_jwt_offline.py" "http://$http/.well-known/jwks.json" "$jwt" \
    urn:sessiongate:test sessiongate "$user" 2>&1); then ok "$out"; else bad "PyJWT offline verification: $out"; fi
envoy_check() { # envoy_check TOKEN: Envoy's Check of a request that carries TOKEN
  g "${auth[@]}" -d "{\"attributes\":{\"request\":{\"http\":{\"method\":\"GET\",\"path\":\"/orders\",\"headers\":{\"authorization\":\"Bearer $1\",\"x-sessiongate-user-id\":\"forged\"}}}}}" \
    "$addr" envoy.service.auth.v3.Authorization/Check
}
out=$(envoy_check "$jwt")
check "Envoy Check through reflection: OK" '"okResponse"' "$out"
check "… with the user's id upstream" "\"value\": \"$user\"" "$out"
check "… and the identity headers the client sent removed" '"headersToRemove"' "$out"
out=$(g "${auth[@]}" -d "{\"session_token\":\"$token\"}" "$addr" sessiongate.v1.SessionGateService/RevokeSession)
check "RevokeSession revokes one" '"revoked": 1' "$out"
out=$(envoy_check "$jwt")
check "Envoy Check of the revoked JWT: 401" '"code": "Unauthorized"' "$out"
check "… saying why" 'error_description=\\"REVOKED\\"' "$out"
out=$(g "${auth[@]}" -d "{\"token\":\"$jwt\"}" "$addr" sessiongate.v1.SessionGateService/ValidateSession)
check "the revoked session's JWT is REVOKED" '"reason": "REASON_REVOKED"' "$out"
out=$(g "${auth[@]}" -d '{"token":"garbage"}' "$addr" sessiongate.v1.SessionGateService/ValidateSession)
check "garbage is a verdict, not an error" '"reason": "REASON_MALFORMED"' "$out"

# SIGTERM: exit 0 within the drain grace.
kill -TERM "$server_pid"
if wait "$server_pid"; then ok "SIGTERM exits 0"; else bad "SIGTERM exit code $?"; fi
server_pid=
wait "$drain_pid" || true   # the log ends with the process
grep -q 'NOT_SERVING' "$work/rest.log" && ok "shutdown logs NOT_SERVING first" || bad "no NOT_SERVING line in the log"
for secret in "$key" "$token" "$jwt"; do
  grep -qF -- "$secret" "$work/head.log" "$work/rest.log" && bad "a secret reached the log" || ok "a key/token never reaches the log"
done

echo "grpcurl: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
