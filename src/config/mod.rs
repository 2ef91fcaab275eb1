//! Typed configuration from `sessiongate.toml`, `.env-<env>` and the process environment,
//! validated once at start-up (every key is in the README's "Configuration").
//!
//! Precedence, highest first: real environment variables, the `.env-<env>` file of the chosen
//! env (in the working directory), the TOML file at `SESSIONGATE_CONFIG`, built-in defaults.
//! With no file at all the service starts in `test` with an embedded store and no providers,
//! which is what the quick start runs.
//!
//! Everything that reads the environment goes through [`Vars`], so tests feed a map and never
//! call `std::env::set_var` (linkerd's testable config seam). Unknown keys are refused: a typo
//! must never silently fall back to a default.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod flows;
pub mod unleash;
pub use flows::{DEFAULT_COOKIE_NAME, FlowConfig, FlowCookieConfig, FlowRules, Stickiness};
use flows::{RawFlow, RawFlowCookie};

// === Environment variable names (contract) ===

pub const ENV_ENV: &str = "SESSIONGATE_ENV";
pub const ENV_CONFIG: &str = "SESSIONGATE_CONFIG";
pub const ENV_GRPC_ADDR: &str = "SESSIONGATE_GRPC_ADDR";
pub const ENV_HTTP_ADDR: &str = "SESSIONGATE_HTTP_ADDR";
pub const ENV_REDIS_URL: &str = "REDIS_URL";
pub const ENV_LOG_FORMAT: &str = "SESSIONGATE_LOG_FORMAT";

/// A source of environment variables: the process, or a map in tests.
pub trait Vars {
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl Vars for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl<K: std::borrow::Borrow<str> + Eq + std::hash::Hash, V: AsRef<str>> Vars for HashMap<K, V> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).map(|v| v.as_ref().to_owned())
    }
}

/// `.env-<env>` values under the real environment: real variables win.
struct Layered<'a> {
    top: &'a dyn Vars,
    dotenv: HashMap<String, String>,
}

impl Vars for Layered<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.top
            .get(name)
            .or_else(|| self.dotenv.get(name).cloned())
    }
}

// === Errors ===

/// One thing wrong with the configuration: where, which key, what and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file or variable the value came from.
    pub origin: String,
    /// The key, as a dotted path (`server.grpc_addr`, `providers[1].issuer`).
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: `{}`: {}", self.origin, self.key, self.message)
    }
}

/// Every problem found, reported together so one edit can fix them all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn one(origin: impl Into<String>, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            problems: vec![Problem {
                origin: origin.into(),
                key: key.into(),
                message: message.into(),
            }],
        }
    }
}

// === Secrets ===

/// A secret string whose `Debug`, `Display` and `Serialize` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

// === The typed configuration ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Env {
    Test,
    Live,
}

impl Env {
    pub fn as_str(self) -> &'static str {
        match self {
            Env::Test => "test",
            Env::Live => "live",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "test" => Some(Env::Test),
            "live" => Some(Env::Live),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// The validated configuration the service runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub env: Env,
    /// Where the file part came from (`None`: built-in defaults).
    pub file: Option<PathBuf>,
    /// The `.env-<env>` file that was read, if any.
    pub dotenv_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub telemetry: TelemetryConfig,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub native: NativeConfig,
    pub providers: Vec<ProviderConfig>,
    pub flows: Vec<FlowConfig>,
    pub unleash_features_file: Option<PathBuf>,
    pub flow_cookie: FlowCookieConfig,
    /// Surprises found in the flows (an Unleash export's edge rules), logged at start.
    pub flow_warnings: Vec<String>,
    pub clients: Vec<ClientConfig>,
    pub migration: MigrationConfig,
}

/// OpenTelemetry export, from the standard `OTEL_*` variables.
#[derive(Debug, Clone, Serialize)]
pub struct TelemetryConfig {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`: spans go there
    /// over OTLP/gRPC. `None`: no export.
    pub otlp_endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME` (default `sessiongate`).
    pub service_name: String,
}

/// MigrateSession's rate limits (fixed one-minute windows, shared by replicas through the
/// store). The per-identity limit protects the legacy provider's own UserInfo limit (Auth0:
/// 5 per minute per user).
#[derive(Debug, Clone, Serialize)]
pub struct MigrationConfig {
    pub per_caller_per_minute: u32,
    pub per_identity_per_minute: u32,
}

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
}

#[derive(Debug, Clone, Serialize)]
pub struct StoreConfig {
    /// `None`: the embedded in-memory store. In cluster mode, comma-separated seed nodes.
    pub redis_url: Option<Secret>,
    /// `redis.cluster`: `redis_url` names the seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// Upper bound on any one store call, reconnects included: a down Redis answers
    /// `UNAVAILABLE` within this, never hangs a request.
    pub command_timeout: Duration,
    pub connect_timeout: Duration,
    /// How often each replica reloads revocations and rollout overrides in any case: a
    /// message lost on the invalidation channel is caught within this.
    pub resync_every: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct NativeConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwt_ttl: Duration,
    pub session_duration_minutes: u32,
    pub leeway: Duration,
    /// How long after its `exp` an expired session_jwt may still be exchanged for a fresh one
    /// (while its session is active).
    pub refresh_window: Duration,
    /// No session lives longer than this from `started_at`, however often it is extended.
    pub absolute_lifetime_minutes: u32,
    /// PEM or JWK files, or `env:NAME` secrets; the first signs, all are published.
    pub signing_keys: Vec<KeySource>,
}

/// Where a signing key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A PEM or JWK file (e.g. a mounted Kubernetes Secret).
    File(PathBuf),
    /// The PEM or JWK text of an environment variable (`env:NAME` in the file).
    Env { var: String, value: Secret },
}

impl Serialize for KeySource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            KeySource::File(p) => s.serialize_str(&p.display().to_string()),
            KeySource::Env { var, .. } => s.serialize_str(&format!("env:{var}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Legacy,
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    Jwt,
    Opaque,
    Both,
}

/// The characters a provider's opaque tokens are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpaqueAlphabet {
    /// Any visible ASCII character (the default: nothing narrower is assumed).
    VisibleAscii,
    /// `A–Z a–z 0–9 - _`.
    Base64url,
    /// `A–Z a–z 0–9 + / =`.
    Base64,
    /// `0–9 a–f A–F`.
    Hex,
    /// `A–Z a–z 0–9`.
    Alphanumeric,
}

impl OpaqueAlphabet {
    fn allows(self, b: u8) -> bool {
        match self {
            OpaqueAlphabet::VisibleAscii => (0x21..0x7f).contains(&b),
            OpaqueAlphabet::Base64url => b.is_ascii_alphanumeric() || b == b'-' || b == b'_',
            OpaqueAlphabet::Base64 => {
                b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='
            }
            OpaqueAlphabet::Hex => b.is_ascii_hexdigit(),
            OpaqueAlphabet::Alphanumeric => b.is_ascii_alphanumeric(),
        }
    }
}

/// What a provider's opaque tokens look like, checked before any of them is sent upstream:
/// junk that cannot be a token of this provider costs no UserInfo call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpaqueShape {
    pub prefix: String,
    pub min_length: usize,
    pub max_length: usize,
    pub alphabet: OpaqueAlphabet,
}

