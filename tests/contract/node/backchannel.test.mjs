// Back-channel logout with a real OpenID provider (oidc-provider, its backchannelLogout
// feature): a user signs in at the provider, is migrated, then logs out at the provider the
// way a browser does; the provider posts a real logout token to one of two sessiongate
// replicas (sharing one Redis). The legacy token and the migrated session are REVOKED on both;
// a replayed or forged logout token changes nothing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startSessiongate, startRedis, client, sha256 } from './harness.mjs';
import { startOidcProvider } from './oidc.mjs';

const key = 'node-backchannel-key';
let redis, op, a, b, apiA, apiB, forwarder;
// The provider's logout tokens go through here to replica A (its port is known only once it
// runs, after the provider's client is registered); the test keeps what was posted.
const posted = [];
let target;

before(async () => {
  redis = await startRedis();
  forwarder = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks);
    posted.push(body.toString());
    const r = await fetch(`http://${target}${req.url}`, {
      signal: AbortSignal.timeout(10_000),
      method: 'POST',
      headers: { 'content-type': req.headers['content-type'] },
      body,
    });
    res.writeHead(r.status);
    res.end(await r.text());
  });
  await new Promise((ok) => forwarder.listen(0, '127.0.0.1', ok));
  op = await startOidcProvider({
    accounts: { alice: { email: 'alice@example.com', email_verified: true, name: 'Alice' } },
    backchannelLogoutUri: `http://127.0.0.1:${forwarder.address().port}/backchannel-logout/legacy-op`,
  });
  const toml = `
[[clients]]
name = "node-backchannel"
key_sha256 = "${sha256(key)}"
scopes = ["validate", "migrate"]

[[providers]]
name = "legacy-op"
kind = "legacy"
issuer = "${op.issuer}"
token_format = "opaque"
userinfo_url = "${op.userinfoUrl}"
jwks_url = "${op.issuer}/jwks"
policy = "upgrade"
backchannel_logout_audiences = ["legacy-web"]
backchannel_logout_revokes = "all"
`;
  a = await startSessiongate({ toml, env: { REDIS_URL: redis.url } });
  b = await startSessiongate({ toml, env: { REDIS_URL: redis.url } });
  target = a.http;
  apiA = client(a.grpc, key);
  apiB = client(b.grpc, key);
});

after(async () => {
  apiA?.close();
  apiB?.close();
  await a?.stop();
  await b?.stop();
  await op?.close();
  await new Promise((ok) => (forwarder ? forwarder.close(ok) : ok()));
  await redis?.stop();
});

test('a logout at the provider revokes the legacy token and the migrated session on both replicas', async () => {
  const legacy = await op.accessToken('alice');
  const migrated = await apiA.MigrateSession({ legacy_token: legacy });
  for (const api of [apiA, apiB]) {
    assert.equal((await api.ValidateSession({ token: legacy })).verdict, 'VERDICT_VALID');
    assert.equal((await api.ValidateSession({ token: migrated.session_token })).verdict, 'VERDICT_VALID');
  }

  const deliveries = await op.logout('alice');
  assert.deepEqual(deliveries.map((d) => d.ok), [true], JSON.stringify(deliveries));
  assert.equal(posted.length, 1);

  for (const [name, api] of [['A', apiA], ['B', apiB]]) {
    const t = await api.ValidateSession({ token: legacy });
    assert.equal(t.verdict, 'VERDICT_INVALID', `legacy token on ${name}`);
    assert.equal(t.reason, 'REASON_REVOKED', `legacy token on ${name}`);
    // (Each replica here signs with a key of its own — no shared signing key is configured —
    // so the session's JWT is checked where it was minted, its opaque token everywhere.)
    const tokens = name === 'A' ? [migrated.session_token, migrated.session_jwt] : [migrated.session_token];
    for (const token of tokens) {
      const s = await api.ValidateSession({ token });
      assert.equal(s.reason, 'REASON_REVOKED', `migrated session on ${name}`);
    }
  }

  // The provider's own logout token, replayed (to B this time), and a forged copy: 200 for
  // the replay, 400 for the forgery, and nothing else changes — alice signs in again and
  // stays signed in.
  // Times are whole seconds, and a login in the logout's own second counts as before it (the
  // safe reading), so the new login is made in a later second.
  const loggedOutAt = JSON.parse(Buffer.from(new URLSearchParams(posted[0]).get('logout_token').split('.')[1], 'base64url')).iat;
  while (Math.floor(Date.now() / 1000) <= loggedOutAt) {
    await new Promise((ok) => setTimeout(ok, 50));
  }
  const again = await op.accessToken('alice');
  assert.equal((await apiB.ValidateSession({ token: again })).verdict, 'VERDICT_VALID');
  const post = (body) =>
    fetch(`http://${b.http}/backchannel-logout/legacy-op`, {
      signal: AbortSignal.timeout(10_000),
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body,
    });
  assert.equal((await post(posted[0])).status, 200, 'a replay is taken, and does nothing');
  const token = new URLSearchParams(posted[0]).get('logout_token');
  const [h, p] = token.split('.');
  const claims = JSON.parse(Buffer.from(p, 'base64url'));
  claims.sub = 'someone-else';
  const forged = `${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${token.split('.')[2]}`;
  assert.equal((await post(new URLSearchParams({ logout_token: forged }))).status, 400);
  for (const api of [apiA, apiB]) {
    assert.equal((await api.ValidateSession({ token: again })).verdict, 'VERDICT_VALID');
  }
});
