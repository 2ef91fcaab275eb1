//! `[[flows]]` and `[flow_cookie]` (the README's "Rolling out"; an Unleash export is read by
//! `export.rs`).
//!
//! Hand-written flows are held to rules that keep a ramp monotone (an integer percentage, one
//! group id — the flow's name — and one fixed stickiness per flow, no empty strategy list).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::unleash::{self, ConstraintDef, OPERATORS, STRATEGIES, StrategyDef};
use super::{Check, KeySource, Secret, Vars};

/// The default flow cookie name; `__Host-` makes browsers insist on Secure, Path=/ and no
/// Domain, so a sibling subdomain cannot plant one.
pub const DEFAULT_COOKIE_NAME: &str = "__Host-sg_flow";
/// Browsers cap cookie lifetimes at 400 days (RFC 6265bis).
const MAX_COOKIE_DAYS: u32 = 400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stickiness {
    User,
    Device,
    Default,
}

impl Stickiness {
    /// The Unleash stickiness parameter this maps to (device id → Unleash `sessionId`).
    pub fn unleash(self) -> &'static str {
        match self {
            Stickiness::User => "userId",
            Stickiness::Device => "sessionId",
            Stickiness::Default => "default",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stickiness::User => "user",
            Stickiness::Device => "device",
            Stickiness::Default => "default",
        }
    }
}

/// One flow as configured (the file's defaults; run-time overrides live in the store).
#[derive(Debug, Clone, Serialize)]
pub struct FlowConfig {
    pub name: String,
    pub kill_switch: bool,
    pub rollback_epoch: u32,
    pub allow_users: Vec<String>,
    pub deny_users: Vec<String>,
    pub allow_devices: Vec<String>,
    pub deny_devices: Vec<String>,
    pub allow_cidrs: Vec<IpNet>,
    pub deny_cidrs: Vec<IpNet>,
    /// Eligible countries (upper-case ISO 3166-1 alpha-2); empty = all.
    pub countries: Vec<String>,
    pub min_app_versions: BTreeMap<String, semver::Version>,
    pub rules: FlowRules,
    /// `[[flows.ramp]]`: a schedule the service advances, and its guards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampConfig>,
}

/// How the percentage part of a flow is written.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "form", rename_all = "snake_case")]
pub enum FlowRules {
    /// The simple form: one flexibleRollout on the flow's own name as group id.
    Percentage {
        percentage: u32,
        stickiness: Stickiness,
    },
    /// Unleash strategies: `[[flows.strategies]]`, or a feature of an Unleash export.
    Strategies {
        strategies: Vec<StrategyDef>,
        #[serde(skip)]
        segments: Arc<HashMap<u32, Vec<ConstraintDef>>>,
        from_export: bool,
    },
}

/// `[flow_cookie]`: the signed cookie that keeps a device on NEW.
#[derive(Debug, Clone, Serialize)]
pub struct FlowCookieConfig {
    pub name: String,
    /// HMAC keys; the first signs, all verify (rotation). Empty: generated at start (test).
    pub keys: Vec<KeySource>,
    pub max_age: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlow {
    name: String,
    percentage: Option<u32>,
    stickiness: Option<Stickiness>,
    #[serde(default)]
    kill_switch: bool,
    #[serde(default)]
    rollback_epoch: u32,
    #[serde(default)]
    allow_users: Vec<String>,
    #[serde(default)]
    deny_users: Vec<String>,
    #[serde(default)]
    allow_devices: Vec<String>,
    #[serde(default)]
    deny_devices: Vec<String>,
    #[serde(default)]
    allow_cidrs: Vec<String>,
    #[serde(default)]
    deny_cidrs: Vec<String>,
    #[serde(default)]
    countries: Vec<String>,
    #[serde(default)]
    min_app_versions: BTreeMap<String, String>,
    strategies: Option<Vec<RawStrategy>>,
    #[serde(default)]
    ramp: Vec<RawRampStep>,
    guards: Option<RawGuards>,
}

/// `[[flows.ramp]]`: one step of a schedule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRampStep {
    percentage: u32,
    /// How long the step lasts before the next; the last step's is not needed.
    hold_minutes: Option<u64>,
}