impl OpaqueShape {
    pub fn accepts(&self, token: &str) -> bool {
        (self.min_length..=self.max_length).contains(&token.len())
            && token.starts_with(&self.prefix)
            && token.bytes().all(|b| self.alphabet.allows(b))
    }
}

/// A provider's budget of upstream calls (UserInfo), per replica: a token bucket refilled at
/// `per_second`, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UpstreamBudget {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    Accept,
    Upgrade,
    Reject,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    pub issuer: String,
    pub jwks_url: Option<url::Url>,
    pub audiences: Vec<String>,
    pub algorithms: Vec<String>,
    pub userinfo_url: Option<url::Url>,
    pub token_format: TokenFormat,
    pub policy: Policy,
    pub allowed_client_ids: Vec<String>,
    pub link_verified_email: bool,
    /// Longest `exp - iat` accepted (also refuses `exp` written in milliseconds).
    pub max_token_lifetime: Duration,
    /// Bound on one UserInfo call.
    pub userinfo_timeout: Duration,
    /// UserInfo calls this replica may make, whatever asks for them.
    pub userinfo_budget: UpstreamBudget,
    /// What this provider's opaque tokens look like.
    pub opaque_shape: OpaqueShape,
}

/// The scopes a caller key can hold, one per RPC family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Validate,
    Migrate,
    Flow,
    Issue,
    Revoke,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Validate => "validate",
            Scope::Migrate => "migrate",
            Scope::Flow => "flow",
            Scope::Issue => "issue",
            Scope::Revoke => "revoke",
            Scope::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClientConfig {
    pub name: String,
    /// SHA-256 of the API key; the key itself is never configured.
    #[serde(serialize_with = "hex_serialize")]
    pub key_sha256: [u8; 32],
    pub scopes: BTreeSet<Scope>,
}

fn hex_serialize<S: serde::Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

// === The file format ===

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    env: Option<Env>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    redis: RawRedis,
    #[serde(default)]
    native: RawNative,
    #[serde(default)]
    providers: Vec<RawProvider>,
    #[serde(default)]
    flows: Vec<RawFlow>,
    unleash_features_file: Option<PathBuf>,
    #[serde(default)]
    flow_cookie: RawFlowCookie,
    #[serde(default)]
    clients: Vec<RawClient>,
    #[serde(default)]
    migration: RawMigration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMigration {
    per_caller_per_minute: Option<u32>,
    per_identity_per_minute: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    grpc_addr: Option<String>,
    http_addr: Option<String>,
    max_token_bytes: Option<u32>,
    max_message_bytes: Option<u32>,
    drain_grace_seconds: Option<u32>,
    upstream_proxy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    cluster: Option<bool>,
    command_timeout_ms: Option<u32>,
    connect_timeout_ms: Option<u32>,
    resync_seconds: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNative {
    issuer: Option<String>,
    audiences: Option<Vec<String>>,
    jwt_ttl_seconds: Option<u32>,
    session_duration_minutes: Option<u32>,
    leeway_seconds: Option<u32>,
    refresh_window_seconds: Option<u32>,
    absolute_lifetime_minutes: Option<u32>,
    #[serde(default)]
    signing_keys: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    name: String,
    kind: ProviderKind,
    issuer: String,
    jwks_url: Option<String>,
    #[serde(default)]
    audiences: Vec<String>,
    algorithms: Option<Vec<String>>,
    userinfo_url: Option<String>,
    token_format: Option<TokenFormat>,
    policy: Option<Policy>,
    #[serde(default)]
    allowed_client_ids: Vec<String>,
    #[serde(default)]
    link_verified_email: bool,
    max_token_lifetime_seconds: Option<u32>,
    userinfo_timeout_ms: Option<u32>,
    userinfo_budget_per_second: Option<u32>,
    userinfo_budget_burst: Option<u32>,
    #[serde(default)]
    opaque_token_prefix: String,
    opaque_token_min_length: Option<u32>,
    opaque_token_max_length: Option<u32>,
    opaque_token_alphabet: Option<OpaqueAlphabet>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    name: String,
    key_sha256: String,
    scopes: Vec<Scope>,
}

// === Defaults ===

pub const DEFAULT_GRPC_ADDR: &str = "0.0.0.0:50051";
pub const DEFAULT_HTTP_ADDR: &str = "0.0.0.0:8080";
const DEFAULT_MAX_TOKEN_BYTES: u32 = 8 * 1024;
const DEFAULT_MAX_MESSAGE_BYTES: u32 = 64 * 1024;
const DEFAULT_DRAIN_GRACE_SECONDS: u32 = 20;
const DEFAULT_COMMAND_TIMEOUT_MS: u32 = 500;
const DEFAULT_CONNECT_TIMEOUT_MS: u32 = 250;
const DEFAULT_RESYNC_SECONDS: u32 = 30;
const DEFAULT_JWT_TTL_SECONDS: u32 = 300;
const DEFAULT_SESSION_MINUTES: u32 = 60;
const DEFAULT_LEEWAY_SECONDS: u32 = 30;
/// Session length bounds: 5 minutes to one year (366 days).
pub const SESSION_MINUTES_MIN: u32 = 5;
pub const SESSION_MINUTES_MAX: u32 = 527_040;
/// Algorithms a provider may allow. HMAC is absent on purpose: a shared secret cannot be
/// published in a JWKS, and HS* with a public key is the classic confusion attack.
pub const ASYMMETRIC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];
// === Loading ===

/// Loads the configuration the way `sessiongate serve` does: the file named by
/// `SESSIONGATE_CONFIG` (or `file`, which wins), the `.env-<env>` file in `cwd`, the
/// environment in `vars`.
pub fn load(vars: &dyn Vars, cwd: &Path, file: Option<&Path>) -> Result<Config, ConfigError> {
    let explicit_file = file
        .map(Path::to_path_buf)
        .or_else(|| vars.get(ENV_CONFIG).map(PathBuf::from));
    let mut raw_file = match &explicit_file {
        Some(path) => Some((path.clone(), read_file(path)?)),
        None => None,
    };

    // Which env? SESSIONGATE_ENV wins over the file's `env`; the default is test.
    let env = match vars.get(ENV_ENV) {
        Some(v) => Env::parse(&v).ok_or_else(|| {
            ConfigError::one(
                format!("environment variable {ENV_ENV}"),
                ENV_ENV,
                format!("`{v}` is not an env; use `test` or `live`"),
            )
        })?,
        None => raw_file
            .as_ref()
            .and_then(|(_, f)| f.env)
            .unwrap_or(Env::Test),
    };

    let dotenv_path = cwd.join(format!(".env-{}", env.as_str()));
    let dotenv = read_dotenv(&dotenv_path)?;
    if let Some(v) = dotenv.get(ENV_ENV)
        && Env::parse(v) != Some(env)
    {
        return Err(ConfigError::one(
            dotenv_path.display().to_string(),
            ENV_ENV,
            format!(
                "says `{v}` but this is the `.env-{}` file: remove the line",
                env.as_str()
            ),
        ));
    }
    let dotenv_file = (!dotenv.is_empty() || dotenv_path.is_file()).then_some(dotenv_path.clone());
    let vars = Layered { top: vars, dotenv };

    // A config file named only in `.env-<env>`.
    if raw_file.is_none()
        && let Some(path) = vars.get(ENV_CONFIG)
    {
        let path = PathBuf::from(path);
        let f = read_file(&path)?;
        if let Some(file_env) = f.env
            && file_env != env
        {
            return Err(ConfigError::one(
                path.display().to_string(),
                "env",
                format!(
                    "the file is for `{}` but it was named by `.env-{}`",
                    file_env.as_str(),
                    env.as_str()
                ),
            ));
        }
        raw_file = Some((path, f));
    }

    let (file, raw) = match raw_file {
        Some((p, f)) => (Some(p), f),
        None => (None, RawFile::default()),
    };
    let mut cfg = build(env, file, raw, &vars)?;
    cfg.dotenv_file = dotenv_file;
    Ok(cfg)
}

