//! The edge: `envoy.service.auth.v3.Authorization/Check` called with Envoy's own message
//! types (the `envoy-types` crate's), against the same verdicts as ValidateSession.

use std::collections::HashMap;

use envoy_types::ext_authz::v3::pb::{CheckRequest, CheckResponse, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use sessiongate::grpc::pb;

use crate::support::{RedisServer, Setup, TestApp, bearer};

const KEY: &str = "edge-proxy-key";

/// A Check of a request with `headers` (in `headers`, or only in `header_map` as Envoy sends
/// raw headers) on a route with `ext` as its context extensions.
fn check(headers: &[(&str, &str)], raw: bool, ext: &[(&str, &str)]) -> CheckRequest {
    let mut http = HttpRequest {
        method: "GET".into(),
        path: "/orders".into(),
        ..Default::default()
    };
    if raw {
        http.header_map = Some(HeaderMap {
            headers: headers
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).into(),
                    raw_value: v.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        });
    } else {
        http.headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(http),
                ..Default::default()
            }),
            context_extensions: ext
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..Default::default()
        }),
    }
}

async fn ask(app: &TestApp, req: CheckRequest) -> Result<CheckResponse, tonic::Status> {
    AuthorizationClient::new(app.channel.clone())
        .check(bearer(req, KEY))
        .await
        .map(|r| r.into_inner())
}

/// The headers an OK answer sets, and those it removes; `None` for a denial.
fn allowed(r: &CheckResponse) -> Option<(HashMap<String, String>, Vec<String>)> {
    match r.http_response.as_ref()? {
        HttpResponse::OkResponse(ok) => {
            assert_eq!(r.status.as_ref().unwrap().code, 0);
            Some((
                ok.headers
                    .iter()
                    .map(|h| {
                        let h = h.header.as_ref().unwrap();
                        (h.key.clone(), h.value.clone())
                    })
                    .collect(),
                ok.headers_to_remove.clone(),
            ))
        }
        _ => None,
    }
}

/// The `Set-Cookie` values an OK answer sends back to the browser.
fn cookies_set(r: &CheckResponse) -> Vec<String> {
    let Some(HttpResponse::OkResponse(ok)) = &r.http_response else {
        panic!("not allowed: {r:?}");
    };
    ok.response_headers_to_add
        .iter()
        .map(|h| {
            assert_eq!(h.append_action, 0, "a backend's own cookies must stay");
            let h = h.header.as_ref().unwrap();
            assert_eq!(h.key, "set-cookie");
            h.value.clone()
        })
        .collect()
}

/// `name=value` of a `Set-Cookie` value.
fn cookie_pair(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap()
}

/// The `WWW-Authenticate` of a 401.
fn denied(r: &CheckResponse) -> String {
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("not denied: {r:?}");
    };
    assert_eq!(d.status.unwrap().code, 401);
    assert_eq!(
        r.status.as_ref().unwrap().code,
        tonic::Code::Unauthenticated as i32
    );
    d.headers
        .iter()
        .find(|h| h.header.as_ref().unwrap().key == "www-authenticate")
        .map(|h| h.header.as_ref().unwrap().value.clone())
        .expect("WWW-Authenticate")
}

/// `GET /auth?{query}` as a forward-auth proxy asks it, with the user's `headers`.
async fn forward(
    app: &TestApp,
    query: &str,
    headers: &[(&str, &str)],
    caller: Option<&str>,
) -> reqwest::Response {
    let mut r = reqwest::Client::builder()
        .timeout(crate::support::CALL_DEADLINE)
        .build()
        .unwrap()
        .get(format!("http://{}/auth?{query}", app.http_addr));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(key) = caller {
        r = r.header("x-sessiongate-caller", key);
    }
    r.send().await.unwrap()
}

