"""The published client service config (clients/service-config.json, gRFC A6) as grpcio
applies it to the real binary: a call that meets UNAVAILABLE (the store is down) is retried —
the server sees it three times, a CreateSession with a request_id too — and without the
config, once each. A CreateSession repeated with its request_id gets the same session."""
import pathlib
import tempfile
import urllib.request
import uuid

import grpc
import pytest

from conftest import KEY, REPO, _sha, free_port, pb, rpc, spawn_sessiongate

AUTH = [("authorization", f"Bearer {KEY}")]
SERVICE_CONFIG = (REPO / "clients/service-config.json").read_text()
OPAQUE = "sgs_" + "A" * 43  # a session token's shape: only the store can judge it


@pytest.fixture(scope="module")
def store_down():
    work = pathlib.Path(tempfile.mkdtemp(prefix="sessiongate-py-sc-"))
    (work / "sessiongate.toml").write_text(f"""
[[clients]]
name = "python-service-config"
key_sha256 = "{_sha(KEY)}"
scopes = ["validate", "issue"]
""")
    # Nothing listens there: every store call fails fast, UNAVAILABLE.
    proc, addrs = spawn_sessiongate(work, {"REDIS_URL": f"redis://127.0.0.1:{free_port()}"})
    yield {"grpc": addrs[0], "http": addrs[1]}
    proc.terminate()
    proc.wait(timeout=30)


def calls(http_addr, method, code):
    text = urllib.request.urlopen(f"http://{http_addr}/metrics", timeout=10).read().decode()
    want = f'sessiongate_grpc_requests_total{{method="{method}",code="{code}"}}'
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(want))


def stub(addr, with_config):
    options = [("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1)] if with_config else []
    ch = grpc.insecure_channel(f"ipv4:{addr}", options=options)
    grpc.channel_ready_future(ch).result(timeout=10)
    return ch, rpc.SessionGateServiceStub(ch)


@pytest.mark.parametrize("with_config, attempts", [(True, 3), (False, 1)])
def test_unavailable_is_retried_by_the_config(store_down, with_config, attempts):
    ch, api = stub(store_down["grpc"], with_config)
    validate = "SessionGateService/ValidateSession"
    create = "SessionGateService/CreateSession"
    before = calls(store_down["http"], validate, "UNAVAILABLE"), calls(store_down["http"], create, "UNAVAILABLE")
    with pytest.raises(grpc.RpcError) as e:
        api.ValidateSession(pb.ValidateSessionRequest(token=OPAQUE), metadata=AUTH, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    ch.close()
    # A channel of its own: retry throttling (per channel) would stop a third attempt after
    # the three failures above.
    ch, api = stub(store_down["grpc"], with_config)
    with pytest.raises(grpc.RpcError) as e:
        api.CreateSession(pb.CreateSessionRequest(new_user=pb.NewUser(), request_id=str(uuid.uuid4())),
                          metadata=AUTH, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    after = calls(store_down["http"], validate, "UNAVAILABLE"), calls(store_down["http"], create, "UNAVAILABLE")
    assert after[0] - before[0] == attempts, "ValidateSession attempts seen by the server"
    assert after[1] - before[1] == attempts, "CreateSession attempts seen by the server"
    ch.close()


def test_a_repeated_create_session_gets_the_same_session(server):
    """What makes CreateSession safe to retry: the request_id. A repeat (as grpcio's retry or
    an application's sends it) is answered with the first call's session; the id reused for
    another request is refused."""
    ch, api = stub(server["grpc"], True)
    request = pb.CreateSessionRequest(
        new_user=pb.NewUser(email="retry@example.com", email_verified=True),
        authentication_factors=[pb.AuthenticationFactor(type="password")],
        request_id=str(uuid.uuid4()),
    )
    first = api.CreateSession(request, metadata=AUTH, timeout=10)
    again = api.CreateSession(request, metadata=AUTH, timeout=10)
    assert not first.replayed and again.replayed
    assert (again.session_token, again.session.session_id) == (first.session_token, first.session.session_id)
    listed = api.ListSessions(pb.ListSessionsRequest(user_id=first.user_id), metadata=AUTH, timeout=10)
    assert [s.session_id for s in listed.sessions] == [first.session.session_id]

    other = pb.CreateSessionRequest()
    other.CopyFrom(request)
    other.new_user.email = "someone-else@example.com"
    with pytest.raises(grpc.RpcError) as e:
        api.CreateSession(other, metadata=AUTH, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in e.value.details()
    ch.close()
