//! Test support: real redis-server processes, the app on `127.0.0.1:0`, typed clients.
#![allow(dead_code)] // shared helpers: not every test binary module uses each one

pub mod binary;
pub mod idp;
pub mod nginx;
pub mod proxy;
pub mod receiver;
pub mod redis;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use sessiongate::app::AppError;
pub use sessiongate::clock::ManualClock;
use sessiongate::grpc::pb::rollout_admin_service_client::RolloutAdminServiceClient;
use sessiongate::grpc::pb::session_gate_service_client::SessionGateServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

pub use self::redis::{RedisCluster, RedisServer, signal};

/// A running sessiongate, stopped (and drained) on drop or by [`TestApp::stop`].
pub struct TestApp {
    /// The caller key the helpers send, when the app has one (see [`Setup::caller_key`]).
    pub key: Option<String>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// The app's store, to read what the services wrote.
    pub store: Arc<dyn sessiongate::store::Store>,
    pub keys: sessiongate::store::keys::Keys,
    pub channel: Channel,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AppError>>>,
    _dir: tempfile::TempDir,
}

/// How to configure a test app: TOML text and environment variables (never the process
/// environment).
#[derive(Default, Clone)]
pub struct Setup {
    pub toml: String,
    pub vars: HashMap<String, String>,
    pub clock: Option<ManualClock>,
    pub key: Option<String>,
}

impl Setup {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn toml(mut self, toml: &str) -> Self {
        self.toml = toml.to_owned();
        self
    }

    pub fn var(mut self, k: &str, v: &str) -> Self {
        self.vars.insert(k.into(), v.into());
        self
    }

    /// Runs the app on a clock the test moves.
    pub fn clock(mut self, clock: &ManualClock) -> Self {
        self.clock = Some(clock.clone());
        self
    }

    /// Configures a caller key with every scope (no longer open mode), which the app's
    /// helpers send. For tests that need a scope that is never open (`revoke`).
    pub fn caller_key(mut self, key: &str) -> Self {
        self.key = Some(key.to_owned());
        self
    }

    pub fn redis(self, r: &RedisServer) -> Self {
        self.var("REDIS_URL", &r.url())
    }

    pub async fn spawn(self) -> TestApp {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sessiongate.toml");
        let mut toml = self.toml.clone();
        if let Some(key) = &self.key {
            toml.push_str(&format!(
                "\n[[clients]]\nname = \"test\"\nkey_sha256 = \"{}\"\n\
                 scopes = [\"validate\", \"migrate\", \"flow\", \"issue\", \"revoke\", \"admin\"]\n",
                sha(key)
            ));
        }
        std::fs::write(&path, &toml).expect("write config");
        let mut vars = self.vars;
        vars.entry("SESSIONGATE_GRPC_ADDR".into())
            .or_insert("127.0.0.1:0".into());
        vars.entry("SESSIONGATE_HTTP_ADDR".into())
            .or_insert("127.0.0.1:0".into());
        let cfg =
            sessiongate::config::load(&vars, dir.path(), Some(&path)).expect("valid test config");
        let cfg_env = cfg.env;
        let app = match self.clock {
            Some(c) => sessiongate::App::build_with_clock(cfg, Arc::new(c)).await,
            None => sessiongate::App::build(cfg).await,
        }
        .expect("app builds");
        let (grpc_addr, http_addr) = (app.grpc_addr(), app.http_addr());
        let store = app.store().clone();
        let keys = sessiongate::store::keys::Keys::new(cfg_env);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        // The listener is bound already: connecting needs no waiting.
        let channel = Endpoint::from_shared(format!("http://{grpc_addr}"))
            .expect("endpoint")
            // Every call has a deadline: a stall fails the test instead of hanging CI.
            .timeout(CALL_DEADLINE)
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .expect("connect to the app");
        TestApp {
            key: self.key,
            grpc_addr,
            http_addr,
            store,
            keys,
            channel,
            stop: Some(stop),
            task: Some(task),
            _dir: dir,
        }
    }
}

/// The app with built-in defaults (embedded store, open test mode).
pub async fn spawn_app() -> TestApp {
    Setup::new().spawn().await
}

