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
    let mut r = reqwest::Client::new().get(format!("http://{}/auth?{query}", app.http_addr));
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
    let f = reqwest::Client::new()
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
        let f = reqwest::Client::new()
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let seen: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        axum::Json(seen)
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
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
      proxy_pass http://{backend};
    }}
  }}"#
    )
    .replace("{{listen}}", "{listen}")
}

#[tokio::test]
async fn a_real_nginx_with_auth_request_protects_a_backend() {
    let mut redis = RedisServer::start().await;
    let app = Setup::new().caller_key(KEY).redis(&redis).spawn().await;
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
