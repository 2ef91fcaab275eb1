"""FastAPI dependencies that protect routes with sessiongate: copy this file into your service.

    gate = SessionGate("dns:///sessiongate-headless:50051", api_key=os.environ["SESSIONGATE_KEY"])

    @app.get("/orders")
    async def orders(who: Identity = Depends(gate.session)):
        return {"user": who.user_id}

    @app.get("/login")
    async def login(flow: str = Depends(gate.login_flow("login"))):
        return templates.TemplateResponse("login-new.html" if flow == "FLOW_NEW" else "login-legacy.html", ...)

One grpc.aio channel per process, balanced over every pod with the published service config
(clients/service-config.json: deadlines, retries on UNAVAILABLE). The credential comes from
`Authorization: Bearer …` or the session cookie; INVALID is 401, sessiongate unreachable 503
(an outage never logs anyone out); a legacy token is migrated in passing (`auto_migrate`) and
the new session's cookies are set; a fresh `session_jwt` replaces the JWT cookie.

Stubs: python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. sessiongate/v1/sessiongate.proto
"""
from __future__ import annotations

import dataclasses
import pathlib
import time

import grpc
from fastapi import HTTPException, Request, Response
from sessiongate.v1 import sessiongate_pb2 as pb
from sessiongate.v1 import sessiongate_pb2_grpc as rpc

SERVICE_CONFIG = pathlib.Path(__file__).resolve().parents[2] / "clients" / "service-config.json"


@dataclasses.dataclass
class Identity:
    user_id: str
    session_id: str
    origin: str  # ORIGIN_NEW or ORIGIN_LEGACY
    provider: str
    subject: str
    migrated: bool


class SessionGate:
    def __init__(self, target: str, api_key: str, *, session_cookie: str = "__Host-sg_session",
                 jwt_cookie: str = "__Host-sg_jwt", flow_cookie: str = "__Host-sg_flow",
                 deadline: float = 0.5, auto_migrate: bool = True,
                 service_config: pathlib.Path = SERVICE_CONFIG):
        self._target, self._metadata = target, (("authorization", f"Bearer {api_key}"),)
        self._options = [("grpc.service_config", service_config.read_text()), ("grpc.enable_retries", 1)]
        self.session_cookie, self.jwt_cookie, self.flow_cookie = session_cookie, jwt_cookie, flow_cookie
        self.deadline, self.auto_migrate = deadline, auto_migrate
        self._stub = None

    def _api(self) -> rpc.SessionGateServiceStub:
        # Made on first use, inside the server's event loop (grpc.aio binds to it).
        if self._stub is None:
            self._stub = rpc.SessionGateServiceStub(grpc.aio.insecure_channel(self._target, options=self._options))
        return self._stub

    def _cookie(self, response: Response, name: str, value: str, expires_at) -> None:
        max_age = max(0, int(expires_at.seconds - time.time())) if expires_at and expires_at.seconds else None
        response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="lax")

    async def session(self, request: Request, response: Response) -> Identity:
        """The dependency: the caller's identity, or 401 / 503."""
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else request.cookies.get(self.session_cookie)
        if not token:
            raise HTTPException(401, "unauthenticated", headers={"WWW-Authenticate": "Bearer"})
        try:
            v = await self._api().ValidateSession(
                pb.ValidateSessionRequest(token=token, auto_migrate=self.auto_migrate),
                metadata=self._metadata, timeout=self.deadline)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise HTTPException(503, "session service unavailable", headers={"Retry-After": "1"}) from None
            raise HTTPException(500, "session check failed") from None
        if v.verdict != pb.VERDICT_VALID:
            raise HTTPException(401, "invalid session", headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if v.HasField("migration"):
            # A legacy token moved to a new session in this very call: the browser keeps that.
            m = v.migration
            self._cookie(response, self.session_cookie, m.session_token, m.session.expires_at)
            self._cookie(response, self.jwt_cookie, m.session_jwt, m.session.expires_at)
            return Identity(m.user_id, m.session.session_id, "ORIGIN_NEW", v.provider, v.subject, True)
        if v.session_jwt:
            self._cookie(response, self.jwt_cookie, v.session_jwt, v.expires_at)
        return Identity(v.user_id, v.session_id, pb.Origin.Name(v.origin), v.provider, v.subject, False)

    def login_flow(self, flow: str):
        """A dependency for a login route: FLOW_NEW or FLOW_LEGACY, with the flow cookie relayed.
        A failure shows the legacy login, the known-good path."""
        async def resolve(request: Request, response: Response) -> str:
            try:
                r = await self._api().ResolveFlow(
                    pb.ResolveFlowRequest(flow=flow, flow_cookie=request.cookies.get(self.flow_cookie, ""),
                                          ip=request.client.host if request.client else ""),
                    metadata=self._metadata, timeout=self.deadline)
            except grpc.aio.AioRpcError:
                return "FLOW_LEGACY"
            if r.set_cookie.header_value:
                response.headers.append("set-cookie", r.set_cookie.header_value)
            return pb.Flow.Name(r.flow)
        return resolve
