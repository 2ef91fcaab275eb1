"""The FastAPI example (examples/fastapi/sessiongate_fastapi.py) against the real binary, with a
legacy provider's opaque token migrated in passing: a valid session passes (and its JWT cookie
is refreshed), a bad one is 401, a login route relays the flow cookie, sessiongate unreachable
is 503 — never 401."""
import sys

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from conftest import KEY, LEGACY_TOKEN, REPO, free_port, pb

sys.path.insert(0, str(REPO / "examples" / "fastapi"))
from sessiongate_fastapi import Identity, SessionGate  # noqa: E402


def app_for(target):
    gate = SessionGate(target, api_key=KEY, deadline=10)
    app = FastAPI()

    @app.get("/orders")
    async def orders(who: Identity = Depends(gate.session)):
        return {"user_id": who.user_id, "origin": who.origin, "migrated": who.migrated,
                "session_id": who.session_id}

    @app.get("/login")
    async def login(flow: str = Depends(gate.login_flow("login"))):
        return {"flow": flow}

    return TestClient(app)


@pytest.fixture(scope="module")
def web(server):
    with app_for(f"ipv4:{server['grpc']}") as c:
        yield c


def cookies(r):
    return r.headers.get_list("set-cookie")


def test_no_or_a_bad_credential_is_401(web):
    assert web.get("/orders").status_code == 401
    r = web.get("/orders", headers={"authorization": "Bearer not-a-session"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_a_session_passes_by_bearer_or_cookie_and_its_jwt_cookie_is_refreshed(web, api, auth):
    s = api.CreateSession(pb.CreateSessionRequest(new_user=pb.NewUser()), metadata=auth)
    r = web.get("/orders", headers={"authorization": f"Bearer {s.session_token}"})
    assert r.status_code == 200, r.text
    assert r.json() == {"user_id": s.user_id, "origin": "ORIGIN_NEW", "migrated": False,
                        "session_id": s.session.session_id}
    jwt = [c for c in cookies(r) if c.startswith("__Host-sg_jwt=ey")]
    assert jwt and "HttpOnly" in jwt[0] and "Secure" in jwt[0] and "SameSite=lax" in jwt[0], cookies(r)
    web.cookies.clear()
    r = web.get("/orders", headers={"cookie": f"__Host-sg_session={s.session_token}"})
    assert r.status_code == 200 and r.json()["user_id"] == s.user_id


def test_a_legacy_token_is_migrated_in_passing(web):
    r = web.get("/orders", headers={"authorization": f"Bearer {LEGACY_TOKEN}"})
    assert r.status_code == 200, r.text
    assert r.json()["migrated"] is True and r.json()["origin"] == "ORIGIN_NEW"
    session = [c for c in cookies(r) if c.startswith("__Host-sg_session=sgs_")]
    assert session, cookies(r)
    token = session[0].split(";")[0].split("=", 1)[1]
    web.cookies.clear()
    again = web.get("/orders", headers={"cookie": f"__Host-sg_session={token}"})
    assert again.status_code == 200 and again.json()["user_id"] == r.json()["user_id"]


def test_a_login_route_relays_the_flow_and_its_cookie(web):
    r = web.get("/login")
    assert r.json() == {"flow": "FLOW_NEW"}
    assert any(c.startswith("__Host-sg_flow=v1.") for c in cookies(r)), cookies(r)


def test_sessiongate_unreachable_is_503_never_401():
    with app_for(f"ipv4:127.0.0.1:{free_port()}") as c:
        r = c.get("/orders", headers={"authorization": "Bearer sgs_" + "A" * 43})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