/// `[flows.guards]`: what pauses a ramp.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuards {
    window_minutes: Option<u64>,
    min_samples: Option<u64>,
    migration_failure_ratio: Option<f64>,
    new_invalid_ratio: Option<f64>,
    userinfo_error_ratio: Option<f64>,
}

/// A flow's schedule: steps of percentage and hold time, advanced by the service and paused
/// by its guards.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RampConfig {
    pub steps: Vec<RampStep>,
    pub guards: Guards,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RampStep {
    pub percentage: u32,
    /// `None` for the last step.
    pub hold: Option<Duration>,
}

/// Thresholds over a sliding window of the fleet's counts; a ratio over its threshold (with
/// at least `min_samples` in its denominator) pauses the ramp.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Guards {
    pub window: Duration,
    pub min_samples: u64,
    /// Failed MigrateSession calls among all (the provider or store down, a refused link).
    pub migration_failure_ratio: f64,
    /// INVALID verdicts on NEW credentials for a reason other than expiry or revocation.
    pub new_invalid_ratio: f64,
    /// Failed UserInfo calls (unreachable, 5xx, unusable, rate-limited) among all.
    pub userinfo_error_ratio: f64,
}

/// A hand-written strategy: Unleash's shape, but strict about unknown keys (a typo must not
/// silently turn a rule off).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStrategy {
    name: String,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    #[serde(default)]
    constraints: Vec<RawConstraint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConstraint {
    context_name: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
    value: Option<String>,
    #[serde(default)]
    inverted: bool,
    #[serde(default)]
    case_insensitive: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlowCookie {
    name: Option<String>,
    #[serde(default)]
    keys: Vec<String>,
    max_age_days: Option<u32>,
}

/// Checks one `[[flows]]` entry.
pub(super) fn flow(
    c: &mut Check,
    i: usize,
    f: RawFlow,
    names: &mut BTreeSet<String>,
) -> FlowConfig {
    let k = |field: &str| format!("flows[{i}].{field}");
    check_name(c, &k("name"), &f.name, names);
    let mut nets = |field: &str, list: Vec<String>| -> Vec<IpNet> {
        list.iter()
            .filter_map(|s| {
                let n = unleash::parse_net(s);
                if n.is_none() {
                    c.fail(k(field), format!("`{s}` is not an IP address or CIDR"));
                }
                n
            })
            .collect()
    };
    let allow_cidrs = nets("allow_cidrs", f.allow_cidrs);
    let deny_cidrs = nets("deny_cidrs", f.deny_cidrs);
    let mut countries = Vec::new();
    for cc in f.countries {
        let up = cc.trim().to_ascii_uppercase();
        if up.len() != 2 || !up.chars().all(|ch| ch.is_ascii_alphabetic()) {
            c.fail(
                k("countries"),
                format!("`{cc}` is not an ISO 3166-1 alpha-2 code"),
            );
        } else if up == "XX" || up == "T1" {
            c.fail(
                k("countries"),
                format!("`{cc}` means an unknown country (Cloudflare); it can never be eligible"),
            );
        } else {
            countries.push(up);
        }
    }
    let mut min_app_versions = BTreeMap::new();
    for (app, v) in f.min_app_versions {
        match semver::Version::parse(&v) {
            Ok(ver) => {
                min_app_versions.insert(app, ver);
            }
            Err(e) => c.fail(
                k(&format!("min_app_versions.{app}")),
                format!("`{v}` is not a semantic version (e.g. 5.12.0): {e}"),
            ),
        }
    }
    let rules = match f.strategies {
        None => {
            let percentage = f.percentage.unwrap_or(0);
            if percentage > 100 {
                c.fail(k("percentage"), format!("{percentage} is more than 100"));
            }
            FlowRules::Percentage {
                percentage,
                stickiness: f.stickiness.unwrap_or(Stickiness::Default),
            }
        }
        Some(raw) => {
            if f.percentage.is_some() {
                c.fail(k("percentage"), "a flow with [[flows.strategies]] takes its percentages from their `rollout` parameters: remove `percentage`");
            }
            if f.stickiness.is_some() {
                c.fail(k("stickiness"), "a flow with [[flows.strategies]] takes its stickiness from their `stickiness` parameters: remove `stickiness`");
            }
            let strategies = hand_written_strategies(c, i, &f.name, raw);
            FlowRules::Strategies {
                strategies,
                segments: Arc::default(),
                from_export: false,
            }
        }
    };
    let ramp = ramp(c, i, &f.ramp, f.guards, &rules);
    FlowConfig {
        name: f.name,
        kill_switch: f.kill_switch,
        rollback_epoch: f.rollback_epoch,
        allow_users: f.allow_users,
        deny_users: f.deny_users,
        allow_devices: f.allow_devices,
        deny_devices: f.deny_devices,
        allow_cidrs,
        deny_cidrs,
        countries,
        min_app_versions,
        rules,
        ramp,
    }
}

/// The most minutes a step may hold, and the widest guard window.
const MAX_HOLD_MINUTES: u64 = 90 * 24 * 60;
const MAX_WINDOW_MINUTES: u64 = 60;

fn ramp(
    c: &mut Check,
    i: usize,
    steps: &[RawRampStep],
    guards: Option<RawGuards>,
    rules: &FlowRules,
) -> Option<RampConfig> {
    let k = |field: &str| format!("flows[{i}].{field}");
    if steps.is_empty() {
        if guards.is_some() {
            c.fail(
                k("guards"),
                "guards watch a ramp: add [[flows.ramp]] steps, or remove [flows.guards]",
            );
        }
        return None;
    }
    let start = match rules {
        FlowRules::Percentage { percentage, .. } => *percentage,
        FlowRules::Strategies { .. } => {
            c.fail(k("ramp"), "a flow written as Unleash strategies takes its percentages from them: a ramp needs the simple form (`percentage`)");
            return None;
        }
    };
    let mut out = Vec::new();
    let mut below = start;
    for (j, st) in steps.iter().enumerate() {
        let last = j + 1 == steps.len();
        if st.percentage > 100 {
            c.fail(
                k(&format!("ramp[{j}].percentage")),
                format!("{} is more than 100", st.percentage),
            );
        } else if st.percentage <= below {
            // A schedule only ever raises the share on NEW.
            c.fail(
                k(&format!("ramp[{j}].percentage")),
                format!("{}% does not rise above {below}% (the flow's percentage or the step before): steps only go up", st.percentage),
            );
        }
        below = below.max(st.percentage);
        let hold = match (st.hold_minutes, last) {
            (Some(m), _) if !(1..=MAX_HOLD_MINUTES).contains(&m) => {
                c.fail(
                    k(&format!("ramp[{j}].hold_minutes")),
                    format!("{m} is out of range 1..={MAX_HOLD_MINUTES}"),
                );
                None
            }
            (Some(m), _) => Some(Duration::from_secs(m * 60)),
            (None, false) => {
                c.fail(
                    k(&format!("ramp[{j}].hold_minutes")),
                    "required on every step but the last: how long it lasts",
                );
                None
            }
            (None, true) => None,
        };
        out.push(RampStep {
            percentage: st.percentage,
            hold,
        });
    }
    let g = guards.unwrap_or_default();
    let window = g.window_minutes.unwrap_or(10);
    c.range(k("guards.window_minutes"), window, 1..=MAX_WINDOW_MINUTES);
    let min_samples = g.min_samples.unwrap_or(100);
    c.range(k("guards.min_samples"), min_samples, 1..=1_000_000_000);
    let mut ratio = |field: &str, v: Option<f64>, default: f64| {
        let v = v.unwrap_or(default);
        if !(v > 0.0 && v <= 1.0) {
            c.fail(
                k(&format!("guards.{field}")),
                format!("{v} is not a ratio in (0, 1] (1 turns the guard off)"),
            );
        }
        v
    };
    let guards = Guards {
        window: Duration::from_secs(window * 60),
        min_samples,
        migration_failure_ratio: ratio("migration_failure_ratio", g.migration_failure_ratio, 0.05),
        new_invalid_ratio: ratio("new_invalid_ratio", g.new_invalid_ratio, 0.05),
        userinfo_error_ratio: ratio("userinfo_error_ratio", g.userinfo_error_ratio, 0.10),
    };
    Some(RampConfig { steps: out, guards })
}

pub(super) fn check_name(c: &mut Check, key: &str, name: &str, names: &mut BTreeSet<String>) {
    if name.is_empty() || name.len() > 256 {
        c.fail(key, "must be 1 to 256 bytes");
    } else if !names.insert(name.to_owned()) {
        c.fail(key, format!("`{name}` is defined twice"));
    }
}

fn hand_written_strategies(
    c: &mut Check,
    i: usize,
    flow: &str,
    raw: Vec<RawStrategy>,
) -> Vec<StrategyDef> {
    if raw.is_empty() {
        // Unleash treats a feature without strategies as ON for everyone: written by hand
        // that is almost always a mistake.
        c.fail(
            format!("flows[{i}].strategies"),
            "an empty list would turn the flow on for everyone (Unleash semantics): remove it or add a strategy",
        );
    }
    let mut stickiness: Option<String> = None;
    let mut out = Vec::new();
    for (j, s) in raw.into_iter().enumerate() {
        let sk = format!("flows[{i}].strategies[{j}]");
        if !STRATEGIES.contains(&s.name.as_str()) {
            c.fail(
                format!("{sk}.name"),
                format!(
                    "`{}` is not supported; use one of {}",
                    s.name,
                    STRATEGIES.join(", ")
                ),
            );
        }
        if s.name == "gradualRolloutRandom" {
            c.fail(
                format!("{sk}.name"),
                "gradualRolloutRandom is never sticky (a user would flip between flows): use flexibleRollout",
            );
        }
        if s.name.starts_with("gradualRollout")
            && !unleash::parse_percentage(s.parameters.get("percentage"))
                .is_some_and(|p| (0.0..=100.0).contains(&p))
        {
            c.fail(
                format!("{sk}.parameters.percentage"),
                "must be a number 0..100 (Unleash turns such a strategy off)",
            );
        }
        if s.name == "flexibleRollout" {
            let p = &s.parameters;
            match p.get("rollout").map(|r| r.trim().parse::<u32>()) {
                Some(Ok(r)) if r <= 100 => {}
                Some(_) => c.fail(
                    format!("{sk}.parameters.rollout"),
                    format!(
                        "`{}` is not an integer 0..100 (Unleash turns such a strategy off)",
                        p["rollout"]
                    ),
                ),
                None => c.fail(
                    format!("{sk}.parameters.rollout"),
                    "missing: the percentage, e.g. rollout = \"25\"",
                ),
            }
            if let Some(g) = p.get("groupId").filter(|g| *g != flow) {
                c.fail(
                    format!("{sk}.parameters.groupId"),
                    format!("`{g}` differs from the flow's name `{flow}`: one group id per flow keeps each user in one bucket (leave it out)"),
                );
            }
            let st = p
                .get("stickiness")
                .cloned()
                .unwrap_or_else(|| "default".into());
            if st == "random" {
                c.fail(
                    format!("{sk}.parameters.stickiness"),
                    "`random` is never sticky: use userId, sessionId (the device) or default",
                );
            }
            match &stickiness {
                Some(prev) if *prev != st => c.fail(
                    format!("{sk}.parameters.stickiness"),
                    format!("`{st}` differs from `{prev}` of an earlier strategy: one stickiness per flow keeps the ramp monotone"),
                ),
                _ => stickiness = Some(st),
            }
        }
        for (n, con) in s.constraints.iter().enumerate() {
            let ck = format!("{sk}.constraints[{n}]");
            check_constraint(c, &ck, con);
        }
        out.push(StrategyDef {
            name: s.name,
            parameters: s.parameters,
            constraints: s
                .constraints
                .into_iter()
                .map(|r| ConstraintDef {
                    context_name: r.context_name,
                    operator: r.operator,
                    values: r.values,
                    value: r.value,
                    inverted: r.inverted,
                    case_insensitive: r.case_insensitive,
                })
                .collect(),
            segments: Vec::new(),
        });
    }
    out
}

/// Hand-written constraints must mean what they say: Unleash would silently evaluate a bad
/// value to false, here it is refused.
fn check_constraint(c: &mut Check, key: &str, con: &RawConstraint) {
    let op = con.operator.as_str();
    if !OPERATORS.contains(&op) {
        c.fail(
            format!("{key}.operator"),
            format!(
                "`{op}` is not supported; use one of {}",
                OPERATORS.join(", ")
            ),
        );
        return;
    }
    let single = op.starts_with("NUM_") || op.starts_with("DATE_") || op.starts_with("SEMVER_");
    if single {
        let Some(v) = con.value.as_deref().map(str::trim) else {
            c.fail(
                format!("{key}.value"),
                format!("{op} compares with one `value`"),
            );
            return;
        };
        let ok = if op.starts_with("NUM_") {
            v.parse::<f64>().is_ok()
        } else if op.starts_with("DATE_") {
            time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339).is_ok()
        } else {
            semver::Version::parse(v).is_ok()
        };
        if !ok {
            c.fail(
                format!("{key}.value"),
                format!("`{v}` is not a valid operand of {op}"),
            );
        }
    } else if con.values.is_empty() {
        c.fail(format!("{key}.values"), format!("{op} needs `values`"));
    } else if op == "IN_CIDR" {
        for v in &con.values {
            if unleash::parse_net(v).is_none() {
                c.fail(
                    format!("{key}.values"),
                    format!("`{v}` is not an IP address or CIDR"),
                );
            }
        }
    }
}

