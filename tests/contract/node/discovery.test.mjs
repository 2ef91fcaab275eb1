// OpenID discovery of the native issuer, as an OIDC library does it: openid-client finds the
// issuer's metadata (and checks that it names the issuer it was asked for), jose fetches the
// keys from its `jwks_uri` and verifies a session_jwt minted by the real binary. The issuer is
// a hostname and a path, as behind an ingress that forwards the path unchanged; `customFetch`
// stands in for DNS, so that the server keeps its free loopback port.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as oidc from 'openid-client';
import { createRemoteJWKSet, customFetch, generateKeyPair, jwtVerify, SignJWT } from 'jose';
import { startSessiongate, client, sha256 } from './harness.mjs';

const HOST = 'https://sessiongate.example.test';
const ISSUER = `${HOST}/sessions`;
const key = 'node-discovery-key';
let sg, urn, api;

/** `fetch`, with the issuer's host resolved to the server's loopback address. */
const via = (server) => (url, options) =>
  fetch(String(url).replace(HOST, `http://${server.http}`), options);

before(async () => {
  const clients = `
[[clients]]
name = "node-discovery"
key_sha256 = "${sha256(key)}"
scopes = ["validate", "issue"]
`;
  sg = await startSessiongate({ toml: `[native]\nissuer = "${ISSUER}"\n${clients}` });
  urn = await startSessiongate({ toml: clients });
  api = client(sg.grpc, key);
});

after(async () => {
  api?.close();
  await sg?.stop();
  await urn?.stop();
});

test('an OIDC library finds the keys by discovery and verifies a session_jwt with them', async () => {
  const config = await oidc.discovery(new URL(ISSUER), 'any-verifier', undefined, undefined, {
    [oidc.customFetch]: via(sg),
  });
  const meta = config.serverMetadata();
  assert.equal(meta.issuer, ISSUER);
  assert.equal(meta.jwks_uri, `${ISSUER}/.well-known/jwks.json`);
  assert.ok(meta.authorization_endpoint === undefined, 'not an OpenID Provider: no login endpoints');
  // And at the root, for a proxy that strips the issuer's path.
  const root = await (await fetch(`http://${sg.http}/.well-known/openid-configuration`)).json();
  assert.deepEqual(root, meta);

  const created = await api.CreateSession({ new_user: {}, authentication_factors: [{ type: 'passkey' }] });
  const keys = createRemoteJWKSet(new URL(meta.jwks_uri), { [customFetch]: via(sg) });
  const { payload, protectedHeader } = await jwtVerify(created.session_jwt, keys, {
    issuer: meta.issuer,
    audience: 'sessiongate',
    algorithms: meta.id_token_signing_alg_values_supported,
  });
  assert.equal(payload.sub, created.user_id);
  assert.equal(payload.sid, created.session.session_id);
  assert.ok(meta.id_token_signing_alg_values_supported.includes(protectedHeader.alg));

  // A token with the right `iss` and `kid`, signed by a key that is not the issuer's, does not
  // verify with what discovery found.
  const { privateKey } = await generateKeyPair(protectedHeader.alg);
  const forged = await new SignJWT({ ...payload })
    .setProtectedHeader({ alg: protectedHeader.alg, kid: protectedHeader.kid })
    .sign(privateKey);
  await assert.rejects(
    jwtVerify(forged, keys, { issuer: meta.issuer, audience: 'sessiongate' }),
    (e) => e.code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED',
  );
});

test('a discovery document for another issuer is refused by the library', async () => {
  // Asked for a look-alike issuer, the server's document names its own: openid-client refuses
  // it, as it must (the issuer is what every token's `iss` is checked against).
  const other = `${HOST}/tenant-b`;
  await assert.rejects(
    oidc.discovery(new URL(other), 'any-verifier', undefined, undefined, {
      [oidc.customFetch]: (url, options) =>
        fetch(String(url).replace(`${other}/.well-known/openid-configuration`,
          `http://${sg.http}/.well-known/openid-configuration`), options),
    }),
    (e) => e.code === 'OAUTH_JSON_ATTRIBUTE_COMPARISON_FAILED' && /issuer/.test(e.message),
  );
});

test('a URN issuer publishes no discovery, and says what to set', async () => {
  const r = await fetch(`http://${urn.http}/.well-known/openid-configuration`);
  assert.equal(r.status, 404);
  assert.match(await r.text(), /\[native\] issuer/);
  // The JWKS is there either way.
  const jwks = await (await fetch(`http://${urn.http}/.well-known/jwks.json`)).json();
  assert.ok(jwks.keys.length >= 1);
});
