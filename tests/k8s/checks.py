"""What a schema cannot check in the rendered manifests of one overlay.

Usage: checks.py ENV RENDERED.yaml — exits 1 and prints every problem found.
"""
import sys

import yaml

env, path = sys.argv[1], sys.argv[2]
docs = [d for d in yaml.safe_load_all(open(path)) if d]
problems = []
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)


def need(cond, what):
    if not cond:
        problems.append(what)


for kind in ("Deployment", "StatefulSet"):
    for w in by_kind.get(kind, []):
        name = f'{kind}/{w["metadata"]["name"]}'
        spec = w["spec"]["template"]["spec"]
        psc = spec.get("securityContext", {})
        need(psc.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot")
        need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: seccomp RuntimeDefault")
        need(spec.get("automountServiceAccountToken") is False, f"{name}: no service account token")
        for c in spec["containers"]:
            cname = f'{name}/{c["name"]}'
            sc = c.get("securityContext", {})
            need(sc.get("readOnlyRootFilesystem") is True, f"{cname}: readOnlyRootFilesystem")
            need(sc.get("allowPrivilegeEscalation") is False, f"{cname}: allowPrivilegeEscalation false")
            need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{cname}: drop ALL capabilities")
            need("memory" in c.get("resources", {}).get("limits", {}), f"{cname}: a memory limit")
            need("cpu" in c.get("resources", {}).get("requests", {}), f"{cname}: a CPU request")
            for probe in ("readinessProbe", "livenessProbe"):
                p = c.get(probe)
                need(p is not None, f"{cname}: {probe}")
                if p and "exec" not in p:
                    port = next((v.get("port") for v in p.values() if isinstance(v, dict) and "port" in v), None)
                    need(isinstance(port, int), f"{cname}: {probe} on a numeric port (got {port!r})")

dep = next(d for d in by_kind["Deployment"] if d["metadata"]["name"] == "sessiongate")
spec = dep["spec"]["template"]["spec"]
c = spec["containers"][0]
envs = {e["name"]: e for e in c["env"]}
need(envs.get("SESSIONGATE_ENV", {}).get("value") == env, f"SESSIONGATE_ENV is {env}")
need("TOKIO_WORKER_THREADS" in envs, "TOKIO_WORKER_THREADS set")
for secret_var in ("REDIS_URL", "SESSIONGATE_FLOW_COOKIE_KEY"):
    need("secretKeyRef" in envs.get(secret_var, {}).get("valueFrom", {}), f"{secret_var} from a Secret")
need(c.get("startupProbe", {}).get("grpc", {}).get("port") == 50051, "gRPC startupProbe on 50051")
# The autoscaler owns the count; workers follow the CPU request; spread over zones and nodes.
hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in by_kind.get("HorizontalPodAutoscaler", [])}
need("sessiongate" in hpa_targets, "an HPA scales the Deployment")
need("replicas" not in dep["spec"], "no replicas on a Deployment an HPA scales (each apply would reset it)")
workers = envs.get("TOKIO_WORKER_THREADS", {}).get("valueFrom", {}).get("resourceFieldRef", {})
need(workers.get("resource") == "requests.cpu", "TOKIO_WORKER_THREADS from the CPU request (Downward API)")
spread = {t["topologyKey"] for t in spec.get("topologySpreadConstraints", [])}
need({"topology.kubernetes.io/zone", "kubernetes.io/hostname"} <= spread, "spread over zones and nodes")
# Redis: a password from a Secret, ready only on PONG, maxmemory under its limit.
redis = next((d for d in by_kind.get("StatefulSet", []) if d["metadata"]["name"] == "sessiongate-redis"), None)
if redis:
    rc = redis["spec"]["template"]["spec"]["containers"][0]
    renv = {e["name"]: e for e in rc.get("env", [])}
    need("secretKeyRef" in renv.get("REDIS_PASSWORD", {}).get("valueFrom", {}), "Redis password from a Secret")
    need("--requirepass" in rc.get("args", []) and "$(REDIS_PASSWORD)" in rc.get("args", []), "Redis requires the password")
    need("PONG" in " ".join(rc.get("readinessProbe", {}).get("exec", {}).get("command", [])), "Redis ready only on PONG")
    conf = next(d for d in by_kind["ConfigMap"] if d["metadata"]["name"].startswith("sessiongate-redis"))["data"]["redis.conf"]
    settings = dict(l.split(None, 1) for l in conf.splitlines() if l.strip() and not l.startswith("#"))
    units = {"mb": 2**20, "gb": 2**30}
    mm = settings.get("maxmemory", "0")
    mm_bytes = int(mm[:-2]) * units.get(mm[-2:].lower(), 1) if mm[-2:].lower() in units else int(mm)
    lim = rc["resources"]["limits"]["memory"]
    lim_bytes = int(lim[:-2]) * {"Mi": 2**20, "Gi": 2**30}[lim[-2:]]
    need(settings.get("maxmemory-policy") == "noeviction", "Redis noeviction")
    need(0 < mm_bytes <= 0.8 * lim_bytes, f"Redis maxmemory ({mm}) set and well under its limit ({lim})")
# Callers reach the JWKS on the HTTP port.
np = next(d for d in by_kind["NetworkPolicy"] if d["metadata"]["name"] == "sessiongate")
http_from = [f for rule in np["spec"]["ingress"] if any(p["port"] == 8080 for p in rule.get("ports", [])) for f in rule["from"]]
need(any(f.get("namespaceSelector", {}).get("matchLabels", {}).get("sessiongate.example.com/client") == "true" for f in http_from),
     "callers reach the HTTP port (JWKS)")
need(c.get("readinessProbe", {}).get("grpc", {}).get("service") == "sessiongate.v1.SessionGateService",
     "readiness asks for the SessionGateService health")
need(c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0) > 0, "a preStop sleep")
need(spec.get("terminationGracePeriodSeconds", 0) >= 25, "terminationGracePeriodSeconds covers preStop + drain")
need(any(v.get("secret", {}).get("secretName") == "sessiongate-signing-keys" for v in spec["volumes"]),
     "signing keys mounted from a Secret")
need(dep["metadata"]["namespace"] == f"sessiongate-{env}", f"namespace sessiongate-{env}")

for pdb in by_kind.get("PodDisruptionBudget", []):
    need(pdb["spec"].get("selector", {}).get("matchLabels"), f'PDB {pdb["metadata"]["name"]} has a selector')

# kustomize must not have rewritten the NetworkPolicy's peer selectors.
np = next(d for d in by_kind["NetworkPolicy"] if d["metadata"]["name"] == "sessiongate")
peers = [p for rule in np["spec"]["egress"] for p in rule.get("to", [])]
need({"app.kubernetes.io/name": "sessiongate-redis"} in [p.get("podSelector", {}).get("matchLabels") for p in peers],
     "NetworkPolicy egress to Redis selects the Redis pods")

sts = by_kind["StatefulSet"][0]
conf = next(d for d in by_kind["ConfigMap"] if d["metadata"]["name"].startswith("sessiongate-redis"))
for line in ("appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction"):
    need(line in conf["data"]["redis.conf"], f"redis.conf: {line}")
need(sts["spec"].get("volumeClaimTemplates"), "Redis keeps its data on a PVC")

for p in problems:
    print(f"  FAIL {env}: {p}")
sys.exit(1 if problems else 0)
