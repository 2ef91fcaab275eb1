"""What a schema cannot check in k8s/examples/istio.yaml (Istio's kinds are not in the
Kubernetes schemas): that it fits the base manifests and sessiongate's configuration.

Usage: istio_example.py SESSIONGATE_BINARY [EXAMPLE.yaml] — exits 1 and prints every problem
found.
"""
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

binary = sys.argv[1]
example_path = pathlib.Path(sys.argv[2] if len(sys.argv) > 2 else "k8s/examples/istio.yaml")
text = example_path.read_text()
docs = [d for d in yaml.safe_load_all(text) if d]
base = [d for d in yaml.safe_load_all(open("k8s/base/deployment.yaml")) if d]
deployment = next(d for d in base if d["kind"] == "Deployment")
pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
ports = {p["name"]: p["containerPort"] for c in deployment["spec"]["template"]["spec"]["containers"]
         for p in c.get("ports", [])}
problems = []


def need(cond, what):
    if not cond:
        problems.append(what)


# The commented snippets the reader pastes, uncommented.
comment = "\n".join(line[1:] for line in text.splitlines() if line.startswith("#"))
mesh = yaml.safe_load(re.search(r"\n( +meshConfig:\n(?: {6,}.*\n)+)", comment).group(1))
provider = mesh["meshConfig"]["extensionProviders"][0]
toml = re.search(r"\n( +\[\[clients\]\]\n(?: {6,}.*\n)+)", comment).group(1)

need(provider["envoyExtAuthzGrpc"]["port"] == ports["grpc"],
     f"the provider's port is {provider['envoyExtAuthzGrpc']['port']}, the gRPC port {ports['grpc']}")
need(provider["envoyExtAuthzGrpc"].get("failOpen") is False, "the provider must fail closed")

peer = [d for d in docs if d["kind"] == "PeerAuthentication"]
need(len(peer) == 1, "one PeerAuthentication for sessiongate")
for p in peer:
    sel = p["spec"]["selector"]["matchLabels"]
    need(all(pod_labels.get(k) == v for k, v in sel.items()),
         f"the PeerAuthentication selects {sel}, the pods are labelled {pod_labels}")
    need(p["spec"]["mtls"]["mode"] == "STRICT", "mesh identities need STRICT mTLS")
    need(ports["grpc"] not in p["spec"].get("portLevelMtls", {}),
         "the gRPC port must not be relaxed from STRICT")

custom = [d for d in docs if d["kind"] == "AuthorizationPolicy" and d["spec"].get("action") == "CUSTOM"]
need(len(custom) == 1, "one CUSTOM AuthorizationPolicy")
for a in custom:
    need(a["spec"]["provider"]["name"] == provider["name"],
         f"the policy names provider {a['spec']['provider']['name']}, the mesh config {provider['name']}")

# The clients entry is one sessiongate accepts, and its identity is the gateway's.
with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
    f.write(toml)
    f.flush()
    r = subprocess.run([binary, "check-config", f.name], capture_output=True, text=True)
    need(r.returncode == 0, f"sessiongate refuses the [[clients]] snippet: {r.stderr.strip()}")
spiffe = re.search(r'spiffe_id = "([^"]+)"', toml).group(1)
need(spiffe.endswith("/ns/istio-system/sa/istio-ingressgateway-service-account"),
     f"the client is {spiffe}, not the ingress gateway")

for p in problems:
    print(f"  FAIL {example_path}: {p}")
sys.exit(1 if problems else 0)