/// Checks `[flow_cookie]`.
pub(super) fn flow_cookie(c: &mut Check, raw: RawFlowCookie, vars: &dyn Vars) -> FlowCookieConfig {
    let name = raw.name.unwrap_or_else(|| DEFAULT_COOKIE_NAME.into());
    if !super::is_cookie_name(&name) {
        c.fail("flow_cookie.name", format!("`{name}` is not a cookie name"));
    }
    let days = raw.max_age_days.unwrap_or(MAX_COOKIE_DAYS);
    if !(1..=MAX_COOKIE_DAYS).contains(&days) {
        c.fail(
            "flow_cookie.max_age_days",
            format!(
                "{days} is out of range 1..={MAX_COOKIE_DAYS} (browsers cap cookies at 400 days)"
            ),
        );
    }
    let mut keys = Vec::new();
    for (i, k) in raw.keys.iter().enumerate() {
        let key = format!("flow_cookie.keys[{i}]");
        match k.strip_prefix("env:") {
            Some(var) => match vars.get(var).filter(|v| v.trim().len() >= 32) {
                Some(value) => keys.push(KeySource::Env {
                    var: var.to_owned(),
                    value: Secret::new(value),
                }),
                None => c.fail(
                    key,
                    format!("environment variable {var} must hold at least 32 random characters (e.g. `openssl rand -base64 32`)"),
                ),
            },
            None if k.is_empty() => c.fail(key, "empty path"),
            None => keys.push(KeySource::File(PathBuf::from(k))),
        }
    }
    FlowCookieConfig {
        name,
        keys,
        max_age: Duration::from_secs(u64::from(days) * 86_400),
    }
}