impl TestApp {
    pub fn session(&self) -> SessionGateServiceClient<Channel> {
        SessionGateServiceClient::new(self.channel.clone())
    }

    /// ValidateSession of `token` with nothing else set (open test mode: no caller key).
    pub async fn validate(
        &self,
        token: &str,
    ) -> Result<sessiongate::grpc::pb::ValidateSessionResponse, tonic::Status> {
        self.session()
            .validate_session(self.authed(sessiongate::grpc::pb::ValidateSessionRequest {
                token: token.into(),
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner())
    }

    /// `msg` with the app's caller key, if it has one.
    pub fn authed<T>(&self, msg: T) -> tonic::Request<T> {
        match &self.key {
            Some(key) => bearer(msg, key),
            None => tonic::Request::new(msg),
        }
    }

    /// MigrateSession of `legacy_token` with nothing else set (open test mode).
    pub async fn migrate(
        &self,
        legacy_token: &str,
    ) -> Result<sessiongate::grpc::pb::MigrateSessionResponse, tonic::Status> {
        self.session()
            .migrate_session(self.authed(sessiongate::grpc::pb::MigrateSessionRequest {
                legacy_token: legacy_token.into(),
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner())
    }

    pub fn admin(&self) -> RolloutAdminServiceClient<Channel> {
        RolloutAdminServiceClient::new(self.channel.clone())
    }

    pub fn health(&self) -> tonic_health::pb::health_client::HealthClient<Channel> {
        tonic_health::pb::health_client::HealthClient::new(self.channel.clone())
    }

    /// Signals shutdown and waits for the drain to finish.
    pub async fn stop(mut self) -> Result<(), AppError> {
        let _ = self.stop.take().map(|s| s.send(()));
        self.task.take().expect("running").await.expect("app task")
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http_addr, path).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
    }
}

/// A minimal HTTP/1.1 GET over a fresh TCP connection: enough for /metrics and the JWKS,
/// without pulling an HTTP client into the test build.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let buf = tokio::time::timeout(CALL_DEADLINE, async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.expect("read");
        buf
    })
    .await
    .expect("an HTTP answer within the test's deadline");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The hex SHA-256 of a caller key, as `[[clients]] key_sha256` wants it.
pub fn sha(key: &str) -> String {
    sessiongate::store::keys::Digest::of(key.as_bytes()).to_hex()
}

/// A ValidateSession request for `token` alone, as caller `key`.
pub fn validate_as(
    token: impl Into<String>,
    key: &str,
) -> tonic::Request<sessiongate::grpc::pb::ValidateSessionRequest> {
    bearer(
        sessiongate::grpc::pb::ValidateSessionRequest {
            token: token.into(),
            ..Default::default()
        },
        key,
    )
}

/// CreateSession of a new, anonymous user with `key`.
pub async fn new_user_session(
    api: &mut SessionGateServiceClient<Channel>,
    key: &str,
) -> sessiongate::grpc::pb::CreateSessionResponse {
    api.create_session(new_user_request(key))
        .await
        .expect("CreateSession")
        .into_inner()
}

/// Serves `app` on a free loopback port until the test ends; returns where.
pub async fn serve_http(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// A CreateSession request for a new, anonymous user, as caller `key`.
pub fn new_user_request(key: &str) -> tonic::Request<sessiongate::grpc::pb::CreateSessionRequest> {
    use sessiongate::grpc::pb;
    bearer(
        pb::CreateSessionRequest {
            who: Some(pb::create_session_request::Who::NewUser(
                pb::NewUser::default(),
            )),
            ..Default::default()
        },
        key,
    )
}

/// `msg` with `authorization: Bearer <key>`.
pub fn bearer<T>(msg: T, key: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    r
}

/// The longest any test's call may take (the server bounds its own calls at 30 s).
pub const CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(40);

/// The reason in a status' `google.rpc.ErrorInfo`.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_default()
}

/// Retries `check` until it returns `Some` or `within` has passed. For conditions that
/// become true through a process we do not control (a reconnect): each attempt is a real
/// request, the pause between attempts is backoff, not synchronisation.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = std::time::Duration::from_millis(10);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(200));
    }
}
