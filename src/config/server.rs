//! `[server]`: the listening addresses, message and token size limits, the drain, the
//! upstream proxy.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Check, ENV_GRPC_ADDR, ENV_HTTP_ADDR, Secret, Vars};

pub const DEFAULT_GRPC_ADDR: &str = "0.0.0.0:50051";
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";
const DEFAULT_MAX_TOKEN_BYTES: u32 = 8 * 1024;
const DEFAULT_MAX_MESSAGE_BYTES: u32 = 64 * 1024;
const DEFAULT_DRAIN_GRACE_SECONDS: u32 = 20;
const DEFAULT_HANDSHAKE_TIMEOUT_SECONDS: u32 = 5;
const DEFAULT_MAX_CONNECTION_IDLE_SECONDS: u32 = 300;
const DEFAULT_MAX_CONNECTION_AGE_SECONDS: u32 = 300;
const DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS: u32 = 30;

#[derive(Debug, Clone, Serialize)]
pub struct ServerConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Tokens larger than this are INVALID/TOO_LARGE without being decoded.
    pub max_token_bytes: usize,
    /// Largest gRPC message accepted (64 KiB by default).
    pub max_message_bytes: usize,
    /// How long in-flight calls may take to finish after SIGTERM.
    pub drain_grace: Duration,
    /// The proxy every upstream call (JWKS, discovery, UserInfo) goes through, if any. Never
    /// taken from `HTTP(S)_PROXY`: a proxy sees the bearer tokens sent to UserInfo, so it is
    /// configured on purpose or not at all. A secret: it may carry credentials.
    pub upstream_proxy: Option<Secret>,
    /// A connection that has not opened HTTP (HTTP/2's preface, an HTTP/1.1 request's
    /// headers) this long after it was accepted is closed.
    pub handshake_timeout: Duration,
    /// A connection without a call in flight this long is retired (GOAWAY).
    pub max_connection_idle: Duration,
    /// Every connection is retired (GOAWAY) at this age, ±10 %, so that new replicas receive
    /// traffic; calls in flight get `max_connection_age_grace` to finish.
    pub max_connection_age: Duration,
    pub max_connection_age_grace: Duration,
    /// The most connections open at once, both ports together; `None`: below the process's
    /// file-descriptor limit.
    pub max_connections: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    grpc_addr: Option<String>,
    http_addr: Option<String>,
    max_token_bytes: Option<u32>,
    max_message_bytes: Option<u32>,
    drain_grace_seconds: Option<u32>,
    upstream_proxy: Option<String>,
    handshake_timeout_seconds: Option<u32>,
    max_connection_idle_seconds: Option<u32>,
    max_connection_age_seconds: Option<u32>,
    max_connection_age_grace_seconds: Option<u32>,
    max_connections: Option<u32>,
}

pub(super) fn build(c: &mut Check, vars: &dyn Vars, raw: RawServer) -> ServerConfig {
    let grpc_addr = addr(
        c,
        vars,
        ENV_GRPC_ADDR,
        "server.grpc_addr",
        raw.grpc_addr,
        DEFAULT_GRPC_ADDR,
    );
    let http_addr = addr(
        c,
        vars,
        ENV_HTTP_ADDR,
        "server.http_addr",
        raw.http_addr,
        DEFAULT_HTTP_ADDR,
    );
    if grpc_addr == http_addr && grpc_addr.port() != 0 {
        c.fail("server.http_addr", "must differ from server.grpc_addr");
    }
    let max_token_bytes = raw.max_token_bytes.unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    c.range("server.max_token_bytes", max_token_bytes, 512..=65_536);
    let upstream_proxy = raw.upstream_proxy;
    if let Some(p) = &upstream_proxy
        && !(url::Url::parse(p)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            && reqwest::Proxy::all(p.as_str()).is_ok())
    {
        c.fail(
            "server.upstream_proxy",
            "must be a proxy URL: http:// or https:// with a host",
        );
    }
    let max_message_bytes = raw.max_message_bytes.unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    if !(4_096..=4 * 1024 * 1024).contains(&max_message_bytes) {
        c.fail(
            "server.max_message_bytes",
            format!("{max_message_bytes} is out of range 4096..=4194304"),
        );
    } else if max_message_bytes < max_token_bytes + 1024 {
        c.fail(
            "server.max_message_bytes",
            "must exceed server.max_token_bytes by at least 1024",
        );
    }
    let drain = raw
        .drain_grace_seconds
        .unwrap_or(DEFAULT_DRAIN_GRACE_SECONDS);
    if drain > 300 {
        c.fail(
            "server.drain_grace_seconds",
            format!("{drain} is more than 300"),
        );
    }

    let mut seconds = |key: &str, value: Option<u32>, default: u32, range| {
        let v = value.unwrap_or(default);
        c.range(key, v, range);
        Duration::from_secs(v.into())
    };
    let handshake_timeout = seconds(
        "server.handshake_timeout_seconds",
        raw.handshake_timeout_seconds,
        DEFAULT_HANDSHAKE_TIMEOUT_SECONDS,
        1..=60,
    );
    let max_connection_idle = seconds(
        "server.max_connection_idle_seconds",
        raw.max_connection_idle_seconds,
        DEFAULT_MAX_CONNECTION_IDLE_SECONDS,
        1..=86_400,
    );
    let max_connection_age = seconds(
        "server.max_connection_age_seconds",
        raw.max_connection_age_seconds,
        DEFAULT_MAX_CONNECTION_AGE_SECONDS,
        1..=86_400,
    );
    let max_connection_age_grace = seconds(
        "server.max_connection_age_grace_seconds",
        raw.max_connection_age_grace_seconds,
        DEFAULT_MAX_CONNECTION_AGE_GRACE_SECONDS,
        0..=3_600,
    );
    if let Some(n) = raw.max_connections {
        c.range("server.max_connections", n, 1..=1_000_000);
    }

    ServerConfig {
        grpc_addr,
        http_addr,
        max_token_bytes: max_token_bytes as usize,
        max_message_bytes: max_message_bytes as usize,
        drain_grace: Duration::from_secs(drain.into()),
        upstream_proxy: upstream_proxy.map(Secret::new),
        handshake_timeout,
        max_connection_idle,
        max_connection_age,
        max_connection_age_grace,
        max_connections: raw.max_connections,
    }
}

fn addr(
    c: &mut Check,
    vars: &dyn Vars,
    var: &str,
    key: &str,
    file: Option<String>,
    default: &str,
) -> SocketAddr {
    let (origin, value) = match vars.get(var) {
        Some(v) => (Some(format!("environment variable {var}")), v),
        None => (None, file.unwrap_or_else(|| default.into())),
    };
    value.parse().unwrap_or_else(|_| {
        let msg = format!("`{value}` is not an address like 0.0.0.0:50051");
        match origin {
            Some(o) => c.fail_at(&o, var, msg),
            None => c.fail(key, msg),
        }
        default.parse().expect("default address parses")
    })
}
