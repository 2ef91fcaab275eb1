// Webhooks to a Node receiver that verifies with the specification's npm library
// (`standardwebhooks`) — the receiver the README shows, doing the legacy backfill: a user who
// signs up through the NEW flow gets a record on the legacy side. The receiver still holds the
// secret being rotated out, and verifies, because sessiongate signs with every configured
// secret; a tampered delivery does not verify.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { randomBytes } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import { startSessiongate, client, sha256 } from './harness.mjs';

const key = 'node-webhooks-key';
const NEW_SECRET = `whsec_${randomBytes(32).toString('base64')}`;
const OLD_SECRET = `whsec_${randomBytes(32).toString('base64')}`;

// --- the README's receiver, verbatim but for where the secret comes from ---
const legacyUsers = new Map();
const wh = new Webhook(OLD_SECRET); // not rotated yet: sessiongate still signs with it too
const received = [];
let arrived;
const receiver = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const body = Buffer.concat(chunks).toString('utf8');
  let event;
  try {
    event = wh.verify(body, req.headers); // throws unless signed, fresh and intact
  } catch {
    received.push({ verified: false, id: req.headers['webhook-id'] });
    res.writeHead(400).end();
    return;
  }
  if (event.type === 'user.created' && !legacyUsers.has(event.data.user_id)) {
    // Deliveries are at least once: key the side effect by the user (or webhook-id).
    legacyUsers.set(event.data.user_id, { migrated: false });
  }
  received.push({ verified: true, id: req.headers['webhook-id'], event, headers: req.headers, body });
  res.writeHead(204).end();
  arrived?.();
});
// ---

let sg, api;

before(async () => {
  await new Promise((ok) => receiver.listen(0, '127.0.0.1', ok));
  const toml = `
[[clients]]
name = "node-webhooks"
key_sha256 = "${sha256(key)}"
scopes = ["issue", "admin"]

[[webhooks]]
name = "legacy-backfill"
url = "http://127.0.0.1:${receiver.address().port}/hooks/sessiongate"
events = ["user.created"]
secrets = ["env:WH_NEW", "env:WH_OLD"]
`;
  sg = await startSessiongate({ toml, env: { WH_NEW: NEW_SECRET, WH_OLD: OLD_SECRET } });
  api = client(sg.grpc, key);
});

after(async () => {
  api?.close();
  await sg?.stop();
  receiver.close();
});

function nextDelivery() {
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error('no delivery within 20 s')), 20_000);
    arrived = () => {
      clearTimeout(timer);
      ok();
    };
  });
}

test('a NEW-flow sign-up reaches the legacy side as a verified user.created', async () => {
  const delivered = nextDelivery();
  const r = await api.CreateSession({ new_user: { email: 'new@example.com', email_verified: true } });
  await delivered;
  const d = received.find((x) => x.verified && x.event.data.user_id === r.user_id);
  assert.ok(d, 'delivered and verified');
  assert.equal(d.event.type, 'user.created');
  assert.equal(d.event.data.created_via, 'create_session');
  assert.equal(d.id, d.event.data.id, 'webhook-id is the event id');
  assert.ok(legacyUsers.has(r.user_id), 'the legacy record exists');
  // Two signatures while rotating: the current secret's first.
  const sigs = d.headers['webhook-signature'].split(' ');
  assert.equal(sigs.length, 2);
  assert.doesNotThrow(() => new Webhook(NEW_SECRET).verify(d.body, d.headers));
  // Nothing but ids and facts.
  assert.ok(!d.body.includes(r.session_token) && !d.body.includes(r.session_jwt));

  // A tampered copy of the same delivery does not verify.
  const tampered = d.body.replace(r.user_id, 'usr_someone_else');
  assert.throws(() => wh.verify(tampered, d.headers));
  const res = await fetch(`http://127.0.0.1:${receiver.address().port}/hooks/sessiongate`, {
    method: 'POST',
    headers: {
      'webhook-id': d.headers['webhook-id'],
      'webhook-timestamp': d.headers['webhook-timestamp'],
      'webhook-signature': d.headers['webhook-signature'],
    },
    body: tampered,
  });
  assert.equal(res.status, 400);
  assert.ok(!legacyUsers.has('usr_someone_else'));
});

test('the webhook admin API answers for the configured webhook only', async () => {
  const r = await api.ListDeadLetters({ webhook: 'legacy-backfill' });
  assert.deepEqual(r.dead_letters, []);
  await assert.rejects(api.ListDeadLetters({ webhook: 'nope' }), (e) => e.code === 5);
});
