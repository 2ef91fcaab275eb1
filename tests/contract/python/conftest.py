"""Fixtures of the Python contract suite: stubs generated from the repository's proto at test
time (nothing generated is committed), the real sessiongate binary on free ports, and a fake
legacy provider's UserInfo endpoint on loopback."""
import hashlib
import http.server
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading

import grpc
import pytest

REPO = pathlib.Path(__file__).resolve().parents[3]
BINARY = pathlib.Path(os.environ.get("SESSIONGATE_BIN", REPO / "target/debug/sessiongate")).resolve()
KEY = "python-contract-key"
VALIDATE_ONLY_KEY = "python-validate-only-key"
LEGACY_TOKEN = "python-legacy-opaque-token-0123456789"


def _generate_stubs():
    out = pathlib.Path(tempfile.mkdtemp(prefix="sessiongate-py-"))
    from grpc_tools import protoc

    proto_include = pathlib.Path(protoc.__file__).parent / "_proto"
    rc = protoc.main([
        "protoc",
        f"-I{REPO / 'proto'}",
        f"-I{proto_include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "sessiongate/v1/sessiongate.proto",
    ])
    assert rc == 0, "protoc failed"
    sys.path.insert(0, str(out))
    return out


_generate_stubs()
from sessiongate.v1 import sessiongate_pb2 as pb  # noqa: E402
from sessiongate.v1 import sessiongate_pb2_grpc as rpc  # noqa: E402


class _UserInfo(http.server.BaseHTTPRequestHandler):
    """The legacy provider's UserInfo: one token is good, everything else is 401."""

    calls = 0

    def do_GET(self):  # noqa: N802
        type(self).calls += 1
        if self.headers.get("authorization") == f"Bearer {LEGACY_TOKEN}":
            body = json.dumps({"sub": "legacy|py-1", "email": "py@example.com", "email_verified": True}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(401)
            self.send_header("content-length", "0")
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def userinfo():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _UserInfo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def free_port():
    """A loopback port free now (for servers that cannot bind port 0 themselves)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sha(s):
    return hashlib.sha256(s.encode()).hexdigest()


def spawn_sessiongate(work, extra_env=None):
    """Starts the binary with `work`/sessiongate.toml on free ports (and `extra_env`); returns
    the process and its addresses (grpc, http) once it says it serves."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(extra_env or {})
    env.update({
        "SESSIONGATE_CONFIG": str(work / "sessiongate.toml"),
        "SESSIONGATE_GRPC_ADDR": "127.0.0.1:0",
        "SESSIONGATE_HTTP_ADDR": "127.0.0.1:0",
        "SESSIONGATE_LOG_FORMAT": "json",
        "RUST_LOG": "info",
    })
    proc = subprocess.Popen([str(BINARY)], cwd=work, env=env, stderr=subprocess.PIPE, text=True)
    addrs = None
    for line in proc.stderr:  # blocks until the server says where it serves
        if '"sessiongate serving"' in line:
            rec = json.loads(line)
            addrs = (rec["grpc_addr"], rec["http_addr"])
            break
    assert addrs, "sessiongate did not start"
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, addrs


@pytest.fixture(scope="session")
def server(userinfo):
    assert BINARY.exists(), f"{BINARY} not built (cargo build)"
    work = pathlib.Path(tempfile.mkdtemp(prefix="sessiongate-py-run-"))
    (work / "sessiongate.toml").write_text(f"""
[[clients]]
name = "python-contract"
key_sha256 = "{_sha(KEY)}"
scopes = ["validate", "migrate", "flow", "issue", "revoke", "admin"]

[[clients]]
name = "python-validate-only"
key_sha256 = "{_sha(VALIDATE_ONLY_KEY)}"
scopes = ["validate"]

[[providers]]
name = "legacy"
kind = "legacy"
issuer = "{userinfo}/"
token_format = "opaque"
userinfo_url = "{userinfo}/userinfo"
policy = "upgrade"

[[flows]]
name = "login"
percentage = 100
stickiness = "device"
""")
    proc, addrs = spawn_sessiongate(work)
    yield {"grpc": addrs[0], "http": addrs[1]}
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "sessiongate did not exit cleanly on SIGTERM"


class _Deadline(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Gives every call that sets no timeout one, so that a stalled server fails a test
    instead of hanging CI."""

    SECONDS = 30

    def _bounded(self, details):
        if details.timeout is not None:
            return details
        return _CallDetails(details.method, self.SECONDS, details.metadata, details.credentials,
                            details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._bounded(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._bounded(details), request)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


def bounded_channel(addr):
    """A channel to `addr` on which every call has a deadline."""
    ch = grpc.insecure_channel(addr)
    grpc.channel_ready_future(ch).result(timeout=10)
    return ch, grpc.intercept_channel(ch, _Deadline())


@pytest.fixture(scope="session")
def channel(server):
    raw, ch = bounded_channel(server["grpc"])
    yield ch
    raw.close()


@pytest.fixture(scope="session")
def api(channel):
    return rpc.SessionGateServiceStub(channel)


@pytest.fixture(scope="session")
def admin(channel):
    return rpc.RolloutAdminServiceStub(channel)


@pytest.fixture
def auth():
    return [("authorization", f"Bearer {KEY}")]