async fn create(app: &TestApp) -> pb::CreateSessionResponse {
    app.session()
        .create_session(bearer(
            pb::CreateSessionRequest {
                who: Some(pb::create_session_request::Who::NewUser(pb::NewUser {
                    email: "edge@example.com".into(),
                    email_verified: true,
                    name: "Edge".into(),
                })),
                ..Default::default()
            },
            KEY,
        ))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn check_lets_valid_sessions_through_with_identity_and_nothing_forged() {
    let redis = RedisServer::start().await;
    let app = Setup::new().caller_key(KEY).redis(&redis).spawn().await;
    let s = create(&app).await;
    let session_id = s.session.as_ref().unwrap().session_id.clone();
    let forged = ("x-sessiongate-user-id", "user-test-admin");
    let spoof = ("X-SessionGate-Role", "root");

    for raw in [false, true] {
        // The JWT as a bearer token, with identity headers the client made up.
        let auth = format!("Bearer {}", s.session_jwt);
        let r = ask(
            &app,
            check(&[("authorization", &auth), forged, spoof], raw, &[]),
        )
        .await
        .unwrap();
        let (set, removed) = allowed(&r).unwrap_or_else(|| panic!("raw={raw}: {r:?}"));
        assert_eq!(set["x-sessiongate-user-id"], s.user_id);
        assert_eq!(set["x-sessiongate-session-id"], session_id);
        assert_eq!(set["x-sessiongate-origin"], "new");
        assert_eq!(set["x-sessiongate-provider"], "native");
        assert!(removed.contains(&"x-sessiongate-user-id".to_owned()));
        assert!(removed.contains(&"x-sessiongate-role".to_owned()));
        let meta = r.dynamic_metadata.unwrap().fields;
        assert!(format!("{:?}", meta["user_id"]).contains(&s.user_id));
        assert!(!meta.contains_key("session_jwt"));

        // The opaque token in the route's cookie: its fresh JWT goes upstream too.
        let cookie = format!("theme=dark; sg_session={}", s.session_token);
        let on_route = [("sessiongate.cookie", "sg_session")];
        let r = ask(&app, check(&[("cookie", &cookie)], raw, &on_route))
            .await
            .unwrap();
        let (set, _) = allowed(&r).expect("the cookie's session passes");
        assert_eq!(set["x-sessiongate-session-id"], session_id);
        assert!(set["x-sessiongate-session-jwt"].starts_with("eyJ"));
        // A route that names no cookie does not read one.
        let r = ask(&app, check(&[("cookie", &cookie)], raw, &[]))
            .await
            .unwrap();
        assert_eq!(denied(&r), "Bearer");
    }
}

#[tokio::test]
async fn check_refuses_what_validate_session_refuses_and_never_turns_an_outage_into_a_401() {
    let mut redis = RedisServer::start().await;
    let app = Setup::new().caller_key(KEY).redis(&redis).spawn().await;
    let live = create(&app).await;
    let revoked = create(&app).await;
    app.session()
        .revoke_session(bearer(
            pb::RevokeSessionRequest {
                target: Some(pb::revoke_session_request::Target::SessionToken(
                    revoked.session_token.clone(),
                )),
                ..Default::default()
            },
            KEY,
        ))
        .await
        .unwrap();
    let mut tampered = live.session_jwt.clone();
    tampered.pop();
    tampered.push(if live.session_jwt.ends_with('A') {
        'B'
    } else {
        'A'
    });
    let table: Vec<(&str, String)> = vec![
        ("live jwt", live.session_jwt.clone()),
        ("live token", live.session_token.clone()),
        ("revoked jwt", revoked.session_jwt.clone()),
        ("revoked token", revoked.session_token.clone()),
        ("tampered jwt", tampered),
        ("malformed", "not.a.jwt".into()),
        ("oversized", "a".repeat(9000)),
        ("foreign opaque", "sgs_".to_owned() + &"A".repeat(43)),
    ];
    // One table, two doors: Check allows exactly what ValidateSession calls VALID, and says
    // why it refuses in the same words.
    for (name, token) in &table {
        let v = app
            .session()
            .validate_session(bearer(
                pb::ValidateSessionRequest {
                    token: token.clone(),
                    ..Default::default()
                },
                KEY,
            ))
            .await
            .unwrap()
            .into_inner();
        let auth = format!("Bearer {token}");
        let r = ask(&app, check(&[("authorization", &auth)], false, &[]))
            .await
            .unwrap();
        assert_eq!(
            allowed(&r).is_some(),
            v.verdict() == pb::Verdict::Valid,
            "{name}: {r:?}"
        );
        let f = forward(&app, "", &[("authorization", &auth)], Some(KEY)).await;
        assert_eq!(
            f.status() == 200,
            v.verdict() == pb::Verdict::Valid,
            "{name}: {f:?}"
        );
        if v.verdict() != pb::Verdict::Valid {
            assert_eq!(f.status(), 401, "{name}");
            assert_eq!(
                f.headers()["www-authenticate"].to_str().unwrap(),
                denied(&r),
                "{name}"
            );
            assert_eq!(
                denied(&r),
                format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    v.reason().as_str_name().trim_start_matches("REASON_")
                ),
                "{name}"
            );
        }
    }

    // No credential: 401 without an error code; on an anonymous route the request passes
    // without identity, and forged identity is still removed.
    let forged = [("x-sessiongate-user-id", "user-test-admin")];
    assert_eq!(
        denied(&ask(&app, check(&forged, false, &[])).await.unwrap()),
        "Bearer"
    );
    let anon = [("sessiongate.anonymous", "true")];
    let r = ask(&app, check(&forged, false, &anon)).await.unwrap();
    let (set, removed) = allowed(&r).expect("anonymous route");
    assert!(set.is_empty());
    assert!(removed.contains(&"x-sessiongate-user-id".to_owned()));
    // A bad credential on an anonymous route is still refused: anonymous means "none".
    let bad = [("authorization", "Bearer not.a.jwt")];
    denied(&ask(&app, check(&bad, false, &anon)).await.unwrap());

    // Redis down: the opaque token's Check fails UNAVAILABLE (Envoy's failure_mode_allow
    // decides), never a 401; the JWT still passes.
    redis.kill().await;
    let auth = format!("Bearer {}", live.session_token);
    let e = ask(&app, check(&[("authorization", &auth)], false, &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    let f = forward(&app, "", &[("authorization", &auth)], Some(KEY)).await;
    assert_eq!(f.status(), 503);
    let auth = format!("Bearer {}", live.session_jwt);
    let r = ask(&app, check(&[("authorization", &auth)], false, &[]))
        .await
        .unwrap();
    assert!(allowed(&r).is_some());
    let f = forward(&app, "", &[("authorization", &auth)], Some(KEY)).await;
    assert_eq!(f.status(), 200);
}

#[tokio::test]
async fn forward_auth_answers_with_identity_headers_and_keeps_the_callers_key_apart() {
    let app = Setup::new().caller_key(KEY).spawn().await;
    let s = create(&app).await;
    let auth = format!("Bearer {}", s.session_jwt);
    let f = forward(&app, "", &[("authorization", &auth)], Some(KEY)).await;
    assert_eq!(f.status(), 200);
    let h = f.headers();
    assert_eq!(h["x-sessiongate-user-id"], s.user_id.as_str());
    assert_eq!(h["x-sessiongate-origin"], "new");
    assert_eq!(h["x-sessiongate-provider"], "native");
    // The cookie named by the query, on a POST (any method).
    let cookie = format!("sg_session={}", s.session_token);
    let f = reqwest::Client::builder()
        .timeout(crate::support::CALL_DEADLINE)
        .build()
        .unwrap()
        .post(format!("http://{}/auth?cookie=sg_session", app.http_addr))
        .header("cookie", &cookie)
        .header("x-sessiongate-caller", KEY)
        .header("x-forwarded-method", "POST")
        .header("x-forwarded-uri", "/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(f.status(), 200);
    assert!(
        f.headers()["x-sessiongate-session-jwt"]
            .to_str()
            .unwrap()
            .starts_with("eyJ")
    );
    // Anonymous routes pass without identity; others want a credential.
    let f = forward(&app, "anonymous=true", &[], Some(KEY)).await;
    assert_eq!(f.status(), 200);
    assert!(f.headers().get("x-sessiongate-user-id").is_none());
    let f = forward(&app, "", &[], Some(KEY)).await;
    assert_eq!(
        (
            f.status().as_u16(),
            f.headers()["www-authenticate"].to_str().unwrap()
        ),
        (401, "Bearer")
    );
    // The proxy's key: missing or unknown is the proxy's misconfiguration (500), and the
    // user's credential never stands in for it.
    for caller in [None, Some("not-a-key"), Some(s.session_jwt.as_str())] {
        let f = forward(&app, "", &[("authorization", &auth)], caller).await;
        assert_eq!(f.status(), 500, "{caller:?}");
        assert!(!f.text().await.unwrap().contains(&s.session_jwt));
    }
    // A proxy that appends the client's path and query (Envoy's HTTP ext_authz) must not let
    // the client pick the route's settings: only `/auth` itself answers.
    for path in [
        "/auth/orders?anonymous=true",
        "/auth/?anonymous=true",
        "/auth/x",
    ] {
        let f = reqwest::Client::builder()
            .timeout(crate::support::CALL_DEADLINE)
            .build()
            .unwrap()
            .get(format!("http://{}{path}", app.http_addr))
            .header("x-sessiongate-caller", KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(f.status(), 404, "{path}");
    }
    // A user cannot pass their own key as the caller's: the header is the proxy's.
    let f = forward(
        &app,
        "",
        &[("authorization", &format!("Bearer {KEY}"))],
        Some(KEY),
    )
    .await;
    assert_eq!(f.status(), 401);
}

#[tokio::test]
async fn check_needs_a_caller_key_with_scope_validate() {
    let hash = sessiongate::store::keys::Digest::of(b"issuer-only").to_hex();
    let app = Setup::new()
        .toml(&format!(
            "[[clients]]\nname = \"login\"\nkey_sha256 = \"{hash}\"\nscopes = [\"issue\"]\n"
        ))
        .spawn()
        .await;
    let mut c = AuthorizationClient::new(app.channel.clone());
    let e = c.check(check(&[], false, &[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = c
        .check(bearer(check(&[], false, &[]), "issuer-only"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}

/// A backend that answers every request with the headers it received, as JSON.
async fn echo_backend() -> std::net::SocketAddr {
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let seen: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        axum::Json(seen)
    });
    crate::support::serve_http(app).await
}

/// The nginx configuration a user pastes (README, "nginx"), pointed at this test's
/// sessiongate and backend.
fn nginx_site(sessiongate: std::net::SocketAddr, backend: std::net::SocketAddr) -> String {
    format!(
        r#"
  server {{
    listen {{listen}};
    location = /_sessiongate {{
      internal;
      proxy_pass http://{sessiongate}/auth?cookie=sg_session;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Sessiongate-Caller "{KEY}";
      proxy_set_header X-Forwarded-Method $request_method;
      proxy_set_header X-Forwarded-Uri $request_uri;
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
    location = /_sessiongate_login {{
      internal;
      proxy_pass http://{sessiongate}/auth?cookie=sg_session&flow=login;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Sessiongate-Caller "{KEY}";
      proxy_set_header X-Forwarded-For $remote_addr;
    }}
    location = /login {{
      auth_request /_sessiongate_login;
      auth_request_set $sg_flow $upstream_http_x_sessiongate_flow;
      auth_request_set $sg_cookie $upstream_http_set_cookie;
      add_header Set-Cookie $sg_cookie always;
      proxy_set_header X-Sessiongate-Flow $sg_flow;
      proxy_pass http://{backend};
    }}
    location @sessiongate_failed {{
      if ($sg_status = 503) {{ return 503; }}
      return 500;
    }}
    location / {{
      auth_request /_sessiongate;
      auth_request_set $sg_status $upstream_status;
      error_page 500 = @sessiongate_failed;
      auth_request_set $sg_user_id $upstream_http_x_sessiongate_user_id;
      auth_request_set $sg_session_id $upstream_http_x_sessiongate_session_id;
      auth_request_set $sg_origin $upstream_http_x_sessiongate_origin;
      auth_request_set $sg_provider $upstream_http_x_sessiongate_provider;
      auth_request_set $sg_subject $upstream_http_x_sessiongate_subject;
      auth_request_set $sg_session_jwt $upstream_http_x_sessiongate_session_jwt;
      # Set every identity header, empty when absent: nginx then sends none, so a copy the
      # client forged never reaches the backend.
      proxy_set_header X-Sessiongate-User-Id $sg_user_id;
      proxy_set_header X-Sessiongate-Session-Id $sg_session_id;
      proxy_set_header X-Sessiongate-Origin $sg_origin;
      proxy_set_header X-Sessiongate-Provider $sg_provider;
      proxy_set_header X-Sessiongate-Subject $sg_subject;
      proxy_set_header X-Sessiongate-Session-Jwt $sg_session_jwt;
      auth_request_set $sg_cookie $upstream_http_set_cookie;
      add_header Set-Cookie $sg_cookie always;
      proxy_pass http://{backend};
    }}
  }}"#
    )
    .replace("{{listen}}", "{listen}")
}

#[tokio::test]
async fn a_real_nginx_with_auth_request_protects_a_backend() {
    let mut redis = RedisServer::start().await;
    let app = Setup::new()
        .caller_key(KEY)
        .redis(&redis)
        .toml("[[flows]]\nname = \"login\"\npercentage = 0\nallow_cidrs = [\"127.0.0.0/8\"]\n")
        .spawn()
        .await;
    let backend = echo_backend().await;
    let mut nginx = crate::support::nginx::Nginx::start(&nginx_site(app.http_addr, backend));
    let s = create(&app).await;
    // Bounded: an nginx that refused its configuration leaves the socket queueing forever.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap();
    let get = |auth: Option<String>, cookie: Option<String>| {
        let mut r = client
            .get(nginx.url("/orders"))
            .header("x-sessiongate-user-id", "user-test-admin")
            .header("x-sessiongate-origin", "forged");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        r.send()
    };

    // A valid JWT reaches the backend with its identity, and nothing the client forged.
    let r = get(Some(format!("Bearer {}", s.session_jwt)), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: HashMap<String, String> = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(seen["x-sessiongate-user-id"], s.user_id);
    assert_eq!(seen["x-sessiongate-origin"], "new");
    assert_eq!(
        seen["x-sessiongate-session-id"],
        s.session.as_ref().unwrap().session_id
    );
    assert!(!seen.contains_key("x-sessiongate-session-jwt"));
    assert!(
        !seen.contains_key("x-sessiongate-caller"),
        "the proxy's key stays in the proxy"
    );
    // The session cookie: the same, with the session's fresh JWT.
    let r = get(None, Some(format!("sg_session={}", s.session_token)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: HashMap<String, String> = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(seen["x-sessiongate-user-id"], s.user_id);
    assert!(seen["x-sessiongate-session-jwt"].starts_with("eyJ"));

    // The login page: the flow's decision reaches the backend and its cookie the browser.
    // The client is the address nginx saw (127.0.0.1, on NEW by address), not the
    // X-Forwarded-For it forged.
    let r = client
        .get(nginx.url("/login"))
        .header("x-forwarded-for", "203.0.113.1")
        .header("x-sessiongate-flow", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("__Host-sg_flow="), "{cookie}");
    let seen: HashMap<String, String> = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(seen["x-sessiongate-flow"], "new");
    // No cookie for the browser on a route that sets none.
    let r = get(Some(format!("Bearer {}", s.session_jwt)), None)
        .await
        .unwrap();
    assert!(r.headers().get("set-cookie").is_none());

    // No credential, or a bad one: 401 from nginx, with sessiongate's WWW-Authenticate.
    let r = get(None, None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let r = get(Some("Bearer not.a.jwt".into()), None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );

    // Redis down: the opaque token gets 503 (retry later), never 401; the JWT still passes.
    redis.kill().await;
    let r = get(None, Some(format!("sg_session={}", s.session_token)))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = get(Some(format!("Bearer {}", s.session_jwt)), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    nginx.assert_running();
}

/// A Check as Envoy sends it for a client at `ip`.
fn from_ip(mut req: CheckRequest, ip: &str) -> CheckRequest {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer;
    req.attributes.as_mut().unwrap().source = Some(Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: ip.into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    });
    req
}

#[tokio::test]
async fn a_login_route_resolves_the_flow_at_the_edge_and_keeps_the_browser_sticky() {
    let app = Setup::new()
        .caller_key(KEY)
        .toml(
            "[[flows]]\nname = \"login\"\npercentage = 0\nallow_cidrs = [\"203.0.113.0/24\"]\n\
             [[flows]]\nname = \"checkout\"\npercentage = 100\n",
        )
        .spawn()
        .await;
    let login = [("sessiongate.flow", "login")];

    // No credential at all, not an anonymous route: a login route lets everyone through.
    let r = ask(&app, check(&[], false, &login)).await.unwrap();
    let (set, _) = allowed(&r).expect("a login route passes");
    assert_eq!(set["x-sessiongate-flow"], "legacy");
    assert!(!set.contains_key("x-sessiongate-user-id"));
    let meta = r.dynamic_metadata.clone().unwrap().fields;
    assert!(format!("{:?}", meta["flow"]).contains("legacy"));
    let cookies = cookies_set(&r);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    assert!(cookies[0].starts_with("__Host-sg_flow="), "{}", cookies[0]);
    assert!(cookies[0].contains("HttpOnly") && cookies[0].contains("Secure"));

    // The browser sends its flow cookie back: the same device, so the same decision and the
    // same device id in the cookie renewed.
    let flow_cookie = cookie_pair(&cookies[0]).to_owned();
    let r = ask(&app, check(&[("cookie", &flow_cookie)], false, &login))
        .await
        .unwrap();
    assert_eq!(allowed(&r).unwrap().0["x-sessiongate-flow"], "legacy");
    assert_eq!(cookie_pair(&cookies_set(&r)[0]), flow_cookie);

    // The address Envoy saw is the flow's client address: the office network is on NEW,
    // and that is sticky for the browser from then on.
    let r = ask(
        &app,
        from_ip(
            check(&[("cookie", &flow_cookie)], false, &login),
            "203.0.113.7",
        ),
    )
    .await
    .unwrap();
    assert_eq!(allowed(&r).unwrap().0["x-sessiongate-flow"], "new");
    let sticky = cookie_pair(&cookies_set(&r)[0]).to_owned();
    assert_ne!(sticky, flow_cookie);
    let r = ask(&app, check(&[("cookie", &sticky)], false, &login))
        .await
        .unwrap();
    assert_eq!(allowed(&r).unwrap().0["x-sessiongate-flow"], "new");

    // A forged flow cookie is a new device, never NEW by forgery.
    let forged = format!("{}x", sticky);
    let r = ask(&app, check(&[("cookie", &forged)], false, &login))
        .await
        .unwrap();
    assert_eq!(allowed(&r).unwrap().0["x-sessiongate-flow"], "legacy");

    // A valid session on a login route passes with its identity and the flow; a failed one
    // passes without identity (the user is about to sign in again).
    let s = create(&app).await;
    let auth = format!("Bearer {}", s.session_jwt);
    let r = ask(&app, check(&[("authorization", &auth)], false, &login))
        .await
        .unwrap();
    let (set, _) = allowed(&r).unwrap();
    assert_eq!(set["x-sessiongate-user-id"], s.user_id);
    assert!(set.contains_key("x-sessiongate-flow"));
    let r = ask(
        &app,
        check(&[("authorization", "Bearer not.a.jwt")], false, &login),
    )
    .await
    .unwrap();
    let (set, _) = allowed(&r).unwrap();
    assert!(!set.contains_key("x-sessiongate-user-id"));

    // Another flow has its own cookie; an unknown flow is LEGACY with no cookie.
    let r = ask(&app, check(&[], false, &[("sessiongate.flow", "checkout")]))
        .await
        .unwrap();
    assert_eq!(allowed(&r).unwrap().0["x-sessiongate-flow"], "new");
    assert!(cookies_set(&r)[0].starts_with("__Host-sg_flow-"));
    let r = ask(&app, check(&[], false, &[("sessiongate.flow", "nope")]))
        .await
        .unwrap();
    assert_eq!(allowed(&r).unwrap().0["x-sessiongate-flow"], "legacy");
    assert!(cookies_set(&r).is_empty());

    // The same through forward-auth: the flow in the query, the client in X-Forwarded-For
    // (the last entry, which the proxy appended), the cookie as Set-Cookie.
    let f = forward(
        &app,
        "flow=login",
        &[("x-forwarded-for", "198.51.100.1, 203.0.113.9")],
        Some(KEY),
    )
    .await;
    assert_eq!(f.status(), 200);
    assert_eq!(f.headers()["x-sessiongate-flow"], "new");
    assert!(
        f.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with("__Host-sg_flow=")
    );
    let f = forward(
        &app,
        "flow=login",
        &[("x-forwarded-for", "203.0.113.9, 198.51.100.1")],
        Some(KEY),
    )
    .await;
    assert_eq!(f.headers()["x-sessiongate-flow"], "legacy");
}

#[tokio::test]
async fn route_settings_are_checked_and_need_the_callers_scopes() {
    let validate_only = sessiongate::store::keys::Digest::of(b"validate-only").to_hex();
    let app = Setup::new()
        .toml(&format!(
            "[[flows]]\nname = \"login\"\npercentage = 100\n\
             [[clients]]\nname = \"proxy\"\nkey_sha256 = \"{validate_only}\"\nscopes = [\"validate\"]\n"
        ))
        .spawn()
        .await;
    let c = AuthorizationClient::new(app.channel.clone());
    let ask_as = |ext: &'static [(&'static str, &'static str)]| {
        let mut c = c.clone();
        async move {
            c.check(bearer(check(&[], false, ext), "validate-only"))
                .await
        }
    };
    // A flow or inline migration needs the `flow` or `migrate` scope, refused up front.
    for ext in [
        &[("sessiongate.flow", "login")][..],
        &[
            ("sessiongate.migrate", "inline"),
            ("sessiongate.cookie", "sg"),
        ][..],
    ] {
        let e = ask_as(ext).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{ext:?}: {e:?}");
        assert_eq!(crate::support::reason(&e), "SCOPE_MISSING");
    }
    // A misspelt or malformed setting is an error, never a route quietly without it.
    for ext in [
        &[("sessiongate.cookies", "sg")][..],
        &[("sessiongate.anonymous", "yes")][..],
        &[("sessiongate.migrate", "always")][..],
        // Inline migration with no cookie to put the session in.
        &[
            ("sessiongate.migrate", "inline"),
            ("sessiongate.anonymous", "true"),
        ][..],
    ] {
        let e = ask_as(ext).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{ext:?}: {e:?}");
        assert_eq!(crate::support::reason(&e), "INVALID_ROUTE_SETTING");
    }
    // A cookie list beyond any real route's, as long as the message limit allows, is
    // refused at its ninth name: a proxy's settings never buy a quadratic search. The same
    // through forward-auth's query.
    let many: String = (0..9_000).map(|i| format!("c{i},")).collect();
    let e = c
        .clone()
        .check(bearer(
            check(&[], false, &[("sessiongate.cookie", &many)]),
            "validate-only",
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert_eq!(crate::support::reason(&e), "INVALID_ROUTE_SETTING");
    assert!(e.message().contains("at most 8"), "{e:?}");
    let query: String = (0..9).map(|i| format!("cookie=c{i}&")).collect();
    let f = forward(&app, &query, &[], Some("validate-only")).await;
    assert_eq!(f.status(), 500);
    assert!(f.text().await.unwrap().contains("INVALID_ROUTE_SETTING"));
    // Other filters' context extensions are not ours to judge.
    let r = ask_as(&[("other.setting", "x"), ("sessiongate.anonymous", "true")])
        .await
        .unwrap()
        .into_inner();
    assert!(allowed(&r).is_some());
    // forward-auth: the same, as a 500 that names the fix.
    let f = forward(&app, "flow=login", &[], Some("validate-only")).await;
    assert_eq!(f.status(), 500);
    assert!(f.text().await.unwrap().contains("SCOPE_MISSING"));
    let f = forward(&app, "anonymus=true", &[], Some("validate-only")).await;
    assert_eq!(f.status(), 500);
    assert!(f.text().await.unwrap().contains("INVALID_ROUTE_SETTING"));
}

#[tokio::test]
async fn a_legacy_token_migrates_inline_and_the_browser_moves_to_new() {
    use crate::support::eventually;
    use crate::support::idp::{FakeIdp, UserInfoReply, sign};
    use serde_json::json;
    use sessiongate::keys::KeyKind;

    use crate::migrate::{API, upgrade_toml};
    let idp = FakeIdp::start().await;
    let app = Setup::new()
        .caller_key(KEY)
        .toml(&upgrade_toml(&idp, "token_format = \"jwt\""))
        .spawn()
        .await;
    let legacy = sign(&idp.key(KeyKind::Rs256), json!({}), &idp.claims(API));
    idp.on_userinfo(
        &legacy,
        UserInfoReply::Json(json!({"sub": "auth0|legacy-user-1", "email": "ada@example.com", "email_verified": true})),
    );
    // The NEW cookie first, the legacy provider's after it: once migrated, the NEW one is
    // what the route reads.
    let route = [
        ("sessiongate.cookie", "__Host-sg_session,legacy_at"),
        ("sessiongate.migrate", "inline"),
    ];
    let legacy_cookie = format!("legacy_at={legacy}");
    let r = eventually(std::time::Duration::from_secs(5), || async {
        ask(&app, check(&[("cookie", &legacy_cookie)], false, &route))
            .await
            .ok()
    })
    .await;
    let (set, _) = allowed(&r).expect("a valid legacy token passes");
    assert_eq!(set["x-sessiongate-origin"], "new", "{set:?}");
    assert_eq!(set["x-sessiongate-provider"], "native");
    assert!(set["x-sessiongate-user-id"].starts_with("user-test-"));
    assert!(set["x-sessiongate-session-jwt"].starts_with("eyJ"));
    let cookies = cookies_set(&r);
    assert_eq!(cookies.len(), 1, "{cookies:?}");
    let new_cookie = cookie_pair(&cookies[0]).to_owned();
    assert!(
        new_cookie.starts_with("__Host-sg_session=sgs_"),
        "{new_cookie}"
    );
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Expires="] {
        assert!(cookies[0].contains(attr), "{attr}: {}", cookies[0]);
    }

    // The browser's next request carries both cookies: the NEW session is read, nothing is
    // migrated again.
    let both = format!("{legacy_cookie}; {new_cookie}");
    let r = ask(&app, check(&[("cookie", &both)], false, &route))
        .await
        .unwrap();
    let (again, _) = allowed(&r).unwrap();
    assert_eq!(again["x-sessiongate-user-id"], set["x-sessiongate-user-id"]);
    assert_eq!(
        again["x-sessiongate-session-id"],
        set["x-sessiongate-session-id"]
    );
    assert!(cookies_set(&r).is_empty());
    assert_eq!(idp.userinfo_hits(), 1);

    // A concurrent request with the legacy cookie alone gets the same session (the
    // migration is idempotent), not a second one.
    let r = ask(&app, check(&[("cookie", &legacy_cookie)], false, &route))
        .await
        .unwrap();
    assert_eq!(
        allowed(&r).unwrap().0["x-sessiongate-session-id"],
        set["x-sessiongate-session-id"]
    );
    assert_eq!(cookie_pair(&cookies_set(&r)[0]), new_cookie);

    // A route without inline migration passes the legacy token as LEGACY.
    let r = ask(
        &app,
        check(
            &[("cookie", &legacy_cookie)],
            false,
            &[("sessiongate.cookie", "legacy_at")],
        ),
    )
    .await
    .unwrap();
    assert_eq!(allowed(&r).unwrap().0["x-sessiongate-origin"], "legacy");
    assert!(cookies_set(&r).is_empty());

    // UserInfo down for another user: the legacy token is still valid, so the request passes
    // as LEGACY — a failed migration never costs a user their request.
    let mut claims = idp.claims(API);
    claims["sub"] = json!("auth0|legacy-user-2");
    let other = sign(&idp.key(KeyKind::Rs256), json!({}), &claims);
    idp.on_userinfo(&other, UserInfoReply::Status(503));
    let r = ask(
        &app,
        check(&[("cookie", &format!("legacy_at={other}"))], false, &route),
    )
    .await
    .unwrap();
    let (set, _) = allowed(&r).expect("passes as LEGACY");
    assert_eq!(set["x-sessiongate-origin"], "legacy");
    assert!(cookies_set(&r).is_empty());

    // forward-auth migrates the same way; the cookie comes back as Set-Cookie.
    let f = forward(
        &app,
        "cookie=__Host-sg_session&cookie=legacy_at&migrate=inline",
        &[("cookie", &legacy_cookie)],
        Some(KEY),
    )
    .await;
    assert_eq!(f.status(), 200);
    assert_eq!(f.headers()["x-sessiongate-origin"], "new");
    assert_eq!(
        cookie_pair(f.headers()["set-cookie"].to_str().unwrap()),
        new_cookie
    );
}

#[tokio::test]
async fn configured_header_names_are_what_goes_upstream_and_their_forgeries_are_removed() {
    let app = Setup::new()
        .caller_key(KEY)
        .toml("[edge.headers]\nuser_id = \"x-user-id\"\nsession_id = \"x-session\"\n")
        .spawn()
        .await;
    let s = create(&app).await;
    let auth = format!("Bearer {}", s.session_jwt);
    let sent = [
        ("authorization", auth.as_str()),
        ("X-User-Id", "user-test-admin"),
        ("x-sessiongate-user-id", "user-test-admin"),
    ];
    let r = ask(&app, check(&sent, false, &[])).await.unwrap();
    let (set, mut removed) = allowed(&r).unwrap();
    removed.sort();
    assert_eq!(set["x-user-id"], s.user_id);
    assert_eq!(set["x-session"], s.session.as_ref().unwrap().session_id);
    assert!(!set.contains_key("x-sessiongate-user-id"));
    assert_eq!(set["x-sessiongate-origin"], "new");
    // (Envoy's `headers` is a map: no order.)
    assert_eq!(removed, ["x-sessiongate-user-id", "x-user-id"]);
    // Metadata keys do not move with the header names.
    let meta = r.dynamic_metadata.unwrap().fields;
    assert!(format!("{:?}", meta["user_id"]).contains(&s.user_id));

    let f = forward(&app, "", &sent, Some(KEY)).await;
    assert_eq!(f.status(), 200);
    assert_eq!(f.headers()["x-user-id"], s.user_id.as_str());
}

#[tokio::test]
async fn a_mesh_proxy_known_by_its_spiffe_id_may_check_without_a_key() {
    const GATEWAY: &str =
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
    let app = Setup::new()
        .toml(&format!(
            "[[clients]]\nname = \"istio-ingress\"\nspiffe_id = \"{GATEWAY}\"\nscopes = [\"validate\"]\n"
        ))
        .spawn()
        .await;
    let mut c = AuthorizationClient::new(app.channel.clone());
    let with_xfcc = |xfcc: &str| {
        let mut r = tonic::Request::new(check(&[], false, &[("sessiongate.anonymous", "true")]));
        r.metadata_mut()
            .insert("x-forwarded-client-cert", xfcc.parse().unwrap());
        r
    };
    // What sessiongate's sidecar appends after verifying the gateway's certificate.
    let sidecar = format!(
        "By=spiffe://cluster.local/ns/sessiongate-live/sa/sessiongate;Hash=ab12;URI={GATEWAY}"
    );
    let r = c.check(with_xfcc(&sidecar)).await.unwrap().into_inner();
    assert!(allowed(&r).is_some());
    // Another workload, a forged element before the sidecar's, or no header: refused.
    for xfcc in [
        "By=x;Hash=cd;URI=spiffe://cluster.local/ns/prod/sa/batch".to_owned(),
        format!("URI={GATEWAY},By=x;Hash=cd;URI=spiffe://cluster.local/ns/prod/sa/batch"),
        format!("URI=https://{GATEWAY}"),
    ] {
        let e = c.check(with_xfcc(&xfcc)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{xfcc}");
    }
    let e = c.check(check(&[], false, &[])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // Its scopes only: minting sessions is not among them.
    let e = app
        .session()
        .create_session({
            let mut r = tonic::Request::new(pb::CreateSessionRequest::default());
            r.metadata_mut()
                .insert("x-forwarded-client-cert", sidecar.parse().unwrap());
            r
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn a_proxy_that_sets_no_route_settings_gets_its_clients_own() {
    const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/ingress";
    let app = Setup::new()
        .caller_key(KEY)
        .toml(&format!(
            "[[clients]]\nname = \"istio-ingress\"\nspiffe_id = \"{GATEWAY}\"\nscopes = [\"validate\"]\n\
             edge = {{ cookie = [\"sg_session\"] }}\n"
        ))
        .spawn()
        .await;
    let s = create(&app).await;
    let mut c = AuthorizationClient::new(app.channel.clone());
    let as_gateway = |req: CheckRequest| {
        let mut r = tonic::Request::new(req);
        r.metadata_mut().insert(
            "x-forwarded-client-cert",
            format!("By=spiffe://x;Hash=ab;URI={GATEWAY}")
                .parse()
                .unwrap(),
        );
        r
    };
    let cookie = format!("sg_session={}", s.session_token);
    // No settings in the Check (Istio's CUSTOM action sends none): the client's cookie.
    let r = c
        .check(as_gateway(check(&[("cookie", &cookie)], false, &[])))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        allowed(&r).expect("the cookie's session").0["x-sessiongate-user-id"],
        s.user_id
    );
    // Settings in the Check replace the client's altogether.
    let r = c
        .check(as_gateway(check(
            &[("cookie", &cookie)],
            false,
            &[("sessiongate.anonymous", "true")],
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(allowed(&r).unwrap().0.is_empty(), "the cookie is not read");
    // Another caller does not get them.
    let r = ask(&app, check(&[("cookie", &cookie)], false, &[]))
        .await
        .unwrap();
    assert_eq!(denied(&r), "Bearer");
}
