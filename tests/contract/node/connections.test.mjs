// R8 with grpc-js: workers call ValidateSession through at least three recyclings of their
// connection (the server retires it every 2 s ± 10 % with a graceful GOAWAY); not one call may
// fail. Run by the test command (see tests/contract/node/package.json).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startSessiongate, client, sha256 } from './harness.mjs';

const KEY = 'node-connections-key';

async function retiredByAge(http) {
  const text = await (await fetch(`http://${http}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  return text
    .split('\n')
    .filter((l) => l.startsWith('sessiongate_connections_retired_total{') && l.includes('door="grpc"') && l.includes('reason="max_age"'))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

test('R8: grpc-js calls through three recyclings and none fails', async () => {
  const sg = await startSessiongate({
    toml: `[server]
max_connection_age_seconds = 2
max_connection_age_grace_seconds = 5

[[clients]]
name = "node"
key_sha256 = "${sha256(KEY)}"
scopes = ["validate", "issue"]
`,
  });
  const api = client(sg.grpc, KEY);
  try {
    const created = await api.CreateSession({ new_user: {} });
    const before = await retiredByAge(sg.http);
    const until = Date.now() + 7_000;
    let ok = 0;
    const failed = [];
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (Date.now() < until) {
          try {
            const r = await api.ValidateSession({ token: created.session_jwt }, { deadlineMs: 5_000 });
            if (r.verdict === 'VERDICT_VALID') ok += 1;
            else failed.push(`verdict ${r.verdict}`);
          } catch (e) {
            failed.push(`${e.code} ${e.details}`);
          }
        }
      }),
    );
    const recycled = (await retiredByAge(sg.http)) - before;
    console.log(`R8 grpc-js: ${ok} calls in 7 s, ${failed.length} failed, ${recycled} connections retired by age`);
    assert.deepEqual(failed, []);
    assert.ok(recycled >= 3, `only ${recycled} recyclings`);
    assert.ok(ok > 100);
  } finally {
    api.close();
    await sg.stop();
  }
});
