// Runs the real sessiongate binary for the Node contract tests and gives them a typed
// @grpc/grpc-js client built from the repository's proto at test time (no generated code is
// committed). The binary is started on free ports; its JSON "sessiongate serving" log line
// says where, so nothing here sleeps or polls.
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';
import { createServer } from 'node:net';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const binary = resolve(repo, process.env.SESSIONGATE_BIN ?? 'target/debug/sessiongate');

export const sha256 = (s) => createHash('sha256').update(s).digest('hex');

/** Starts sessiongate with `toml` as its config file; resolves once it serves. */
export async function startSessiongate({ toml = '', env = {} } = {}) {
  const dir = await mkdtemp(join(tmpdir(), 'sessiongate-node-'));
  const config = join(dir, 'sessiongate.toml');
  await writeFile(config, toml);
  const childEnv = { ...process.env, ...env };
  delete childEnv.REDIS_URL; // the embedded store unless a test asks for Redis
  Object.assign(childEnv, {
    SESSIONGATE_CONFIG: config,
    SESSIONGATE_GRPC_ADDR: '127.0.0.1:0',
    SESSIONGATE_HTTP_ADDR: '127.0.0.1:0',
    SESSIONGATE_LOG_FORMAT: 'json',
    RUST_LOG: 'info',
    ...env,
  });
  const child = spawn(binary, [], { cwd: dir, env: childEnv, stdio: ['ignore', 'ignore', 'pipe'] });
  const log = [];
  const lines = createInterface({ input: child.stderr });
  const serving = new Promise((ok, fail) => {
    lines.on('line', (line) => {
      log.push(line);
      if (line.includes('"sessiongate serving"')) {
        const fields = JSON.parse(line).fields ?? JSON.parse(line);
        ok({ grpc: fields.grpc_addr, http: fields.http_addr });
      }
    });
    child.on('exit', (code) => fail(new Error(`sessiongate exited (${code}) before serving:\n${log.join('\n')}`)));
    child.on('error', fail);
  });
  const addrs = await serving;
  return {
    ...addrs,
    log,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((ok) => child.on('exit', ok));
        child.kill('SIGTERM');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A throwaway redis-server on a free loopback port, for tests with two replicas; resolves once
 * it says it accepts connections. `stop()` ends it.
 */
export async function startRedis() {
  const probe = createServer();
  await new Promise((ok) => probe.listen(0, '127.0.0.1', ok));
  const { port } = probe.address();
  await new Promise((ok) => probe.close(ok));
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines = createInterface({ input: child.stdout });
  await new Promise((ok, fail) => {
    lines.on('line', (line) => line.includes('Ready to accept connections') && ok());
    child.on('exit', (code) => fail(new Error(`redis-server exited (${code})`)));
    child.on('error', fail);
  });
  return {
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((ok) => child.on('exit', ok));
        child.kill('SIGTERM');
        await exited;
      }
    },
  };
}

const definition = protoLoader.loadSync('sessiongate/v1/sessiongate.proto', {
  includeDirs: [join(repo, 'proto')],
  keepCase: true,
  enums: String,
  longs: String,
  defaults: true,
  oneofs: true,
});
const pkg = grpc.loadPackageDefinition(definition).sessiongate.v1;

/** A promise-returning client of the API and admin services, authenticating with `apiKey`. */
export function client(addr, apiKey) {
  const creds = grpc.credentials.createInsecure();
  const services = [
    new pkg.SessionGateService(addr, creds),
    new pkg.RolloutAdminService(addr, creds),
    new pkg.WebhookAdminService(addr, creds),
  ];
  const api = {};
  for (const svc of services) {
    for (const method of Object.keys(Object.getPrototypeOf(svc))) {
      if (typeof svc[method] !== 'function' || !/^[A-Z]/.test(method)) continue;
      api[method] = (request = {}, { key = apiKey, deadlineMs = 10_000 } = {}) =>
        new Promise((ok, fail) => {
          const md = new grpc.Metadata();
          if (key) md.set('authorization', `Bearer ${key}`);
          svc[method](request, md, { deadline: Date.now() + deadlineMs }, (err, res) => (err ? fail(err) : ok(res)));
        });
    }
  }
  api.close = () => services.forEach((s) => s.close());
  return api;
}

// google.rpc.Status and ErrorInfo, as the server sends them in `grpc-status-details-bin`.
const rpcTypes = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
`, { keepCase: true }).root;
const Status = rpcTypes.lookupType('google.rpc.Status');
const ErrorInfo = rpcTypes.lookupType('google.rpc.ErrorInfo');

/** The google.rpc.ErrorInfo of a failed call (sessiongate's machine-readable error), if any. */
export function errorInfo(err) {
  const details = err.metadata?.get('grpc-status-details-bin')?.[0];
  if (!details) return undefined;
  const any = Status.decode(details).details.find((d) => d.type_url.endsWith('/google.rpc.ErrorInfo'));
  return any && ErrorInfo.toObject(ErrorInfo.decode(any.value));
}

export { grpc };
