"""Every RPC of sessiongate.v1 through Python's grpcio against the real binary."""
import json
import urllib.request

import grpc
import jwt
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import KEY, LEGACY_TOKEN, VALIDATE_ONLY_KEY, pb


def reason(err):
    """The google.rpc.ErrorInfo reason of a failed call."""
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status details"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "sessiongate.dev"
            return info.reason
    raise AssertionError("no ErrorInfo")


def create(api, auth, email="py-user@example.com"):
    return api.CreateSession(
        pb.CreateSessionRequest(
            new_user=pb.NewUser(email=email, email_verified=True),
            authentication_factors=[pb.AuthenticationFactor(type="passkey")],
        ),
        metadata=auth,
        timeout=10,
    )


def test_create_then_validate_the_token_and_the_jwt(api, auth, server):
    created = create(api, auth)
    assert created.user_created and created.session_token.startswith("sgs_")
    by_token = api.ValidateSession(pb.ValidateSessionRequest(token=created.session_token), metadata=auth, timeout=10)
    assert by_token.verdict == pb.VERDICT_VALID
    assert by_token.origin == pb.ORIGIN_NEW
    assert by_token.user_id == created.user_id
    by_jwt = api.ValidateSession(pb.ValidateSessionRequest(token=created.session_jwt), metadata=auth, timeout=10)
    assert by_jwt.verdict == pb.VERDICT_VALID
    assert by_jwt.session.session_id == created.session.session_id
    # Any JWT library verifies the session_jwt with only the published JWKS.
    jwks = json.load(urllib.request.urlopen(f"http://{server['http']}/.well-known/jwks.json", timeout=10))
    header = jwt.get_unverified_header(created.session_jwt)
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(
        created.session_jwt,
        jwt.PyJWK(key).key,
        algorithms=[header["alg"]],
        options={"verify_aud": False},
    )
    assert claims["sub"] == created.user_id


def test_views_basic_answers_who_full_adds_claims_session_and_jwt(api, auth):
    created = create(api, auth, email="py-views@example.com")
    for token in (created.session_token, created.session_jwt):
        basic = api.ValidateSession(
            pb.ValidateSessionRequest(token=token, view=pb.VALIDATE_VIEW_BASIC), metadata=auth, timeout=10
        )
        assert basic.verdict == pb.VERDICT_VALID
        assert basic.user_id == created.user_id
        assert basic.session_id == created.session.session_id
        assert basic.expires_at.seconds > 0
        assert not basic.HasField("claims") and not basic.HasField("session")
        assert basic.session_jwt == ""
        # Unset is FULL: callers written before views keep what they read.
        for view in (pb.VALIDATE_VIEW_UNSPECIFIED, pb.VALIDATE_VIEW_FULL):
            full = api.ValidateSession(pb.ValidateSessionRequest(token=token, view=view), metadata=auth, timeout=10)
            assert full.session_id == created.session.session_id
            assert full.session.session_id == created.session.session_id
            if token == created.session_jwt:
                assert full.claims.fields["sid"].string_value == created.session.session_id
            else:
                assert full.session_jwt.count(".") == 2


def test_garbage_is_a_verdict_not_an_error(api, auth):
    r = api.ValidateSession(pb.ValidateSessionRequest(token="not a token"), metadata=auth, timeout=10)
    assert r.verdict == pb.VERDICT_INVALID
    assert r.reason != pb.REASON_UNSPECIFIED


def test_revoke_makes_the_session_revoked(api, auth):
    created = create(api, auth, "py-revoke@example.com")
    r = api.RevokeSession(pb.RevokeSessionRequest(session_token=created.session_token), metadata=auth, timeout=10)
    assert r.revoked == 1
    for token in (created.session_token, created.session_jwt):
        v = api.ValidateSession(pb.ValidateSessionRequest(token=token), metadata=auth, timeout=10)
        assert v.verdict == pb.VERDICT_INVALID
        assert v.reason == pb.REASON_REVOKED


