// Express middleware that protects routes with sessiongate: copy this file into your service.
//
//   import { sessiongate } from './sessiongate.mjs';
//   const gate = sessiongate({ target: 'dns:///sessiongate-headless:50051', apiKey: process.env.SESSIONGATE_KEY });
//   app.get('/orders', gate.protect(), (req, res) => res.json({ user: req.sessiongate.userId }));
//   app.get('/login', gate.loginFlow('login'), (req, res) => res.send(req.sessiongate.flow));
//
// One gRPC channel per process, balanced over every pod with the published service config
// (clients/service-config.json: deadlines, retries on UNAVAILABLE). A request carries its
// credential as `Authorization: Bearer …` or in the session cookie; INVALID answers 401,
// sessiongate unreachable 503 (never 401: nobody is logged out by an outage). A legacy token
// is migrated in passing (`auto_migrate`) and the new session's cookies are set; a fresh
// `session_jwt` from sessiongate replaces the JWT cookie.
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

const DEFAULTS = {
  protoDir: resolve(repo, 'proto'),
  serviceConfig: resolve(repo, 'clients/service-config.json'),
  sessionCookie: '__Host-sg_session',
  jwtCookie: '__Host-sg_jwt',
  deadlineMs: 500,
  autoMigrate: true,
};

/** The value of cookie `name` in a Cookie header, if any. */
function cookie(header, name) {
  for (const part of (header ?? '').split(';')) {
    const at = part.indexOf('=');
    if (at > 0 && part.slice(0, at).trim() === name) return decodeURIComponent(part.slice(at + 1).trim());
  }
  return undefined;
}

/** A Set-Cookie value for a credential: host-only, HTTPS only, never read by scripts. */
function credentialCookie(name, value, expiresAt) {
  const maxAge = expiresAt ? Math.max(0, Math.floor((Number(expiresAt.seconds) * 1000 - Date.now()) / 1000)) : undefined;
  return `${name}=${encodeURIComponent(value)}; Path=/; Secure; HttpOnly; SameSite=Lax${maxAge !== undefined ? `; Max-Age=${maxAge}` : ''}`;
}

export function sessiongate(options) {
  const o = { ...DEFAULTS, ...options };
  if (!o.target || !o.apiKey) throw new Error('sessiongate: `target` and `apiKey` are required');
  const def = protoLoader.loadSync('sessiongate/v1/sessiongate.proto', {
    includeDirs: [o.protoDir],
    keepCase: true,
    enums: String,
    longs: String,
    defaults: true,
    oneofs: true,
  });
  const { SessionGateService } = grpc.loadPackageDefinition(def).sessiongate.v1;
  const api = new SessionGateService(o.target, o.credentials ?? grpc.credentials.createInsecure(), {
    'grpc.service_config': readFileSync(o.serviceConfig, 'utf8'),
  });
  const call = (method, request) =>
    new Promise((ok, fail) => {
      const md = new grpc.Metadata();
      md.set('authorization', `Bearer ${o.apiKey}`);
      api[method](request, md, { deadline: Date.now() + o.deadlineMs }, (err, res) => (err ? fail(err) : ok(res)));
    });
  // An outage or a deadline is 503 with a retry hint; anything else is our bug: 500.
  const failed = (res, err) => {
    const down = err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED;
    if (down) res.set('Retry-After', '1');
    res.status(down ? 503 : 500).json({ error: down ? 'session_service_unavailable' : 'session_check_failed' });
  };

  return {
    /** Lets a request through only with a valid credential; `req.sessiongate` says whose. */
    protect() {
      return async (req, res, next) => {
        const auth = req.get('authorization') ?? '';
        const bearer = /^Bearer\s+(\S+)$/i.exec(auth)?.[1];
        const token = bearer ?? cookie(req.get('cookie'), o.sessionCookie);
        if (!token) {
          res.set('WWW-Authenticate', 'Bearer');
          return res.status(401).json({ error: 'unauthenticated' });
        }
        let v;
        try {
          v = await call('ValidateSession', { token, auto_migrate: o.autoMigrate });
        } catch (err) {
          return failed(res, err);
        }
        if (v.verdict !== 'VERDICT_VALID') {
          res.set('WWW-Authenticate', 'Bearer error="invalid_token"');
          return res.status(401).json({ error: 'invalid_session', reason: v.reason });
        }
        const cookies = [];
        if (v.migration) {
          // A legacy token moved to a new session in this very call: from now on the browser
          // sends the new one.
          const m = v.migration;
          cookies.push(credentialCookie(o.sessionCookie, m.session_token, m.session?.expires_at));
          cookies.push(credentialCookie(o.jwtCookie, m.session_jwt, m.session?.expires_at));
        } else if (v.session_jwt) {
          cookies.push(credentialCookie(o.jwtCookie, v.session_jwt, v.expires_at));
        }
        if (cookies.length) res.append('Set-Cookie', cookies);
        const migrated = v.migration;
        req.sessiongate = {
          userId: migrated ? migrated.user_id : v.user_id,
          sessionId: migrated ? migrated.session?.session_id : v.session_id,
          origin: migrated ? 'ORIGIN_NEW' : v.origin,
          provider: v.provider,
          subject: v.subject,
          migrated: Boolean(migrated),
        };
        next();
      };
    },

    /** On a login route: which login flow to show (`req.sessiongate.flow`: FLOW_NEW or
     *  FLOW_LEGACY), with the flow cookie relayed so the device stays where it was put. A
     *  failure shows the legacy login, the known-good path. */
    loginFlow(flow) {
      return async (req, res, next) => {
        req.sessiongate = { flow: 'FLOW_LEGACY' };
        try {
          const r = await call('ResolveFlow', {
            flow,
            flow_cookie: cookie(req.get('cookie'), o.flowCookie ?? '__Host-sg_flow') ?? '',
            ip: req.ip ?? '',
          });
          req.sessiongate.flow = r.flow;
          if (r.set_cookie?.header_value) res.append('Set-Cookie', r.set_cookie.header_value);
        } catch {
          // LEGACY stands.
        }
        next();
      };
    },

    close() {
      api.close();
    },
  };
}
