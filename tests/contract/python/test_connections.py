"""R8 with grpcio: 8 threads call ValidateSession through at least three recyclings of their
connection (the server retires it every 2 s ± 10 % with a graceful GOAWAY); not one call may
fail."""
import pathlib
import tempfile
import threading
import time
import urllib.request

import grpc

from conftest import _sha, pb, rpc, spawn_sessiongate

KEY = "python-connections-key"


def _retired_by_age(http):
    text = urllib.request.urlopen(f"http://{http}/metrics", timeout=10).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("sessiongate_connections_retired_total{")
        and 'door="grpc"' in line
        and 'reason="max_age"' in line
    )


def test_r8_grpcio_calls_through_three_recyclings_and_none_fails():
    work = pathlib.Path(tempfile.mkdtemp(prefix="sessiongate-py-r8-"))
    (work / "sessiongate.toml").write_text(f"""
[server]
max_connection_age_seconds = 2
max_connection_age_grace_seconds = 5

[[clients]]
name = "python"
key_sha256 = "{_sha(KEY)}"
scopes = ["validate", "issue"]
""")
    proc, (grpc_addr, http_addr) = spawn_sessiongate(work)
    auth = [("authorization", f"Bearer {KEY}")]
    try:
        channel = grpc.insecure_channel(grpc_addr)
        api = rpc.SessionGateServiceStub(channel)
        created = api.CreateSession(
            pb.CreateSessionRequest(new_user=pb.NewUser()), metadata=auth, timeout=10
        )
        before = _retired_by_age(http_addr)
        until = time.monotonic() + 7
        ok, failed, lock = [0], [], threading.Lock()

        def worker():
            while time.monotonic() < until:
                try:
                    r = api.ValidateSession(
                        pb.ValidateSessionRequest(token=created.session_jwt), metadata=auth, timeout=5
                    )
                    with lock:
                        if r.verdict == pb.VERDICT_VALID:
                            ok[0] += 1
                        else:
                            failed.append(f"verdict {r.verdict}")
                except grpc.RpcError as e:
                    with lock:
                        failed.append(f"{e.code()} {e.details()}")

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a worker hung"
        recycled = _retired_by_age(http_addr) - before
        print(f"R8 grpcio: {ok[0]} calls in 7 s, {len(failed)} failed, {recycled:.0f} connections retired by age")
        assert failed == []
        assert recycled >= 3, f"only {recycled} recyclings"
        assert ok[0] > 100
        channel.close()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