def test_list_sessions_then_sign_out_everywhere_else(api, auth):
    first = create(api, auth, "py-list@example.com")
    second = api.CreateSession(
        pb.CreateSessionRequest(user_id=first.user_id, client=pb.ClientInfo(user_agent="py-laptop")),
        metadata=auth,
        timeout=10,
    )
    listed = api.ListSessions(pb.ListSessionsRequest(user_id=first.user_id), metadata=auth, timeout=10).sessions
    assert {s.session_id for s in listed} == {first.session.session_id, second.session.session_id}
    assert all(s.created_via == "native" for s in listed)
    r = api.RevokeSession(
        pb.RevokeSessionRequest(user_id=first.user_id, except_session_id=second.session.session_id),
        metadata=auth,
        timeout=10,
    )
    assert r.revoked == 1
    left = api.ListSessions(pb.ListSessionsRequest(user_id=first.user_id), metadata=auth, timeout=10).sessions
    assert [s.session_id for s in left] == [second.session.session_id]


def test_migrate_a_legacy_session(api, auth):
    legacy = api.ValidateSession(pb.ValidateSessionRequest(token=LEGACY_TOKEN), metadata=auth, timeout=10)
    assert legacy.verdict == pb.VERDICT_VALID and legacy.origin == pb.ORIGIN_LEGACY
    migrated = api.MigrateSession(pb.MigrateSessionRequest(legacy_token=LEGACY_TOKEN), metadata=auth, timeout=10)
    assert migrated.user.email == "py@example.com" and migrated.user.email_verified
    again = api.MigrateSession(pb.MigrateSessionRequest(legacy_token=LEGACY_TOKEN), metadata=auth, timeout=10)
    assert again.replayed and again.session.session_id == migrated.session.session_id
    new = api.ValidateSession(pb.ValidateSessionRequest(token=migrated.session_jwt), metadata=auth, timeout=10)
    assert new.origin == pb.ORIGIN_NEW and new.user_id == migrated.user_id
    with pytest.raises(grpc.RpcError) as e:
        api.MigrateSession(pb.MigrateSessionRequest(legacy_token="refused-by-the-provider"), metadata=auth, timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(e.value) == "LEGACY_TOKEN_REJECTED"


def test_resolve_flow_and_administer_the_rollout(api, admin, auth):
    first = api.ResolveFlow(pb.ResolveFlowRequest(flow="login"), metadata=auth, timeout=10)
    assert first.flow == pb.FLOW_NEW and first.reason == pb.FLOW_REASON_ROLLOUT_IN
    assert first.device_id and first.set_cookie.header_value.startswith("__Host-sg_flow=")
    rollout = admin.UpdateRollout(pb.UpdateRolloutRequest(flow="login", percentage=0), metadata=auth, timeout=10).rollout
    assert rollout.percentage == 0
    sticky = api.ResolveFlow(
        pb.ResolveFlowRequest(flow="login", flow_cookie=first.set_cookie.value), metadata=auth, timeout=10
    )
    assert sticky.flow == pb.FLOW_NEW and sticky.reason == pb.FLOW_REASON_STICKY
    assert admin.GetRollout(pb.GetRolloutRequest(flow="login"), metadata=auth, timeout=10).rollout.percentage == 0
    names = [r.flow for r in admin.ListRollouts(pb.ListRolloutsRequest(), metadata=auth, timeout=10).rollouts]
    assert names == ["login"]
    back = admin.UpdateRollout(pb.UpdateRolloutRequest(flow="login", clear_overrides=True), metadata=auth, timeout=10)
    assert back.rollout.percentage == 100
    with pytest.raises(grpc.RpcError) as e:
        admin.GetRollout(pb.GetRolloutRequest(flow="nope"), metadata=auth, timeout=10)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND and reason(e.value) == "FLOW_NOT_FOUND"


def test_callers_need_a_key_with_the_scope(api, admin):
    with pytest.raises(grpc.RpcError) as e:
        api.ValidateSession(pb.ValidateSessionRequest(token="x"), metadata=[("authorization", "Bearer nope")], timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and reason(e.value) == "CALLER_UNAUTHENTICATED"
    with pytest.raises(grpc.RpcError) as e:
        admin.ListRollouts(pb.ListRolloutsRequest(), metadata=[("authorization", f"Bearer {VALIDATE_ONLY_KEY}")], timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and reason(e.value) == "SCOPE_MISSING"
    with pytest.raises(grpc.RpcError) as e:
        api.CreateSession(pb.CreateSessionRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_answers_without_a_key(channel):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "sessiongate.v1.SessionGateService"):
        r = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
