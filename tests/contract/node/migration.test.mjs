// MigrateSession end to end against a real OpenID provider: a user logged in at the legacy
// provider (oidc-provider, real authorization code flow, real opaque access token, real
// UserInfo) is validated as LEGACY, migrated to a sessiongate session without logging in
// again, and is the same sessiongate user on a second migration.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startSessiongate, client, errorInfo, grpc, sha256 } from './harness.mjs';
import { startOidcProvider } from './oidc.mjs';

const key = 'node-contract-migration-key';
const validateOnly = 'node-contract-validate-only-key';
let op, sg, api;

before(async () => {
  op = await startOidcProvider({
    accounts: {
      alice: { email: 'alice@example.com', email_verified: true, name: 'Alice Legacy' },
      bob: { email: 'bob@example.com', email_verified: false, name: 'Bob' },
    },
  });
  sg = await startSessiongate({
    toml: `
[[clients]]
name = "node-contract"
key_sha256 = "${sha256(key)}"
scopes = ["validate", "migrate"]

[[clients]]
name = "node-validate-only"
key_sha256 = "${sha256(validateOnly)}"
scopes = ["validate"]

[[providers]]
name = "legacy-op"
kind = "legacy"
issuer = "${op.issuer}"
token_format = "opaque"
userinfo_url = "${op.userinfoUrl}"
policy = "upgrade"
`,
  });
  api = client(sg.grpc, key);
});

after(async () => {
  api?.close();
  await sg?.stop();
  await op?.close();
});

test('a legacy user migrates without logging in again and stays one user', async () => {
  const legacy = await op.accessToken('alice');

  const asLegacy = await api.ValidateSession({ token: legacy });
  assert.equal(asLegacy.verdict, 'VERDICT_VALID');
  assert.equal(asLegacy.origin, 'ORIGIN_LEGACY');
  assert.equal(asLegacy.provider, 'legacy-op');
  assert.equal(asLegacy.subject, 'alice');
  assert.equal(asLegacy.action, 'ACTION_MIGRATE', 'policy upgrade asks the caller to migrate');

  const first = await api.MigrateSession({ legacy_token: legacy, session_duration_minutes: 60 });
  assert.ok(first.user_id, 'a user id');
  assert.equal(first.user_created, true);
  assert.equal(first.replayed, false);
  assert.equal(first.user.email, 'alice@example.com');
  assert.match(first.session_token, /^sgs_/);

  const asNew = await api.ValidateSession({ token: first.session_jwt });
  assert.equal(asNew.verdict, 'VERDICT_VALID');
  assert.equal(asNew.origin, 'ORIGIN_NEW');
  assert.equal(asNew.user_id, first.user_id);
  assert.equal(asNew.session.session_id, first.session.session_id);

  // The same token again, e.g. a retry after a lost answer: the same session, no new login.
  const calls = op.userinfoCalls();
  const again = await api.MigrateSession({ legacy_token: legacy });
  assert.equal(again.replayed, true);
  assert.equal(again.session.session_id, first.session.session_id);
  assert.equal(op.userinfoCalls(), calls, 'a replay does not ask the provider again');

  // A later login at the legacy provider (another device): a new session, the same user.
  const secondLogin = await op.accessToken('alice');
  const second = await api.MigrateSession({ legacy_token: secondLogin });
  assert.equal(second.user_id, first.user_id);
  assert.equal(second.user_created, false);
  assert.notEqual(second.session.session_id, first.session.session_id);
  const secondAsNew = await api.ValidateSession({ token: second.session_token });
  assert.equal(secondAsNew.verdict, 'VERDICT_VALID');
  assert.equal(secondAsNew.origin, 'ORIGIN_NEW');
  assert.equal(secondAsNew.user_id, first.user_id);

  // Once migrated, the legacy subject's tokens validate with its sessiongate user id.
  const legacyAfter = await api.ValidateSession({ token: secondLogin });
  assert.equal(legacyAfter.origin, 'ORIGIN_LEGACY');
  assert.equal(legacyAfter.user_id, first.user_id);
});

test('the provider refusing a token is LEGACY_TOKEN_REJECTED, not an outage', async () => {
  const err = await api.MigrateSession({ legacy_token: 'not-a-token-the-provider-issued-0123456789' }).then(
    () => assert.fail('a made-up token migrated'),
    (e) => e,
  );
  assert.equal(err.code, grpc.status.UNAUTHENTICATED, err.message);
  assert.equal(errorInfo(err)?.reason, 'LEGACY_TOKEN_REJECTED');

  const verdict = await api.ValidateSession({ token: 'not-a-token-the-provider-issued-0123456789' });
  assert.equal(verdict.verdict, 'VERDICT_INVALID');
});

test('an unverified email is not trusted for anything but the record', async () => {
  const bob = await api.MigrateSession({ legacy_token: await op.accessToken('bob') });
  assert.equal(bob.user_created, true);
  assert.equal(bob.user.email_verified, false);
});

test('only a key with the migrate scope can migrate', async () => {
  const legacy = await op.accessToken('alice');
  const calls = op.userinfoCalls();
  const denied = await api.MigrateSession({ legacy_token: legacy }, { key: validateOnly }).then(
    () => assert.fail('migrated with a validate-only key'),
    (e) => e,
  );
  assert.equal(denied.code, grpc.status.PERMISSION_DENIED, denied.message);
  const unknown = await api.MigrateSession({ legacy_token: legacy }, { key: 'some-other-key' }).then(
    () => assert.fail('migrated with an unknown key'),
    (e) => e,
  );
  assert.equal(unknown.code, grpc.status.UNAUTHENTICATED, unknown.message);
  assert.equal(op.userinfoCalls(), calls, 'refused callers never reach the provider');
});

test('ValidateSession with auto_migrate moves a legacy user in the same call', async () => {
  const legacy = await op.accessToken('alice');
  const r = await api.ValidateSession({ token: legacy, auto_migrate: true });
  assert.equal(r.verdict, 'VERDICT_VALID');
  assert.equal(r.origin, 'ORIGIN_LEGACY', 'the verdict describes the token sent');
  assert.equal(r.action, 'ACTION_MIGRATE');
  assert.ok(r.migration, 'the new session comes with the verdict');
  assert.equal(r.migration.user.email, 'alice@example.com');
  const asNew = await api.ValidateSession({ token: r.migration.session_token });
  assert.equal(asNew.verdict, 'VERDICT_VALID');
  assert.equal(asNew.origin, 'ORIGIN_NEW');
  assert.equal(asNew.user_id, r.migration.user_id);

  const again = await api.ValidateSession({ token: legacy, auto_migrate: true });
  assert.equal(again.migration.replayed, true);
  assert.equal(again.migration.session.session_id, r.migration.session.session_id);

  const denied = await api.ValidateSession({ token: legacy, auto_migrate: true }, { key: validateOnly }).then(
    () => assert.fail('auto_migrate with a validate-only key'),
    (e) => e,
  );
  assert.equal(denied.code, grpc.status.PERMISSION_DENIED, denied.message);
});
