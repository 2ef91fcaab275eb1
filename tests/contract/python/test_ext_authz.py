"""Envoy's external authorization against the real binary, driven by Envoy's own message
definitions (PyPI xds-protos: envoyproxy/data-plane-api generated for Python) over grpcio —
what Envoy itself, or an Istio sidecar, sends and reads."""
import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2 as ctx
from envoy.service.auth.v3 import external_auth_pb2 as authz
from envoy.service.auth.v3 import external_auth_pb2_grpc as authz_grpc

from conftest import KEY, LEGACY_TOKEN, VALIDATE_ONLY_KEY, pb
from test_contract import create


@pytest.fixture(scope="module")
def envoy(channel):
    return authz_grpc.AuthorizationStub(channel)


def check(headers, raw=False, ext=None):
    """A CheckRequest for GET /orders with `headers`, in `headers` or (raw=True) only in
    `header_map`, as Envoy sends them with encode_raw_headers."""
    http = ctx.AttributeContext.HttpRequest(method="GET", path="/orders", host="shop.example.com")
    if raw:
        http.header_map.CopyFrom(base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]))
    else:
        http.headers.update(headers)
    attrs = ctx.AttributeContext(request=ctx.AttributeContext.Request(http=http))
    attrs.context_extensions.update(ext or {})
    return authz.CheckRequest(attributes=attrs)


def ok_headers(resp):
    assert resp.WhichOneof("http_response") == "ok_response", resp
    assert resp.status.code == 0
    return {h.header.key: h.header.value for h in resp.ok_response.headers}


def cookies_to_set(resp):
    """The Set-Cookie values for the browser, each added beside the backend's own."""
    assert resp.WhichOneof("http_response") == "ok_response", resp
    out = []
    for h in resp.ok_response.response_headers_to_add:
        assert h.header.key == "set-cookie"
        assert h.append_action == base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        out.append(h.header.value)
    return out


def www_authenticate(resp):
    assert resp.WhichOneof("http_response") == "denied_response", resp
    assert resp.denied_response.status.code == 401  # envoy.type.v3.StatusCode.Unauthorized
    return {h.header.key: h.header.value for h in resp.denied_response.headers}["www-authenticate"]


@pytest.mark.parametrize("raw", [False, True])
def test_a_session_passes_with_its_identity_and_forged_headers_removed(api, envoy, raw):
    s = create(api, [("authorization", f"Bearer {KEY}")], email=f"envoy-{raw}@example.com")
    forged = {"x-sessiongate-user-id": "user-test-admin"}
    resp = envoy.Check(
        check({"authorization": f"Bearer {s.session_jwt}", **forged}, raw),
        metadata=[("authorization", f"Bearer {VALIDATE_ONLY_KEY}")], timeout=10)
    h = ok_headers(resp)
    assert h["x-sessiongate-user-id"] == s.user_id
    assert h["x-sessiongate-origin"] == "new"
    assert h["x-sessiongate-provider"] == "native"
    assert "x-sessiongate-user-id" in resp.ok_response.headers_to_remove
    append = {h.header.key: h.append_action for h in resp.ok_response.headers}
    assert set(append.values()) == {base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD}
    assert resp.dynamic_metadata.fields["user_id"].string_value == s.user_id

    # The session token in the route's cookie: its fresh JWT goes upstream too.
    resp = envoy.Check(
        check({"cookie": f"a=b; sg_session={s.session_token}"}, raw, {"sessiongate.cookie": "sg_session"}),
        metadata=[("authorization", f"Bearer {KEY}")], timeout=10)
    h = ok_headers(resp)
    assert h["x-sessiongate-session-id"] == s.session.session_id
    assert h["x-sessiongate-session-jwt"].startswith("eyJ")


def test_refusals_are_401s_with_the_reason(api, envoy, auth):
    s = create(api, auth, email="envoy-revoked@example.com")
    api.RevokeSession(pb.RevokeSessionRequest(session_token=s.session_token), metadata=auth, timeout=10)
    for token, reason in [(s.session_jwt, "REVOKED"), (s.session_token, "REVOKED"), ("a.b.c", "MALFORMED")]:
        resp = envoy.Check(check({"authorization": f"Bearer {token}"}), metadata=auth, timeout=10)
        assert www_authenticate(resp) == f'Bearer error="invalid_token", error_description="{reason}"'
        assert resp.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    # No credential: 401 without an error; on an anonymous route it passes, without identity.
    resp = envoy.Check(check({"x-sessiongate-user-id": "forged"}), metadata=auth, timeout=10)
    assert www_authenticate(resp) == "Bearer"
    resp = envoy.Check(check({"x-sessiongate-user-id": "forged"}, ext={"sessiongate.anonymous": "true"}),
                       metadata=auth, timeout=10)
    assert ok_headers(resp) == {}
    assert "x-sessiongate-user-id" in resp.ok_response.headers_to_remove


def test_envoy_needs_a_caller_key_with_scope_validate(envoy):
    with pytest.raises(grpc.RpcError) as e:
        envoy.Check(check({}), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_login_route_says_which_flow_and_sets_the_flow_cookie(envoy, auth):
    login = {"sessiongate.flow": "login"}
    resp = envoy.Check(check({}, ext=login), metadata=auth, timeout=10)
    flow = ok_headers(resp)["x-sessiongate-flow"]
    assert flow in ("new", "legacy")
    assert resp.dynamic_metadata.fields["flow"].string_value == flow
    [cookie] = cookies_to_set(resp)
    assert cookie.startswith("__Host-sg_flow=") and "HttpOnly" in cookie and "Secure" in cookie
    # The browser sends it back: the same device, the same decision, the same cookie.
    pair = cookie.split(";")[0]
    again = envoy.Check(check({"cookie": pair}, raw=True, ext=login), metadata=auth, timeout=10)
    assert ok_headers(again)["x-sessiongate-flow"] == flow
    assert cookies_to_set(again)[0].split(";")[0] == pair
    # A proxy key without the `flow` scope cannot ask for it.
    with pytest.raises(grpc.RpcError) as e:
        envoy.Check(check({}, ext=login), metadata=[("authorization", f"Bearer {VALIDATE_ONLY_KEY}")],
                    timeout=10)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_legacy_token_migrates_inline_and_its_session_comes_back_as_a_cookie(envoy, auth):
    route = {"sessiongate.cookie": "__Host-sg_session,legacy_at", "sessiongate.migrate": "inline"}
    resp = envoy.Check(check({"cookie": f"legacy_at={LEGACY_TOKEN}"}, ext=route), metadata=auth, timeout=10)
    h = ok_headers(resp)
    assert h["x-sessiongate-origin"] == "new"
    assert h["x-sessiongate-session-jwt"].startswith("eyJ")
    [cookie] = cookies_to_set(resp)
    pair = cookie.split(";")[0]
    assert pair.startswith("__Host-sg_session=sgs_")
    # The next request reads the NEW cookie first and migrates nothing.
    resp = envoy.Check(check({"cookie": f"legacy_at={LEGACY_TOKEN}; {pair}"}, ext=route), metadata=auth,
                       timeout=10)
    assert ok_headers(resp)["x-sessiongate-user-id"] == h["x-sessiongate-user-id"]
    assert cookies_to_set(resp) == []
    # Without the route setting the legacy token passes as LEGACY.
    resp = envoy.Check(check({"authorization": f"Bearer {LEGACY_TOKEN}"}), metadata=auth, timeout=10)
    assert ok_headers(resp)["x-sessiongate-origin"] == "legacy"