fn read_file(path: &Path) -> Result<RawFile, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::one(&origin, "(file)", format!("cannot read the file: {e}")))?;
    parse_toml(&origin, &text)
}

/// Parses the TOML text of a config file, naming the offending key on error.
fn parse_toml(origin: &str, text: &str) -> Result<RawFile, ConfigError> {
    let de = toml::de::Deserializer::parse(text)
        .map_err(|e| ConfigError::one(origin, "(syntax)", one_line(&e.to_string())))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "(top level)".into()
        } else {
            key
        };
        ConfigError::one(origin, key, one_line(&e.into_inner().to_string()))
    })
}

/// toml's messages carry a multi-line source excerpt; keep the gist on one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| {
            let excerpt = l.trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ');
            !l.is_empty() && !excerpt.starts_with('|') && !l.chars().all(|c| c == '^')
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_dotenv(path: &Path) -> Result<HashMap<String, String>, ConfigError> {
    if !path.is_file() {
        return Ok(HashMap::new());
    }
    let origin = path.display().to_string();
    let iter = dotenvy::from_path_iter(path)
        .map_err(|e| ConfigError::one(&origin, "(file)", format!("cannot read: {e}")))?;
    let mut out = HashMap::new();
    for item in iter {
        let (k, v) = item.map_err(|e| ConfigError::one(&origin, "(syntax)", e.to_string()))?;
        out.insert(k, v);
    }
    Ok(out)
}

// === Validation ===

/// Collects problems instead of stopping at the first.
struct Check {
    origin: String,
    problems: Vec<Problem>,
}

impl Check {
    fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: self.origin.clone(),
            key: key.into(),
            message: message.into(),
        });
    }

    fn fail_at(&mut self, origin: &str, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            origin: origin.into(),
            key: key.into(),
            message: message.into(),
        });
    }
}

