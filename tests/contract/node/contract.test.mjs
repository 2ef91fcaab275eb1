// Every RPC of sessiongate.v1 through Node's @grpc/grpc-js (proto loaded at run time) against
// the real binary.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import protoLoader from '@grpc/proto-loader';
import { startSessiongate, client, errorInfo, grpc, sha256 } from './harness.mjs';

const key = 'node-contract-key';
const validateOnly = 'node-contract-validate-only';
let sg, api;

before(async () => {
  sg = await startSessiongate({
    toml: `
[[clients]]
name = "node-contract"
key_sha256 = "${sha256(key)}"
scopes = ["validate", "flow", "issue", "revoke", "admin"]

[[clients]]
name = "node-validate-only"
key_sha256 = "${sha256(validateOnly)}"
scopes = ["validate"]

[[flows]]
name = "login"
percentage = 100
stickiness = "device"
countries = ["NO", "SE"]
`,
  });
  api = client(sg.grpc, key);
});

after(async () => {
  api?.close();
  await sg?.stop();
});

const fails = (p) => p.then(() => assert.fail('the call succeeded'), (e) => e);

test('create, validate (token and JWT), revoke', async () => {
  const created = await api.CreateSession({
    new_user: { email: 'node@example.com', email_verified: true },
    authentication_factors: [{ type: 'magic_link', delivery: 'email' }],
    session_custom_claims: { fields: { tier: { stringValue: 'gold' } } },
  });
  assert.equal(created.user_created, true);
  assert.match(created.session_token, /^sgs_/);
  for (const token of [created.session_token, created.session_jwt]) {
    const v = await api.ValidateSession({ token });
    assert.equal(v.verdict, 'VERDICT_VALID');
    assert.equal(v.origin, 'ORIGIN_NEW');
    assert.equal(v.user_id, created.user_id);
    assert.equal(v.session.custom_claims.fields.tier.stringValue, 'gold');
  }
  const r = await api.RevokeSession({ session_id: created.session.session_id });
  assert.equal(r.revoked, 1);
  const after = await api.ValidateSession({ token: created.session_jwt });
  assert.equal(after.verdict, 'VERDICT_INVALID');
  assert.equal(after.reason, 'REASON_REVOKED');
});

test('views: BASIC answers who, FULL (and unset) adds claims, session and a fresh JWT', async () => {
  const created = await api.CreateSession({ new_user: { email: 'node-views@example.com' } });
  for (const token of [created.session_token, created.session_jwt]) {
    const basic = await api.ValidateSession({ token, view: 'VALIDATE_VIEW_BASIC' });
    assert.equal(basic.verdict, 'VERDICT_VALID');
    assert.equal(basic.user_id, created.user_id);
    assert.equal(basic.session_id, created.session.session_id);
    assert.equal(basic.claims, null);
    assert.equal(basic.session, null);
    assert.equal(basic.session_jwt, '');
    for (const view of [undefined, 'VALIDATE_VIEW_FULL']) {
      const full = await api.ValidateSession({ token, view });
      assert.equal(full.session.session_id, created.session.session_id);
      if (token === created.session_jwt) {
        assert.equal(full.claims.fields.sid.stringValue, created.session.session_id);
      } else {
        assert.equal(full.session_jwt.split('.').length, 3);
      }
    }
  }
});

test('bad input: a verdict for a bad token, INVALID_ARGUMENT for a bad request', async () => {
  const v = await api.ValidateSession({ token: 'x'.repeat(20) });
  assert.equal(v.verdict, 'VERDICT_INVALID');
  const e = await fails(api.CreateSession({ new_user: { email: 'node@example.com' }, session_duration_minutes: 1 }));
  assert.equal(e.code, grpc.status.INVALID_ARGUMENT, e.message);
  assert.equal(errorInfo(e)?.domain, 'sessiongate.dev');
});

test('ResolveFlow with gates, a sticky cookie, and the admin API', async () => {
  const first = await api.ResolveFlow({ country: 'no' });
  assert.equal(first.flow, 'FLOW_NEW');
  assert.equal(first.reason, 'FLOW_REASON_ROLLOUT_IN');
  assert.match(first.set_cookie.header_value, /^__Host-sg_flow=v1\..*; Max-Age=34560000; Path=\/; Secure; HttpOnly; SameSite=Lax$/);
  const gated = await api.ResolveFlow({ country: 'T1', device_id: first.device_id });
  assert.equal(gated.reason, 'FLOW_REASON_NOT_ELIGIBLE');

  const updated = await api.UpdateRollout({ flow: 'login', percentage: 0, deny_devices: { add: ['stolen-device'] } });
  assert.equal(updated.rollout.percentage, 0);
  assert.deepEqual(updated.rollout.deny_devices, ['stolen-device']);
  const sticky = await api.ResolveFlow({ country: 'SE', flow_cookie: first.set_cookie.value });
  assert.equal(sticky.reason, 'FLOW_REASON_STICKY');
  const denied = await api.ResolveFlow({ country: 'SE', device_id: 'stolen-device' });
  assert.equal(denied.reason, 'FLOW_REASON_FORCED_LEGACY');
  const got = await api.GetRollout({ flow: 'login' });
  assert.equal(got.rollout.config_version, updated.rollout.config_version);
  const all = await api.ListRollouts({});
  assert.deepEqual(all.rollouts.map((r) => r.flow), ['login']);
  const e = await fails(api.UpdateRollout({ flow: 'login', percentage: 101 }));
  assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(errorInfo(e)?.reason, 'INVALID_ROLLOUT');
});

test('scopes: a validate-only key can validate and nothing else', async () => {
  const v = await api.ValidateSession({ token: 'x' }, { key: validateOnly });
  assert.equal(v.verdict, 'VERDICT_INVALID');
  for (const call of [
    () => api.CreateSession({ new_user: {} }, { key: validateOnly }),
    () => api.ResolveFlow({}, { key: validateOnly }),
    () => api.ListRollouts({}, { key: validateOnly }),
    () => api.RevokeSession({ session_id: 'x' }, { key: validateOnly }),
  ]) {
    const e = await fails(call());
    assert.equal(e.code, grpc.status.PERMISSION_DENIED, e.message);
    assert.equal(errorInfo(e)?.reason, 'SCOPE_MISSING');
  }
});

test('health answers without a key', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'health-proto-'));
  await writeFile(
    join(dir, 'health.proto'),
    `syntax = "proto3"; package grpc.health.v1;
     message HealthCheckRequest { string service = 1; }
     message HealthCheckResponse { enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; } ServingStatus status = 1; }
     service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }`,
  );
  const def = protoLoader.loadSync('health.proto', { includeDirs: [dir], enums: String });
  const Health = grpc.loadPackageDefinition(def).grpc.health.v1.Health;
  const health = new Health(sg.grpc, grpc.credentials.createInsecure());
  for (const service of ['', 'sessiongate.v1.SessionGateService']) {
    const r = await new Promise((ok, fail) =>
      health.Check({ service }, { deadline: Date.now() + 10_000 }, (e, res) => (e ? fail(e) : ok(res))),
    );
    assert.equal(r.status, 'SERVING');
  }
  health.close();
});
