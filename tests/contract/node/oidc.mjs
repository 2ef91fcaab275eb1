// A real OpenID provider (the npm package `oidc-provider`) on loopback, standing in for the
// legacy auth provider of a migration. Users "log in" through the provider's own authorization
// code flow (PKCE, consent, token endpoint); only the interaction pages are replaced by a
// handler that signs in the account named by `login_hint`, so a test gets real access tokens
// that the provider's real UserInfo endpoint accepts.
import http from 'node:http';
import { randomBytes, createHash } from 'node:crypto';
import { Provider } from 'oidc-provider';

const b64url = (buf) => buf.toString('base64url');

/**
 * `backchannelLogoutUri`: where the provider posts its back-channel logout tokens (the
 * client's `backchannel_logout_uri`); logouts through `logout(accountId)` send them.
 */
export async function startOidcProvider({ accounts, backchannelLogoutUri }) {
  const server = http.createServer();
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const client = {
    client_id: 'legacy-web',
    client_secret: b64url(randomBytes(32)),
    redirect_uris: [`${issuer}/callback`],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    ...(backchannelLogoutUri && {
      backchannel_logout_uri: backchannelLogoutUri,
      backchannel_logout_session_required: true,
    }),
  };
  const provider = new Provider(issuer, {
    clients: [client],
    findAccount: async (_ctx, id) =>
      accounts[id] && { accountId: id, claims: async () => ({ sub: id, ...accounts[id] }) },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    features: {
      devInteractions: { enabled: false },
      backchannelLogout: { enabled: Boolean(backchannelLogoutUri) },
    },
    cookies: { keys: [b64url(randomBytes(32))] },
    // The provider's outgoing calls refuse loopback addresses (an SSRF guard); its
    // back-channel logouts go to sessiongate on loopback here, so that guard is left out.
    fetch: (url, { dispatcher: _guard, ...options }) => globalThis.fetch(url, options),
    ttl: { AccessToken: 3600, IdToken: 3600, Interaction: 600, Session: 3600, Grant: 3600 },
  });
  provider.on('server_error', (_ctx, err) => console.error('oidc-provider:', err));

  const app = provider.callback();
  server.on('request', (req, res) => {
    if (!req.url.startsWith('/interaction/')) return app(req, res);
    interact(provider, req, res).catch((err) => {
      res.statusCode = 500;
      res.end(String(err));
    });
  });

  const backchannel = [];
  provider.on('backchannel.success', (_ctx, _client, accountId, sid) => backchannel.push({ ok: true, accountId, sid }));
  provider.on('backchannel.error', (_ctx, err, _client, accountId, sid) => backchannel.push({ ok: false, accountId, sid, err: String(err) }));
  // Each account's browser: its cookies at the provider, kept from its login for its logout.
  const browsers = new Map();

  let userinfoCalls = 0;
  server.on('request', (req) => {
    if (req.url.startsWith('/me')) userinfoCalls += 1;
  });

  return {
    issuer,
    userinfoUrl: `${issuer}/me`,
    userinfoCalls: () => userinfoCalls,
    /** Runs the authorization code flow for `accountId` and returns its access token. */
    accessToken: (accountId) => {
      const jar = browsers.get(accountId) ?? new Map();
      browsers.set(accountId, jar);
      return login(issuer, client, accountId, jar);
    },
    /**
     * Logs `accountId` out at the provider the way a browser does (RP-initiated logout and
     * its confirmation form); the provider posts its back-channel logout tokens before it
     * answers. Returns what the back-channel deliveries reported.
     */
    logout: async (accountId) => {
      const jar = browsers.get(accountId);
      const cookie = () => [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
      const page = await fetch(`${issuer}/session/end?client_id=${client.client_id}`, {
        signal: AbortSignal.timeout(10_000),
        headers: { cookie: cookie() },
      });
      const html = await page.text();
      const action = html.match(/action="([^"]+)"/)?.[1];
      const xsrf = html.match(/name="xsrf" value="([^"]+)"/)?.[1];
      if (!action || !xsrf) throw new Error(`no logout form: ${page.status} ${html}`);
      const before = backchannel.length;
      const done = await fetch(new URL(action, issuer), {
        signal: AbortSignal.timeout(10_000),
        method: 'POST',
        redirect: 'manual',
        headers: { cookie: cookie(), 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ xsrf, logout: 'yes' }),
      });
      if (done.status >= 400) throw new Error(`logout confirm: ${done.status} ${await done.text()}`);
      return backchannel.slice(before);
    },
    close: () => new Promise((ok) => { server.closeAllConnections(); server.close(ok); }),
  };
}

async function interact(provider, req, res) {
  const { prompt, params, session } = await provider.interactionDetails(req, res);
  let result;
  if (prompt.name === 'login') {
    result = { login: { accountId: params.login_hint } };
  } else if (prompt.name === 'consent') {
    const grant = new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    grant.addOIDCScope(params.scope);
    result = { consent: { grantId: await grant.save() } };
  } else {
    throw new Error(`unexpected prompt ${prompt.name}`);
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

// Follows the provider's redirects by hand (keeping its cookies) until it sends the browser
// to the client's redirect_uri with a code, then redeems the code at the token endpoint.
async function login(issuer, client, accountId, jar) {
  const verifier = b64url(randomBytes(32));
  const auth = new URL(`${issuer}/auth`);
  auth.search = new URLSearchParams({
    client_id: client.client_id,
    response_type: 'code',
    scope: 'openid email profile',
    redirect_uri: client.redirect_uris[0],
    login_hint: accountId,
    state: b64url(randomBytes(8)),
    code_challenge: b64url(createHash('sha256').update(verifier).digest()),
    code_challenge_method: 'S256',
  });
  let url = auth.href;
  for (let hop = 0; hop < 10; hop += 1) {
    if (url.startsWith(client.redirect_uris[0])) {
      const back = new URL(url).searchParams;
      if (!back.get('code')) throw new Error(`authorization failed: ${url}`);
      return redeem(issuer, client, back.get('code'), verifier);
    }
    const res = await fetch(url, {
      signal: AbortSignal.timeout(10_000),
      redirect: 'manual',
      headers: { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join('; ') },
    });
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const eq = pair.indexOf('=');
      jar.set(pair.slice(0, eq), pair.slice(eq + 1));
    }
    const next = res.headers.get('location');
    if (!next) throw new Error(`no redirect from ${url}: ${res.status} ${await res.text()}`);
    url = new URL(next, url).href;
  }
  throw new Error('too many redirects');
}

async function redeem(issuer, client, code, verifier) {
  const res = await fetch(`${issuer}/token`, {
    signal: AbortSignal.timeout(10_000),
    method: 'POST',
    headers: {
      authorization: `Basic ${Buffer.from(`${client.client_id}:${client.client_secret}`).toString('base64')}`,
      'content-type': 'application/x-www-form-urlencoded',
    },
    body: new URLSearchParams({
      grant_type: 'authorization_code',
      code,
      redirect_uri: client.redirect_uris[0],
      code_verifier: verifier,
    }),
  });
  const body = await res.json();
  if (!res.ok) throw new Error(`token endpoint: ${res.status} ${JSON.stringify(body)}`);
  return body.access_token;
}