fn build(
    env: Env,
    file: Option<PathBuf>,
    raw: RawFile,
    vars: &dyn Vars,
) -> Result<Config, ConfigError> {
    let origin = file
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    let mut c = Check {
        origin,
        problems: Vec::new(),
    };

    // --- server ---
    let grpc_addr = addr(
        &mut c,
        vars,
        ENV_GRPC_ADDR,
        "server.grpc_addr",
        raw.server.grpc_addr,
        DEFAULT_GRPC_ADDR,
    );
    let http_addr = addr(
        &mut c,
        vars,
        ENV_HTTP_ADDR,
        "server.http_addr",
        raw.server.http_addr,
        DEFAULT_HTTP_ADDR,
    );
    if grpc_addr == http_addr && grpc_addr.port() != 0 {
        c.fail("server.http_addr", "must differ from server.grpc_addr");
    }
    let max_token_bytes = raw
        .server
        .max_token_bytes
        .unwrap_or(DEFAULT_MAX_TOKEN_BYTES);
    if !(512..=65_536).contains(&max_token_bytes) {
        c.fail(
            "server.max_token_bytes",
            format!("{max_token_bytes} is out of range 512..=65536"),
        );
    }
    let upstream_proxy = raw.server.upstream_proxy;
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
    let max_message_bytes = raw
        .server
        .max_message_bytes
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
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
        .server
        .drain_grace_seconds
        .unwrap_or(DEFAULT_DRAIN_GRACE_SECONDS);
    if drain > 300 {
        c.fail(
            "server.drain_grace_seconds",
            format!("{drain} is more than 300"),
        );
    }

    // --- store ---
    let redis_url = vars.get(ENV_REDIS_URL).filter(|s| !s.is_empty());
    let cluster = raw.redis.cluster.unwrap_or(false);
    if let Some(u) = &redis_url {
        let urls: Vec<&str> = u.split(',').map(str::trim).collect();
        // Never echo the URL: it may carry a password.
        let at = format!("environment variable {ENV_REDIS_URL}");
        if urls.iter().any(|u| {
            !(u.starts_with("redis://")
                || u.starts_with("rediss://")
                || u.starts_with("redis+unix://")
                || u.starts_with("unix://"))
        }) {
            c.fail_at(
                &at,
                ENV_REDIS_URL,
                "must start with redis://, rediss:// or unix:// (in cluster mode: each comma-separated node)",
            );
        } else if urls.len() > 1 && !cluster {
            c.fail_at(
                &at,
                ENV_REDIS_URL,
                "lists several nodes: set redis.cluster = true for a Redis Cluster (one URL otherwise)",
            );
        }
    }
    let command_timeout_ms = raw
        .redis
        .command_timeout_ms
        .unwrap_or(DEFAULT_COMMAND_TIMEOUT_MS);
    let connect_timeout_ms = raw
        .redis
        .connect_timeout_ms
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS);
    for (key, v) in [
        ("redis.command_timeout_ms", command_timeout_ms),
        ("redis.connect_timeout_ms", connect_timeout_ms),
    ] {
        if !(10..=30_000).contains(&v) {
            c.fail(key, format!("{v} is out of range 10..=30000"));
        }
    }
    let resync_seconds = raw.redis.resync_seconds.unwrap_or(DEFAULT_RESYNC_SECONDS);
    if !(1..=3_600).contains(&resync_seconds) {
        c.fail(
            "redis.resync_seconds",
            format!("{resync_seconds} is out of range 1..=3600"),
        );
    }

    // --- native ---
    let issuer = raw
        .native
        .issuer
        .unwrap_or_else(|| format!("urn:sessiongate:{}", env.as_str()));
    if issuer.trim().is_empty() {
        c.fail("native.issuer", "must not be empty");
    }
    let audiences = raw
        .native
        .audiences
        .unwrap_or_else(|| vec!["sessiongate".into()]);
    if audiences.is_empty() || audiences.iter().any(|a| a.is_empty()) {
        c.fail("native.audiences", "needs at least one non-empty audience");
    }
    let jwt_ttl = raw
        .native
        .jwt_ttl_seconds
        .unwrap_or(DEFAULT_JWT_TTL_SECONDS);
    if !(30..=3_600).contains(&jwt_ttl) {
        c.fail(
            "native.jwt_ttl_seconds",
            format!("{jwt_ttl} is out of range 30..=3600 (a session_jwt is meant to be short)"),
        );
    }
    let session_minutes = raw
        .native
        .session_duration_minutes
        .unwrap_or(DEFAULT_SESSION_MINUTES);
    if !(SESSION_MINUTES_MIN..=SESSION_MINUTES_MAX).contains(&session_minutes) {
        c.fail(
            "native.session_duration_minutes",
            format!(
                "{session_minutes} is out of range {SESSION_MINUTES_MIN}..={SESSION_MINUTES_MAX}"
            ),
        );
    }
    let mut signing_keys = Vec::new();
    for (i, k) in raw.native.signing_keys.iter().enumerate() {
        match k.strip_prefix("env:") {
            Some(var) => match vars.get(var).filter(|v| !v.trim().is_empty()) {
                Some(value) => signing_keys.push(KeySource::Env {
                    var: var.to_owned(),
                    value: Secret::new(value),
                }),
                None => c.fail(
                    format!("native.signing_keys[{i}]"),
                    format!("environment variable {var} is not set (or empty): it must hold the key's PEM or JWK"),
                ),
            },
            None if k.is_empty() => c.fail(format!("native.signing_keys[{i}]"), "empty path"),
            None => signing_keys.push(KeySource::File(PathBuf::from(k))),
        }
    }
    let leeway = raw.native.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS);
    if leeway > 300 {
        c.fail(
            "native.leeway_seconds",
            format!("{leeway} is more than 300"),
        );
    }

    let refresh_window = raw.native.refresh_window_seconds.unwrap_or(86_400);
    if refresh_window > 2_592_000 {
        c.fail(
            "native.refresh_window_seconds",
            format!("{refresh_window} is more than 2592000 (30 days)"),
        );
    }
    let absolute_lifetime = raw.native.absolute_lifetime_minutes.unwrap_or(129_600);
    if !(SESSION_MINUTES_MIN..=SESSION_MINUTES_MAX).contains(&absolute_lifetime) {
        c.fail(
            "native.absolute_lifetime_minutes",
            format!(
                "{absolute_lifetime} is out of range {SESSION_MINUTES_MIN}..={SESSION_MINUTES_MAX}"
            ),
        );
    } else if absolute_lifetime < session_minutes {
        c.fail(
            "native.absolute_lifetime_minutes",
            format!("{absolute_lifetime} is shorter than native.session_duration_minutes ({session_minutes})"),
        );
    }

    // --- providers ---
    let mut providers = Vec::new();
    let mut names = BTreeSet::new();
    let mut issuers = BTreeSet::from([issuer.clone()]);
    let mut opaque_provider: Option<String> = None;
    for (i, p) in raw.providers.into_iter().enumerate() {
        let k = |f: &str| format!("providers[{i}].{f}");
        if p.name.is_empty() || p.name == "native" {
            c.fail(
                k("name"),
                "must be non-empty and not `native` (reserved for sessiongate's own sessions)",
            );
        } else if !names.insert(p.name.clone()) {
            c.fail(k("name"), format!("`{}` is used twice", p.name));
        }
        if p.issuer.is_empty() {
            c.fail(k("issuer"), "must not be empty");
        } else if !issuers.insert(p.issuer.clone()) {
            c.fail(k("issuer"), format!("`{}` is already the issuer of another provider or of native sessions; tokens are routed by issuer, so each must be unique", p.issuer));
        }
        let jwks_url = url_field(&mut c, env, &k("jwks_url"), p.jwks_url);
        let userinfo_url = url_field(&mut c, env, &k("userinfo_url"), p.userinfo_url);
        // Endpoints left out are discovered from the issuer, which must then be a URL.
        let discoverable = url::Url::parse(&p.issuer)
            .is_ok_and(|u| u.scheme() == "https" || (u.scheme() == "http" && env == Env::Test));
        let algorithms = p.algorithms.unwrap_or_else(|| vec!["RS256".into()]);
        if algorithms.is_empty() {
            c.fail(k("algorithms"), "needs at least one algorithm");
        }
        for a in &algorithms {
            if !ASYMMETRIC_ALGORITHMS.contains(&a.as_str()) {
                c.fail(
                    k("algorithms"),
                    format!(
                        "`{a}` is not allowed; use one of {}",
                        ASYMMETRIC_ALGORITHMS.join(", ")
                    ),
                );
            }
        }
        let token_format = p.token_format.unwrap_or(TokenFormat::Jwt);
        if p.kind == ProviderKind::External && token_format != TokenFormat::Jwt {
            c.fail(
                k("token_format"),
                "an external provider is validated by its JWTs only: use `jwt`",
            );
        }
        if p.kind == ProviderKind::Legacy && token_format != TokenFormat::Jwt {
            if userinfo_url.is_none() && !discoverable {
                c.fail(k("userinfo_url"), "opaque legacy tokens are checked through UserInfo: set userinfo_url, or make issuer an https URL to discover it");
            }
            // UserInfo answers "whose token is this", never "which client was it issued to":
            // an allow-list of clients cannot be enforced on a token UserInfo vouches for.
            if !p.allowed_client_ids.is_empty() {
                c.fail(k("allowed_client_ids"), "cannot be enforced on opaque tokens: UserInfo does not say which client a token was issued to, so another client's opaque token of the same tenant would pass. Set token_format = \"jwt\" (a JWT's azp/client_id is checked), or remove allowed_client_ids");
            }
            if opaque_provider.replace(p.name.clone()).is_some() {
                c.fail(k("token_format"), "only one legacy provider may accept opaque tokens: an opaque token names no issuer to route it by");
            }
        }
        let userinfo_timeout = p.userinfo_timeout_ms.unwrap_or(3000);
        if !(50..=30_000).contains(&userinfo_timeout) {
            c.fail(
                k("userinfo_timeout_ms"),
                format!("{userinfo_timeout} is out of range 50..=30000"),
            );
        }
        let takes_jwt = matches!(token_format, TokenFormat::Jwt | TokenFormat::Both);
        if takes_jwt && p.audiences.is_empty() {
            c.fail(k("audiences"), "JWTs are only accepted for a listed audience: set the API identifiers this fleet accepts");
        }

        if takes_jwt && jwks_url.is_none() && !discoverable {
            c.fail(k("jwks_url"), "JWTs are verified with the issuer's JWKS: set jwks_url, or make issuer an https URL to discover it");
        }
        let lifetime = p.max_token_lifetime_seconds.unwrap_or(86_400);
        if !(60..=31_536_000).contains(&lifetime) {
            c.fail(
                k("max_token_lifetime_seconds"),
                format!("{lifetime} is out of range 60..=31536000"),
            );
        }
        let per_second = p.userinfo_budget_per_second.unwrap_or(50);
        if !(1..=100_000).contains(&per_second) {
            c.fail(
                k("userinfo_budget_per_second"),
                format!("{per_second} is out of range 1..=100000"),
            );
        }
        let burst = p
            .userinfo_budget_burst
            .unwrap_or(per_second.saturating_mul(2));
        if !(1..=200_000).contains(&burst) {
            c.fail(
                k("userinfo_budget_burst"),
                format!("{burst} is out of range 1..=200000"),
            );
        }
        let min_length = p.opaque_token_min_length.unwrap_or(1) as usize;
        let max_length = p.opaque_token_max_length.unwrap_or(8192) as usize;
        if min_length == 0 || min_length > max_length || max_length > 8192 {
            c.fail(
                k("opaque_token_max_length"),
                format!("the length range {min_length}..={max_length} must be non-empty, within 1..=8192"),
            );
        }
        if p.opaque_token_prefix.len() > 64
            || !p
                .opaque_token_prefix
                .bytes()
                .all(|b| (0x21..0x7f).contains(&b))
        {
            c.fail(
                k("opaque_token_prefix"),
                "must be at most 64 visible ASCII characters",
            );
        }
        if p.kind == ProviderKind::External && p.policy.is_some() {
            c.fail(
                k("policy"),
                "applies to legacy providers only; external tokens are always NEW",
            );
        }
        providers.push(ProviderConfig {
            name: p.name,
            kind: p.kind,
            issuer: p.issuer,
            jwks_url,
            audiences: p.audiences,
            algorithms,
            userinfo_url,
            token_format,
            policy: p.policy.unwrap_or(Policy::Accept),
            allowed_client_ids: p.allowed_client_ids,
            link_verified_email: p.link_verified_email,
            max_token_lifetime: Duration::from_secs(lifetime.into()),
            userinfo_timeout: Duration::from_millis(userinfo_timeout.into()),
            userinfo_budget: UpstreamBudget { per_second, burst },
            opaque_shape: OpaqueShape {
                prefix: p.opaque_token_prefix,
                min_length,
                max_length,
                alphabet: p
                    .opaque_token_alphabet
                    .unwrap_or(OpaqueAlphabet::VisibleAscii),
            },
        });
    }

    // --- flows ---
    let mut flows = Vec::new();
    let mut flow_names = BTreeSet::new();
    for (i, f) in raw.flows.into_iter().enumerate() {
        flows.push(flows::flow(&mut c, i, f, &mut flow_names));
    }
    let mut flow_warnings = Vec::new();
    if let Some(p) = &raw.unleash_features_file {
        if flows.is_empty() {
            // A relative path is relative to the config file.
            let base = file
                .as_deref()
                .and_then(Path::parent)
                .unwrap_or(Path::new("."));
            let (exported, warnings) = flows::unleash_export(&mut c, base, p);
            flows = exported;
            flow_warnings = warnings;
        } else {
            c.fail(
                "unleash_features_file",
                format!(
                    "`{}` and [[flows]] both define flows: use one or the other",
                    p.display()
                ),
            );
        }
    }
    let flow_cookie = flows::flow_cookie(&mut c, raw.flow_cookie, vars);

    // --- clients ---
    let mut clients = Vec::new();
    let mut client_names = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    for (i, cl) in raw.clients.into_iter().enumerate() {
        let k = |f: &str| format!("clients[{i}].{f}");
        if cl.name.is_empty() {
            c.fail(k("name"), "must not be empty");
        } else if !client_names.insert(cl.name.clone()) {
            c.fail(k("name"), format!("`{}` is used twice", cl.name));
        }
        let mut key = [0u8; 32];
        if hex::decode_to_slice(cl.key_sha256.trim(), &mut key).is_err() {
            c.fail(k("key_sha256"), "must be 64 hex characters: the SHA-256 of the API key (`sessiongate apikey` makes one)");
        } else if !hashes.insert(key) {
            c.fail(k("key_sha256"), "the same key is configured twice");
        }
        if cl.scopes.is_empty() {
            c.fail(
                k("scopes"),
                "needs at least one scope: validate, migrate, flow, issue, revoke or admin",
            );
        }
        clients.push(ClientConfig {
            name: cl.name,
            key_sha256: key,
            scopes: cl.scopes.into_iter().collect(),
        });
    }

    let log_format = match vars.get(ENV_LOG_FORMAT).as_deref() {
        Some("json") => LogFormat::Json,
        Some("human") | Some("") => LogFormat::Human,
        None => raw.log_format.unwrap_or(LogFormat::Human),
        Some(other) => {
            c.fail_at(
                &format!("environment variable {ENV_LOG_FORMAT}"),
                ENV_LOG_FORMAT,
                format!("`{other}` is not a log format; use `human` or `json`"),
            );
            LogFormat::Human
        }
    };

    // --- telemetry ---
    let otlp_endpoint = vars
        .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| vars.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|e| !e.trim().is_empty());
    if let Some(e) = &otlp_endpoint
        && !url::Url::parse(e).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
    {
        c.fail_at(
            "environment variable OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("`{e}` is not an http(s) URL of an OTLP/gRPC collector (e.g. http://otel-collector:4317)"),
        );
    }
    let telemetry = TelemetryConfig {
        otlp_endpoint,
        service_name: vars
            .get("OTEL_SERVICE_NAME")
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "sessiongate".into()),
    };

    // --- migration ---
    let per_caller = raw.migration.per_caller_per_minute.unwrap_or(600);
    let per_identity = raw.migration.per_identity_per_minute.unwrap_or(5);
    for (key, v) in [
        ("migration.per_caller_per_minute", per_caller),
        ("migration.per_identity_per_minute", per_identity),
    ] {
        if v == 0 {
            c.fail(key, "0 would refuse every migration: set at least 1");
        }
    }

    // --- what `live` refuses: every test-only convenience ---
    if env == Env::Live {
        if redis_url.is_none() {
            c.fail_at("env live", ENV_REDIS_URL, "live refuses the embedded store (nothing would survive a restart or be shared between replicas): set REDIS_URL=redis://… in the environment or in .env-live");
        }
        if raw.native.signing_keys.is_empty() {
            c.fail("native.signing_keys", "live refuses generated signing keys: create one with `sessiongate keygen > key.pem` and list it in native.signing_keys");
        }
        if !flows.is_empty() && flow_cookie.keys.is_empty() {
            c.fail("flow_cookie.keys", "live refuses a generated flow cookie key (cookies would not verify on other replicas or after a restart): set keys = [\"env:SESSIONGATE_FLOW_COOKIE_KEY\"] with `openssl rand -base64 32` in that variable");
        }
        if clients.is_empty() {
            c.fail("clients", "live refuses to run without caller keys: add a [[clients]] entry (name, key_sha256, scopes); `sessiongate apikey` makes a key and its hash");
        }
    }

    if !c.problems.is_empty() {
        return Err(ConfigError {
            problems: c.problems,
        });
    }
    Ok(Config {
        env,
        file,
        dotenv_file: None,
        log_format,
        telemetry,
        server: ServerConfig {
            grpc_addr,
            http_addr,
            max_token_bytes: max_token_bytes as usize,
            max_message_bytes: max_message_bytes as usize,
            drain_grace: Duration::from_secs(drain.into()),
            upstream_proxy: upstream_proxy.map(Secret::new),
        },
        store: StoreConfig {
            redis_url: redis_url.map(Secret::new),
            cluster,
            command_timeout: Duration::from_millis(command_timeout_ms.into()),
            connect_timeout: Duration::from_millis(connect_timeout_ms.into()),
            resync_every: Duration::from_secs(resync_seconds.into()),
        },
        native: NativeConfig {
            issuer,
            audiences,
            jwt_ttl: Duration::from_secs(jwt_ttl.into()),
            session_duration_minutes: session_minutes,
            leeway: Duration::from_secs(leeway.into()),
            refresh_window: Duration::from_secs(refresh_window.into()),
            absolute_lifetime_minutes: absolute_lifetime,
            signing_keys,
        },
        providers,
        flows,
        unleash_features_file: raw.unleash_features_file,
        flow_cookie,
        flow_warnings,
        clients,
        migration: MigrationConfig {
            per_caller_per_minute: per_caller,
            per_identity_per_minute: per_identity,
        },
    })
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

