// The Express middleware against the real binary and a real OpenID provider as the legacy
// side: a valid session passes (and its JWT cookie is refreshed), a bad one is 401, a legacy
// token is migrated in passing with the new session's cookies set, a login route relays the
// flow cookie, and sessiongate down is 503 — never 401.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import express from 'express';
import { startSessiongate, client, sha256 } from '../../tests/contract/node/harness.mjs';
import { startOidcProvider } from '../../tests/contract/node/oidc.mjs';
import { sessiongate } from './sessiongate.mjs';

const key = 'express-example-key';
let op, sg, api, gate, server, base;

before(async () => {
  op = await startOidcProvider({ accounts: { alice: { email: 'alice@example.com', email_verified: true } } });
  sg = await startSessiongate({
    toml: `
[[clients]]
name = "orders-service"
key_sha256 = "${sha256(key)}"
scopes = ["validate", "migrate", "flow", "issue"]

[[providers]]
name = "legacy-op"
kind = "legacy"
issuer = "${op.issuer}"
token_format = "opaque"
userinfo_url = "${op.userinfoUrl}"
policy = "upgrade"

[[flows]]
name = "login"
percentage = 100
stickiness = "device"
`,
  });
  api = client(sg.grpc, key);
  gate = sessiongate({ target: `ipv4:${sg.grpc}`, apiKey: key, deadlineMs: 5000 });
  const app = express();
  app.get('/orders', gate.protect(), (req, res) => res.json(req.sessiongate));
  app.get('/login', gate.loginFlow('login'), (req, res) => res.send(req.sessiongate.flow));
  server = app.listen(0, '127.0.0.1');
  await new Promise((ok) => server.once('listening', ok));
  base = `http://127.0.0.1:${server.address().port}`;
});

after(async () => {
  server?.close();
  gate?.close();
  api?.close();
  await sg?.stop();
  await op?.close();
});

const cookiesOf = (r) => r.headers.getSetCookie();

test('no credential and a bad one are 401', async () => {
  let r = await fetch(`${base}/orders`);
  assert.equal(r.status, 401);
  r = await fetch(`${base}/orders`, { headers: { authorization: 'Bearer not-a-session' } });
  assert.equal(r.status, 401);
  assert.equal(r.headers.get('www-authenticate'), 'Bearer error="invalid_token"');
});

test('a session passes by bearer or cookie, and its JWT cookie is refreshed', async () => {
  const s = await api.CreateSession({ new_user: {} });
  let r = await fetch(`${base}/orders`, { headers: { authorization: `Bearer ${s.session_token}` } });
  assert.equal(r.status, 200);
  const who = await r.json();
  assert.equal(who.userId, s.user_id);
  assert.equal(who.origin, 'ORIGIN_NEW');
  assert.ok(cookiesOf(r).some((c) => /^__Host-sg_jwt=ey[^;]+; Path=\/; Secure; HttpOnly; SameSite=Lax; Max-Age=\d+$/.test(c)), cookiesOf(r).join('\n'));
  r = await fetch(`${base}/orders`, { headers: { cookie: `theme=dark; __Host-sg_session=${s.session_token}` } });
  assert.equal(r.status, 200);
  assert.equal((await r.json()).sessionId, s.session.session_id);
});

test('a legacy token is migrated in passing and the new session is what the browser keeps', async () => {
  const legacy = await op.accessToken('alice');
  const r = await fetch(`${base}/orders`, { headers: { authorization: `Bearer ${legacy}` } });
  assert.equal(r.status, 200);
  const who = await r.json();
  assert.equal(who.migrated, true);
  assert.equal(who.origin, 'ORIGIN_NEW');
  const session = cookiesOf(r).find((c) => c.startsWith('__Host-sg_session='));
  assert.match(session, /^__Host-sg_session=sgs_[^;]+; Path=\/; Secure; HttpOnly; SameSite=Lax/);
  const token = decodeURIComponent(session.split(';')[0].split('=')[1]);
  const again = await fetch(`${base}/orders`, { headers: { cookie: `__Host-sg_session=${token}` } });
  assert.equal(again.status, 200);
  assert.equal((await again.json()).userId, who.userId);
});

test('a login route relays the flow and its cookie', async () => {
  const r = await fetch(`${base}/login`);
  assert.equal(await r.text(), 'FLOW_NEW');
  assert.ok(cookiesOf(r).some((c) => c.startsWith('__Host-sg_flow=v1.')), cookiesOf(r).join('\n'));
});

test('sessiongate down is 503 with a retry hint, never 401', async () => {
  const s = await api.CreateSession({ new_user: {} });
  await sg.stop();
  const r = await fetch(`${base}/orders`, { headers: { authorization: `Bearer ${s.session_token}` } });
  assert.equal(r.status, 503);
  assert.equal(r.headers.get('retry-after'), '1');
});
