#!/usr/bin/env bash
# The generated clients, without guesswork: `buf generate` with the repository's buf.gen.yaml
# (Go, Python, TypeScript), then each is used as the README says — the Go net/http middleware
# (examples/go) built and tested against the real binary with grpc-go, the Python modules
# imported and a stub made, the TypeScript type-checked with a client call as the README
# writes it.
#
# usage: tests/contract/generated.sh path/to/sessiongate
# Needs: buf and ts-proto (tools/node_modules), protoc-gen-go, protoc-gen-go-grpc,
# grpc_python_plugin, protoc (Debian: protoc-gen-go protoc-gen-go-grpc protobuf-compiler-grpc
# protobuf-compiler), Go with Debian's golang-google-grpc-dev and golang-google-protobuf-dev
# (GOPATH mode: the test machines reach no Go module proxy), python3 with grpcio.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$(realpath "$1")
repo=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

PATH="$repo/tools/node_modules/.bin:$PATH" buf generate --output "$work"

echo "  Python: the generated modules import, and a stub is made"
PYTHONPATH="$work/gen/python" python3 - <<'EOF'
import grpc
from sessiongate.v1 import sessiongate_pb2 as pb, sessiongate_pb2_grpc as rpc
stub = rpc.SessionGateServiceStub(grpc.insecure_channel("127.0.0.1:1"))
assert pb.CreateSessionRequest(request_id="r").request_id == "r"
EOF

echo "  TypeScript: the generated client type-checks, called as the README shows"
ts="$work/gen/ts"
ln -s "$repo/tools/node_modules" "$ts/node_modules"
cat > "$ts/tsconfig.json" <<'EOF'
{
  "compilerOptions": {
    "strict": true, "noEmit": true, "module": "commonjs", "moduleResolution": "node10",
    "target": "es2022", "esModuleInterop": true, "skipLibCheck": true, "types": ["node"]
  },
  "include": ["**/*.ts"],
  "exclude": ["node_modules"]
}
EOF
cat > "$ts/usage.ts" <<'EOF'
import { credentials, Metadata } from '@grpc/grpc-js';
import { SessionGateServiceClient, Verdict } from './sessiongate/v1/sessiongate';

const api = new SessionGateServiceClient('dns:///sessiongate-headless:50051', credentials.createInsecure(), {
  'grpc.service_config': '{}',
});
const md = new Metadata();
md.set('authorization', 'Bearer key');
api.validateSession({ token: 't', autoMigrate: true } as any, md, { deadline: Date.now() + 200 }, (err, v) => {
  if (!err && v.verdict === Verdict.VERDICT_VALID) console.log(v.userId, v.origin);
});
EOF
"$repo/tools/node_modules/.bin/tsc" -p "$ts"

echo "  Go: the net/http middleware, built with grpc-go and tested against the binary"
gopath="$work/gopath"
# The generated package at the import path its go_package names; the example beside it.
mkdir -p "$gopath/src/sessiongate.dev/gen/go" "$gopath/src/sessiongate.dev/examples/go"
cp -r "$work/gen/go/sessiongate" "$gopath/src/sessiongate.dev/gen/go/"
cp -r examples/go/sessiongate "$gopath/src/sessiongate.dev/examples/go/"
# The test reads clients/service-config.json three folders up, as from the repository.
mkdir -p "$gopath/src/sessiongate.dev/clients"
cp clients/service-config.json "$gopath/src/sessiongate.dev/clients/"
(
  cd "$gopath/src/sessiongate.dev/examples/go/sessiongate"
  export GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOFLAGS= GOCACHE="$work/gocache" \
    SESSIONGATE_BIN="$bin"
  go vet .
  # pipefail: go test's failure is the pipeline's, and ends the script.
  go test -count=1 -v . 2>&1 | sed 's/^/    /'
)
echo "generated clients: ok"