fn url_field(c: &mut Check, env: Env, key: &str, value: Option<String>) -> Option<url::Url> {
    let value = value?;
    match url::Url::parse(&value) {
        Ok(u) if u.scheme() == "https" => Some(u),
        // Plain http is for fakes on loopback in tests; never for a live issuer.
        Ok(u) if u.scheme() == "http" && env == Env::Test => Some(u),
        Ok(_) => {
            c.fail(
                key,
                format!("`{value}` must be an https URL (http only in test)"),
            );
            None
        }
        Err(e) => {
            c.fail(key, format!("`{value}` is not a URL: {e}"));
            None
        }
    }
}

impl Config {
    /// Things that are allowed but worth a loud line in the log at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self.flow_warnings.clone();
        if !self.flows.is_empty() && self.flow_cookie.keys.is_empty() {
            w.push("no flow_cookie.keys: flow cookies are signed with a key generated at start; they stop verifying after a restart and on other replicas (test only)".into());
        }
        if self.store.redis_url.is_none() {
            w.push("no REDIS_URL: using the embedded in-memory store; nothing survives a restart and replicas share nothing".into());
        }
        if self.clients.is_empty() {
            w.push("no [[clients]] keys configured: validate, migrate, flow and revoke run OPEN (test only); issue and admin stay closed".into());
        }
        w
    }

    /// What `check-config` prints: the effective configuration, secrets redacted.
    pub fn describe(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("(cannot render: {e})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn from_toml(text: &str, v: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let raw = parse_toml("sessiongate.toml", text)?;
        let env = match v.iter().find(|(k, _)| *k == ENV_ENV) {
            Some((_, e)) => Env::parse(e).unwrap(),
            None => raw.env.unwrap_or(Env::Test),
        };
        build(env, Some("sessiongate.toml".into()), raw, &vars(v))
    }

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn no_file_gives_test_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = load(&vars(&[]), dir.path(), None).unwrap();
        assert_eq!(cfg.env, Env::Test);
        assert_eq!(cfg.server.grpc_addr, DEFAULT_GRPC_ADDR.parse().unwrap());
        assert_eq!(cfg.server.http_addr, DEFAULT_HTTP_ADDR.parse().unwrap());
        assert_eq!(cfg.server.max_token_bytes, 8192);
        assert!(cfg.store.redis_url.is_none());
        assert_eq!(cfg.native.issuer, "urn:sessiongate:test");
        assert_eq!(cfg.native.jwt_ttl, Duration::from_secs(300));
        assert!(cfg.providers.is_empty() && cfg.clients.is_empty());
        assert_eq!(cfg.warnings().len(), 2);
    }

    #[test]
    fn design_example_parses() {
        let text = format!(
            r#"
env = "test"
[server]
grpc_addr = "0.0.0.0:50051"
http_addr = "0.0.0.0:8080"
max_token_bytes = 8192
[native]
issuer = "https://sessions.example.com/test"
audiences = ["example-app"]
jwt_ttl_seconds = 300
session_duration_minutes = 60
leeway_seconds = 30
signing_keys = ["/etc/sessiongate/keys/2026-11.pem"]
[[providers]]
name = "auth0"
kind = "legacy"
issuer = "https://example.auth0.com/"
jwks_url = "https://example.auth0.com/.well-known/jwks.json"
audiences = ["https://api.example.com"]
algorithms = ["RS256"]
userinfo_url = "https://example.auth0.com/userinfo"
token_format = "jwt"
policy = "upgrade"
allowed_client_ids = ["abc123"]
link_verified_email = true
[[flows]]
name = "login"
percentage = 10
stickiness = "device"
kill_switch = false
rollback_epoch = 0
allow_users = []
deny_users = []
allow_cidrs = ["10.20.0.0/16"]
deny_cidrs = ["192.0.2.7"]
countries = ["no", "SE"]
min_app_versions = {{ ios = "5.12.0", android = "5.10.0" }}
[[flows]]
name = "checkout"
[[flows.strategies]]
name = "flexibleRollout"
parameters = {{ rollout = "25", stickiness = "default", groupId = "checkout" }}
constraints = [ {{ contextName = "country", operator = "IN", values = ["NO", "SE"] }} ]
[[clients]]
name = "checkout-service"
key_sha256 = "{HASH}"
scopes = ["validate", "flow"]
"#
        );
        let cfg = from_toml(&text, &[]).unwrap();
        assert_eq!(cfg.providers[0].policy, Policy::Upgrade);
        assert_eq!(cfg.providers[0].token_format, TokenFormat::Jwt);
        assert_eq!(cfg.providers[0].allowed_client_ids, ["abc123"]);
        let f = &cfg.flows[0];
        assert!(matches!(
            f.rules,
            FlowRules::Percentage {
                percentage: 10,
                stickiness: Stickiness::Device
            }
        ));
        assert_eq!(f.countries, ["NO", "SE"]);
        assert_eq!(f.deny_cidrs[0].to_string(), "192.0.2.7/32");
        assert_eq!(f.min_app_versions["ios"], semver::Version::new(5, 12, 0));
        let FlowRules::Strategies { strategies, .. } = &cfg.flows[1].rules else {
            panic!("strategies expected");
        };
        assert_eq!(strategies[0].constraints[0].context_name, "country");
        assert_eq!(
            cfg.clients[0].scopes,
            BTreeSet::from([Scope::Validate, Scope::Flow])
        );
    }

    fn problem(text: &str, v: &[(&str, &str)]) -> Vec<Problem> {
        from_toml(text, v).expect_err("must be refused").problems
    }

    #[test]
    fn unknown_key_is_refused_with_its_path() {
        let p = problem("[server]\ngrpc_adr = \"0.0.0.0:1\"\n", &[]);
        assert_eq!(p[0].origin, "sessiongate.toml");
        assert!(
            p[0].key.contains("grpc_adr") || p[0].key == "server",
            "{p:?}"
        );
        assert!(p[0].message.contains("unknown field `grpc_adr`"), "{p:?}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let p = problem("[[flows]]\nname = \"login\"\npercentage = \"ten\"\n", &[]);
        assert_eq!(p[0].key, "flows[0].percentage");
        assert!(p[0].message.contains("invalid type"), "{p:?}");
    }

    #[test]
    fn fractional_percentage_is_refused() {
        let p = problem("[[flows]]\nname = \"login\"\npercentage = 10.5\n", &[]);
        assert_eq!(p[0].key, "flows[0].percentage");
    }

    #[test]
    fn impossible_values_are_refused_together() {
        let p = problem(
            "[[flows]]\nname = \"login\"\npercentage = 101\nallow_cidrs = [\"10.0.0.0/33\"]\nstrategies = []\n[native]\nsession_duration_minutes = 1\n[redis]\nresync_seconds = 0\n",
            &[],
        );
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"redis.resync_seconds"), "{keys:?}");
        assert!(keys.contains(&"flows[0].percentage"), "{keys:?}");
        assert!(keys.contains(&"flows[0].allow_cidrs"), "{keys:?}");
        assert!(keys.contains(&"flows[0].strategies"), "{keys:?}");
        assert!(
            keys.contains(&"native.session_duration_minutes"),
            "{keys:?}"
        );
    }

    #[test]
    fn hmac_algorithms_are_refused_for_providers() {
        let p = problem(
            "[[providers]]\nname = \"a\"\nkind = \"legacy\"\nissuer = \"https://a/\"\naudiences = [\"x\"]\njwks_url = \"https://a/j\"\nalgorithms = [\"HS256\"]\n",
            &[],
        );
        assert_eq!(p[0].key, "providers[0].algorithms");
    }

    #[test]
    fn a_client_allow_list_is_refused_where_opaque_tokens_would_bypass_it() {
        for format in ["opaque", "both"] {
            let p = problem(
                &format!(
                    "[[providers]]\nname = \"a\"\nkind = \"legacy\"\nissuer = \"https://a/\"\naudiences = [\"x\"]\njwks_url = \"https://a/j\"\nuserinfo_url = \"https://a/u\"\ntoken_format = \"{format}\"\nallowed_client_ids = [\"web\"]\n"
                ),
                &[],
            );
            assert_eq!(p[0].key, "providers[0].allowed_client_ids", "{format}");
            assert!(p[0].message.contains("token_format = \"jwt\""), "{format}");
        }
    }

    #[test]
    fn the_shipped_env_example_parses_and_sets_nothing() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join(".env-test.example");
        assert_eq!(read_dotenv(&example).unwrap(), HashMap::new());
    }

    #[test]
    fn an_upstream_proxy_must_be_an_http_proxy_url() {
        for bad in ["ftp://proxy", "proxy:3128", "http://"] {
            let p = problem(&format!("[server]\nupstream_proxy = \"{bad}\"\n"), &[]);
            assert_eq!(p[0].key, "server.upstream_proxy", "{bad}");
        }
        let cfg = from_toml(
            "[server]\nupstream_proxy = \"http://user:pw@proxy:3128\"\n",
            &[],
        )
        .unwrap();
        assert!(
            !format!("{cfg:?}").contains("pw@"),
            "the proxy's credentials are a secret"
        );
    }

    #[test]
    fn duplicate_issuers_are_refused() {
        let p = problem(
            "[[providers]]\nname = \"a\"\nkind = \"legacy\"\nissuer = \"https://a/\"\naudiences = [\"x\"]\njwks_url = \"https://a/j\"\n[[providers]]\nname = \"b\"\nkind = \"external\"\nissuer = \"https://a/\"\naudiences = [\"x\"]\njwks_url = \"https://a/j\"\n",
            &[],
        );
        assert_eq!(p[0].key, "providers[1].issuer");
    }

    #[test]
    fn env_overrides_file() {
        let cfg = from_toml(
            "[server]\ngrpc_addr = \"127.0.0.1:1\"\n",
            &[
                (ENV_GRPC_ADDR, "127.0.0.1:2"),
                (ENV_REDIS_URL, "redis://127.0.0.1:6379"),
                (ENV_LOG_FORMAT, "json"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.server.grpc_addr.port(), 2);
        assert_eq!(
            cfg.store.redis_url.as_ref().unwrap().expose(),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(cfg.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_env_value_names_the_variable() {
        let p = problem("", &[(ENV_GRPC_ADDR, "nope")]);
        assert_eq!(p[0].origin, "environment variable SESSIONGATE_GRPC_ADDR");
        assert_eq!(p[0].key, ENV_GRPC_ADDR);
    }

    #[test]
    fn live_refuses_test_conveniences_and_names_each_fix() {
        let p = problem("env = \"live\"\n", &[]);
        let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["REDIS_URL", "native.signing_keys", "clients"]);
        assert!(p[0].message.contains("set REDIS_URL"));
        assert!(p[1].message.contains("sessiongate keygen"));
        assert!(p[2].message.contains("[[clients]]"));
    }

    #[test]
    fn live_with_everything_starts() {
        let text = format!(
            "env = \"live\"\n[native]\nsigning_keys = [\"k.pem\"]\n[[clients]]\nname = \"a\"\nkey_sha256 = \"{HASH}\"\nscopes = [\"validate\"]\n"
        );
        let cfg = from_toml(&text, &[(ENV_REDIS_URL, "redis://r:6379")]).unwrap();
        assert_eq!(cfg.env, Env::Live);
        assert!(cfg.warnings().is_empty());
    }

    #[test]
    fn redis_url_is_never_printed() {
        let cfg = from_toml("", &[(ENV_REDIS_URL, "redis://:hunter2@r:6379")]).unwrap();
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert!(!cfg.describe().contains("hunter2"));
        let p = problem("", &[(ENV_REDIS_URL, "http://:hunter2@r")]);
        assert!(!p[0].to_string().contains("hunter2"));
    }

    #[test]
    fn a_cluster_takes_a_list_of_seed_nodes_and_only_a_cluster_does() {
        let seeds = "redis://:hunter2@a:7000, redis://:hunter2@b:7001";
        let cfg = from_toml("[redis]\ncluster = true\n", &[(ENV_REDIS_URL, seeds)]).unwrap();
        assert!(cfg.store.cluster);
        let p = problem("", &[(ENV_REDIS_URL, seeds)]);
        assert_eq!(p[0].key, ENV_REDIS_URL);
        assert!(p[0].message.contains("redis.cluster = true"), "{}", p[0]);
        assert!(!p[0].to_string().contains("hunter2"));
        let p = problem(
            "[redis]\ncluster = true\n",
            &[(ENV_REDIS_URL, "redis://a:7000,http://b")],
        );
        assert!(
            p[0].message.contains("each comma-separated node"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn dotenv_of_the_chosen_env_is_read_and_real_env_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".env-live"),
            "REDIS_URL=redis://from-dotenv:6379\nSESSIONGATE_GRPC_ADDR=127.0.0.1:7\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(".env-test"),
            "SESSIONGATE_GRPC_ADDR=127.0.0.1:9\n",
        )
        .unwrap();
        // test: only .env-test applies.
        let cfg = load(&vars(&[]), dir.path(), None).unwrap();
        assert_eq!(cfg.server.grpc_addr.port(), 9);
        assert!(cfg.store.redis_url.is_none());
        // live: .env-live applies, the real environment wins over it; live still refuses
        // without keys, which shows the dotenv REDIS_URL was taken.
        let err = load(
            &vars(&[(ENV_ENV, "live"), (ENV_GRPC_ADDR, "127.0.0.1:8")]),
            dir.path(),
            None,
        )
        .unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["native.signing_keys", "clients"]);
    }

    #[test]
    fn config_file_from_env_var_and_its_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "[native]\nleeway_seconds = -1\n").unwrap();
        let err = load(
            &vars(&[(ENV_CONFIG, path.to_str().unwrap())]),
            dir.path(),
            None,
        )
        .unwrap_err();
        assert_eq!(err.problems[0].origin, path.display().to_string());
        assert_eq!(err.problems[0].key, "native.leeway_seconds");
        let missing = load(
            &vars(&[(ENV_CONFIG, "/nonexistent/x.toml")]),
            dir.path(),
            None,
        )
        .unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/x.toml"));
    }

    #[test]
    fn signing_keys_from_files_and_env_secrets() {
        let cfg = from_toml(
            "[native]\nsigning_keys = [\"/k/a.pem\", \"env:SIGNING_KEY\"]\n",
            &[("SIGNING_KEY", "-----BEGIN PRIVATE KEY-----\nsecret\n")],
        )
        .unwrap();
        assert_eq!(
            cfg.native.signing_keys[0],
            KeySource::File("/k/a.pem".into())
        );
        assert!(
            matches!(&cfg.native.signing_keys[1], KeySource::Env { var, .. } if var == "SIGNING_KEY")
        );
        assert!(!cfg.describe().contains("secret") && cfg.describe().contains("env:SIGNING_KEY"));
        let p = problem("[native]\nsigning_keys = [\"env:MISSING\"]\n", &[]);
        assert_eq!(p[0].key, "native.signing_keys[0]");
        assert!(p[0].message.contains("MISSING"));
    }

    #[test]
    fn client_keys_must_be_hashes() {
        let p = problem(
            "[[clients]]\nname = \"a\"\nkey_sha256 = \"plain-key\"\nscopes = [\"validate\"]\n",
            &[],
        );
        assert_eq!(p[0].key, "clients[0].key_sha256");
        let p = problem(
            &format!("[[clients]]\nname = \"a\"\nkey_sha256 = \"{HASH}\"\nscopes = [\"root\"]\n"),
            &[],
        );
        assert_eq!(p[0].key, "clients[0].scopes[0]");
    }

    fn keys_of(p: &[Problem]) -> Vec<&str> {
        p.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn hand_written_strategies_must_keep_the_ramp_monotone() {
        let p = problem(
            r#"
[[flows]]
name = "login"
percentage = 10
stickiness = "device"
[[flows.strategies]]
name = "flexibleRollout"
parameters = { rollout = "12.5", groupId = "other", stickiness = "random" }
[[flows.strategies]]
name = "flexibleRollout"
parameters = { rollout = "20", stickiness = "userId" }
constraints = [
  { contextName = "remoteAddress", operator = "IN_CIDR", values = ["10.0.0.0/33"] },
  { contextName = "appVersion", operator = "SEMVER_GTE", value = "v5" },
  { contextName = "x", operator = "REGEX", value = ".*" },
]
[[flows.strategies]]
name = "gradualRolloutRandom"
"#,
            &[],
        );
        let keys = keys_of(&p);
        for want in [
            "flows[0].percentage",
            "flows[0].stickiness",
            "flows[0].strategies[0].parameters.rollout",
            "flows[0].strategies[0].parameters.groupId",
            "flows[0].strategies[0].parameters.stickiness",
            "flows[0].strategies[1].parameters.stickiness",
            "flows[0].strategies[1].constraints[0].values",
            "flows[0].strategies[1].constraints[1].value",
            "flows[0].strategies[1].constraints[2].operator",
            "flows[0].strategies[2].name",
        ] {
            assert!(keys.contains(&want), "{want} not in {keys:?}");
        }
    }

    #[test]
    fn flow_countries_and_cookie_settings_are_checked() {
        let p = problem(
            "[[flows]]\nname = \"login\"\ncountries = [\"XX\", \"NOR\"]\n[flow_cookie]\nname = \"bad name\"\nmax_age_days = 401\nkeys = [\"env:SHORT\"]\n",
            &[("SHORT", "too-short")],
        );
        let keys = keys_of(&p);
        assert_eq!(
            keys.iter().filter(|k| **k == "flows[0].countries").count(),
            2,
            "{p:?}"
        );
        for want in [
            "flow_cookie.name",
            "flow_cookie.max_age_days",
            "flow_cookie.keys[0]",
        ] {
            assert!(keys.contains(&want), "{want} not in {keys:?}");
        }
    }

    #[test]
    fn live_refuses_a_generated_flow_cookie_key() {
        let p = problem(
            &format!(
                "env = \"live\"\n[native]\nsigning_keys = [\"/k.pem\"]\n[[clients]]\nname = \"a\"\nkey_sha256 = \"{HASH}\"\nscopes = [\"flow\"]\n[[flows]]\nname = \"login\"\n"
            ),
            &[("REDIS_URL", "redis://127.0.0.1/")],
        );
        assert_eq!(keys_of(&p), ["flow_cookie.keys"], "{p:?}");
        assert!(p[0].message.contains("openssl rand"), "{}", p[0].message);
    }

    #[test]
    fn an_unleash_export_is_taken_as_unleash_would_with_warnings() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("features.json"),
            r#"{"version": 2, "features": [
                {"name": "login", "enabled": true, "type": "release", "project": "default",
                 "strategies": [{"name": "flexibleRollout", "parameters":
                   {"rollout": "25", "stickiness": "default", "groupId": "login"},
                   "constraints": [], "segments": [1]}]},
                {"name": "everyone", "enabled": true, "strategies": []},
                {"name": "half", "enabled": true, "strategies": [
                   {"name": "flexibleRollout", "parameters": {"rollout": "12.5"}},
                   {"name": "default", "segments": [7]}]},
                {"name": "off", "enabled": false, "strategies": [{"name": "default"}]}
              ],
              "segments": [{"id": 1, "name": "nordics", "constraints":
                 [{"contextName": "country", "operator": "IN", "values": ["NO"]}]}]}"#,
        )
        .unwrap();
        let cfg_path = dir.path().join("sessiongate.toml");
        let raw = parse_toml(
            "sessiongate.toml",
            "unleash_features_file = \"features.json\"\n",
        )
        .unwrap();
        let cfg = build(Env::Test, Some(cfg_path), raw, &vars(&[])).unwrap();
        let names: Vec<&str> = cfg.flows.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["login", "everyone", "half", "off"]);
        assert!(
            cfg.flows[3].kill_switch,
            "enabled = false is the kill switch"
        );
        let w = cfg.warnings().join("\n");
        assert!(w.contains("`everyone`: enabled with no strategies"), "{w}");
        assert!(
            w.contains("`half`: strategy 0: rollout `12.5` is not an integer"),
            "{w}"
        );
        assert!(
            w.contains("`half`: strategy 1: segment 7 is not in the export"),
            "{w}"
        );
        assert!(!w.contains("`login`"), "{w}");

        // A broken export names the file and the place.
        std::fs::write(
            dir.path().join("features.json"),
            r#"{"features": [{"enabled": true}]}"#,
        )
        .unwrap();
        let raw = parse_toml(
            "sessiongate.toml",
            "unleash_features_file = \"features.json\"\n",
        )
        .unwrap();
        let p = build(
            Env::Test,
            Some(dir.path().join("sessiongate.toml")),
            raw,
            &vars(&[]),
        )
        .unwrap_err()
        .problems;
        assert_eq!(p[0].key, "unleash_features_file");
        assert!(p[0].message.contains("features[0]"), "{}", p[0].message);
    }
}
