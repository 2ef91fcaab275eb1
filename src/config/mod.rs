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
//!
//! One file per section of the file (`server`, `store` for `[redis]`, `native`, `providers`,
//! `clients`, `flows`, `migration`, `edge`, `webhooks`, `telemetry`), each with its raw (as written) and typed (as
//! checked) forms and its checks; this file loads the layers, runs the sections in order and
//! adds what spans several (what `live` refuses). Every problem is collected, not just the
//! first, and names its key and its fix.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod clients;
mod edge;
mod export;
mod flows;
mod migration;
mod native;
mod providers;
mod server;
mod store;
mod telemetry;
#[cfg(test)]
mod tests;
pub mod unleash;
mod webhooks;

use clients::RawClient;
pub use clients::{ClientConfig, Scope, Scopes};
use edge::RawEdge;
pub use edge::{
    ClientRoute, EdgeConfig, EdgeHeaders, MAX_COOKIE_NAME_BYTES, MAX_ROUTE_COOKIES,
    route_cookies_error,
};
pub use flows::{
    DEFAULT_COOKIE_NAME, FlowConfig, FlowCookieConfig, FlowRules, Guards, RampConfig, RampStep,
    Stickiness,
};
use flows::{RawFlow, RawFlowCookie};
pub use migration::MigrationConfig;
use migration::RawMigration;
use native::RawNative;
pub use native::{
    KeySource, NativeConfig, SESSION_MINUTES_MAX, SESSION_MINUTES_MIN, is_url_issuer,
};
use providers::RawProvider;
pub use providers::{
    ASYMMETRIC_ALGORITHMS, BackchannelLogout, LogoutRevokes, OpaqueAlphabet, OpaqueShape, Policy,
    ProviderConfig, ProviderKind, TokenFormat, UpstreamBudget,
};
use server::RawServer;
pub use server::{DEFAULT_GRPC_ADDR, DEFAULT_HTTP_ADDR, ServerConfig};
use store::RawRedis;
pub use store::{DEFAULT_EVENTS_MAX_LEN, SessionFormat, StoreConfig};
pub use telemetry::TelemetryConfig;
use webhooks::RawWebhook;
pub use webhooks::{EVENT_TYPES, WebhookConfig, WebhookSecret};

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

/// An RFC 6265 cookie-name: a token (no separators, no controls). Names go into
/// `Set-Cookie` as written, where a `;` would add attributes of its own.
pub fn is_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
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
    /// Where more `[[clients]]` came from, besides the config file.
    pub clients_file: Option<PathBuf>,
    pub migration: MigrationConfig,
    pub edge: EdgeConfig,
    pub webhooks: Vec<WebhookConfig>,
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
    clients_file: Option<PathBuf>,
    #[serde(default)]
    migration: RawMigration,
    #[serde(default)]
    edge: RawEdge,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
}

// === Defaults ===

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
fn parse_toml<T: serde::de::DeserializeOwned>(origin: &str, text: &str) -> Result<T, ConfigError> {
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

    /// Refuses `v` outside `range`, saying so the same way for every key.
    fn range<T: PartialOrd + fmt::Display>(
        &mut self,
        key: impl Into<String>,
        v: T,
        range: std::ops::RangeInclusive<T>,
    ) {
        if !range.contains(&v) {
            let message = format!("{v} is out of range {}..={}", range.start(), range.end());
            self.fail(key, message);
        }
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

    let server = server::build(&mut c, vars, raw.server);
    let store = store::build(&mut c, vars, raw.redis);
    let signing_configured = !raw.native.signing_keys.is_empty();
    let native = native::build(&mut c, env, vars, raw.native);
    let providers = providers::build(&mut c, env, raw.providers, &native.issuer);

    // --- flows ---
    let mut flows = Vec::new();
    let mut flow_names = BTreeSet::new();
    for (i, f) in raw.flows.into_iter().enumerate() {
        flows.push(flows::flow(&mut c, i, f, &mut flow_names));
    }
    let mut flow_warnings = Vec::new();
    if let Some(p) = &raw.unleash_features_file {
        if flows.is_empty() {
            let (exported, warnings) = export::unleash_export(&mut c, config_dir(&file), p);
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
    let clients_file = raw
        .clients_file
        .as_deref()
        .map(|p| config_dir(&file).join(p));
    let clients = clients::build(&mut c, raw.clients, clients_file.as_deref());
    let (log_format, telemetry) = telemetry::build(&mut c, vars, raw.log_format);
    let migration = migration::build(&mut c, raw.migration);
    let edge = edge::build(&mut c, raw.edge);
    let webhooks = webhooks::build(&mut c, env, vars, raw.webhooks);

    // --- what `live` refuses: every test-only convenience ---
    if env == Env::Live {
        if store.redis_url.is_none() {
            c.fail_at("env live", ENV_REDIS_URL, "live refuses the embedded store (nothing would survive a restart or be shared between replicas): set REDIS_URL=redis://… in the environment or in .env-live");
        }
        if !signing_configured {
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
        server,
        store,
        native,
        providers,
        flows,
        unleash_features_file: raw.unleash_features_file,
        flow_cookie,
        flow_warnings,
        clients,
        clients_file,
        migration,
        edge,
        webhooks,
    })
}

/// What a relative path in the config file is relative to: the file's folder.
fn config_dir(file: &Option<PathBuf>) -> &Path {
    file.as_deref()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
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
